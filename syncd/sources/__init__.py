"""Sources: each turns one vendor's API into mapped records (syncd.model), knowing nothing else."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from syncd.errors import RunStopped
from syncd.model import Entity, Record, RecordError

if TYPE_CHECKING:
    from syncd.config import TenantConfig, _Checker


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


def map_record(entity: Entity, mapper: Callable[[dict[str, Any]], Record], item: Any,
               source_id_of: Callable[[dict[str, Any]], str | None]) -> Record:
    """One vendor object mapped to a record, or a RecordError that fails it alone: the object is
    not a JSON object, or ``mapper`` raised ValueError (named by ``source_id_of`` where it can)."""
    if not isinstance(item, dict):
        return RecordError(entity, "", f"record is not an object: {type(item).__name__}")
    try:
        return mapper(item)
    except ValueError as exc:
        return RecordError(entity, source_id_of(item) or "", str(exc))


class SourceError(RunStopped):
    """The extract cannot go on (bad page, pagination loop, dead credentials); safe to log."""


class DeltaRejected(SourceError):
    """The server answered 400 to ``filter=dateLastModified>…``: it cannot serve delta runs."""


class Source(Protocol):
    complete: bool
    requests: int

    def check(self) -> None: ...

    def extract(self) -> Iterator[list[Record]]: ...


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """What every source's ``[tenants.X.source]`` table has; each source's own dataclass
    (``OneRosterConfig``, ``CanvasConfig``) adds its keys to these."""

    type: str = ""
    base_url: str
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    page_size: int = 1000
    timeout_s: float = 60.0
    max_pages: int = 100_000  # per run, all collections together (syncd.limits)
    concurrency: int = 4  # requests in flight


def common_keys(checker: _Checker, body: dict[str, Any], key: str, page_size: int) -> dict[str, Any]:
    """The keys every source reads the same way (``page_size``'s default is the source's)."""
    return {
        "base_url": checker.url(body, f"{key}.base_url", required=True),
        "page_size": checker.number(body, f"{key}.page_size", int, page_size, 1, 100_000),
        "timeout_s": checker.number(body, f"{key}.timeout_s", float, 60.0, 1, 3600),
        "max_pages": checker.number(body, f"{key}.max_pages", int, 100_000, 1, 100_000_000),
    }


# How to read and how to open a source of each ``type`` (the ``[tenants.X.source]`` key). A new
# source is a module of its own with a class that meets :class:`Source`, a config module with its
# dataclass and ``parse`` (its keys, its checks), and one entry here. The imports wait until a
# tenant uses the source: a OneRoster tenant never loads Canvas code.
Opener = Callable[["TenantConfig", Path, date], Source]
Parser = Callable[["_Checker", dict[str, Any], str], SourceConfig]


@dataclass(frozen=True)
class SourceType:
    parse: Parser  # the ``[tenants.X.source]`` table (its ``type`` already checked) -> its config
    open: Opener


def _oneroster_config(checker: _Checker, body: dict[str, Any], key: str) -> SourceConfig:
    from syncd.sources import oneroster_config

    return oneroster_config.parse(checker, body, key)


def _canvas_config(checker: _Checker, body: dict[str, Any], key: str) -> SourceConfig:
    from syncd.sources import canvas_config

    return canvas_config.parse(checker, body, key)


def _oneroster(tenant: TenantConfig, state_dir: Path, today: date) -> Source:
    from syncd.sources.oneroster import OneRosterSource

    if tenant.exams is None:
        return OneRosterSource(tenant.source, today)
    import dataclasses
    import zoneinfo

    from syncd.sources import oneroster_exams

    # Exams read lineItems after the roster; on 1.2 the token then needs the gradebook scope too.
    config = dataclasses.replace(tenant.source, scope=oneroster_exams.token_scope(
        tenant.source.scope, tenant.source.version, True))
    zone = zoneinfo.ZoneInfo(tenant.time_zone) if tenant.time_zone else None
    return oneroster_exams.OneRosterWithExams(OneRosterSource(config, today), tenant.exams, zone)


def _canvas(tenant: TenantConfig, state_dir: Path, today: date) -> Source:
    from syncd.sources.canvas import CanvasSource

    return CanvasSource(tenant, state_dir)


SOURCES: dict[str, SourceType] = {
    "oneroster": SourceType(parse=_oneroster_config, open=_oneroster),
    "canvas": SourceType(parse=_canvas_config, open=_canvas),
}


def open_source(tenant: TenantConfig, state_dir: Path, today: date) -> Source:
    """The source of a tenant, by its configured ``type``."""
    kind = SOURCES.get(tenant.source.type)
    if kind is None:  # config.py accepts only registered types; this is a programming error
        raise SourceError(f"no source of type {tenant.source.type!r} (known: {', '.join(SOURCES)})")
    return kind.open(tenant, state_dir, today)


__all__ = ["MAX_TEXT", "SOURCES", "Record", "Source", "SourceConfig", "SourceError", "SourceType", "common_keys",
           "map_record", "open_source", "text_field"]
