"""The SQLite state store: staging, desired state, the diff, acknowledged state, runs, errors.

One file, ``state_dir/syncd.db``, owner-only, WAL. Diffs are SQL over staged rows, so memory
does not grow with the roster. Acknowledged state moves only in :meth:`Store.acknowledge`,
in the same transaction that stores the ``sid`` the target returned.

Tables per entity (``courses``, ``users``, ``enrollments``):

- ``stage_*``: what the source said this run (replaced each run);
- ``desired_*``: the provision bodies in scope this run, with their hash and ``change``
  (``create`` / ``update`` / ``none``) against what the target acknowledged;
- ``acked_*``: what the target acknowledged: ``sid``, hash and body; ``removed_at`` marks a
  tombstone (the object left scope; nothing is deleted in the target).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from syncd.model import (
    ENTITIES,
    PLURAL,
    Course,
    CourseCode,
    Enrollment,
    Entity,
    Record,
    RecordError,
    User,
    content_hash,
)

DB_NAME = "syncd.db"
# The key columns of each entity's desired/acked rows (besides tenant).
KEYS: dict[Entity, tuple[str, ...]] = {
    "course": ("source_id",),
    "user": ("source_id",),
    "enrollment": ("course_id", "user_id"),
}

migrations = Migrations("syncd")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE runs (
            run_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, started_at TEXT NOT NULL,
            finished_at TEXT, status TEXT NOT NULL, dry_run INTEGER NOT NULL DEFAULT 0,
            force INTEGER NOT NULL DEFAULT 0, extract_complete INTEGER, calls INTEGER,
            duration_s REAL, summary TEXT, message TEXT, pid INTEGER
        );
        CREATE INDEX runs_by_tenant ON runs (tenant, started_at);
        CREATE TABLE errors (
            id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, tenant TEXT NOT NULL,
            entity TEXT NOT NULL, source_id TEXT NOT NULL, stage TEXT NOT NULL,
            http_status INTEGER, message TEXT NOT NULL, attempts INTEGER NOT NULL,
            first_seen TEXT NOT NULL, last_seen TEXT NOT NULL, course_id TEXT, user_id TEXT
        );
        CREATE INDEX errors_by_run ON errors (run_id);
        CREATE INDEX errors_by_record ON errors (tenant, entity, source_id, stage);

        CREATE TABLE stage_courses (
            tenant TEXT, source_id TEXT, title TEXT, code TEXT, external_id TEXT, lms_id TEXT,
            parent_id TEXT, active INTEGER, PRIMARY KEY (tenant, source_id)) WITHOUT ROWID;
        CREATE TABLE stage_course_codes (
            tenant TEXT, source_id TEXT, code TEXT, PRIMARY KEY (tenant, source_id)) WITHOUT ROWID;
        CREATE TABLE stage_users (
            tenant TEXT, source_id TEXT, first_name TEXT, last_name TEXT, email TEXT,
            external_id TEXT, lms_id TEXT, active INTEGER, PRIMARY KEY (tenant, source_id)) WITHOUT ROWID;
        CREATE TABLE stage_enrollments (
            tenant TEXT, source_id TEXT, course_id TEXT, user_id TEXT, role TEXT, active INTEGER,
            PRIMARY KEY (tenant, source_id)) WITHOUT ROWID;

        CREATE TABLE desired_courses (
            tenant TEXT, source_id TEXT, body TEXT, hash TEXT, change TEXT,
            PRIMARY KEY (tenant, source_id)) WITHOUT ROWID;
        CREATE TABLE desired_users (
            tenant TEXT, source_id TEXT, body TEXT, hash TEXT, change TEXT,
            PRIMARY KEY (tenant, source_id)) WITHOUT ROWID;
        CREATE TABLE desired_enrollments (
            tenant TEXT, course_id TEXT, user_id TEXT, source_id TEXT, body TEXT, hash TEXT,
            change TEXT, PRIMARY KEY (tenant, course_id, user_id)) WITHOUT ROWID;
        CREATE INDEX desired_enrollments_by_user ON desired_enrollments (tenant, user_id);

        CREATE TABLE acked_courses (
            tenant TEXT, source_id TEXT, sid TEXT, hash TEXT, body TEXT, acked_at TEXT,
            removed_at TEXT, PRIMARY KEY (tenant, source_id)) WITHOUT ROWID;
        CREATE TABLE acked_users (
            tenant TEXT, source_id TEXT, sid TEXT, hash TEXT, body TEXT, acked_at TEXT,
            removed_at TEXT, PRIMARY KEY (tenant, source_id)) WITHOUT ROWID;
        CREATE TABLE acked_enrollments (
            tenant TEXT, course_id TEXT, user_id TEXT, sid TEXT, hash TEXT, body TEXT,
            acked_at TEXT, removed_at TEXT, PRIMARY KEY (tenant, course_id, user_id)) WITHOUT ROWID;

        CREATE TABLE plan_calls (
            tenant TEXT, seq INTEGER, course_id TEXT NOT NULL, user_id TEXT,
            PRIMARY KEY (tenant, seq)) WITHOUT ROWID;
        """
    )


@migrations()
def m002_error_names(db: sqlite_utils.Database) -> None:
    """What an admin recognises a record by: a course title, a person's name."""
    db.execute("ALTER TABLE errors ADD COLUMN name TEXT")
    db.execute("CREATE INDEX runs_by_finish ON runs (finished_at)")


@migrations()
def m003_safety(db: sqlite_utils.Database) -> None:
    """Held plans and their approvals, the per-record retry escrow, disabled users."""
    db.executescript(
        """
        CREATE TABLE pending_removals (
            tenant TEXT, entity TEXT, key TEXT, PRIMARY KEY (tenant, entity, key)) WITHOUT ROWID;
        CREATE TABLE held (
            tenant TEXT, run_id TEXT, entity TEXT, kind TEXT, key TEXT,
            PRIMARY KEY (run_id, entity, kind, key)) WITHOUT ROWID;
        CREATE TABLE approvals (
            run_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, approved_at TEXT NOT NULL, spent_by TEXT);
        CREATE TABLE escrow (
            tenant TEXT, entity TEXT, key TEXT, attempts INTEGER NOT NULL, next_retry_at TEXT NOT NULL,
            http_status INTEGER, message TEXT, first_seen TEXT NOT NULL, run_id TEXT,
            PRIMARY KEY (tenant, entity, key)) WITHOUT ROWID;
        ALTER TABLE acked_users ADD COLUMN disabled_at TEXT;
        ALTER TABLE errors ADD COLUMN next_retry_at TEXT;
        """
    )


