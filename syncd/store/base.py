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


def utcnow() -> str:
    """Now, never earlier than a time this process already wrote: a clock stepped back mid-run must
    not make acknowledgements look older than the run that made them (syncd.limits.monotonic_iso)."""
    return limits.monotonic_iso(datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))


def key_sql(alias: str, entity: Entity) -> str:
    """A record's key as a JSON array, the form held, escrow and pending_removals store."""
    return f"json_array({', '.join(f'{alias}.{k}' for k in KEYS[entity])})"


def key_json(key: tuple[str, ...] | list[str]) -> str:
    """A key in the exact text SQLite's json_array() makes of it (key_sql), to compare with stored
    keys: UTF-8 kept as is, not escaped, or a key with an "é" in it would never match."""
    return json.dumps(list(key), separators=(",", ":"), ensure_ascii=False)


def join(left: str, right: str, entity: Entity) -> str:
    """Two aliases' rows of one entity are the same record (tenant and key columns)."""
    return " AND ".join(f"{left}.{k} = {right}.{k}" for k in ("tenant", *KEYS[entity]))


class Connected:
    """Holds the connection; ``_write`` is one write transaction."""

    conn: sqlite3.Connection

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

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        cursor = self.conn.cursor()
        cursor.row_factory = sqlite3.Row
        return cursor.execute(sql, params).fetchall()


class Scoped(Connected):
    """One tenant's part of the state: every method reads and writes only ``self.name``'s rows."""

    name: str
