"""The SQLite state store: one file, ``state_dir/syncd.db``, owner-only, WAL.

:class:`Store` opens the file and answers the questions about every tenant (history, pruning,
approvals); ``store.tenant(name)`` gives the engine a :class:`TenantStore`, one tenant's state,
whose methods never take the tenant again. The parts, by concern:

- ``schema.py``: the tables and their migrations;
- ``runs.py``: runs and per-record errors;
- ``staging.py``: staged source rows and the desired state built from them in SQL;
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

import os
import sqlite3
from pathlib import Path

import sqlite_utils

from syncd.model import content_hash
from syncd.store.acks import Acknowledgements, CallLog
from syncd.store.base import key_sql, utcnow
from syncd.store.diff import Diff
from syncd.store.explain import Trail
from syncd.store.holds import ESCROW_DELAYS_H, Approvals, Holds
from syncd.store.plan import Planning
from syncd.store.runs import History, Runs
from syncd.store.schema import migrations
from syncd.store.staging import Staging

DB_NAME = "syncd.db"


class TenantStore(Runs, Staging, Diff, Planning, Acknowledgements, Holds, Trail):
    """One tenant's state: what one run reads and writes."""

    def __init__(self, store: Store, name: str):
        self.store = store
        self.conn = store.conn
        self.name = name

    @property
    def path(self) -> Path:
        return self.store.path

    def failed_in_a_row(self) -> int:
        return self.store.failed_in_a_row(self.name)


class Store(History, Approvals):
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

    def tenant(self, name: str) -> TenantStore:
        """One tenant's state, for a run of that tenant."""
        return TenantStore(self, name)


__all__ = ["DB_NAME", "ESCROW_DELAYS_H", "CallLog", "Store", "TenantStore", "key_sql", "utcnow"]
