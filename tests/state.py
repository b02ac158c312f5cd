"""The state store a test's config names, on either backend (SQLite file or PostgreSQL), for
tests that look into it or time-travel it directly."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from syncd import config as configuration
from syncd.store import Store


def state_url(config: Path) -> str:
    return configuration.load(Path(config)).state_url


def open_store(config: Path) -> Store:
    loaded = configuration.load(Path(config))
    return Store.open(loaded.daemon.state_dir, loaded.state_url)


@contextmanager
def store_at(state_dir: Path, url: str = "") -> Iterator[Store]:
    """The store of a state directory (or of ``url``), through syncd's own API, closed after."""
    store = Store.open(state_dir, url)
    try:
        yield store
    finally:
        store.close()


def query(config: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement (``?`` placeholders) on the config's state store, committed; its rows."""
    loaded = configuration.load(Path(config))
    if loaded.state_url:
        import psycopg

        with psycopg.connect(loaded.state_url, autocommit=True, connect_timeout=10) as conn:
            cursor = conn.execute(sql.replace("?", "%s"), params or None)
            return cursor.fetchall() if cursor.description else []
    # For what the store has no API for (time travel, a table's raw text): plain SQL, on either backend.
    with sqlite3.connect(loaded.daemon.state_dir / "syncd.db") as conn:
        return conn.execute(sql, params).fetchall()
