"""Per-tenant leases across nodes: PostgreSQL session advisory locks (SPEC §11).

The cluster-mode counterpart of :mod:`syncd.lock`. A run takes its tenant with
``pg_try_advisory_lock(TENANT_NS, key(tenant))`` on a connection of its own, and makes every
state write of that run on that same connection (:attr:`Lease.connection`). The server releases a
session lock when the session ends, however it ends, so:

- ``kill -9`` of the holder closes its socket: the lock is free at once;
- a dead host, a cut cable or a frozen (``SIGSTOP``-ed, swapping, paused VM) holder stops sending.
  Its session is ended by the server's timeouts below, within :meth:`Timeouts.takeover_bound`
  (under 60 s with the defaults), and another node takes the lease;
- the old holder, if it ever wakes up, finds its connection closed: its writes fail. The lock and
  the right to write are one thing, so fencing needs no clocks and no tokens.

Why the server notices a frozen holder: a stopped process still has a live kernel that answers
TCP keepalives, so keepalives alone would keep its session forever. The holder therefore sends a
heartbeat on the lease's connection every ``heartbeat`` seconds (a thread); the server ends a
session that has been idle for ``idle_session_timeout`` (or idle inside a transaction for
``idle_in_transaction_session_timeout``, or in one statement for ``statement_timeout``). Server
and client TCP keepalives and ``tcp_user_timeout`` catch a host that is gone or cut off, and a
heartbeat with no answer within the takeover bound makes the node cut its own socket, so a cut-off
node also learns it has lost the lease (its blocked write fails) instead of hanging.

Pitfalls, and how this design avoids them:

- **Poolers.** PgBouncer in *transaction* (or statement) pooling hands a session to another
  client between transactions: a session advisory lock would be held by, or released for, the
  wrong client (PgBouncer's feature map: "Session-level advisory locks: Never"). ``[state] url``
  must reach PostgreSQL directly or through *session* pooling. :func:`acquire` refuses to run
  where the server reports a different backend per statement (checked once per lease).
- **Resetting the session.** ``DISCARD ALL``, ``pg_advisory_unlock_all()`` or a pooler's
  ``server_reset_query`` on the lease's connection would release the lock while the session
  lives. Nothing in syncd runs them; :meth:`Lease.verify` checks the lock is still ours.
- **Open transactions across network calls.** A transaction left open while the engine waits on
  the target would be ended by ``idle_in_transaction_session_timeout``: the store keeps each
  write transaction short (it already does on SQLite: one transaction per acknowledged call).
- **Long statements.** A holder frozen right after sending a statement keeps its session until
  the statement ends, so ``statement_timeout`` bounds the takeover; a store statement that needs
  longer must raise it (``Timeouts.statement``) and accept the longer takeover.
- **Reentrancy.** Advisory locks stack within a session; a lease takes its lock exactly once and
  unlocks it once.
- **Key collisions.** Keys are a hash of the tenant name computed here (``hashtext`` is not
  promised stable across major versions), in the two-int4 form, whose ``objsubid`` (2) keeps them
  apart from any single-bigint advisory lock another application takes in the same database. Two
  tenants with the same 31-bit hash would only run one after the other, never together.
- **Failover.** Advisory locks are not replicated. A PostgreSQL failover or restart ends every
  session: every run aborts (its writes fail) and the nodes take their leases again; an aborted
  run re-extracts and re-diffs, so nothing is lost.
- **One connection per running tenant.** Each held lease pins a connection (``max_connections``
  must exceed nodes times concurrent runs + a few).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from syncd.lock import Busy

# Namespaces of the two-int4 advisory lock form: 'SYNT' and 'SYNC' in ASCII, both < 2**31.
TENANT_NS = 0x53594E54
CLUSTER_NS = 0x53594E43
# Serialises the creation of the lease tables by nodes starting together (single-bigint form).
SCHEMA_LOCK = 0x53594E445F534348

# The test suite's short lease timeouts (Timeouts.configured); never set in production.
TEST_TIMEOUTS_ENV = "SYNCD_TEST_LEASE_TIMEOUTS"

MIN_SERVER_VERSION = 140000  # idle_session_timeout arrived in PostgreSQL 14

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    kind TEXT NOT NULL,           -- 'tenant' or 'cluster' (a cluster-wide singleton job)
    name TEXT NOT NULL,
    node TEXT NOT NULL,           -- Node: host:pid:random
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    backend_pid INTEGER NOT NULL, -- the server session holding the lock (pg_locks.pid)
    lock_key INTEGER NOT NULL,
    since TIMESTAMPTZ NOT NULL,
    heartbeat TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS slots (
    kind TEXT NOT NULL,           -- as in leases
    name TEXT NOT NULL,
    last_slot TEXT NOT NULL,      -- the last scheduled slot done (ISO text: later slots sort after)
    node TEXT NOT NULL,
    done_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (kind, name)
);
"""


