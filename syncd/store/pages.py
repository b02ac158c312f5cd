"""Page fingerprints (issue 15): a full OneRoster extract that parses only the pages that changed.

``stage_*`` is kept between full runs as the tenant's mirror of the source, each row tagged with
the page position it was read from (``page``: ``oneroster.page_tag``). ``source_pages`` holds, per
position, the digest of the raw bytes last read there (``digest``), the page's item count and id
fingerprint (the paging rules need them), and how many rows it staged. A page whose bytes hash
equal to the stored digest is neither decoded nor mapped nor staged: its rows are already there,
and it is only marked confirmed (in memory). A changed page replaces the rows of its position.
At the end, rows of positions this run did not confirm are deleted, whether the extract was
complete or not, so ``stage_*`` holds exactly what this run read, as a reset-and-stage run would.

Exactness, and what never leaves a fingerprint that could hide a change:

- a page with any unreadable record or duplicate id stores no digest (it is parsed next time, so
  its errors are reported every run);
- the first read of an id wins, as in a parse: a record of a changed page whose id is staged from a
  position not yet confirmed this run takes that row over ("stolen"); the page it was taken from
  loses its digest in the same transaction, and if this run skips it, the taken ids are reported
  as the duplicates a parse would have found;
- each page's rows and its ``source_pages`` row change in one transaction, so a crash leaves every
  stored digest true of the rows tagged with it; and a mirror whose row counts do not add up to
  its pages' (purged, or written by a delta run) is dropped and the extract parses everything.

Any change of the page rows also drops ``desired_marks`` (syncd.store.staging) in its transaction,
so a run that stops before build_desired leaves a desired state that the next run rebuilds whole;
within a run, the rows that really changed are noted (``Dirty``: a record that only moved to
another page is not a change) and build_desired maps again only what depends on them (nothing,
when every page was skipped).
"""

from __future__ import annotations

import json
from typing import Any

from syncd.entities import Entity
from syncd.model import Record, RecordError
from syncd.sources.pages import COLLECTIONS, KnownPage, PageRecords
from syncd.store.base import Scoped
from syncd.store.staging import _STAGE_ROW, STAGE_COLUMNS, _duplicate

# The stage table and entity of each collection, in COLLECTIONS order (page_tag % 4 picks one).
PAGE_TABLES: tuple[tuple[str, Entity], ...] = (
    ("stage_course_codes", "course"), ("stage_courses", "course"), ("stage_users", "user"),
    ("stage_enrollments", "enrollment"))
assert len(PAGE_TABLES) == len(COLLECTIONS)


Row = tuple[Any, ...]