@migrations()
def m004_plan_indexes(db: sqlite_utils.Database) -> None:
    """The planner asks "is this user / course already covered by a call?" once per changed
    record: without these indexes each question scans the plan, and planning grows as n²."""
    db.executescript(
        """
        CREATE INDEX plan_calls_by_user ON plan_calls (tenant, user_id);
        CREATE INDEX plan_calls_by_course ON plan_calls (tenant, course_id);
        """
    )


@migrations()
def m005_explain(db: sqlite_utils.Database) -> None:
    """What `syncd explain` needs: the raw fields that decided scope (the source's status, an
    enrollment's endDate), and the last call for each (course, user) pair with the target's answer
    per object carried (one row per call, not per object: one more write per call, not three;
    replaced by the next call of the pair; pruned with its run)."""
    db.executescript(
        """
        ALTER TABLE stage_courses ADD COLUMN status TEXT;
        ALTER TABLE stage_users ADD COLUMN status TEXT;
        ALTER TABLE stage_enrollments ADD COLUMN status TEXT;
        ALTER TABLE stage_enrollments ADD COLUMN end_date TEXT;
        CREATE TABLE call_log (
            tenant TEXT, course_id TEXT, user_id TEXT, run_id TEXT NOT NULL, seq INTEGER, at TEXT NOT NULL,
            outcome TEXT NOT NULL, http_status INTEGER, message TEXT, answers TEXT NOT NULL,
            PRIMARY KEY (tenant, course_id, user_id)) WITHOUT ROWID;
        CREATE INDEX call_log_by_run ON call_log (run_id);
        """
    )


# Retry delays of a record the target keeps rejecting, by consecutive rejections: then daily.
ESCROW_DELAYS_H = (1, 6, 24)


def key_sql(alias: str, entity: Entity) -> str:
    """A record's key as a JSON array, the form held, escrow and pending_removals store."""
    return f"json_array({', '.join(f'{alias}.{k}' for k in KEYS[entity])})"


@dataclass(frozen=True)
class Call:
    """One planned provision call: one course, at most one user with their enrollment."""

    seq: int
    course_id: str
    course_body: dict[str, Any]
    course_sid: str | None
    course_hash: str
    user_id: str | None = None
    user_body: dict[str, Any] | None = None
    user_sid: str | None = None
    user_hash: str | None = None
    enrollment_source_id: str | None = None
    enrollment_body: dict[str, Any] | None = None
    enrollment_sid: str | None = None
    enrollment_hash: str | None = None


