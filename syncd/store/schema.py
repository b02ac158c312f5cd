"""The schema of the state file and its migrations (sqlite-utils ``Migrations``, built on demand).

Tables per entity (``courses``, ``users``, ``enrollments``):

- ``stage_*``: what the source said this run (replaced each run);
- ``desired_*``: the provision bodies in scope this run, with their hash and ``change``
  (``create`` / ``update`` / ``none``) against what the target acknowledged;
- ``acked_*``: what the target acknowledged: ``sid``, hash and body; ``removed_at`` marks a
  tombstone (the object left scope; nothing is deleted in the target).

A new entity adds its three tables here, in a new migration; a migration never changes once
released (existing state files are upgraded by the ones they have not run yet).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from syncd.model import body_hash

if TYPE_CHECKING:
    import sqlite_utils
    from sqlite_utils.migrations import Migrations

Step = TypeVar("Step", bound=Callable[..., None])


class _Migrations:
    """sqlite-utils ``Migrations``, built when a file needs a step: a state file that has run every
    step (every run but the first after an upgrade) is opened without importing sqlite-utils, an
    import that costs each ``syncd`` command ~40 ms. The steps, their order and their record in
    ``_sqlite_migrations`` are sqlite-utils' own."""

    name = "syncd"
    table = "_sqlite_migrations"  # sqlite_utils.migrations.Migrations.migrations_table

    def __init__(self) -> None:
        self._steps: list[Callable[..., None]] = []

    def __call__(self) -> Callable[[Step], Step]:
        def register(step: Step) -> Step:
            self._steps.append(step)
            return step
        return register

    def names(self) -> list[str]:
        return [step.__name__ for step in self._steps]

    def apply(self, db: sqlite3.Connection | sqlite_utils.Database, **options: Any) -> None:
        """Apply the steps ``db`` has not run (a connection, or a ``sqlite_utils.Database``)."""
        if isinstance(db, sqlite3.Connection):
            if not options and self._all_applied(db):
                return
            import sqlite_utils

            db = sqlite_utils.Database(db)
        self._migrations().apply(db, **options)

    def _all_applied(self, conn: sqlite3.Connection) -> bool:
        # The table as sqlite-utils makes it (an older one's key would be transformed on apply).
        keys = [row[1] for row in conn.execute(f"PRAGMA table_info({self.table})") if row[5]]  # no table: none
        if keys != ["id"]:
            return False
        applied = {name for (name,) in conn.execute(f"SELECT name FROM {self.table} WHERE migration_set = ?",
                                                    (self.name,))}
        return applied.issuperset(self.names())

    def _migrations(self) -> Migrations:
        from sqlite_utils.migrations import Migrations

        built = Migrations(self.name)
        for step in self._steps:
            built()(step)
        return built


migrations = _Migrations()


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
def m005_canonical_hashes(db: sqlite_utils.Database) -> None:
    """The content hash is now taken over a body's canonical JSON (keys sorted), not over the
    text SQLite happened to build: re-hash what the target acknowledged, so that nothing looks
    changed after the upgrade (and a store of another kind computes the same hashes)."""
    db.conn.create_function("canonical_digest", 1, _canonical_digest, deterministic=True)
    for table in ("acked_courses", "acked_users", "acked_enrollments"):
        db.execute(f"UPDATE {table} SET hash = canonical_digest(body) WHERE body IS NOT NULL")


def _canonical_digest(body: str) -> str:
    return body_hash(json.loads(body))


@migrations()
def m006_explain(db: sqlite_utils.Database) -> None:
    """What `syncd explain` needs: the raw fields that decided scope (the source's status, an
    enrollment's endDate), and the last call for each (course, user) pair with the target's answer
    per object carried (one row per call, not per object: one more write per call, not three;
    replaced by the next call of the pair; pruned with its run).

    And escrow keys in one encoding: they were written by ``json.dumps`` with its ASCII escapes
    ("\\u00e9") while the queries that look escrow up build keys with SQLite's ``json_array`` ("é"),
    so a record whose id is not ASCII was never found waiting and was retried every run (and
    explain had to ask twice). They are re-written as ``base.key_json`` now writes them."""
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
    db.conn.create_function("utf8_key", 1, _utf8_key, deterministic=True)
    db.execute("UPDATE escrow SET key = utf8_key(key) WHERE key != utf8_key(key)")


