"""Delta runs (issue 15): ``stage_*`` as the tenant's mirror of the source, and its marks.

A full run replaces the mirror (``reset_stage`` then ``stage``); a delta run keeps it and upserts
what changed (``begin_delta`` then ``stage_changes``), so the desired state is built by the same
SQL either way. ``source_marks`` says whether the mirror may be trusted: it is written only after
a full extract that was complete with every record readable, and moved on by each delta extract
that read its changes to the end; a failed full run leaves none, so the next run is full again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from syncd.model import Course, CourseCode, Enrollment, Record, RecordError, User
from syncd.store.base import Scoped
from syncd.store.staging import _STAGE_ROW, STAGE_COLUMNS, STAGE_TABLES


@dataclass(frozen=True)
class SourceMarks:
    since: str  # when the last extract that reached its end started (UTC ISO); deltas read after it
    full_at: str  # when the last complete full extract started


class Delta(Scoped):
    def source_marks(self) -> SourceMarks | None:
        row = self.conn.execute("SELECT since, full_at FROM source_marks WHERE tenant = ?", (self.name,)).fetchone()
        return SourceMarks(*row) if row else None

    def forget_marks(self) -> None:
        """The mirror is about to be replaced: until that full extract ends well, no delta."""
        with self._write():
            self.conn.execute("DELETE FROM source_marks WHERE tenant = ?", (self.name,))

    def mark_extract(self, started: str, full: bool) -> None:
        with self._write():
            if full:
                self.conn.execute("INSERT INTO source_marks (tenant, since, full_at) VALUES (?, ?, ?) ON CONFLICT "
                                  "(tenant) DO UPDATE SET since = excluded.since, full_at = excluded.full_at",
                                  (self.name, started, started))
            else:
                self.conn.execute("UPDATE source_marks SET since = ? WHERE tenant = ?", (started, self.name))

    def begin_delta(self) -> None:
        """Forget the last run's plan; keep the mirror the delta updates, and the desired state,
        which build_desired keeps only if the delta changed no staged row (desired_marks)."""
        with self._write():
            self.conn.execute("DELETE FROM plan_calls WHERE tenant = ?", (self.name,))
        self.track_changes()  # type: ignore[attr-defined]  # Staging

    def stage_changes(self, records: list[Record]) -> list[RecordError]:
        """Upsert one page of changed records into the mirror (the latest read of an id wins).
        Returns the records the source could not read."""
        failed: list[RecordError] = []
        rows: dict[type, list[tuple[Any, ...]]] = {Course: [], CourseCode: [], User: [], Enrollment: []}
        for record in records:
            to_row = _STAGE_ROW.get(type(record))
            if to_row is None:
                assert isinstance(record, RecordError)
                failed.append(record)
            else:
                rows[type(record)].append((*to_row(self.name, record), None))  # page: none
        changed = {kind: self._changed(STAGE_TABLES[kind][0], batch) for kind, batch in rows.items() if batch}
        if not any(changed.values()):
            return failed  # records the mirror already holds as read (a delta re-reads its margin)
        with self._write():
            # The mirror changes: the desired state is updated, and no page fingerprint vouches
            # for the rows any more (syncd.store.pages: untagged rows drop the mirror).
            self._forget_desired()
            self.conn.execute("DELETE FROM source_pages WHERE tenant = ?", (self.name,))
            for kind, batch in changed.items():
                if batch:
                    self._upsert(STAGE_TABLES[kind][0], batch)
        return failed

    def _changed(self, table: str, batch: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The rows of a page that differ from the mirror's (the last read of an id wins), each
        noted as a change for build_desired."""
        latest = {row[1]: row for row in batch}
        held = {row[1]: tuple(row) for row in self.conn.execute(
            f"SELECT {STAGE_COLUMNS[table]} FROM {table} WHERE tenant = ? "
            f"AND source_id IN ({self.dialect.each_text('?')})", (self.name, json.dumps(list(latest))))}
        dirty = self._dirty  # type: ignore[attr-defined]  # Staging
        changed = []
        for source_id, row in latest.items():
            before = held.get(source_id)
            if before != row[:-1]:
                changed.append(row)
                if dirty is not None:
                    dirty.note(table, before, row[:-1])
        return changed

    def _upsert(self, table: str, latest: list[tuple[Any, ...]]) -> None:
        """Replace each record's mirrored row (DELETE then INSERT: the same SQL on both stores,
        without naming every column)."""
        self.conn.executemany(f"DELETE FROM {table} WHERE tenant = ? AND source_id = ?",
                              [(row[0], row[1]) for row in latest])
        marks = ",".join("?" * len(latest[0]))
        self.conn.executemany(f"INSERT INTO {table} VALUES ({marks})", latest)
