"""GG4L in the real `syncd run`, against the fake GG4L and the fake provision API over loopback.

Signed webhook -> discovery -> district active -> first sync equal to the expected mapping -> a
resync sending nothing; hostile webhooks; `mode = test`; expiry; missing -> revoked -> purged ->
restored with its old sids (time moved in the store, never slept); a rotated secret; static and
district tenants side by side; `syncd sync gg4l-…` and `syncd status`; no secret anywhere.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_daemon import Daemon
from test_web import free_port, get

from syncd.gg4l import tenant_name
from syncd.sandbox import Roster, expected_mapping
from syncd.sandbox.gg4l import Gg4lSandbox, send_webhook

ROLES = {"student": "learner", "teacher": "instructor"}
G1 = "6F9619FF-8B86-D011-B42D-00C04FC964FF"
G2 = "0b5e9a2c-1111-4222-8333-944455556666"
T1, T2 = tenant_name(G1), tenant_name(G2)


def wait(predicate: Callable[[], bool], timeout: float = 30, what: str = "", daemon: Daemon | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if daemon is not None:
            assert daemon.process.poll() is None, f"daemon exited: {daemon.log_path.read_text()[-3000:]}"
        time.sleep(0.05)
    tail = daemon.log_path.read_text()[-4000:] if daemon else ""
    raise AssertionError(f"timed out waiting for {what}: {tail}")


def query(state: Path, sql: str, *args: object) -> list[tuple]:
    db = state / "syncd.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # a table not created yet
        return []


def finished_runs(state: Path, tenant: str) -> list[dict]:
    rows = query(state, "SELECT run_id, status, dry_run, calls, summary FROM runs WHERE tenant = ? "
                 "AND finished_at IS NOT NULL ORDER BY started_at", tenant)
    return [{"run_id": r[0], "status": r[1], "dry_run": r[2], "calls": r[3],
             "summary": json.loads(r[4]) if r[4] else {}} for r in rows]


def district_state(state: Path, tenant: str) -> str | None:
    rows = query(state, "SELECT state FROM districts WHERE tenant = ?", tenant)
    return rows[0][0] if rows else None


def sids(state: Path, tenant: str) -> dict[str, str]:
    out = {}
    for table in ("acked_courses", "acked_users"):
        for source_id, sid in query(state, f"SELECT source_id, sid FROM {table} WHERE tenant = ?", tenant):
            out[f"{table}:{source_id}"] = sid
    for course, user, sid in query(state, "SELECT course_id, user_id, sid FROM acked_enrollments WHERE tenant = ?",
                                   tenant):
        out[f"enrollment:{course}:{user}"] = sid
    return out


class Setup:
    def __init__(self, box: Gg4lSandbox, tmp_path: Path, port: int, config: Path):
        self.box, self.tmp_path, self.port, self.config = box, tmp_path, port, config
        self.state = tmp_path / "state"
        self.url = f"http://127.0.0.1:{port}/webhooks/gg4l"
        self.daemons: list[Daemon] = []

    def start(self) -> Daemon:
        daemon = Daemon(self.config, self.tmp_path)
        self.daemons.append(daemon)
        wait(lambda: _healthy(self.port), what="the listener", daemon=daemon)
        return daemon

    def hook(self, guid: str, mode: str = "standard", **options: object) -> int:
        return send_webhook(self.url, guid, mode, **options).status  # type: ignore[arg-type]

    def run_now(self, daemon: Daemon, tenant: str, before: int) -> dict:
        """SIGUSR1, then the next finished run of ``tenant``."""
        daemon.process.send_signal(signal.SIGUSR1)
        wait(lambda: len(finished_runs(self.state, tenant)) > before, what=f"run {before + 1} of {tenant}",
             daemon=daemon)
        return finished_runs(self.state, tenant)[-1]


def done(daemon: Daemon) -> int:
    return sum(e["event"] == "daemon.run_done" for e in daemon.events())


def _healthy(port: int) -> bool:
    try:
        return get(port, "/healthz")[0] == 200
    except OSError:
        return False


def write_config(box: Gg4lSandbox, tmp_path: Path, port: int, static: str = "", **options: object) -> Path:
    config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state", **options)  # type: ignore[arg-type]
    config.write_text(config.read_text() + f'\n[daemon.http]\nlisten = "127.0.0.1:{port}"\n' + static)
    return config


@pytest.fixture
def gg4l(tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    boxes: list[Gg4lSandbox] = []
    setups: list[Setup] = []

    def make(static: str = "", **options: object) -> Setup:
        box = Gg4lSandbox()
        boxes.append(box)
        port = free_port()
        setup = Setup(box, tmp_path, port, write_config(box, tmp_path, port, static, **options))
        setups.append(setup)
        return setup

    yield make
    for setup in setups:
        for daemon in setup.daemons:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait()
            daemon.log_file.close()
    for box in boxes:
        box.stop()


def roster(seed: int) -> Roster:
    return Roster.generate(seed=seed, users=40, classes=4, enrollments=120)


# --- the main flow ---------------------------------------------------------------------------


def test_webhook_discovery_first_sync_then_a_resync_sending_nothing(gg4l):
    setup = gg4l()
    box = setup.box
    district = box.gg4l.add_district(G1, roster(11))
    daemon = setup.start()
    assert setup.hook(G1) == 200
    wait(lambda: finished_runs(setup.state, T1), what="the district's first sync", daemon=daemon)
    first = finished_runs(setup.state, T1)[0]
    assert first["status"] == "completed", first
    assert not first["dry_run"]
    assert district_state(setup.state, T1) == "active"
    assert box.provision.snapshot() == expected_mapping(district.roster, ROLES)
    assert box.provision.duplicates() == 0

    # GG4L finishes another import (nothing changed in it): the next run sends nothing.
    district.data_ts = datetime.now(UTC)
    assert setup.hook(G1) == 200  # a replay: triggers a discovery, changes nothing else
    wait(lambda: any(e["event"] == "gg4l.data_ready" for e in daemon.events()), what="the new data", daemon=daemon)
    second = setup.run_now(daemon, T1, 1)
    assert second["status"] == "completed" and second["calls"] == 0, second
    # Without a new import, a scheduled run is skipped (no source request at all).
    wait(lambda: done(daemon) == 2, what="the second run's end", daemon=daemon)
    requests_before = district.requests
    daemon.process.send_signal(signal.SIGUSR1)
    wait(lambda: any(e["event"] == "gg4l.run_skipped" for e in daemon.events()), what="a skipped run", daemon=daemon)
    assert district.requests == requests_before
    assert len(finished_runs(setup.state, T1)) == 2
    assert daemon.stop() == 0
    assert query(setup.state, "SELECT count(*) FROM districts") == [(1,)]
