"""Sources: each turns one vendor's API into mapped records (syncd.model), knowing nothing else."""

from __future__ import annotations

from datetime import date
from typing import Protocol

from syncd.config import SourceConfig
from syncd.model import Record


class Source(Protocol):
    complete: bool
    requests: int

    def check(self) -> None: ...

    def extract(self): ...  # Iterator[list[Record]]


def open_source(config: SourceConfig, today: date) -> Source:
    if config.type == "oneroster":
        from syncd.sources.oneroster import OneRosterSource

        return OneRosterSource(config, today)
    raise NotImplementedError(
        f"source type {config.type!r} is not available in this version of syncd (OneRoster only)"
    )


__all__ = ["Record", "Source", "open_source"]