@dataclass(frozen=True)
class CallLog:
    """One returned (or failed) call, as `syncd explain` shows it: per object carried, whether the
    target acknowledged it (its ``sid`` and answer) or what went wrong (``message``)."""

    run_id: str
    call: Call
    outcome: str  # acknowledged | rejected | failed
    http_status: int | None = None
    message: str | None = None
    sids: dict[Entity, str] = field(default_factory=dict)
    answers: dict[Entity, str] = field(default_factory=dict)
    outcomes: dict[Entity, str] = field(default_factory=dict)  # per object, where it differs from outcome


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    def __init__(self, path: Path):
        self.path = path
        conn = sqlite3.connect(path, timeout=60, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.conn = conn
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash (kill -9); only a power loss can
        # roll back the last transactions, which are then re-pushed as idempotent upserts.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA cache_size=-16000")  # 16 MB: bounded whatever the roster size
        conn.create_function("digest", 1, content_hash, deterministic=True)
        migrations.apply(self.db)

    @classmethod
    def open(cls, state_dir: Path) -> Store:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = state_dir / DB_NAME
        if not path.exists():
            # Create it owner-only before SQLite does, so no moment exists where others can read it.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        return cls(path)

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction. IMMEDIATE takes the write lock up front, so that two processes
        (two tenants, or the daemon and the CLI) wait on each other instead of failing with
        SQLITE_BUSY when a read inside the transaction turns into a write."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # --- runs ----------------------------------------------------------------------------

    def start_run(self, run_id: str, tenant: str, *, dry_run: bool, force: bool) -> None:
        with self._write():
            self.conn.execute(
                "INSERT INTO runs (run_id, tenant, started_at, status, dry_run, force, pid) "
                "VALUES (?, ?, ?, 'running', ?, ?, ?)",
                (run_id, tenant, utcnow(), int(dry_run), int(force), os.getpid()),
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

    def runs(self, tenant: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        sql = "SELECT * FROM runs" + (" WHERE tenant = ?" if tenant else "")
        sql += " ORDER BY started_at DESC LIMIT ?"
        params: tuple[Any, ...] = (tenant, limit) if tenant else (limit,)
        return [dict(row) for row in self._rows(sql, params)]

    def failed_in_a_row(self, tenant: str) -> int:
        """How many of the tenant's latest real runs failed outright, back to the last that did not."""
        statuses = [r[0] for r in self.conn.execute(
            "SELECT status FROM runs WHERE tenant = ? AND dry_run = 0 AND status != 'running' "
            "ORDER BY started_at DESC LIMIT 1000", (tenant,))]
        return next((i for i, status in enumerate(statuses) if status != "failed"), len(statuses))

    def last_started(self, tenant: str) -> datetime | None:
        """When the tenant's last real (not dry) run started: the daemon's catch-up reference."""
        row = self.conn.execute("SELECT max(started_at) FROM runs WHERE tenant = ? AND dry_run = 0",
                                (tenant,)).fetchone()
        return datetime.fromisoformat(row[0].replace("Z", "+00:00")) if row and row[0] else None

    def prune(self, keep_days: int) -> int:
        """Forget runs and their errors older than ``keep_days``; returns the runs removed."""
        cutoff = (datetime.now(UTC) - timedelta(days=keep_days)).isoformat(timespec="milliseconds")
        cutoff = cutoff.replace("+00:00", "Z")
        with self._write():
            old = "SELECT run_id FROM runs WHERE started_at < ? AND status != 'running'"
            self.conn.execute(f"DELETE FROM errors WHERE run_id IN ({old})", (cutoff,))
            self.conn.execute(f"DELETE FROM call_log WHERE run_id IN ({old})", (cutoff,))
            return self.conn.execute(f"DELETE FROM runs WHERE run_id IN ({old})", (cutoff,)).rowcount

    def last_run_id(self, tenant: str | None = None) -> str | None:
        runs = self.runs(tenant, limit=1)
        return runs[0]["run_id"] if runs else None

    def tenants_with_runs(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT tenant FROM runs ORDER BY tenant")]

    def error_count(self, run_id: str) -> int:
        return self.conn.execute("SELECT count(*) FROM errors WHERE run_id = ?", (run_id,)).fetchone()[0]

    # --- errors --------------------------------------------------------------------------

    def record_error(self, run_id: str, tenant: str, entity: str, source_id: str, stage: str,
                     message: str, http_status: int | None = None, course_id: str | None = None,
                     user_id: str | None = None, name: str | None = None, attempts: int | None = None,
                     first_seen: str | None = None, next_retry_at: str | None = None) -> int:
        """Store one failed record; ``attempts`` counts consecutive runs in which it failed (or is
        given, for a record in escrow)."""
        now = utcnow()
        with self._write():
            previous = self.conn.execute(
                "SELECT e.attempts, e.first_seen FROM errors e WHERE e.tenant = ? AND e.entity = ? "
                "AND e.source_id = ? AND e.stage = ? AND e.run_id = (SELECT run_id FROM runs "
                "WHERE tenant = ? AND run_id != ? AND dry_run = 0 ORDER BY started_at DESC LIMIT 1)",
                (tenant, entity, source_id, stage, tenant, run_id),
            ).fetchone()
            if attempts is None:
                attempts, first_seen = (previous[0] + 1, previous[1]) if previous else (1, now)
            first_seen = first_seen or (previous[1] if previous else now)
            self.conn.execute(
                "INSERT INTO errors (run_id, tenant, entity, source_id, stage, http_status, message, "
                "attempts, first_seen, last_seen, course_id, user_id, name, next_retry_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, tenant, entity, source_id, stage, http_status, message, attempts, first_seen,
                 now, course_id, user_id, name, next_retry_at),
            )
        return attempts

    def errors(self, run_ids: Iterable[str]) -> list[dict[str, Any]]:
        ids = list(run_ids)
        return [dict(row) for row in self._rows(
            "SELECT run_id, tenant, entity, source_id, name, stage, http_status, message, attempts, "
            "first_seen, last_seen, next_retry_at, course_id, user_id FROM errors "
            "WHERE run_id IN (SELECT value FROM json_each(?)) ORDER BY id", (json.dumps(ids),))]

    # --- staging -------------------------------------------------------------------------

    def reset_stage(self, tenant: str) -> None:
        with self._write():
            for table in ("stage_courses", "stage_course_codes", "stage_users", "stage_enrollments",
                          "desired_courses", "desired_users", "desired_enrollments", "plan_calls"):
                self.conn.execute(f"DELETE FROM {table} WHERE tenant = ?", (tenant,))

    def stage(self, tenant: str, records: list[Record]) -> list[RecordError]:
        """Stage one page in one transaction. Returns the records that could not be staged:
        those the source could not read, and duplicates of an id already read (first one wins)."""
        failed: list[RecordError] = [r for r in records if isinstance(r, RecordError)]
        rows: dict[type, list[tuple[Any, ...]]] = {Course: [], CourseCode: [], User: [], Enrollment: []}
        for record in records:
            if not isinstance(record, RecordError):
                rows[type(record)].append(_stage_row(tenant, record))
        with self._write():
            for kind, batch in rows.items():
                if batch:
                    failed += self._insert_stage(tenant, kind, batch)
        return failed

    def _insert_stage(self, tenant: str, kind: type, batch: list[tuple[Any, ...]]) -> list[RecordError]:
        table, entity = STAGE_TABLES[kind]
        ids = [row[1] for row in batch]
        already = {r[0] for r in self.conn.execute(
            f"SELECT source_id FROM {table} WHERE tenant = ? "
            "AND source_id IN (SELECT value FROM json_each(?))", (tenant, json.dumps(ids)))}
        duplicates: list[RecordError] = []
        fresh: list[tuple[Any, ...]] = []
        for row in batch:
            if row[1] in already:
                duplicates.append(RecordError(entity, row[1], "duplicate id: an earlier record with "
                                                              "this id was read first and wins"))
            else:
                already.add(row[1])
                fresh.append(row)
        marks = ",".join("?" * len(batch[0]))
        self.conn.executemany(f"INSERT INTO {table} VALUES ({marks})", fresh)
        return duplicates

    # --- desired state and the diff ------------------------------------------------------

    def build_desired(self, tenant: str, roles: dict[str, str], time_zone: str | None) -> None:
        """Map staged rows to provision bodies in scope (SPEC §4), all in SQL."""
        role_rows = json.dumps([[source, target] for source, target in roles.items()])
        with self._write():
            self.conn.execute(DESIRED_COURSES, (tenant,))
            self.conn.execute(DESIRED_ENROLLMENTS, (role_rows, tenant))
            self.conn.execute(DESIRED_USERS, (time_zone, tenant))

    def dangling_enrollments(self, tenant: str) -> Iterator[tuple[str, str, str, str]]:
        """Active enrollments whose class or user is missing from a complete extract."""
        yield from self.conn.execute(
            "SELECT e.source_id, e.course_id, e.user_id, "
            "CASE WHEN c.source_id IS NULL THEN 'class' ELSE 'user' END "
            "FROM stage_enrollments e "
            "LEFT JOIN stage_courses c ON c.tenant = e.tenant AND c.source_id = e.course_id "
            "LEFT JOIN stage_users u ON u.tenant = e.tenant AND u.source_id = e.user_id "
            "WHERE e.tenant = ? AND e.active = 1 AND (c.source_id IS NULL OR u.source_id IS NULL)",
            (tenant,),
        )

    def classify(self, tenant: str, force: bool) -> None:
        """Mark each desired row create / update / none against the acknowledged state.
        With ``force`` every acknowledged row is an update: the whole roster is pushed again."""
        same = "'update'" if force else "'none'"
        with self._write():
            for entity in ENTITIES:
                plural = PLURAL[entity]
                self.conn.execute(
                    f"UPDATE desired_{plural} AS d SET change = coalesce((SELECT CASE "
                    f"WHEN a.hash = d.hash THEN {same} ELSE 'update' END FROM acked_{plural} a "
                    f"WHERE {_join('d', 'a', entity)}), 'create') WHERE d.tenant = ?",
                    (tenant,),
                )

    def change_counts(self, tenant: str) -> dict[Entity, dict[str, int]]:
        counts: dict[Entity, dict[str, int]] = {}
        for entity in ENTITIES:
            rows = self.conn.execute(
                f"SELECT change, count(*) FROM desired_{PLURAL[entity]} WHERE tenant = ? "
                "GROUP BY change", (tenant,))
            counts[entity] = dict(rows.fetchall())
        return counts

    def outcome_counts(self, tenant: str, since: str) -> dict[Entity, dict[str, int]]:
        """After the push: planned changes split into done (acknowledged since the run started,
        with the body planned) and not done."""
        counts: dict[Entity, dict[str, int]] = {}
        for entity in ENTITIES:
            plural = PLURAL[entity]
            rows = self.conn.execute(
                f"SELECT d.change, (a.hash IS d.hash AND a.acked_at >= ?) AS done, count(*) "
                f"FROM desired_{plural} d LEFT JOIN acked_{plural} a ON {_join('d', 'a', entity)} "
                "WHERE d.tenant = ? GROUP BY 1, 2", (since, tenant))
            result = {"created": 0, "updated": 0, "unchanged": 0, "failed": 0, "held": 0}
            for change, done, n in rows:
                if change == "none":
                    result["unchanged"] += n
                elif change == "held":
                    result["held"] += n
                elif done:
                    result["created" if change == "create" else "updated"] += n
                else:
                    result["failed"] += n
            counts[entity] = result
        return counts

    # --- removals (tombstones) -----------------------------------------------------------

    def removals(self, tenant: str, *, apply: bool) -> dict[Entity, int]:
        """Acknowledged objects that left scope. With ``apply``, tombstone them (one transaction)."""
        counts: dict[Entity, int] = {}
        now = utcnow()
        with self._write():
            for entity in ENTITIES:
                plural = PLURAL[entity]
                gone = (f"FROM acked_{plural} a WHERE a.tenant = ? AND a.removed_at IS NULL "
                        f"AND NOT EXISTS (SELECT 1 FROM desired_{plural} d WHERE {_join('d', 'a', entity)})")
                counts[entity] = self.conn.execute(f"SELECT count(*) {gone}", (tenant,)).fetchone()[0]
                if apply and counts[entity]:
                    keys = ", ".join(f"a.{k}" for k in KEYS[entity])
                    self.conn.execute(
                        f"UPDATE acked_{plural} SET removed_at = ? WHERE tenant = ? AND "
                        f"({', '.join(KEYS[entity])}) IN (SELECT {keys} {gone})",
                        (now, tenant, tenant),
                    )
        return counts

    def restore_returning(self, tenant: str) -> None:
        """Clear tombstones of objects that are back in scope (same source id: restore, never
        duplicate). Their sid is kept, so the next push updates the same target object."""
        with self._write():
            for entity in ENTITIES:
                plural = PLURAL[entity]
                self.conn.execute(
                    f"UPDATE acked_{plural} AS a SET removed_at = NULL WHERE a.tenant = ? "
                    f"AND a.removed_at IS NOT NULL AND EXISTS (SELECT 1 FROM desired_{plural} d "
                    f"WHERE {_join('d', 'a', entity)})", (tenant,))

    def staged_counts(self, tenant: str) -> dict[Entity, int]:
        tables = {"course": "stage_courses", "user": "stage_users", "enrollment": "stage_enrollments"}
        return {e: self.conn.execute(f"SELECT count(*) FROM {t} WHERE tenant = ?", (tenant,)).fetchone()[0]
                for e, t in tables.items()}

    def pending_removals(self, tenant: str) -> list[tuple[Entity, tuple[str, ...]]]:
        return [(e, tuple(json.loads(k))) for e, k in self.conn.execute(
            "SELECT entity, key FROM pending_removals WHERE tenant = ? ORDER BY entity, key", (tenant,))]

    def held_keys(self, run_id: str) -> list[tuple[Entity, str, tuple[str, ...]]]:
        return [(e, kind, tuple(json.loads(k))) for e, kind, k in self.conn.execute(
            "SELECT entity, kind, key FROM held WHERE run_id = ? ORDER BY entity, kind, key", (run_id,))]

    def pending_removal_counts(self, tenant: str) -> dict[Entity, int]:
        rows = dict(self.conn.execute("SELECT entity, count(*) FROM pending_removals WHERE tenant = ? GROUP BY 1",
                                      (tenant,)).fetchall())
        return {e: rows.get(e, 0) for e in ENTITIES}

    def describe_object(self, tenant: str, entity: str, source_id: str) -> str:
        """What the source said of one object this run, for `--only`."""
        table = {"course": "courses", "user": "users"}[entity]
        staged = self.conn.execute(f"SELECT active FROM stage_{table} WHERE tenant = ? AND source_id = ?",
                                   (tenant, source_id)).fetchone()
        if staged is None:
            return f"the source has no {entity} {source_id}"
        desired = self.conn.execute(f"SELECT change FROM desired_{table} WHERE tenant = ? AND source_id = ?",
                                    (tenant, source_id)).fetchone()
        if desired is None:
            why = "inactive" if not staged[0] else "without an in-scope enrollment"
            return f"{entity} {source_id} is in the source but out of scope ({why})"
        column = "user_id" if entity == "user" else "course_id"
        enrollments = self.conn.execute(f"SELECT count(*) FROM desired_enrollments WHERE tenant = ? AND {column} = ?",
                                        (tenant, source_id)).fetchone()[0]
        state = {"none": "unchanged", "create": "new", "update": "changed"}.get(desired[0], desired[0])
        return f"{entity} {source_id} is in scope ({state}) with {enrollments} in-scope enrollment(s)"

    def keep_calls_of(self, tenant: str, entity: str, source_id: str) -> int:
        """Drop every planned call that does not carry this object; returns the calls kept."""
        column = "user_id" if entity == "user" else "course_id"
        with self._write():
            self.conn.execute(f"DELETE FROM plan_calls WHERE tenant = ? AND {column} IS NOT ?", (tenant, source_id))
        return self.call_count(tenant)

    # --- safety: removals, the breaker, approvals ---------------------------------------

    def collect_removals(self, tenant: str) -> dict[Entity, int]:
        """Acknowledged objects no longer in scope, into pending_removals; their count per entity."""
        counts: dict[Entity, int] = {}
        with self._write():
            self.conn.execute("DELETE FROM pending_removals WHERE tenant = ?", (tenant,))
            for entity in ENTITIES:
                plural = PLURAL[entity]
                counts[entity] = self.conn.execute(
                    f"INSERT INTO pending_removals (tenant, entity, key) SELECT a.tenant, ?, {key_sql('a', entity)} "
                    f"FROM acked_{plural} a WHERE a.tenant = ? AND a.removed_at IS NULL AND NOT EXISTS "
                    f"(SELECT 1 FROM desired_{plural} d WHERE {_join('d', 'a', entity)})",
                    (entity, tenant)).rowcount
        return counts

    def open_approval(self, tenant: str) -> str | None:
        """The held run an admin approved and no run has acted on yet."""
        row = self.conn.execute("SELECT run_id FROM approvals WHERE tenant = ? AND spent_by IS NULL "
                                "ORDER BY approved_at DESC LIMIT 1", (tenant,)).fetchone()
        return row[0] if row else None

    def approve(self, tenant: str, run_id: str | None) -> tuple[str, dict[str, dict[str, int]]]:
        """Approve a held run (the tenant's last held run by default); returns it and what it held."""
        with self._write():
            if run_id is None:
                row = self.conn.execute("SELECT run_id FROM runs WHERE tenant = ? AND status = 'held' "
                                        "ORDER BY started_at DESC LIMIT 1", (tenant,)).fetchone()
                if row is None:
                    raise LookupError(f"tenant {tenant} has no held run to approve")
                run_id = row[0]
            row = self.conn.execute("SELECT tenant, status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None or row[0] != tenant:
                raise LookupError(f"no run {run_id} for tenant {tenant}")
            if row[1] != "held":
                raise LookupError(f"run {run_id} is {row[1]}, not held: there is nothing to approve")
            self.conn.execute("INSERT INTO approvals (run_id, tenant, approved_at) VALUES (?, ?, ?) "
                              "ON CONFLICT (run_id) DO UPDATE SET approved_at = excluded.approved_at, spent_by = NULL",
                              (run_id, tenant, utcnow()))
        return run_id, self.held_counts(run_id)

    def spend_approval(self, approved_run: str, by_run: str) -> None:
        with self._write():
            self.conn.execute("UPDATE approvals SET spent_by = ? WHERE run_id = ?", (by_run, approved_run))

    def held_counts(self, run_id: str) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for entity, kind, n in self.conn.execute(
                "SELECT entity, kind, count(*) FROM held WHERE run_id = ? GROUP BY 1, 2", (run_id,)):
            counts.setdefault(entity, {})[kind] = n
        return counts

    def unapproved_removals(self, tenant: str, entity: Entity, approved_run: str | None) -> int:
        return self.conn.execute(
            "SELECT count(*) FROM pending_removals p WHERE p.tenant = ? AND p.entity = ? AND NOT EXISTS "
            "(SELECT 1 FROM held h WHERE h.run_id = ? AND h.entity = p.entity AND h.kind = 'remove' "
            "AND h.key = p.key)", (tenant, entity, approved_run)).fetchone()[0]

    def hold_removals(self, tenant: str, run_id: str, entity: Entity, approved_run: str | None) -> int:
        """Hold this entity's pending removals that no approval covers; they stay acknowledged."""
        with self._write():
            unapproved = ("FROM pending_removals p WHERE p.tenant = ? AND p.entity = ? AND NOT EXISTS "
                          "(SELECT 1 FROM held h WHERE h.run_id = ? AND h.entity = p.entity AND h.kind = 'remove' "
                          "AND h.key = p.key)")
            held = self.conn.execute(
                f"INSERT OR IGNORE INTO held (tenant, run_id, entity, kind, key) SELECT p.tenant, ?, p.entity, "
                f"'remove', p.key {unapproved}", (run_id, tenant, entity, approved_run)).rowcount
            self.conn.execute(
                "DELETE FROM pending_removals WHERE tenant = ? AND entity = ? AND key IN "
                "(SELECT key FROM held WHERE run_id = ? AND entity = ? AND kind = 'remove')",
                (tenant, entity, run_id, entity))
        return held

    def hold_all_removals(self, tenant: str, run_id: str) -> dict[Entity, int]:
        """A freeze: every pending removal is held."""
        counts: dict[Entity, int] = {}
        with self._write():
            for entity in ENTITIES:
                counts[entity] = self.conn.execute(
                    "INSERT OR IGNORE INTO held (tenant, run_id, entity, kind, key) SELECT tenant, ?, entity, "
                    "'remove', key FROM pending_removals WHERE tenant = ? AND entity = ?",
                    (run_id, tenant, entity)).rowcount
            self.conn.execute("DELETE FROM pending_removals WHERE tenant = ?", (tenant,))
        return counts

    def apply_removals(self, tenant: str) -> dict[Entity, int]:
        """Tombstone the pending removals (one transaction)."""
        counts: dict[Entity, int] = {}
        now = utcnow()
        with self._write():
            for entity in ENTITIES:
                plural = PLURAL[entity]
                counts[entity] = self.conn.execute(
                    f"UPDATE acked_{plural} AS a SET removed_at = ? WHERE a.tenant = ? AND a.removed_at IS NULL "
                    f"AND {key_sql('a', entity)} IN (SELECT key FROM pending_removals WHERE tenant = ? "
                    "AND entity = ?)", (now, tenant, tenant, entity)).rowcount
            self.conn.execute("DELETE FROM pending_removals WHERE tenant = ?", (tenant,))
        return counts

    def hold_updates(self, tenant: str, run_id: str, entity: Entity) -> int:
        """The update breaker: this entity's updates keep the acknowledged body this run."""
        plural = PLURAL[entity]
        with self._write():
            held = self.conn.execute(
                f"INSERT OR IGNORE INTO held (tenant, run_id, entity, kind, key) SELECT d.tenant, ?, ?, 'update', "
                f"{key_sql('d', entity)} FROM desired_{plural} d WHERE d.tenant = ? AND d.change = 'update'",
                (run_id, entity, tenant)).rowcount
            self.conn.execute(
                f"UPDATE desired_{plural} AS d SET change = 'held', body = a.body, hash = a.hash "
                f"FROM acked_{plural} a WHERE {_join('d', 'a', entity)} AND d.tenant = ? AND d.change = 'update'",
                (tenant,))
        return held

    def users_to_disable(self, tenant: str) -> list[tuple[str, str]]:
        return self.conn.execute("SELECT source_id, sid FROM acked_users WHERE tenant = ? AND removed_at IS NOT NULL "
                                 "AND disabled_at IS NULL AND sid IS NOT NULL", (tenant,)).fetchall()

    def users_to_enable(self, tenant: str) -> list[tuple[str, str]]:
        return self.conn.execute("SELECT source_id, sid FROM acked_users WHERE tenant = ? AND removed_at IS NULL "
                                 "AND disabled_at IS NOT NULL", (tenant,)).fetchall()

    def set_disabled(self, tenant: str, source_id: str, disabled: bool) -> None:
        with self._write():
            self.conn.execute("UPDATE acked_users SET disabled_at = ? WHERE tenant = ? AND source_id = ?",
                              (utcnow() if disabled else None, tenant, source_id))

    # --- escrow: records the target keeps rejecting ----------------------------------------

    def escrow(self, tenant: str, run_id: str, entity: Entity, key: tuple[str, ...], http_status: int | None,
               message: str) -> tuple[int, str]:
        """One more run in which the target rejected this record: its attempts and when it may be
        tried again. Several rejected calls of one run count once."""
        now = datetime.now(UTC)
        encoded = json.dumps(list(key), separators=(",", ":"))  # the form of SQLite's json_array()
        with self._write():
            row = self.conn.execute("SELECT attempts, next_retry_at, run_id FROM escrow WHERE tenant = ? "
                                    "AND entity = ? AND key = ?", (tenant, entity, encoded)).fetchone()
            if row and row[2] == run_id:
                return row[0], row[1]
            attempts = (row[0] if row else 0) + 1
            delay = ESCROW_DELAYS_H[min(attempts, len(ESCROW_DELAYS_H)) - 1]
            retry = (now + timedelta(hours=delay)).isoformat(timespec="seconds").replace("+00:00", "Z")
            self.conn.execute(
                "INSERT INTO escrow (tenant, entity, key, attempts, next_retry_at, http_status, message, first_seen, "
                "run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, entity, key) DO UPDATE SET "
                "attempts = excluded.attempts, next_retry_at = excluded.next_retry_at, "
                "http_status = excluded.http_status, message = excluded.message, run_id = excluded.run_id",
                (tenant, entity, encoded, attempts, retry, http_status, message, utcnow(), run_id))
        return attempts, retry

    def defer_escrowed(self, tenant: str) -> list[dict[str, Any]]:
        """Changes whose record waits in escrow are not planned this run; returns those records."""
        now = utcnow()
        deferred: list[dict[str, Any]] = []
        with self._write():
            for entity in ENTITIES:
                plural = PLURAL[entity]
                waiting = (f"FROM desired_{plural} d JOIN escrow x ON x.tenant = d.tenant AND x.entity = ? "
                           f"AND x.key = {key_sql('d', entity)} WHERE d.tenant = ? "
                           "AND d.change IN ('create', 'update') AND x.next_retry_at > ?")
                rows = self.conn.execute(
                    f"SELECT x.key, x.attempts, x.next_retry_at, x.http_status, x.message, x.first_seen, d.source_id, "
                    f"d.body {waiting}",
                    (entity, tenant, now)).fetchall()
                self.conn.execute(
                    f"UPDATE desired_{plural} SET change = 'deferred' WHERE tenant = ? AND "
                    f"({', '.join(KEYS[entity])}) IN (SELECT {', '.join('d.' + k for k in KEYS[entity])} {waiting})",
                    (tenant, entity, tenant, now))
                deferred += [{"entity": entity, "key": tuple(json.loads(r[0])), "attempts": r[1], "next_retry_at": r[2],
                              "http_status": r[3], "message": r[4], "first_seen": r[5], "source_id": r[6],
                              "body": json.loads(r[7])} for r in rows]
        return deferred

    # --- plan support --------------------------------------------------------------------

    def plan_enrollment_calls(self, tenant: str) -> None:
        """Every new or changed enrollment needs a call of its own (which covers its user and course)."""
        with self._write():
            self.conn.execute(
                "INSERT INTO plan_calls (tenant, seq, course_id, user_id) "
                "SELECT tenant, row_number() OVER (ORDER BY course_id, user_id), course_id, user_id "
                "FROM desired_enrollments WHERE tenant = ? AND change IN ('create', 'update')", (tenant,))

    def uncovered_edges(self, tenant: str) -> Iterator[tuple[str, str]]:
        """(user, course) enrollment pairs of changed users not yet covered by a call, towards
        changed courses not yet covered: the choices that let one call cover both."""
        yield from self.conn.execute(
            f"WITH {UNCOVERED} SELECT e.user_id, e.course_id FROM desired_enrollments e "
            "JOIN users_left u ON u.source_id = e.user_id "
            "JOIN courses_left c ON c.source_id = e.course_id WHERE e.tenant = ?",
            (tenant, tenant, tenant, tenant, tenant))

    def uncovered_users(self, tenant: str) -> Iterator[tuple[str, str]]:
        """Each changed user not yet covered, with one of their in-scope enrollments' course."""
        yield from self.conn.execute(
            f"WITH {UNCOVERED} SELECT u.source_id, (SELECT min(e.course_id) FROM desired_enrollments e "
            "WHERE e.tenant = ? AND e.user_id = u.source_id) FROM users_left u",
            (tenant, tenant, tenant, tenant, tenant))

    def add_calls(self, tenant: str, calls: Iterable[tuple[str, str | None]]) -> None:
        with self._write():
            start = self.conn.execute("SELECT coalesce(max(seq), 0) FROM plan_calls WHERE tenant = ?",
                                      (tenant,)).fetchone()[0]
            self.conn.executemany(
                "INSERT INTO plan_calls (tenant, seq, course_id, user_id) VALUES (?, ?, ?, ?)",
                ((tenant, start + i, course, user) for i, (course, user) in enumerate(calls, 1)))

    def plan_course_calls(self, tenant: str) -> None:
        """A changed course that no call covers yet is sent alone."""
        with self._write():
            start = self.conn.execute("SELECT coalesce(max(seq), 0) FROM plan_calls WHERE tenant = ?",
                                      (tenant,)).fetchone()[0]
            self.conn.execute(
                "INSERT INTO plan_calls (tenant, seq, course_id, user_id) "
                "SELECT tenant, ? + row_number() OVER (ORDER BY source_id), source_id, NULL "
                "FROM desired_courses d WHERE tenant = ? AND change IN ('create', 'update') AND NOT EXISTS "
                "(SELECT 1 FROM plan_calls p WHERE p.tenant = d.tenant AND p.course_id = d.source_id)",
                (start, tenant))

    def call_count(self, tenant: str) -> int:
        return self.conn.execute("SELECT count(*) FROM plan_calls WHERE tenant = ?", (tenant,)).fetchone()[0]

    def calls(self, tenant: str, *, with_sids: bool = True, batch: int = 500) -> Iterator[Call]:
        """The planned calls in order, with bodies and known sids, read in bounded batches."""
        last = 0
        while True:
            rows = self.conn.execute(CALLS, (tenant, last, batch)).fetchall()
            if not rows:
                return
            for row in rows:
                yield _call(row, with_sids)
            last = rows[-1][0]

    def acked_body(self, entity: Entity, tenant: str, key: tuple[str, ...]) -> dict[str, Any] | None:
        plural, where = PLURAL[entity], " AND ".join(f"{k} = ?" for k in KEYS[entity])
        row = self.conn.execute(f"SELECT body FROM acked_{plural} WHERE tenant = ? AND {where}",
                                (tenant, *key)).fetchone()
        return json.loads(row[0]) if row else None

    # --- acknowledgement -----------------------------------------------------------------

    def acknowledge(self, tenant: str, acks: Iterable[tuple[Call, dict[Entity, str]]],
                    call_log: Iterable[CallLog] = ()) -> None:
        """Record what the target acknowledged for the calls that just returned, in one
        transaction, before any further call is sent on their behalf; ``call_log`` is each
        returned call's answer, kept for `syncd explain`."""
        now = utcnow()
        with self._write():
            self._log_calls(tenant, call_log, now)
            for call, sids in acks:
                if "course" in sids:
                    self._ack("course", (tenant, call.course_id), sids["course"], call.course_hash,
                              call.course_body, now)
                if "user" in sids and call.user_id and call.user_body is not None:
                    self._ack("user", (tenant, call.user_id), sids["user"], call.user_hash, call.user_body, now)
                if "enrollment" in sids and call.user_id and call.enrollment_body is not None:
                    self._ack("enrollment", (tenant, call.course_id, call.user_id), sids["enrollment"],
                              call.enrollment_hash, call.enrollment_body, now)
                self._clear_escrow(tenant, call, sids)

    def _log_calls(self, tenant: str, entries: Iterable[CallLog], now: str) -> None:
        """The last call of each (course, user) pair ("" for a course alone) and, per object it
        carried, the target's answer: [outcome, sid, answer]."""
        rows = []
        for entry in entries:
            call = entry.call
            carried: list[Entity] = ["course"]
            if call.user_id and call.user_body is not None:
                carried.append("user")
                if call.enrollment_body is not None:
                    carried.append("enrollment")
            answers = {e: [entry.outcomes.get(e, entry.outcome), entry.sids.get(e), entry.answers.get(e)]
                       for e in carried}
            rows.append((tenant, call.course_id, call.user_id or "", entry.run_id, call.seq, now, entry.outcome,
                         entry.http_status, entry.message, json.dumps(answers, separators=(",", ":"))))
        self.conn.executemany(
            "INSERT OR REPLACE INTO call_log (tenant, course_id, user_id, run_id, seq, at, outcome, http_status, "
            "message, answers) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def _clear_escrow(self, tenant: str, call: Call, sids: dict[Entity, str]) -> None:
        keys = {"course": [call.course_id], "user": [call.user_id], "enrollment": [call.course_id, call.user_id]}
        for entity in sids:
            self.conn.execute("DELETE FROM escrow WHERE tenant = ? AND entity = ? AND key = ?",
                              (tenant, entity, json.dumps(keys[entity], separators=(",", ":"))))

    def _ack(self, entity: Entity, key: tuple[str, ...], sid: str, digest: str | None,
             body: dict[str, Any], now: str) -> None:
        plural, columns = PLURAL[entity], ("tenant", *KEYS[entity])
        stored = {k: v for k, v in body.items()}
        if isinstance(stored.get("ids"), dict):
            stored["ids"] = {k: v for k, v in stored["ids"].items() if k != "sid"}
        self.conn.execute(
            f"INSERT INTO acked_{plural} ({', '.join(columns)}, sid, hash, body, acked_at, removed_at) "
            f"VALUES ({','.join('?' * len(columns))}, ?, ?, ?, ?, NULL) "
            f"ON CONFLICT ({', '.join(columns)}) DO UPDATE SET sid = excluded.sid, hash = excluded.hash, "
            "body = excluded.body, acked_at = excluded.acked_at, removed_at = NULL",
            (*key, sid, digest, json.dumps(stored, separators=(",", ":")), now))

    def acked_counts(self, tenant: str) -> dict[Entity, int]:
        return {e: self.conn.execute(
            f"SELECT count(*) FROM acked_{PLURAL[e]} WHERE tenant = ? AND removed_at IS NULL",
            (tenant,)).fetchone()[0] for e in ENTITIES}

    def integrity_ok(self) -> bool:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        cursor = self.conn.cursor()
        cursor.row_factory = sqlite3.Row
        return cursor.execute(sql, params).fetchall()


# --- SQL -----------------------------------------------------------------------------------

STAGE_TABLES: dict[type, tuple[str, Entity]] = {
    Course: ("stage_courses", "course"),
    CourseCode: ("stage_course_codes", "course"),
    User: ("stage_users", "user"),
    Enrollment: ("stage_enrollments", "enrollment"),
}


def _stage_row(tenant: str, record: Record) -> tuple[Any, ...]:
    if isinstance(record, Course):
        return (tenant, record.source_id, record.title, record.code, record.external_id, record.lms_id,
                record.parent_id, int(record.active), record.status)
    if isinstance(record, CourseCode):
        return (tenant, record.source_id, record.code)
    if isinstance(record, User):
        return (tenant, record.source_id, record.first_name, record.last_name, record.email,
                record.external_id, record.lms_id, int(record.active), record.status)
    assert isinstance(record, Enrollment)
    return (tenant, record.source_id, record.course_id, record.user_id, record.role, int(record.active),
            record.status, record.end_date)


def _join(left: str, right: str, entity: Entity) -> str:
    return " AND ".join(f"{left}.{k} = {right}.{k}" for k in ("tenant", *KEYS[entity]))


# json_patch('{}', …) drops every null member (RFC 7396), so an empty field is omitted, not null.
DESIRED_COURSES = """
INSERT INTO desired_courses (tenant, source_id, body, hash)
SELECT tenant, source_id, body, digest(body) FROM (
    SELECT c.tenant, c.source_id, json_patch('{}', json_object(
        'ids', json_object('external', c.external_id, 'lms', c.lms_id),
        'title', c.title, 'code', coalesce(c.code, cc.code))) AS body
    FROM stage_courses c
    LEFT JOIN stage_course_codes cc ON cc.tenant = c.tenant AND cc.source_id = c.parent_id
    WHERE c.tenant = ? AND c.active = 1)
"""

# One enrollment per (course, user): the role listed first in `roles` wins (SQLite returns the
# bare columns of the row that holds min()).
DESIRED_ENROLLMENTS = """
INSERT INTO desired_enrollments (tenant, course_id, user_id, source_id, body, hash)
SELECT tenant, course_id, user_id, source_id, body, digest(body) FROM (
    SELECT e.tenant, e.course_id, e.user_id, e.source_id, min(r.priority),
           json_object('role', r.target_role) AS body
    FROM stage_enrollments e
    JOIN (SELECT json_extract(value, '$[0]') AS source_role, json_extract(value, '$[1]') AS target_role,
                 CAST(key AS INTEGER) AS priority FROM json_each(?)) r ON r.source_role = e.role
    JOIN stage_courses c ON c.tenant = e.tenant AND c.source_id = e.course_id AND c.active = 1
    JOIN stage_users u ON u.tenant = e.tenant AND u.source_id = e.user_id AND u.active = 1
    WHERE e.tenant = ? AND e.active = 1
    GROUP BY e.tenant, e.course_id, e.user_id)
"""

DESIRED_USERS = """
INSERT INTO desired_users (tenant, source_id, body, hash)
SELECT tenant, source_id, body, digest(body) FROM (
    SELECT u.tenant, u.source_id, json_patch('{}', json_object(
        'ids', json_object('external', u.external_id, 'lms', u.lms_id),
        'firstName', u.first_name, 'lastName', u.last_name, 'email', u.email,
        'timeZone', ?)) AS body
    FROM stage_users u
    WHERE u.tenant = ? AND u.active = 1 AND EXISTS (
        SELECT 1 FROM desired_enrollments e WHERE e.tenant = u.tenant AND e.user_id = u.source_id))
"""

UNCOVERED = """
users_left AS (SELECT d.source_id FROM desired_users d WHERE d.tenant = ? AND d.change IN ('create', 'update')
    AND NOT EXISTS (SELECT 1 FROM plan_calls p WHERE p.tenant = ? AND p.user_id = d.source_id)),
courses_left AS (SELECT d.source_id FROM desired_courses d WHERE d.tenant = ? AND d.change IN ('create', 'update')
    AND NOT EXISTS (SELECT 1 FROM plan_calls p WHERE p.tenant = ? AND p.course_id = d.source_id))
"""

CALLS = """
SELECT p.seq, p.course_id, dc.body, ac.sid, dc.hash,
       p.user_id, du.body, au.sid, du.hash,
       de.source_id, de.body, ae.sid, de.hash
FROM plan_calls p
JOIN desired_courses dc ON dc.tenant = p.tenant AND dc.source_id = p.course_id
LEFT JOIN acked_courses ac ON ac.tenant = p.tenant AND ac.source_id = p.course_id
LEFT JOIN desired_users du ON du.tenant = p.tenant AND du.source_id = p.user_id
LEFT JOIN acked_users au ON au.tenant = p.tenant AND au.source_id = p.user_id
LEFT JOIN desired_enrollments de ON de.tenant = p.tenant AND de.course_id = p.course_id
     AND de.user_id = p.user_id
LEFT JOIN acked_enrollments ae ON ae.tenant = p.tenant AND ae.course_id = p.course_id
     AND ae.user_id = p.user_id
WHERE p.tenant = ? AND p.seq > ? ORDER BY p.seq LIMIT ?
"""


def _call(row: tuple[Any, ...], with_sids: bool) -> Call:
    (seq, course_id, course_body, course_sid, course_hash, user_id, user_body, user_sid, user_hash,
     enrollment_id, enrollment_body, enrollment_sid, enrollment_hash) = row
    sid = (lambda value: value) if with_sids else (lambda value: None)
    return Call(
        seq=seq, course_id=course_id, course_body=json.loads(course_body), course_sid=sid(course_sid),
        course_hash=course_hash, user_id=user_id,
        user_body=json.loads(user_body) if user_body else None, user_sid=sid(user_sid), user_hash=user_hash,
        enrollment_source_id=enrollment_id,
        enrollment_body=json.loads(enrollment_body) if enrollment_body else None,
        enrollment_sid=sid(enrollment_sid), enrollment_hash=enrollment_hash,
    )
