"""The PostgreSQL backend of the state store, selected by ``[state] url`` (SPEC §11).

The store's SQL is the same as on SQLite (``dialect.py`` holds the few differences); what this
module adds is the connection and who may write:

- :class:`PgConnection` gives a psycopg 3 connection the calls the store makes of a
  ``sqlite3.Connection`` (``execute`` with ``?`` placeholders, ``executemany``), and dict rows.
- A run writes only on its tenant's lease connection (:mod:`syncd.lease`): :meth:`PgStore.hold`
  takes the lease, and ``store.tenant(name)`` inside it reads and writes through
  ``lease.connection``, which raises :class:`syncd.lease.LeaseLost` once the session that holds
  the advisory lock is gone. A node cut off from the database, or frozen past the takeover bound,
  can no longer write a single row of a tenant that another node now runs.
- Everything else (history, approvals, status) uses the store's own connection.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from syncd import lease, pg_schema
from syncd.store.dialect import POSTGRES


@functools.lru_cache(maxsize=512)
def placeholders(sql: str) -> str:
    """``?`` → ``%s``. The store's SQL holds no ``%`` and no ``?`` other than its placeholders."""
    if "%" in sql:
        raise ValueError("store SQL must not contain '%' (psycopg reads it as a placeholder)")
    return sql.replace("?", "%s")


class PgConnection:
    """The sqlite3-shaped face of a psycopg connection (autocommit; the store sends BEGIN/COMMIT)."""

    def __init__(self, raw: Callable[[], Any]) -> None:
        self._raw = raw  # called on every statement: a lease's connection raises LeaseLost once lost

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        return self._raw().execute(placeholders(sql), tuple(params) or None)

    def executemany(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        batch = list(rows)
        if batch:
            with self._raw().cursor() as cursor:
                cursor.executemany(placeholders(sql), batch)

    def copy_rows(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        """Rows in the table's column order, with ``COPY … FROM STDIN`` (staging a page)."""
        if rows:
            with self._raw().cursor() as cursor, cursor.copy(f"COPY {table} FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)

    def dict_rows(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        from psycopg.rows import dict_row

        with self._raw().cursor(row_factory=dict_row) as cursor:
            return cursor.execute(placeholders(sql), tuple(params) or None).fetchall()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._raw().close()


# The store's own sessions may sit idle between a run's reads (no idle_session_timeout), but a node
# frozen or cut off inside one of their transactions (a migration check, a GG4L save) must not keep
# its locks past the lease's takeover bound: the whole cluster would wait on it.
OWN_SESSION = ("idle_in_transaction_session_timeout", "statement_timeout", "tcp_keepalives_idle",
               "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")


def connect(url: str) -> Any:
    """The store's own connection (not a lease's): autocommit, bounded connect time, and the lease's
    timeouts for a session stuck in a transaction or on a dead network (:data:`OWN_SESSION`)."""
    import psycopg

    timeouts = lease.Timeouts.configured()
    client = {k: v for k, v in timeouts.libpq_params().items() if k != "connect_timeout"}
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10, application_name="syncd", **client)
    except psycopg.Error as exc:
        raise lease.LeaseLost(f"cannot reach the state database: {lease._reason(exc)}") from None
    settings = timeouts.session_settings()
    try:
        for name in OWN_SESSION:
            conn.execute("SELECT set_config(%s, %s, false)", (name, settings[name]))
    except psycopg.Error as exc:
        conn.close()
        raise lease.LeaseLost(f"cannot prepare the state database session: {lease._reason(exc)}") from None
    return conn


class Reconnecting:
    """A connection for the daemon's long-lived readers and writers outside a run (GG4L districts,
    alert state, metrics): connects on first use and again after the server restarted or failed
    over, so that one outage does not leave them broken for the daemon's life. Use it from one
    thread at a time (its users hold a lock) and never for a run's state: that goes through the
    run's lease (fencing).

    A statement on a connection that broke mid-transaction fails (the transaction is gone with the
    session); only the next statement, the caller's ROLLBACK, opens a new session.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Any = None
        self._guard = threading.Lock()

    def __call__(self) -> Any:
        with self._guard:
            if self._conn is None or self._conn.closed or self._conn.broken:
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                self._conn = connect(self.url)
            return self._conn

    def in_transaction(self) -> bool:
        import psycopg

        conn = self._conn
        return bool(conn is not None and not conn.closed
                    and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)

    def close(self) -> None:
        with self._guard:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None


def side_connection(url: str) -> tuple[PgConnection, Reconnecting]:
    """A :class:`PgConnection` (``?`` placeholders) over a :class:`Reconnecting` session."""
    raw = Reconnecting(url)
    return PgConnection(raw), raw


@functools.cache
def this_node() -> lease.Node:
    """This process, as every lease it takes names it (one token per process, not per store)."""
    return lease.Node.here()


class Leases:
    """The leases this process holds, by tenant: where ``store.tenant(name)`` writes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.node = this_node()
        self.timeouts = lease.Timeouts.configured()
        self._held: dict[str, lease.Lease] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def hold(self, tenant: str, *, wait: bool = True, on_wait: Callable[[str], None] | None = None,
             stop: threading.Event | None = None) -> Iterator[lease.Lease]:
        with lease.tenant_lease(self.url, tenant, node=self.node, wait=wait, on_wait=on_wait, stop=stop,
                                timeouts=self.timeouts) as held:
            with self._guard:
                self._held[tenant] = held
            try:
                yield held
            finally:
                with self._guard:
                    self._held.pop(tenant, None)

    def connection(self, tenant: str) -> PgConnection | None:
        with self._guard:
            held = self._held.get(tenant)
        return PgConnection(lambda: held.connection) if held else None


def open_store(store: Any, url: str, state_dir: Path) -> None:
    """Make ``store`` (a :class:`syncd.store.Store` being built) a PostgreSQL store."""
    raw = connect(url)
    try:
        pg_schema.migrate(raw)
    except Exception:
        raw.close()
        raise
    store.path = state_dir / "syncd.db"  # never created: source caches still live in state_dir
    store.url = url
    store.dialect = POSTGRES
    store.raw = raw
    store.conn = PgConnection(lambda: raw)
    store.leases = Leases(url)
