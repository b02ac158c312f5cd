"""``syncd state copy --to postgresql://…``: a SQLite store into PostgreSQL, verified (SPEC §11).

What is copied is the state worth keeping (:data:`syncd.pg_schema.STATE_TABLES`): acknowledged
objects with their sids and tombstones, escrow, held plans, approvals, pending removals, and the
run and error history. Staging, desired state and the plan are rebuilt by every run.

- The SQLite file is opened read-only (``mode=ro``): it is never written, so a copy that fails, or
  an admin who changes their mind, leaves the embedded store exactly as it was.
- Everything goes in one PostgreSQL transaction, table by table with ``COPY``; the row counts of
  both sides are compared before the commit, and any difference rolls the whole copy back.
- A target that already holds state is refused: a copy never merges into a live cluster's store.
- Acknowledged bodies are written in their canonical JSON text (a store from before SQLite's m005
  may hold other text) and their hashes recomputed in PostgreSQL's form
  (:data:`syncd.pg_schema.HASH_SQL`), so that the first run on PostgreSQL, whose desired bodies are
  the same canonical text, finds nothing changed and pushes nothing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from syncd import pg_schema
from syncd.model import canonical_json

ACKED = ("acked_courses", "acked_users", "acked_enrollments")


class CopyError(Exception):
    """The copy was refused or failed; nothing was committed to PostgreSQL."""


def copy_state(sqlite_path: Path, url: str, *, progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Copy the state tables; the rows copied per table (equal on both sides, or CopyError)."""
    import psycopg

    source = _open_read_only(sqlite_path)
    try:
        _check_migrations(source)
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10,
                                 application_name="syncd state copy") as target:
                pg_schema.migrate(target)
                with target.transaction():
                    _refuse_existing_state(target)
                    counts = {table: _copy_table(source, target, table) for table in pg_schema.STATE_TABLES}
                    for table, copied in counts.items():
                        if progress:
                            progress(table, copied)
                    _verify(source, target, counts)
                    for table in ACKED:
                        target.execute(f"UPDATE {table} SET hash = {pg_schema.HASH_SQL.format('body')}")
                    # The next error row gets an id after the copied ones.
                    target.execute("SELECT setval(pg_get_serial_sequence('errors', 'id'), "
                                   "greatest((SELECT max(id) FROM errors), 1))")
        except psycopg.Error as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CopyError(f"copy to PostgreSQL failed, nothing was committed: {reason}") from None
    finally:
        source.close()
    return counts


def _open_read_only(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise CopyError(f"{path}: no SQLite state store here")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise CopyError(f"{path}: cannot read the SQLite state store: {exc}") from None
    return conn


def _check_migrations(source: sqlite3.Connection) -> None:
    """Refuse a store whose schema this version cannot translate (it was made by a newer syncd)."""
    try:
        names = {row[0] for row in source.execute("SELECT name FROM _sqlite_migrations WHERE migration_set = 'syncd'")}
    except sqlite3.Error:
        raise CopyError("not a syncd state store (no migrations table)") from None
    known = {name for name, _ in pg_schema.MIGRATIONS}
    unknown = sorted(names - known)
    if unknown:
        raise CopyError(f"the SQLite store has migrations this syncd cannot translate: {', '.join(unknown)}; "
                        "copy it with the syncd version that made it")
    missing = sorted(name for name in known if name.startswith("m") and name not in names)
    if missing:
        raise CopyError(f"the SQLite store lacks migrations {', '.join(missing)}: open it once with this syncd "
                        "(any command) and copy again")


def _refuse_existing_state(target: Any) -> None:
    busy = [table for table in pg_schema.STATE_TABLES
            if target.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]]
    if busy:
        raise CopyError(f"the PostgreSQL database already holds state ({', '.join(busy)}); "
                        "copy only into an empty one")


def _columns(source: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in source.execute(f"SELECT * FROM pragma_table_info('{table}')")]


def _copy_table(source: sqlite3.Connection, target: Any, table: str) -> int:
    columns = _columns(source, table)
    names = ", ".join(columns)
    rows = 0
    cursor = source.execute(f"SELECT {names} FROM {table}")
    body = columns.index("body") if table in ACKED else None
    with target.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as copy:
        while batch := cursor.fetchmany(5000):
            for row in batch:
                if body is not None and row[body] is not None:
                    row = (*row[:body], canonical_json(json.loads(row[body])), *row[body + 1:])
                copy.write_row(row)
            rows += len(batch)
    return rows


def _verify(source: sqlite3.Connection, target: Any, copied: dict[str, int]) -> None:
    for table, count in copied.items():
        expected = source.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        landed = target.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        if not expected == landed == count:
            raise CopyError(f"{table}: {expected} rows in SQLite, {count} copied, {landed} in PostgreSQL; "
                            "nothing was committed")
