"""The state store: by default the SQLite file ``state_dir/syncd.db`` (owner-only, WAL); with
``[state] url`` a PostgreSQL database shared by every node (``postgres.py``, SPEC §11). The same
SQL runs on both; ``dialect.py`` holds the few places where the two differ, side by side.

:class:`Store` opens the file and answers the questions about every tenant (history, pruning,
approvals); ``store.tenant(name)`` gives the engine a :class:`TenantStore`, one tenant's state,
whose methods never take the tenant again. The parts, by concern:

- ``schema.py``: the tables and their migrations;
- ``runs.py``: runs and per-record errors;
- ``staging.py``: staged source rows and the desired state built from them in SQL;
- ``pages.py``: page fingerprints, so a full extract stages only the pages that changed;
- ``diff.py``: desired against acknowledged (create / update / none) and the counts;
- ``plan.py``: the planner's SQL over ``plan_calls`` and the calls read back;
- ``acks.py``: acknowledgements, tombstones restored, disabled users;
- ``holds.py``: pending removals, held changes, approvals and the escrow;
- ``explain.py``: read-only, one record's trail for `syncd explain`.

Diffs are SQL over staged rows, so memory does not grow with the roster. Acknowledged state
moves only in :meth:`TenantStore.acknowledge`, in the same transaction that stores the ``sid``
the target returned.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from syncd import lock
from syncd.model import content_hash
from syncd.store.acks import Acknowledgements, CallLog
from syncd.store.base import key_sql, utcnow
from syncd.store.delta import Delta
from syncd.store.diff import Diff
from syncd.store.explain import Trail
from syncd.store.holds import ESCROW_DELAYS_H, Approvals, Holds
from syncd.store.pages import Pages
from syncd.store.plan import Planning
from syncd.store.runs import History, Runs
from syncd.store.schema import migrations
from syncd.store.settled import Settled
from syncd.store.staging import Staging

DB_NAME = "syncd.db"


class TenantStore(Runs, Staging, Diff, Planning, Acknowledgements, Holds, Trail, Delta, Pages, Settled):
    """One tenant's state: what one run reads and writes."""

    def __init__(self, store: Store, name: str):
        self.store = store
        self.dialect = store.dialect
        # On PostgreSQL a run writes on its tenant's lease connection (fencing); elsewhere, the store's.
        leased = store.leases.connection(name) if store.leases else None
        self.conn = leased or store.conn
        self.name = name

    @property
    def path(self) -> Path:
        return self.store.path

    def failed_in_a_row(self) -> int:
        return self.store.failed_in_a_row(self.name)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Processes that open the store at the same moment (a daemon, cron'd syncs) set it up one at a
    time: pragmas and migrations are not safe to run twice at once on a fresh file."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise StateError(f"{lock_path}: cannot use the state directory ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a state file written by a newer syncd: an older one would misread its tables.
    (A newer file has every step this version knows, so the migrations above changed nothing.)"""
    applied = conn.execute("SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY rowid",
                           (migrations.name,)).fetchall()
    unknown = [name for (name,) in applied if not _registered(name)]
    if unknown:
        raise StateError(f"{path}: the state file was written by a newer syncd (schema step {unknown[-1]} "
                         "is unknown to this version); upgrade syncd")


def _registered(name: str) -> bool:
    return name in migrations.names()


class StateError(Exception):
    """The state directory or file cannot be used (missing rights, damaged, from a newer syncd);
    the message says which and what to do."""


class Store(History, Approvals):
    url = ""  # the PostgreSQL URL of a shared store; "" for the SQLite file
    leases: Any = None  # syncd.store.postgres.Leases on PostgreSQL

    def __init__(self, path: Path):
        self.path = path
        try:
            conn = sqlite3.connect(path, timeout=60, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StateError(f"{path}: cannot open the state file ({exc})") from None
        self.conn = conn
        try:
            with _exclusive(path.with_name(f".{path.name}.lock")):
                self._prepare()
        except BaseException:
            conn.close()
            raise

    def _prepare(self) -> None:
        conn = self.conn
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a process crash (kill -9); only a power loss can
            # roll back the last transactions, which are then re-pushed as idempotent upserts.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA cache_size=-16000")  # 16 MB: bounded whatever the roster size
            conn.execute("PRAGMA recursive_triggers=on")  # what sqlite_utils.Database(conn) used to set
            conn.create_function("digest", 1, content_hash, deterministic=True)
            migrations.apply(conn)  # sqlite-utils is imported only if a step is pending
            _check_schema(conn, self.path)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: the state file cannot be used ({exc}). If it is damaged, move it "
                             "away: the next run starts afresh and re-pushes every record as an upsert.") from None

    @classmethod
    def open(cls, state_dir: Path, url: str = "") -> Store:
        """The SQLite file in ``state_dir``, or with ``url`` the PostgreSQL store."""
        if url:
            from syncd.store import postgres

            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            store = cls.__new__(cls)
            postgres.open_store(store, url, state_dir)
            return store
        path = state_dir / DB_NAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not state_dir.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(state_dir))
        except OSError as exc:
            raise StateError(f"{exc.filename or state_dir}: cannot use the state directory ({exc.strerror})") from None
        try:
            # Create it owner-only before SQLite does, so no moment exists where others can read it.
            # O_EXCL: never open (and close) a file SQLite may already use in this process, since
            # closing any descriptor of a file drops every POSIX lock the process holds on it.
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise StateError(f"{exc.filename or path}: cannot use the state directory ({exc.strerror})") from None
        return cls(path)

    def close(self) -> None:
        self.conn.close()

    def tenant(self, name: str) -> TenantStore:
        """One tenant's state, for a run of that tenant (inside :meth:`hold` to write it)."""
        return TenantStore(self, name)

    @contextlib.contextmanager
    def hold(self, name: str, *, wait: bool = True, on_wait: Callable[[str], None] | None = None,
             stop: threading.Event | None = None) -> Iterator[Any]:
        """One run of the tenant at a time: the flock beside the SQLite file (yields None), or the
        tenant's lease in PostgreSQL, on any node (yields the :class:`syncd.lease.Lease`). Raises
        :class:`syncd.lock.Busy` when held elsewhere and not waiting."""
        if self.leases is None:
            with lock.tenant_lock(self.path.parent, name, wait=wait, on_wait=on_wait, stop=stop):
                yield None
        else:
            with self.leases.hold(name, wait=wait, on_wait=on_wait, stop=stop) as held:
                yield held

    def holders(self) -> list[Any]:
        """The leases held now, on any node (:class:`syncd.lease.Holder`); none on SQLite."""
        if self.leases is None:
            return []
        from syncd import lease

        return lease.holders(self.url)


__all__ = ["DB_NAME", "ESCROW_DELAYS_H", "CallLog", "StateError", "Store", "TenantStore", "key_sql", "utcnow"]
