"""The state store a test's config names, on either backend (SQLite file or PostgreSQL), for
tests that look into it or time-travel it directly.

By config (``query(config, …)``), or by state directory (``rows(state_dir, …)``,
``execute(state_dir, …)``): with ``--state-backend=postgresql`` a state directory's store is the
database the sandbox wrote into its config (``syncd.sandbox.state_url_for``), else its SQLite file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import syncd.sandbox
from syncd import config as configuration
from syncd.store import Store


def state_url(config: Path) -> str:
    return configuration.load(Path(config)).state_url


def open_store(config: Path) -> Store:
    loaded = configuration.load(Path(config))
    return Store.open(loaded.daemon.state_dir, loaded.state_url)


@contextmanager
def store_at(state_dir: Path, url: str | None = None) -> Iterator[Store]:
    """The store of a state directory (of this test's backend, or of ``url``), through syncd's own
    API, closed after."""
    store = Store.open(Path(state_dir), url_of(state_dir) if url is None else url)
    try:
        yield store
    finally:
        store.close()


def query(config: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement (``?`` placeholders) on the config's state store, committed; its rows."""
    loaded = configuration.load(Path(config))
    return _run(loaded.state_url, loaded.daemon.state_dir, sql, params, dicts=False)


def url_of(state_dir: Path) -> str:
    """The PostgreSQL URL of the state directory's store in this test, or "" (its SQLite file)."""
    return syncd.sandbox.state_url_for(Path(state_dir)) if syncd.sandbox.state_url_for else ""


def execute(state_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement on the state directory's store, committed; its rows as tuples."""
    return _run(url_of(state_dir), Path(state_dir), sql, params, dicts=False)


def rows(state_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """One query on the state directory's store; its rows as dicts. No table yet (a daemon still
    creating the schema): no rows."""
    try:
        return _run(url_of(state_dir), Path(state_dir), sql, params, dicts=True)
    except sqlite3.OperationalError:
        return []


def _run(url: str, state_dir: Path, sql: str, params: tuple[Any, ...], *, dicts: bool) -> list[Any]:
    if url:
        import psycopg
        from psycopg.rows import dict_row, tuple_row

        with psycopg.connect(url, autocommit=True, connect_timeout=10,
                             row_factory=dict_row if dicts else tuple_row) as conn:
            cursor = conn.execute(sql.replace("%", "%%").replace("?", "%s"), params or None)
            return cursor.fetchall() if cursor.description else []
    conn = sqlite3.connect(state_dir / "syncd.db")
    try:
        if dicts:
            conn.row_factory = sqlite3.Row
        with conn:
            found = conn.execute(sql, params).fetchall()
        return [dict(r) for r in found] if dicts else found
    finally:
        conn.close()


def dump(state_dir: Path) -> bytes:
    """Everything the state directory's store holds, to search for a secret: the SQLite file's
    bytes, or every row of every table of the PostgreSQL database as text."""
    url = url_of(state_dir)
    if not url:
        return (Path(state_dir) / "syncd.db").read_bytes()
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        tables = [t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return "\n".join(str(row) for t in tables
                         for row in conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(t)))).encode()