def _utf8_key(key: str) -> str:
    return json.dumps(json.loads(key), separators=(",", ":"), ensure_ascii=False)


@migrations()
def m007_exams(db: sqlite_utils.Database) -> None:
    """Exams (SPEC §7): staged, desired and acknowledged (exam and configuration sids), and the
    plan's exam column."""
    from syncd.store.exams import PLAN_COLUMN, SCHEMA

    db.executescript(SCHEMA + PLAN_COLUMN)


@migrations()
def m008_alerts(db: sqlite_utils.Database) -> None:
    """The last state alerted per tenant and topic (syncd.alerts: one message per change, across
    restarts), and the row /healthz writes to prove the store takes a write."""
    db.executescript(
        """
        CREATE TABLE alert_state (
            tenant TEXT, topic TEXT, state TEXT NOT NULL, detail TEXT, changed_at TEXT NOT NULL,
            PRIMARY KEY (tenant, topic)) WITHOUT ROWID;
        CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at TEXT NOT NULL);
        """
    )


@migrations()
def m009_delta(db: sqlite_utils.Database) -> None:
    """Delta runs (syncd.store.delta): per tenant, when the last extract that reached its end
    started, and when the last complete full one did; no row: the next run is full."""
    db.executescript(
        """
        CREATE TABLE source_marks (
            tenant TEXT PRIMARY KEY, since TEXT NOT NULL, full_at TEXT NOT NULL) WITHOUT ROWID;
        """
    )


@migrations()
def m010_pages(db: sqlite_utils.Database) -> None:
    """Page fingerprints (syncd.store.pages): each staged roster row is tagged with the page position
    it was read from, and ``source_pages`` holds each position's digest; ``desired_marks`` vouches
    for the desired state a run may keep (syncd.store.staging.build_desired). Rows staged before
    belong to no page: the next fingerprinted run drops them and parses every page. And an index of
    the acknowledged rows not removed, which a run counts three times: without it each count reads
    every acknowledged body; and of the desired rows by change, which the planner and the counts ask
    for (a run that changes nothing then reads no body)."""
    db.executescript(PAGES_SQL)



@migrations()
def m011_settled(db: sqlite_utils.Database) -> None:
    """Settled marks (syncd.store.settled): a run whose inputs have not changed since a run that
    found nothing to do skips the diff; triggers on every input table drop the mark."""
    from syncd.store.settled import SQLITE_SCHEMA

    db.executescript(SQLITE_SCHEMA)

PAGES_SQL = """
ALTER TABLE stage_courses ADD COLUMN page INTEGER;
ALTER TABLE stage_course_codes ADD COLUMN page INTEGER;
ALTER TABLE stage_users ADD COLUMN page INTEGER;
ALTER TABLE stage_enrollments ADD COLUMN page INTEGER;
CREATE INDEX stage_courses_by_page ON stage_courses (tenant, page);
CREATE INDEX stage_course_codes_by_page ON stage_course_codes (tenant, page);
CREATE INDEX stage_users_by_page ON stage_users (tenant, page);
CREATE INDEX stage_enrollments_by_page ON stage_enrollments (tenant, page);
CREATE TABLE source_pages (
    tenant TEXT, page INTEGER, digest TEXT, count INTEGER NOT NULL, ids TEXT NOT NULL, rows INTEGER NOT NULL,
    PRIMARY KEY (tenant, page)) WITHOUT ROWID;
CREATE TABLE desired_marks (
    tenant TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, counts TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX acked_courses_live ON acked_courses (tenant, removed_at);
CREATE INDEX acked_users_live ON acked_users (tenant, removed_at);
CREATE INDEX acked_enrollments_live ON acked_enrollments (tenant, removed_at);
CREATE INDEX desired_courses_by_change ON desired_courses (tenant, change);
CREATE INDEX desired_users_by_change ON desired_users (tenant, change);
CREATE INDEX desired_enrollments_by_change ON desired_enrollments (tenant, change);
"""