class Pages(Scoped):
    _confirmed: set[int]
    _stolen: dict[int, list[str]]
    # Rows deleted with their page and not (yet) read again elsewhere: a record that moved to a
    # later page is unchanged when it arrives there (Dirty: only real changes are mapped again).
    _moved: dict[tuple[str, str], Row]

    def begin_pages(self) -> dict[int, KnownPage]:
        """Start a fingerprinted full extract: the digests of the pages the mirror holds."""
        self._confirmed, self._stolen, self._moved = set(), {}, {}
        if self._mirror_adds_up():
            self.track_changes()  # type: ignore[attr-defined]  # Staging
        else:
            self.reset_stage()  # type: ignore[attr-defined]  # Staging
        with self._write():
            for table in ("plan_calls", "stage_exams", "desired_exams"):
                self.conn.execute(f"DELETE FROM {table} WHERE tenant = ?", (self.name,))
        return {page: KnownPage(digest, count, ids) for page, digest, count, ids in self.conn.execute(
            "SELECT page, digest, count, ids FROM source_pages WHERE tenant = ? AND digest IS NOT NULL",
            (self.name,))}

    def _mirror_adds_up(self) -> bool:
        """Every staged row belongs to a stored page, and every stored page's rows are there."""
        stored = dict.fromkeys(range(len(PAGE_TABLES)), 0)
        for page, rows in self.conn.execute("SELECT page, rows FROM source_pages WHERE tenant = ?", (self.name,)):
            stored[page % len(PAGE_TABLES)] += rows
        return all(self.conn.execute(f"SELECT count(*) FROM {table} WHERE tenant = ?", (self.name,)).fetchone()[0]
                   == stored[i] for i, (table, _) in enumerate(PAGE_TABLES))

    def stage_page(self, records: list[Record]) -> list[RecordError]:
        """Stage one page of a fingerprinted extract (a ``PageRecords``)."""
        assert isinstance(records, PageRecords)
        if records.skipped:
            self._confirmed.add(records.page)
            entity = PAGE_TABLES[records.page % len(PAGE_TABLES)][1]
            return [_duplicate(entity, source_id) for source_id in self._stolen.pop(records.page, [])]
        return self._replace_page(records)

    def _replace_page(self, records: PageRecords) -> list[RecordError]:
        table, entity = PAGE_TABLES[records.page % len(PAGE_TABLES)]
        failed = [r for r in records if isinstance(r, RecordError)]
        rows = [(*_STAGE_ROW[type(r)](self.name, r), records.page) for r in records if not isinstance(r, RecordError)]
        tag = records.page
        self._confirmed.add(tag)
        self._stolen.pop(tag, None)
        dirty = self._dirty  # type: ignore[attr-defined]  # Staging
        with self._write():
            self._forget_desired()
            old = {row[1]: row for row in self.conn.execute(
                f"SELECT {STAGE_COLUMNS[table]} FROM {table} WHERE tenant = ? AND page = ?", (self.name, tag))
            } if dirty is not None else {}
            self.conn.execute(f"DELETE FROM {table} WHERE tenant = ? AND page = ?", (self.name, tag))
            self.conn.execute("DELETE FROM source_pages WHERE tenant = ? AND page = ?", (self.name, tag))
            fresh, duplicates, stolen = self._insert_tagged(table, entity, rows) if rows else ([], [], {})
            failed += duplicates
            self.conn.execute(
                "INSERT INTO source_pages (tenant, page, digest, count, ids, rows) VALUES (?, ?, ?, ?, ?, ?)",
                (self.name, tag, None if failed else records.digest, records.size, records.ids, len(fresh)))
        if dirty is not None:
            for row in fresh:
                new = row[:-1]
                before = old.pop(new[1], None) or stolen.get(new[1]) or self._moved.pop((table, new[1]), None)
                dirty.note(table, before, new)
            for source_id, row in old.items():
                self._moved[(table, source_id)] = row
        return failed

    def _insert_tagged(self, table: str, entity: Entity,
                       rows: list[Row]) -> tuple[list[Row], list[RecordError], dict[str, Row]]:
        """Insert a page's rows; the rows inserted, the duplicates and the rows taken over (by id,
        as they were). The common page has no id staged already: on SQLite one INSERT … ON
        CONFLICT DO NOTHING proves it by its row count."""
        if not hasattr(self.conn, "copy_rows"):
            marks = ",".join("?" * len(rows[0]))
            self.conn.execute("SAVEPOINT stage_page")
            if self.conn.executemany(f"INSERT INTO {table} VALUES ({marks}) ON CONFLICT DO NOTHING",
                                     rows).rowcount == len(rows):
                self.conn.execute("RELEASE stage_page")
                return rows, [], {}
            self.conn.execute("ROLLBACK TO stage_page")
            self.conn.execute("RELEASE stage_page")
        fresh, duplicates, stolen = self._sort_out(table, entity, rows)
        if stolen:
            self.conn.executemany(f"DELETE FROM {table} WHERE tenant = ? AND source_id = ?",
                                  [(self.name, source_id) for source_id in stolen])
            losers: dict[int, int] = {}
            for source_id, (_, page) in stolen.items():
                if page is not None:
                    losers[page] = losers.get(page, 0) + 1
                    self._stolen.setdefault(page, []).append(source_id)
            self.conn.executemany("UPDATE source_pages SET digest = NULL, rows = rows - ? "
                                  "WHERE tenant = ? AND page = ?", [(n, self.name, page) for page, n in losers.items()])
        if hasattr(self.conn, "copy_rows"):
            self.conn.copy_rows(table, fresh)
        elif fresh:
            marks = ",".join("?" * len(fresh[0]))
            self.conn.executemany(f"INSERT INTO {table} VALUES ({marks})", fresh)
        return fresh, duplicates, {source_id: row for source_id, (row, _) in stolen.items()}

    def _sort_out(self, table: str, entity: Entity, rows: list[Row]) -> tuple[
            list[Row], list[RecordError], dict[str, tuple[Row, int | None]]]:
        """Which rows are new, which are duplicates of an id read earlier this run (first wins), and
        which take over a row staged from a position this run has not confirmed (a stale row)."""
        ids = [row[1] for row in rows]
        staged = {row[1]: (tuple(row[:-1]), row[-1]) for row in self.conn.execute(
            f"SELECT {STAGE_COLUMNS[table]}, page FROM {table} WHERE tenant = ? "
            f"AND source_id IN ({self.dialect.each_text('?')})", (self.name, json.dumps(ids)))}
        fresh: list[Row] = []
        duplicates: list[RecordError] = []
        stolen: dict[str, tuple[Row, int | None]] = {}
        seen: set[str] = set()
        for row in rows:
            source_id = row[1]
            if source_id in seen or (source_id in staged and staged[source_id][1] in self._confirmed):
                duplicates.append(_duplicate(entity, source_id))
                continue
            seen.add(source_id)
            if source_id in staged:
                stolen[source_id] = staged[source_id]
            fresh.append(row)
        return fresh, duplicates, stolen

    def end_pages(self) -> None:
        """Drop the rows of every position this run did not confirm (and rows of no page), so the
        mirror holds what this run read, complete or not."""
        dirty = self._dirty  # type: ignore[attr-defined]  # Staging
        if dirty is not None:
            for (table, _), row in self._moved.items():
                dirty.note(table, row, None)  # read on no page this run
        self._moved = {}
        stale = [page for (page,) in self.conn.execute("SELECT page FROM source_pages WHERE tenant = ?", (self.name,))
                 if page not in self._confirmed]
        untagged = [table for table, _ in PAGE_TABLES if self.conn.execute(
            f"SELECT 1 FROM {table} WHERE tenant = ? AND page IS NULL LIMIT 1", (self.name,)).fetchone()]
        if not stale and not untagged:
            return
        with self._write():
            self._forget_desired()
            for table in untagged:
                self._drop_rows(table, "page IS NULL", ())
            for page in stale:
                self._drop_rows(PAGE_TABLES[page % len(PAGE_TABLES)][0], "page = ?", (page,))
                self.conn.execute("DELETE FROM source_pages WHERE tenant = ? AND page = ?", (self.name, page))

    def _drop_rows(self, table: str, where: str, params: tuple[Any, ...]) -> None:
        dirty = self._dirty  # type: ignore[attr-defined]  # Staging
        if dirty is not None:
            for row in self.conn.execute(f"SELECT {STAGE_COLUMNS[table]} FROM {table} WHERE tenant = ? AND {where}",
                                         (self.name, *params)):
                dirty.note(table, tuple(row), None)
        self.conn.execute(f"DELETE FROM {table} WHERE tenant = ? AND {where}", (self.name, *params))
