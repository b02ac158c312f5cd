"""Sources: each turns one vendor's API into mapped records (syncd.model), knowing nothing else."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from syncd.model import Record

if TYPE_CHECKING:
    from syncd.config import TenantConfig


MAX_TEXT = 1024  # characters in one mapped field: a longer name or title is a broken record
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def text_field(item: dict[str, Any], key: str) -> str | None:
    """A mapped text field, cleaned: control characters become spaces, whitespace is collapsed,
    and the text is NFC-normalised (so "José" typed two ways is one value, not an update).
    A value that is not text, or is absurdly long, makes the record fail alone."""
    value = item.get(key)
    if value is None:
        return None
    if type(value) is str and _clean(value):
        return value or None  # most values: already clean, returned as they came (fast path)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{key} is not a string ({type(value).__name__})")
    text = " ".join(unicodedata.normalize("NFC", CONTROL.sub(" ", str(value))).split())
    if len(text) > MAX_TEXT:
        raise ValueError(f"{key} is {len(text):,} characters long (at most {MAX_TEXT:,})")
    return text or None


def _clean(text: str) -> bool:
    """True if cleaning would leave ``text`` as it is. A printable string has no control
    character and no whitespace but the plain space (both are Unicode "other"/"separator"
    categories, which isprintable() rejects), so only doubled or outer spaces, NFC and the length
    remain to check; ASCII is always NFC."""
    return (text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " "
            and len(text) <= MAX_TEXT and (text.isascii() or unicodedata.is_normalized("NFC", text)))


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


__all__ = ["MAX_TEXT", "Record", "Source", "SourceError", "open_source", "text_field"]
