"""Runs and per-record errors: the history `syncd status` and `syncd errors` show."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from syncd import limits
from syncd.errors import RecordFailure
from syncd.store.base import Connected, Scoped, utcnow


class History(Connected):
    """Every tenant's runs and errors, for the commands that read them and for pruning."""

    def runs(self, tenant: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        sql = "SELECT * FROM runs" + (" WHERE tenant = ?" if tenant else "")
        sql += " ORDER BY started_at DESC LIMIT ?"
        params: tuple[Any, ...] = (tenant, limit) if tenant else (limit,)
        return self._rows(sql, params)

    def last_run_id(self, tenant: str | None = None) -> str | None:
        runs = self.runs(tenant, limit=1)
        return runs[0]["run_id"] if runs else None

    def failed_in_a_row(self, tenant: str) -> int:
        """How many of the tenant's latest real runs failed outright, back to the last that did not."""
        statuses = [r[0] for r in self.conn.execute(
            "SELECT status FROM runs WHERE tenant = ? AND dry_run = 0 AND status != 'running' "
            "ORDER BY started_at DESC LIMIT 1000", (tenant,))]
        return next((i for i, status in enumerate(statuses) if status != "failed"), len(statuses))

    def last_started(self, tenant: str, *, ended: bool = False) -> datetime | None:
        """When the tenant's last real (not dry) run started: the daemon's catch-up reference.
        With ``ended``, of the runs that ended: a run still 'running' may be one whose node (or
        process) died, and then it still has to be caught up."""
        row = self.conn.execute("SELECT max(started_at) FROM runs WHERE tenant = ? AND dry_run = 0"
                                + (" AND status != 'running'" if ended else ""), (tenant,)).fetchone()
        return datetime.fromisoformat(row[0].replace("Z", "+00:00")) if row and row[0] else None

    def prune(self, keep_days: int) -> int:
        """Forget runs, their errors and their calls (call_log) older than ``keep_days``; returns the runs removed."""
        if not limits.clock_trusted(self.path.parent):
            return 0  # a clock that jumped ahead must not prune the real history
        cutoff = (datetime.now(UTC) - timedelta(days=keep_days)).isoformat(timespec="milliseconds")
        cutoff = cutoff.replace("+00:00", "Z")
        with self._write():
            old = "SELECT run_id FROM runs WHERE started_at < ? AND status != 'running'"
            self.conn.execute(f"DELETE FROM errors WHERE run_id IN ({old})", (cutoff,))
            self.conn.execute(f"DELETE FROM call_log WHERE run_id IN ({old})", (cutoff,))
            return self.conn.execute(f"DELETE FROM runs WHERE run_id IN ({old})", (cutoff,)).rowcount

    def error_count(self, run_id: str) -> int:
        return self.conn.execute("SELECT count(*) FROM errors WHERE run_id = ?", (run_id,)).fetchone()[0]

    def errors(self, run_ids: Iterable[str]) -> list[dict[str, Any]]:
        ids = list(run_ids)
        return self._rows(
            "SELECT run_id, tenant, entity, source_id, name, stage, http_status, message, attempts, "
            "first_seen, last_seen, next_retry_at, course_id, user_id FROM errors "
            f"WHERE run_id IN ({self.dialect.each_text('?')}) ORDER BY id", (json.dumps(ids),))


class Runs(Scoped):
    """One tenant's run being written: its start, its failed records, its end."""

    def start_run(self, run_id: str, *, dry_run: bool, force: bool) -> None:
        with self._write():
            self.conn.execute(
                "INSERT INTO runs (run_id, tenant, started_at, status, dry_run, force, pid) "
                "VALUES (?, ?, ?, 'running', ?, ?, ?)",
                (run_id, self.name, utcnow(), int(dry_run), int(force), os.getpid()),
            )

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any], message: str | None,
                   complete: bool) -> None:
        with self._write():
            self.conn.execute(
                "UPDATE runs SET finished_at = ?, status = ?, calls = ?, duration_s = ?, summary = ?, "
                "message = ?, extract_complete = ? WHERE run_id = ?",
                (utcnow(), status, summary["calls"], summary["duration_s"], json.dumps(summary),
                 message, int(complete), run_id),
            )

    def record_error(self, run_id: str, failure: RecordFailure) -> int:
        """Store one failed record; ``attempts`` counts consecutive runs in which it failed (or is
        given, for a record in escrow)."""
        now = utcnow()
        with self._write():
            previous = self.conn.execute(
                "SELECT e.attempts, e.first_seen FROM errors e WHERE e.tenant = ? AND e.entity = ? "
                "AND e.source_id = ? AND e.stage = ? AND e.run_id = (SELECT run_id FROM runs "
                "WHERE tenant = ? AND run_id != ? AND dry_run = 0 ORDER BY started_at DESC LIMIT 1)",
                (self.name, failure.entity, failure.source_id, failure.stage, self.name, run_id),
            ).fetchone()
            attempts, first_seen = failure.attempts, failure.first_seen
            if attempts is None:
                attempts, first_seen = (previous[0] + 1, previous[1]) if previous else (1, now)
            first_seen = first_seen or (previous[1] if previous else now)
            self.conn.execute(
                "INSERT INTO errors (run_id, tenant, entity, source_id, stage, http_status, message, "
                "attempts, first_seen, last_seen, course_id, user_id, name, next_retry_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, self.name, failure.entity, failure.source_id, failure.stage, failure.http_status,
                 failure.message, attempts, first_seen, now, failure.course_id, failure.user_id, failure.name,
                 failure.next_retry_at),
            )
        return attempts
