"""The PostgreSQL schema (syncd/pg_schema.py) and `state copy` of a real SQLite store, on a real server.

These tests open the SQLite file with sqlite3 on purpose: the file's own tables and columns are
what `state copy` reads and what the PostgreSQL schema must match, beneath the store's API.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

import pg
import psycopg
import pytest
from conftest import summary, syncd

from syncd import gg4l_store, pg_schema, state_copy
from syncd.model import canonical_json
from syncd.store import Store

# The copy's source is a SQLite store whatever `--state-backend` says (tests/conftest.py reads this).
SQLITE_SOURCE = True


@pytest.fixture
def state_backend() -> str:
    return "sqlite"


def _sqlite_columns(path: Path) -> dict[str, list[str]]:
    with sqlite3.connect(path) as db:
        tables = [row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\'")]
        return {t: [row[1] for row in db.execute(f"SELECT * FROM pragma_table_info('{t}')")] for t in tables}


def _pg_columns(url: str) -> dict[str, list[str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT table_name, column_name FROM information_schema.columns "
                            "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position").fetchall()
    columns: dict[str, list[str]] = {}
    for table, column in rows:
        columns.setdefault(table, []).append(column)
    return columns


def test_the_postgresql_schema_has_every_sqlite_table_and_column_in_order(pg_database: str, tmp_path: Path) -> None:
    Store.open(tmp_path)  # a fresh SQLite store, every migration applied
    with sqlite3.connect(tmp_path / "syncd.db") as db:
        gg4l_store.migrate(db)  # the GG4L tables, which SQLite makes when GG4L is first used
    with psycopg.connect(pg_database, autocommit=True) as conn:
        assert pg_schema.migrate(conn) == [name for name, _ in pg_schema.MIGRATIONS]
        assert pg_schema.migrate(conn) == [], "a second start applies nothing"
        assert pg_schema.applied(conn) == [name for name, _ in pg_schema.MIGRATIONS]
    sqlite_side = _sqlite_columns(tmp_path / "syncd.db")
    pg_side = _pg_columns(pg_database)
    assert {t: pg_side.get(t) for t in sqlite_side} == sqlite_side
    assert set(pg_side) - set(sqlite_side) == {"_syncd_migrations", "leases", "slots"}
    with sqlite3.connect(tmp_path / "syncd.db") as db:
        sqlite_migrations = [row[0] for row in db.execute("SELECT name FROM _sqlite_migrations ORDER BY id")]
    assert sqlite_migrations == [name for name, _ in pg_schema.MIGRATIONS if name.startswith("m")], \
        "a new SQLite migration needs its PostgreSQL translation in syncd/pg_schema.py"


def test_nodes_starting_together_migrate_once(pg_database: str) -> None:
    results: list[list[str]] = []
    failures: list[BaseException] = []

    def start() -> None:
        try:
            with psycopg.connect(pg_database, autocommit=True) as conn:
                results.append(pg_schema.migrate(conn))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert len(results) == 4
    applied_now = [name for result in results for name in result]
    assert sorted(applied_now) == sorted(name for name, _ in pg_schema.MIGRATIONS), "each one exactly once"


@pytest.fixture
def synced_state(sandbox, config: Path, roster, tmp_path: Path) -> Path:
    """A real SQLite store: two sandbox syncs, with a rejected user in errors and escrow, and tombstones."""
    sandbox.provision.reject = lambda body: (
        (422, "email address already belongs to another user")
        if body.get("user", {}).get("ids", {}).get("external") == "usr-000040" else None)
    first = syncd(config, "sync", "lincoln", "--json")
    assert summary(first)["status"] == "completed_with_errors", first.stderr[-2000:]
    for enrollment in [e for e in roster.enrollments.values() if e["status"] == "active"][:3]:
        enrollment["status"] = "tobedeleted"
    second = syncd(config, "sync", "lincoln", "--json")
    assert summary(second)["counts"]["enrollments"]["removed"] == 3
    return tmp_path / "state" / "syncd.db"


def _fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_state_copy_moves_every_state_table_verified_and_leaves_sqlite_untouched(
        synced_state: Path, pg_database: str) -> None:
    before = _fingerprint(synced_state)
    with sqlite3.connect(synced_state) as db:
        expected = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in pg_schema.STATE_TABLES}
        acked = {(t, *row[:-1]): json.loads(row[-1]) for t in state_copy.ACKED
                 for row in db.execute(f"SELECT tenant, sid, removed_at, body FROM {t}")}
        escrow_keys = {json.dumps(json.loads(row[0])) for row in db.execute("SELECT key FROM escrow")}
    assert expected["acked_enrollments"] > 500 and expected["escrow"] >= 1 and expected["errors"] >= 1
    assert expected["runs"] == 2
    seen: list[str] = []

    copied = state_copy.copy_state(synced_state, pg_database, progress=lambda table, n: seen.append(table))

    assert copied == expected
    assert seen == list(pg_schema.STATE_TABLES)
    assert _fingerprint(synced_state) == before, "the SQLite file must not change"
    with psycopg.connect(pg_database) as conn:
        texts = {(t, *row[:-1]): row[-1] for t in state_copy.ACKED
                 for row in conn.execute(f"SELECT tenant, sid, removed_at, body FROM {t}")}
        assert {k: json.loads(v) for k, v in texts.items()} == acked, "sids, tombstones and bodies arrive unchanged"
        assert all(text == canonical_json(json.loads(text)) for text in texts.values()), "in canonical text"
        tombstones = conn.execute("SELECT count(*) FROM acked_enrollments WHERE removed_at IS NOT NULL").fetchone()
        assert tombstones[0] == 3
        stale = conn.execute("SELECT count(*) FROM acked_users WHERE hash <> md5(body)").fetchone()[0]
        assert stale == 0, "hashes are in PostgreSQL's form, so the first run there pushes nothing"
        assert {json.dumps(json.loads(row[0])) for row in conn.execute("SELECT key FROM escrow")} == escrow_keys
        # The next error gets an id after the copied ones.
        next_id = conn.execute("INSERT INTO errors (run_id, tenant, entity, source_id, stage, message, attempts, "
                               "first_seen, last_seen) VALUES ('r', 't', 'user', 'u', 'push', 'm', 1, 'x', 'x') "
                               "RETURNING id").fetchone()[0]
        assert next_id > max(row[0] for row in conn.execute("SELECT id FROM errors WHERE run_id <> 'r'"))
        conn.rollback()


def test_state_copy_refuses_a_database_that_already_holds_state(synced_state: Path, pg_database: str) -> None:
    state_copy.copy_state(synced_state, pg_database)
    with psycopg.connect(pg_database) as conn:
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    with pytest.raises(state_copy.CopyError, match=r"already holds state \(runs, errors, acked_courses"):
        state_copy.copy_state(synced_state, pg_database)
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == runs


def test_state_copy_refuses_a_store_made_by_a_newer_syncd(tmp_path: Path, pg_database: str) -> None:
    Store.open(tmp_path)
    with sqlite3.connect(tmp_path / "syncd.db") as db:
        db.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                   "VALUES ('syncd', 'm099_future', 'now')")
    with pytest.raises(state_copy.CopyError, match="m099_future"):
        state_copy.copy_state(tmp_path / "syncd.db", pg_database)
    with psycopg.connect(pg_database) as conn:
        assert pg_schema.applied(conn) == [], "nothing was created in PostgreSQL"


def test_state_copy_to_an_unreachable_database_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    Store.open(tmp_path)
    url = f"postgresql://syncd:hunter2-secret@127.0.0.1:{pg.free_port()}/syncd"
    with pytest.raises(state_copy.CopyError, match="nothing was committed") as caught:
        state_copy.copy_state(tmp_path / "syncd.db", url)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(state_copy.CopyError, match="no SQLite state store"):
        state_copy.copy_state(tmp_path / "missing.db", url)


def test_syncd_state_copy_command(synced_state: Path, config: Path, pg_database: str) -> None:
    url_file = config.parent / "pg-url"
    url_file.write_text(pg_database + "\n")
    result = syncd(config, "state", "copy", "--to", f"file:{url_file}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "acked_enrollments" in result.stdout and "counts verified" in result.stdout
    again = syncd(config, "state", "copy", "--to", f"file:{url_file}")
    assert again.returncode == 1 and "already holds state" in again.stderr
    assert syncd(config, "state", "copy", "--to", "mysql://x").returncode == 2