class LeaseLost(Exception):
    """The lease's session ended (node cut off, frozen too long, server restarted): stop writing."""


@dataclass(frozen=True)
class Node:
    """Who holds a lease: this host, this process, and a random part (pids are reused)."""

    host: str
    pid: int
    token: str

    @classmethod
    def here(cls) -> Node:
        return cls(socket.gethostname(), os.getpid(), secrets.token_hex(4))

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"


@dataclass(frozen=True)
class Timeouts:
    """How fast a dead, cut-off or frozen holder loses its lease (seconds).

    The defaults hand a frozen node's tenants over in at most ``takeover_bound()`` = 52 s.
    """

    heartbeat: float = 5.0
    idle_session: float = 20.0
    idle_in_transaction: float = 20.0
    statement: float = 30.0
    keepalive_idle: int = 5
    keepalive_interval: int = 5
    keepalive_count: int = 3
    tcp_user_timeout: float = 20.0
    connect: float = 10.0
    poll: float = 1.0
    # After a run lost its lease (the database restarted or failed over, the node was cut off or
    # frozen), the daemon tries the tenant again after this long (plus up to half as much, at random).
    retry: float = 10.0

    @classmethod
    def configured(cls) -> Timeouts:
        """The defaults above, or (tests only: a freeze in seconds, not minutes) the JSON object of
        fields in ``$SYNCD_TEST_LEASE_TIMEOUTS``. No config key sets them: SPEC §11's 60 s holds."""
        raw = os.environ.get(TEST_TIMEOUTS_ENV)
        return cls(**json.loads(raw)) if raw else cls()

    def __post_init__(self) -> None:
        # A heartbeat slower than half the idle timeouts would let the server end a live holder's session.
        if min(self.heartbeat, self.poll, self.statement, self.tcp_user_timeout, self.connect, self.retry) <= 0:
            raise ValueError("lease timeouts must be positive")
        if 2 * self.heartbeat > min(self.idle_session, self.idle_in_transaction):
            raise ValueError(f"the lease heartbeat ({self.heartbeat:g} s) must be at most half the idle timeouts "
                             f"({min(self.idle_session, self.idle_in_transaction):g} s)")

    def takeover_bound(self) -> float:
        """Worst case from a holder freezing to another node holding its lease."""
        frozen = self.statement + max(self.idle_in_transaction, self.idle_session)
        gone = max(self.keepalive_idle + self.keepalive_interval * self.keepalive_count, self.tcp_user_timeout)
        return max(frozen, gone) + 2 * self.poll

    def session_settings(self) -> dict[str, str]:
        ms = lambda seconds: str(int(seconds * 1000))  # noqa: E731
        return {
            "idle_session_timeout": ms(self.idle_session),
            "idle_in_transaction_session_timeout": ms(self.idle_in_transaction),
            "statement_timeout": ms(self.statement),
            "tcp_keepalives_idle": str(self.keepalive_idle),
            "tcp_keepalives_interval": str(self.keepalive_interval),
            "tcp_keepalives_count": str(self.keepalive_count),
            "tcp_user_timeout": ms(self.tcp_user_timeout),
        }

    def libpq_params(self) -> dict[str, Any]:
        """The client side: a cut-off node notices too, and its own writes fail instead of hanging."""
        return {
            "connect_timeout": max(1, int(self.connect)),
            "keepalives": 1,
            "keepalives_idle": self.keepalive_idle,
            "keepalives_interval": self.keepalive_interval,
            "keepalives_count": self.keepalive_count,
            "tcp_user_timeout": int(self.tcp_user_timeout * 1000),
        }


@dataclass(frozen=True)
class Holder:
    """One held lease, as ``syncd status`` shows it."""

    kind: str
    name: str
    node: str
    host: str
    pid: int
    since: datetime
    heartbeat: datetime


