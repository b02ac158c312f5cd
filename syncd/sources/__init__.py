"""Sources: each turns one vendor's API into mapped records (syncd.model), knowing nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from syncd.model import Record

if TYPE_CHECKING:
    from syncd.config import TenantConfig


class SourceError(Exception):
    """The extract cannot go on (bad page, pagination loop, dead credentials); safe to log."""


class Source(Protocol):
    complete: bool
    requests: int

    def check(self) -> None: ...

    def extract(self) -> Iterator[list[Record]]: ...


def open_source(tenant: TenantConfig, state_dir: Path, today: date) -> Source:
    if tenant.source.type == "canvas":
        from syncd.sources.canvas import CanvasSource

        return CanvasSource(tenant, state_dir)
    from syncd.sources.oneroster import OneRosterSource

    return OneRosterSource(tenant.source, today)


__all__ = ["Record", "Source", "SourceError", "open_source"]
