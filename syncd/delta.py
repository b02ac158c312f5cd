"""Full or delta extract (issue 15): which one a run makes, and what it leaves for the next.

A delta run reads only what the source changed since the last extract that reached its end
(``filter=dateLastModified>'…'``, less ``MARGIN`` for clock skew) and upserts it into the mirror
``stage_*`` (syncd.store.delta), so the desired state is built by the same SQL as on a full run.
Records the source marks ``tobedeleted`` / ``inactive`` leave scope and are removed through the
breakers as on a full run; a record the source hard-deleted stays in the mirror until the next
full run (every ``source.full_every``, on ``--full``, and whenever the mirror is not trusted),
so a delta run never infers a removal the source did not state. A server that answers 400 to
the filter gets a full run instead, in the same run.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from syncd.model import Record, RecordError
from syncd.sources import DeltaRejected, Source
from syncd.store import TenantStore, utcnow

log = structlog.get_logger("syncd.delta")

MARGIN = timedelta(minutes=10)

Extract = Callable[[Any, TenantStore, Source, Callable[[list[Record]], list[RecordError]]], None]


def read(state: Any, store: TenantStore, source: Source, extract: Extract) -> None:
    """Extract into ``stage_*``: a delta when allowed, else (or when refused) a full one."""
    started = utcnow()
    since = delta_since(state, store, source)
    if since is not None:
        store.begin_delta()
        source.read_since(since)  # type: ignore[attr-defined]  # OneRosterSource (checked in delta_since)
        try:
            extract(state, store, source, store.stage_changes)
        except DeltaRejected as exc:
            log.warning("sync.delta_unsupported", error=str(exc), consequence="a full extract instead")
            source.read_since(None)  # type: ignore[attr-defined]
            since = None
        else:
            state.delta = True
            if _read_to_end(state):
                store.mark_extract(started, full=False)
            log.info("sync.delta_read", since=since)
            return
    allowed = _delta_allowed(state, source)  # with delta off, the marks are never touched
    if allowed:
        store.forget_marks()
    if _pages_allowed(state, source):
        # A full extract that parses only the pages whose bytes changed (syncd.store.pages).
        source.remember_pages(store.begin_pages())  # type: ignore[attr-defined]
        try:
            extract(state, store, source, store.stage_page)
        finally:
            source.remember_pages(None)  # type: ignore[attr-defined]
            store.end_pages()
    else:
        store.reset_stage()
        extract(state, store, source, store.stage)
    if allowed and _read_to_end(state):
        store.mark_extract(started, full=True)


def delta_since(state: Any, store: TenantStore, source: Source) -> str | None:
    """The time a delta run reads changes after, or None for a full run."""
    if state.options.full or not _delta_allowed(state, source):
        return None
    marks = store.source_marks()
    if marks is None:
        return None
    now = datetime.now(UTC)
    if now - _parse(marks.full_at) >= timedelta(seconds=state.tenant.source.full_every_s):
        return None
    return _format(_parse(marks.since) - MARGIN)


def _delta_allowed(state: Any, source: Source) -> bool:
    config = state.tenant.source
    # Exams are read whole each run (their gradebook has no delta read here): a tenant with exams
    # makes full runs, so stage_exams is never a stale mirror.
    return (config.type == "oneroster" and config.delta != "off" and hasattr(source, "read_since")
            and state.tenant.exams is None)


def _pages_allowed(state: Any, source: Source) -> bool:
    """Page fingerprints: a plain OneRoster source (its exams, read whole, are staged otherwise)."""
    return hasattr(source, "remember_pages") and state.tenant.exams is None


def _read_to_end(state: Any) -> bool:
    """Every page read and every record readable: the mirror holds all the source said."""
    return state.complete and not state.failure and not state.unreadable


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _format(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