def lock_key(name: str) -> int:
    """A stable, non-negative int4 for a name (so pg_locks.objid, an oid, equals it)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") & 0x7FFFFFFF


def connect(url: str, node: Node, timeouts: Timeouts) -> Any:
    """A direct, autocommit session with the timeouts that make a lost holder lose its lease."""
    import psycopg  # the 'cluster' extra; only cluster mode needs it

    try:
        conn = psycopg.connect(url, autocommit=True, application_name=f"syncd:{node}"[:63],
                               **timeouts.libpq_params())
    except psycopg.Error as exc:
        raise LeaseLost(f"cannot reach the state database: {_reason(exc)}") from None
    try:
        if conn.info.server_version < MIN_SERVER_VERSION:
            raise LeaseLost(f"cluster mode needs PostgreSQL 14 or newer (idle_session_timeout); "
                            f"the server is {conn.info.server_version}")
        for name, value in timeouts.session_settings().items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        _ensure_schema(conn)
    except psycopg.Error as exc:
        conn.close()
        raise LeaseLost(f"cannot prepare the state database session: {_reason(exc)}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _ensure_schema(conn: Any) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        conn.execute(SCHEMA)


def _reason(exc: BaseException) -> str:
    """The server's or libpq's message, first line only (a URL's password never appears in it)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class Lease:
    """A held lease. Make every state write of the run on :attr:`connection`; release at the end."""

    def __init__(self, conn: Any, kind: str, name: str, node: Node, namespace: int, timeouts: Timeouts) -> None:
        self._conn = conn
        self.kind, self.name, self.node = kind, name, node
        self.namespace, self.key = namespace, lock_key(name)
        self.timeouts = timeouts
        self._lost: str | None = None
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lease-{name}", daemon=True)

    def _start(self) -> None:
        self._conn.execute(
            """INSERT INTO leases (kind, name, node, host, pid, backend_pid, lock_key, since, heartbeat)
               VALUES (%s, %s, %s, %s, %s, pg_backend_pid(), %s, now(), now())
               ON CONFLICT (kind, name) DO UPDATE SET node = excluded.node, host = excluded.host,
                   pid = excluded.pid, backend_pid = excluded.backend_pid, lock_key = excluded.lock_key,
                   since = excluded.since, heartbeat = excluded.heartbeat""",
            (self.kind, self.name, str(self.node), self.node.host, self.node.pid, self.key))
        self._beat.start()

    @property
    def connection(self) -> Any:
        """The session that holds the lock; raises LeaseLost once it is gone."""
        if self._lost or self._conn.closed or self._conn.broken:
            raise LeaseLost(self._lost_message())
        return self._conn

    @property
    def alive(self) -> bool:
        return not (self._lost or self._conn.closed or self._conn.broken)

    def verify(self) -> None:
        """Ask the server whether this session still holds the lock (raises LeaseLost if not)."""
        import psycopg

        try:
            row = self.connection.execute(
                """SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
                   AND classid = %s::bigint::oid AND objid = %s::bigint::oid AND objsubid = 2 AND granted""",
                (self.namespace, self.key)).fetchone()
        except psycopg.Error as exc:
            self._lost = _reason(exc)
            raise LeaseLost(self._lost_message()) from None
        if not row or row[0] != 1:
            self._lost = "the session no longer holds its advisory lock"
            raise LeaseLost(self._lost_message())

    def _lost_message(self) -> str:
        return f"lease on {self.kind} {self.name} lost: {self._lost or 'its connection is closed'}"

    def _heartbeat(self) -> None:
        """Keep the session busy enough that idle_session_timeout ends it only when we are frozen or gone."""
        import psycopg

        while not self._stop.wait(self.timeouts.heartbeat):
            conn = self._conn
            if conn.closed or conn.broken:
                self._lost = self._lost or "connection closed"
                return
            # A heartbeat that cannot finish within the takeover bound means the server has ended, or
            # will end, this session, and another node may hold the lease: cut our end of the socket,
            # so that the run's blocked write fails now instead of when TCP gives up (a middlebox that
            # acknowledges but does not forward, e.g. a TCP proxy that lost its server, can take hours).
            watchdog = threading.Timer(self.timeouts.takeover_bound(), self._sever)
            watchdog.daemon = True
            watchdog.start()
            try:
                if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                    conn.execute("UPDATE leases SET heartbeat = now() WHERE kind = %s AND name = %s "
                                 "AND backend_pid = pg_backend_pid()", (self.kind, self.name))
                else:
                    # The run is inside a transaction: a no-op there keeps the session alive without
                    # writing into the run's transaction.
                    conn.execute("SELECT 1")
            except psycopg.OperationalError as exc:
                self._lost = _reason(exc)
                return
            except psycopg.Error:
                continue  # the run's own transaction failed; it rolls back, the session lives
            finally:
                watchdog.cancel()

    def _sever(self) -> None:
        self._lost = f"no answer from the state database within {self.timeouts.takeover_bound():g} s"
        with contextlib.suppress(Exception):
            # shutdown() on a duplicate acts on the shared socket: libpq's blocked read returns at once.
            severed = socket.socket(fileno=os.dup(self._conn.pgconn.socket))
            try:
                severed.shutdown(socket.SHUT_RDWR)
            finally:
                severed.close()

    def slot_done(self, slot: str) -> bool:
        """Whether some node already finished this scheduled slot (or a later one).

        Every node schedules every tenant; the first to take the lease runs the slot and the others,
        finding it done, skip it. A node that dies mid-run never marks it, so the next holder runs it.
        """
        row = self.connection.execute("SELECT last_slot FROM slots WHERE kind = %s AND name = %s",
                                      (self.kind, self.name)).fetchone()
        return bool(row and row[0] >= slot)

    def mark_done(self, slot: str) -> None:
        """Record the slot as done, on the lease's own session: a node that lost its lease cannot."""
        self.connection.execute(
            """INSERT INTO slots (kind, name, last_slot, node, done_at) VALUES (%s, %s, %s, %s, now())
               ON CONFLICT (kind, name) DO UPDATE SET last_slot = greatest(slots.last_slot, excluded.last_slot),
                   node = excluded.node, done_at = excluded.done_at""", (self.kind, self.name, slot, str(self.node)))

    def release(self) -> None:
        """Give the lease back (unlock, forget the row, close). Safe on a lost lease."""
        self._stop.set()
        if self._beat.is_alive():
            self._beat.join(timeout=self.timeouts.heartbeat + 5)
        with contextlib.suppress(Exception):
            if not (self._conn.closed or self._conn.broken):
                self._conn.execute("DELETE FROM leases WHERE kind = %s AND name = %s "
                                   "AND backend_pid = pg_backend_pid()", (self.kind, self.name))
                self._conn.execute("SELECT pg_advisory_unlock(%s, %s)", (self.namespace, self.key))
        with contextlib.suppress(Exception):
            self._conn.close()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(url: str, tenant: str, *, node: Node, wait: bool = True, stop: threading.Event | None = None,
            on_wait: Callable[[str], None] | None = None, timeouts: Timeouts | None = None) -> Lease:
    """Take the tenant's lease. Busy (exit 4 for ``sync --no-wait``) if held and ``wait`` is False,
    or if ``stop`` is set while waiting. LeaseLost if the database cannot be reached."""
    return _acquire(url, "tenant", tenant, TENANT_NS, node=node, wait=wait, stop=stop, on_wait=on_wait,
                    timeouts=timeouts or Timeouts())


def _acquire(url: str, kind: str, name: str, namespace: int, *, node: Node, wait: bool,
             stop: threading.Event | None, on_wait: Callable[[str], None] | None, timeouts: Timeouts) -> Lease:
    import psycopg

    conn = connect(url, node, timeouts)
    key = lock_key(name)
    try:
        waited = False
        while not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (namespace, key)).fetchone()[0]:
            message = f"{kind} {name} is being synced by {_describe(conn, kind, name)}"
            if not wait:
                raise Busy(message)
            if on_wait and not waited:
                on_wait(f"{message}; waiting for it")
            waited = True
            # Polling, not pg_advisory_lock(): a blocked statement would meet statement_timeout
            # and could not be interrupted by `stop`.
            if stop is not None:
                if stop.wait(timeouts.poll):
                    raise Busy(f"stopped while waiting for {kind} {name}")
            else:
                threading.Event().wait(timeouts.poll)
        _check_direct(conn)
        lease = Lease(conn, kind, name, node, namespace, timeouts)
        lease._start()
        return lease
    except psycopg.Error as exc:
        conn.close()
        raise LeaseLost(f"lost the state database while taking {kind} {name}: {_reason(exc)}") from None
    except BaseException:
        conn.close()
        raise


