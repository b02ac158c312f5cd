"""District state: the ``districts`` table, their audit events and the webhook deliveries.

A small class over a ``sqlite3`` connection to the state file, or, with ``[state] url``, over a
connection to the shared PostgreSQL store (``pg_schema``'s ``pg002_gg4l`` twin of :data:`SCHEMA`),
so that every node of a cluster sees the same districts (:meth:`DistrictStore.for_state`). The SQL
is the same on both (``?`` placeholders, ``ON CONFLICT … DO UPDATE``, ``RETURNING``). It never
stores a district's client secret: there is no column for it, and ``token_ref`` only ever holds a
secret *reference* (``env:``, ``file:``, ``credential:``). One lock serialises writers of this
object; the database's own locking covers other processes.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from syncd.gg4l.lifecycle import District, Event
from syncd.gg4l.webhook import Delivery

log = structlog.get_logger("syncd.gg4l")

SCHEMA = """
CREATE TABLE IF NOT EXISTS districts (
    guid TEXT PRIMARY KEY,                 -- as GG4L spells it
    tenant TEXT NOT NULL UNIQUE,           -- gg4l- + the GUID cleaned (SPEC §9)
    state TEXT NOT NULL,
    mode TEXT NOT NULL DEFAULT 'standard', -- test | trial | standard (the highest a webhook announced)
    policy TEXT NOT NULL DEFAULT 'pending',-- pending | dry_run | sync
    name TEXT NOT NULL DEFAULT '',
    paused INTEGER NOT NULL DEFAULT 0,
    install_sid TEXT NOT NULL DEFAULT '',
    token_ref TEXT NOT NULL DEFAULT '',    -- a secret reference, never a value
    client_id TEXT NOT NULL DEFAULT '',
    api_url TEXT NOT NULL DEFAULT '',
    token_url TEXT NOT NULL DEFAULT '',
    missing_polls INTEGER NOT NULL DEFAULT 0,
    first_missing_at TEXT,
    revoked_at TEXT,
    purged_at TEXT,
    expiry TEXT,
    last_seen TEXT,
    last_data_ts TEXT,
    synced_data_ts TEXT,
    created_at TEXT,
    problem TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS district_events (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    guid TEXT NOT NULL,
    event TEXT NOT NULL,
    alert INTEGER NOT NULL DEFAULT 0,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS district_events_guid ON district_events (guid, id);
CREATE TABLE IF NOT EXISTS district_webhooks (
    id INTEGER PRIMARY KEY,
    guid TEXT NOT NULL,
    guid_key TEXT NOT NULL,                -- lowercased: the idempotency key with mode
    mode TEXT NOT NULL,
    first_received_at TEXT NOT NULL,
    last_received_at TEXT NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1,
    remote_addr TEXT NOT NULL DEFAULT '',
    body_sha256 TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT 'received', -- received | listed | not_listed
    UNIQUE (guid_key, mode)
);
"""

# A purge deletes these of the district's tenant, with every stage_* and desired_* table
# (source_marks and source_pages vouch for the stage_* mirror that delta runs and page fingerprints build on:
# gone with it, the next run parses everything).
PURGED_TABLES = ("plan_calls", "pending_removals", "held", "escrow", "errors", "call_log", "source_marks",
                 "source_pages")
_TIMES = ("first_missing_at", "revoked_at", "purged_at", "expiry", "last_seen", "last_data_ts", "synced_data_ts",
          "created_at")
_COLUMNS = tuple(f.name for f in fields(District))
_UPDATES = ", ".join(f"{c} = excluded.{c}" for c in (*_COLUMNS[1:], "updated_at"))


def migrate(conn: sqlite3.Connection) -> None:
    """Create the district tables if they are missing (idempotent)."""
    conn.executescript(SCHEMA)


def _text(stamp: datetime | None) -> str | None:
    return stamp.astimezone(UTC).isoformat() if stamp else None


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class DistrictStore:
    """Districts, their events and the webhook deliveries over one connection."""

    def __init__(self, conn: Any, session: Any = None):
        """``conn``: a sqlite3 connection (the tables are created if missing), or a
        :class:`syncd.store.postgres.PgConnection` over ``session``, a
        :class:`syncd.store.postgres.Reconnecting` (the migrations made the tables)."""
        self.conn = conn
        self._session = session
        self._lock = threading.RLock()
        if session is None:
            with self._lock:
                migrate(conn)

    @classmethod
    def open(cls, path: str) -> DistrictStore:
        conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return cls(conn)

    @classmethod
    def for_state(cls, state_dir: Path, url: str = "") -> DistrictStore:
        """The districts of the state store: the SQLite file in ``state_dir`` (created owner-only and
        migrated first), or the PostgreSQL store at ``url`` shared by every node (migrated first)."""
        from syncd.store import DB_NAME, Store

        Store.open(state_dir, url).close()
        if not url:
            return cls.open(str(state_dir / DB_NAME))
        from syncd.store import postgres

        conn, session = postgres.side_connection(url)
        return cls(conn, session)

    @property
    def shared(self) -> bool:
        """True on the PostgreSQL store (every node reads and writes the same districts)."""
        return self._session is not None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        else:
            self.conn.close()

    # --- districts -----------------------------------------------------------------------

    def districts(self) -> dict[str, District]:
        """Every district by lowercased GUID."""
        with self._lock:
            rows = self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM districts ORDER BY tenant").fetchall()  # noqa: S608
        return {row[0].lower(): self._district(row) for row in rows}

    def district(self, tenant_or_guid: str) -> District | None:
        with self._lock:
            row = self.conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM districts WHERE tenant = ? OR lower(guid) = lower(?)",  # noqa: S608
                (tenant_or_guid, tenant_or_guid)).fetchone()
        return self._district(row) if row else None

    @staticmethod
    def _district(row: tuple[Any, ...]) -> District:
        values = dict(zip(_COLUMNS, row, strict=True))
        for name in _TIMES:
            values[name] = _time(values[name])
        values["paused"] = bool(values["paused"])
        return District(**values)

    def save(self, records: Iterable[District], events: Iterable[Event] = (), now: datetime | None = None) -> None:
        """Write districts and their events in one transaction."""
        now = now or datetime.now(UTC)
        placeholders = ", ".join("?" for _ in (*_COLUMNS, "updated_at"))
        with self._lock, self._transaction():
            for record in records:
                values = asdict(record)
                for name in _TIMES:
                    values[name] = _text(values[name])
                values["paused"] = int(values["paused"])
                # An upsert on the GUID, not INSERT OR REPLACE: a clash on the tenant name must fail
                # loudly, never delete the other district's row.
                self.conn.execute(
                    f"INSERT INTO districts ({', '.join(_COLUMNS)}, updated_at) "  # noqa: S608
                    f"VALUES ({placeholders}) ON CONFLICT (guid) DO UPDATE SET {_UPDATES}",
                    (*(values[c] for c in _COLUMNS), _text(now)))
            self._events(events, now)
            # A district that became purged loses its local roster in the same transaction: no
            # moment (and no crash) leaves a purged district with its people still stored.
            for event in events:
                if event.event == "gg4l.district_purged":
                    touched = self._purge(str(event.detail.get("tenant", "")), _text(now))
                    log.warning("gg4l.roster_purged", tenant=event.detail.get("tenant"), rows=sum(touched.values()),
                                kept="each object's key and sid, so that a district listed again keeps them")

    def mark_synced(self, guid: str, data_ts: datetime) -> None:
        """A completed sync of the data ready at ``data_ts``: the next run may skip if nothing moved."""
        with self._lock, self._transaction():
            self.conn.execute("UPDATE districts SET synced_data_ts = ?, updated_at = ? WHERE lower(guid) = lower(?)",
                              (_text(data_ts), _text(datetime.now(UTC)), guid))

    def purge_roster(self, tenant: str, now: datetime | None = None) -> dict[str, int]:
        """Delete a purged district's local roster (its PII), keeping only each object's key and sid.

        Staging, desired state, plans, holds, escrow, per-record errors and the last calls
        (``call_log``) of the tenant are deleted; every acknowledged row keeps its key and ``sid``
        but loses its body and hash and becomes a tombstone. A district listed again then syncs as
        updates carrying its old sids (``ids.sid``), and, tombstones not being counted as
        acknowledged, no breaker holds it.
        Run history (``runs``) stays as the audit trail. Returns the rows touched per table.
        """
        with self._lock, self._transaction():
            return self._purge(tenant, _text(now or datetime.now(UTC)))

    def _purge(self, tenant: str, stamp: str) -> dict[str, int]:
        touched: dict[str, int] = {}
        if tenant:
            for table, columns in self._tenant_tables():
                if table.startswith("acked_") and {"body", "hash", "removed_at"} <= columns:
                    cursor = self.conn.execute(
                        f"UPDATE {table} SET body = '{{}}', hash = '', "  # noqa: S608 - names from sqlite_master
                        "removed_at = coalesce(removed_at, ?) WHERE tenant = ?", (stamp, tenant))
                elif table.startswith(("stage_", "desired_")) or table in PURGED_TABLES:
                    cursor = self.conn.execute(f"DELETE FROM {table} WHERE tenant = ?", (tenant,))  # noqa: S608
                else:
                    continue
                if cursor.rowcount:
                    touched[table] = cursor.rowcount
        return touched

    def _tenant_tables(self) -> list[tuple[str, set[str]]]:
        """Every table with a ``tenant`` column and its columns (exam tables included when present)."""
        if self.shared:
            found: dict[str, set[str]] = {}
            for table, column in self.conn.execute(
                    "SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema()").fetchall():
                found.setdefault(table, set()).add(column)
            return sorted((t, c) for t, c in found.items() if "tenant" in c)
        names = [r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        out = []
        for name in names:
            columns = {row[1] for row in self.conn.execute(f"PRAGMA table_info({name})")}
            if "tenant" in columns:
                out.append((name, columns))
        return out

    def _events(self, events: Iterable[Event], now: datetime) -> None:
        self.conn.executemany(
            "INSERT INTO district_events (at, guid, event, alert, detail) VALUES (?, ?, ?, ?, ?)",
            [(_text(now), e.guid, e.event, int(e.alert), json.dumps(dict(e.detail), sort_keys=True))
             for e in events])

    def add_events(self, events: Iterable[Event], now: datetime | None = None) -> None:
        with self._lock, self._transaction():
            self._events(events, now or datetime.now(UTC))

    def events(self, guid: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        query = "SELECT at, guid, event, alert, detail FROM district_events"
        args: tuple[Any, ...] = ()
        if guid:
            query += " WHERE lower(guid) = lower(?)"
            args = (guid,)
        with self._lock:
            rows = self.conn.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [{"at": at, "guid": g, "event": e, "alert": bool(a), "detail": json.loads(d)}
                for at, g, e, a, d in reversed(rows)]

    # --- webhook deliveries --------------------------------------------------------------

    def record_webhook(self, delivery: Delivery, now: datetime | None = None) -> bool:
        """Record a delivery; True when its (GUID, mode) is new. Replays only bump a counter."""
        stamp = _text(now or datetime.now(UTC))
        with self._lock, self._transaction():
            cursor = self.conn.execute(
                "INSERT INTO district_webhooks (guid, guid_key, mode, first_received_at, last_received_at, "
                "remote_addr, body_sha256) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (guid_key, mode) DO UPDATE SET deliveries = district_webhooks.deliveries + 1, "
                "last_received_at = excluded.last_received_at RETURNING deliveries",
                (delivery.guid, delivery.guid.lower(), delivery.mode, stamp, stamp, delivery.remote_addr[:64],
                 delivery.body_sha256))
            (deliveries,) = cursor.fetchone()
        return deliveries == 1

    def webhook_modes(self) -> dict[str, list[str]]:
        """Every mode announced per lowercased GUID."""
        with self._lock:
            rows = self.conn.execute("SELECT guid_key, mode FROM district_webhooks ORDER BY id").fetchall()
        out: dict[str, list[str]] = {}
        for key, mode in rows:
            out.setdefault(key, []).append(mode)
        return out

    def webhooks(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT guid, mode, first_received_at, last_received_at, deliveries, outcome "
                "FROM district_webhooks ORDER BY id").fetchall()
        return [dict(zip(("guid", "mode", "first_received_at", "last_received_at", "deliveries", "outcome"), r,
                         strict=True)) for r in rows]

    def set_webhook_outcomes(self, listed: set[str]) -> None:
        """After a discovery: mark every delivery whose GUID the list holds (or not)."""
        with self._lock, self._transaction():
            for (key,) in self.conn.execute("SELECT DISTINCT guid_key FROM district_webhooks").fetchall():
                self.conn.execute("UPDATE district_webhooks SET outcome = ? WHERE guid_key = ?",
                                  ("listed" if key in listed else "not_listed", key))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction, unless the caller already holds one (then it commits)."""
        if self._session.in_transaction() if self._session is not None else self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN" if self._session is not None else "BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
