"""Start-up: what `syncd sync` imports. A module the sync path does not need costs every run (each
cron'd or scheduled command) its import time, so the daemon's, the listener's, GG4L's and the
migrations' libraries stay out of it (issue 15: the no-change resync against a naive script)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import SYNCD

from syncd.sandbox import Sandbox
from syncd.store import Store
from syncd.store.schema import migrations

# Imported only by the commands, the daemon or a state file with a migration pending.
NOT_ON_THE_SYNC_PATH = (
    "sqlite_utils", "click", "dateutil", "pluggy",  # migrations only
    "apscheduler", "waitress", "prometheus_client", "apprise", "psycopg",  # the daemon, cluster mode
    "syncd.daemon", "syncd.web", "syncd.metrics", "syncd.alerts", "syncd.lock_cluster",
    "syncd.gg4l_config", "syncd.gg4l.lifecycle", "syncd.gg4l.partner", "syncd.gg4l.service", "syncd.gg4l_store",
)


def imported_by(args: list[str]) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The modules a real `syncd` command imports (from ``python -X importtime``)."""
    result = subprocess.run([sys.executable, "-X", "importtime", SYNCD, *args], capture_output=True, text=True,
                            timeout=120)
    names = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return names, result


def test_a_no_change_sync_imports_nothing_it_does_not_need(sandbox: Sandbox, tmp_path: Path):
    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    first, result = imported_by(["--config", str(config), "sync", "lincoln", "--json"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sqlite_utils" in first  # a new state file: the migrations make its tables

    again, result = imported_by(["--config", str(config), "sync", "lincoln", "--json"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"calls": 0' in result.stdout
    assert {"syncd.engine", "syncd.sources.oneroster", "requests"} <= again  # the check reads the list
    assert sorted(again.intersection(NOT_ON_THE_SYNC_PATH)) == []


def test_a_state_file_with_every_step_opens_as_sqlite_utils_left_its_connection(tmp_path: Path):
    Store.open(tmp_path).close()  # a new file: every migration runs (through sqlite-utils)
    store = Store.open(tmp_path)  # none pending: sqlite-utils is not needed
    try:
        assert store.conn.execute("PRAGMA recursive_triggers").fetchone() == (1,)
        assert store.conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        steps = store.conn.execute("SELECT count(*) FROM _sqlite_migrations WHERE migration_set = 'syncd'")
        assert steps.fetchone()[0] >= 10
    finally:
        store.close()


def test_a_step_the_state_file_has_not_run_is_applied_on_open(tmp_path: Path, monkeypatch):
    Store.open(tmp_path).close()

    def m999_later(db: Any) -> None:
        db.execute("CREATE TABLE later (x TEXT)")

    monkeypatch.setattr(migrations, "_steps", [*migrations._steps, m999_later])  # a newer syncd's step
    store = Store.open(tmp_path)
    try:
        assert store.conn.execute("SELECT count(*) FROM later").fetchone() == (0,)
        recorded = store.conn.execute("SELECT count(*) FROM _sqlite_migrations WHERE name = 'm999_later'")
        assert recorded.fetchone() == (1,)
    finally:
        store.close()