def _check_direct(conn: Any) -> None:
    """Refuse a transaction-pooled connection: two statements served by two backends."""
    first = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    second = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    if first != second:
        raise LeaseLost("the state database is reached through a transaction pooler (PgBouncer "
                        "pool_mode=transaction?): session advisory locks need a direct or session-pooled connection")


def _describe(conn: Any, kind: str, name: str) -> str:
    row = conn.execute(
        "SELECT node, since FROM leases WHERE kind = %s AND name = %s", (kind, name)).fetchone()
    if not row:
        return "another node"
    return f"node {row[0]} since {row[1]:%Y-%m-%d %H:%M:%S %Z}"


@contextlib.contextmanager
def tenant_lease(url: str, tenant: str, *, node: Node | None = None, wait: bool = True,
                 on_wait: Callable[[str], None] | None = None, stop: threading.Event | None = None,
                 timeouts: Timeouts | None = None) -> Iterator[Lease]:
    """:func:`syncd.lock.tenant_lock`'s shape for cluster mode, yielding the lease for the store."""
    lease = acquire(url, tenant, node=node or Node.here(), wait=wait, on_wait=on_wait, stop=stop,
                    timeouts=timeouts)
    with lease:
        yield lease


@contextlib.contextmanager
def once_per_cluster(url: str, job: str, slot: str, *, node: Node,
                     timeouts: Timeouts | None = None) -> Iterator[Lease | None]:
    """Run a cluster-wide job (GG4L discovery, the digest) once per slot, on one node.

    Yields the lease when this node should run ``slot`` (ISO text, later slots sort after), or None
    when another node is running the job or already ran this slot. The slot is marked done on the
    lease's connection after the block, so a node that dies mid-job leaves the slot to another.
    """
    try:
        lease = _acquire(url, "cluster", job, CLUSTER_NS, node=node, wait=False, stop=None, on_wait=None,
                         timeouts=timeouts or Timeouts())
    except Busy:
        yield None
        return
    with lease:
        if lease.slot_done(slot):
            yield None
            return
        yield lease
        lease.mark_done(slot)


