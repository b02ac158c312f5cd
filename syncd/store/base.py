"""What every part of the store shares: the connection, write transactions, SQL helpers."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from syncd import limits
from syncd.entities import KEYS, Entity
from syncd.store.dialect import SQLITE, Dialect


def utcnow() -> str:
    """Now, never earlier than a time this process already wrote: a clock stepped back mid-run must
    not make acknowledgements look older than the run that made them (syncd.limits.monotonic_iso)."""
    return limits.monotonic_iso(datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))


def key_sql(alias: str, entity: Entity, dialect: Dialect = SQLITE) -> str:
    """A record's key as a JSON array, the form held, escrow and pending_removals store."""
    return dialect.key(*(f'{alias}.{k}' for k in KEYS[entity]))


def key_json(key: tuple[str, ...] | list[str]) -> str:
    """A key in the exact text SQLite's json_array() makes of it (and Dialect.key on PostgreSQL),
    to compare with stored keys: text as UTF-8, as json_array() writes it, not \\u escapes."""
    return json.dumps(list(key), separators=(",", ":"), ensure_ascii=False)


def join(left: str, right: str, entity: Entity) -> str:
    """Two aliases' rows of one entity are the same record (tenant and key columns)."""
    return " AND ".join(f"{left}.{k} = {right}.{k}" for k in ("tenant", *KEYS[entity]))


class Connected:
    """Holds the connection; ``_write`` is one write transaction."""

    conn: Any  # sqlite3.Connection, or syncd.store.postgres.PgConnection (the same calls)
    dialect: Dialect = SQLITE

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction. IMMEDIATE takes the write lock up front, so that two processes
        (two tenants, or the daemon and the CLI) wait on each other instead of failing with
        SQLITE_BUSY when a read inside the transaction turns into a write."""
        self.conn.execute(self.dialect.begin)
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        if not isinstance(self.conn, sqlite3.Connection):
            return self.conn.dict_rows(sql, params)
        cursor = self.conn.cursor()
        cursor.row_factory = sqlite3.Row
        return [dict(row) for row in cursor.execute(sql, params).fetchall()]


class Scoped(Connected):
    """One tenant's part of the state: every method reads and writes only ``self.name``'s rows."""

    name: str

    def _forget_desired(self) -> None:
        """The staged rows change (in this transaction): no mark may vouch any more for the desired
        state (``desired_marks``) or for a run with nothing to do (``settled_marks``)."""
        self.conn.execute("DELETE FROM desired_marks WHERE tenant = ?", (self.name,))
        self.conn.execute("DELETE FROM settled_marks WHERE tenant = ?", (self.name,))