@contextlib.contextmanager
def cluster_job(url: str, job: str, since: str, *, node: Node, stop: threading.Event | None = None,
                done_as: str | None = None, timeouts: Timeouts | None = None) -> Iterator[Lease | None]:
    """Run a cluster-wide job unless a run of it that started at or after ``since`` has finished.

    Unlike :func:`once_per_cluster`, a node finding the job running elsewhere waits for that run
    (polling; ``stop`` ends the wait with Busy) and then looks at the ledger, so that a node that
    dies mid-job is replaced, not skipped. ``since`` is ISO text: the start of the current period
    (GG4L's discovery interval, the digest's day) to run once per period across the cluster, or the
    moment something asked for a fresh run (a webhook) to run unless one started after it. The
    ledger records the start of each finished run (this node's clock: nodes' clocks must agree to
    within a few seconds, as NTP keeps them), or ``done_as`` (a period's own name, e.g. a local day).
    """
    lease = _acquire(url, "cluster", job, CLUSTER_NS, node=node, wait=True, stop=stop, on_wait=None,
                     timeouts=timeouts or Timeouts())
    with lease:
        if lease.slot_done(since):
            yield None
            return
        started = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        yield lease
        lease.mark_done(done_as or started)


def holders(url: str, timeouts: Timeouts | None = None) -> list[Holder]:
    """The leases held now (a row left by a dead node whose lock is gone is not shown)."""
    conn = connect(url, Node.here(), timeouts or Timeouts())
    try:
        rows = conn.execute(
            """SELECT l.kind, l.name, l.node, l.host, l.pid, l.since, l.heartbeat FROM leases l
               JOIN pg_locks k ON k.locktype = 'advisory' AND k.granted AND k.pid = l.backend_pid
                AND k.objsubid = 2 AND k.objid::bigint = l.lock_key
                AND k.classid::bigint = CASE l.kind WHEN 'tenant' THEN %s ELSE %s END
                AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               ORDER BY l.kind DESC, l.name""", (TENANT_NS, CLUSTER_NS)).fetchall()
    finally:
        conn.close()
    return [Holder(*row) for row in rows]
