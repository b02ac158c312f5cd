"""A broken environment (issue 11, classes 5 and 8): damaged or foreign state, odd config and
secret files, Ctrl-C, forty processes at once. Always one clear line and an exit code, never a
traceback, and never a byte of a secret in the message."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import SYNCD, syncd

from syncd.sandbox import Roster, Sandbox


def _clean(result, code: int, *needles: str) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr[-2000:]
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    for needle in needles:
        assert needle in result.stderr, result.stderr[-2000:]


@pytest.fixture
def box():
    with Sandbox(Roster.generate(seed=29, users=40, classes=4, enrollments=120)) as sandbox:
        yield sandbox


@pytest.fixture
def config(box, tmp_path):
    return box.write_config(tmp_path / "syncd.toml", tmp_path / "state")


# --- the state file and directory ------------------------------------------------------------


@pytest.mark.sqlite_only("a damaged SQLite file")
def test_a_garbage_state_file_is_refused_with_a_clear_line(config, tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "syncd.db").write_bytes(os.urandom(8192))
    for args in (("status",), ("sync", "lincoln")):
        _clean(syncd(config, *args), 1, "state file cannot be used")


@pytest.mark.sqlite_only("a damaged SQLite file")
def test_a_truncated_state_file_is_refused_with_a_clear_line(config, tmp_path):
    assert syncd(config, "sync", "lincoln").returncode == 0
    db = tmp_path / "state" / "syncd.db"
    sqlite3.connect(db).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()  # the file itself is the subject
    with db.open("r+b") as handle:
        handle.truncate(6000)
    for name in ("syncd.db-wal", "syncd.db-shm"):
        (tmp_path / "state" / name).unlink(missing_ok=True)
    result = syncd(config, "sync", "lincoln")
    assert "Traceback" not in result.stderr and result.returncode in (1, 2)


@pytest.mark.sqlite_only("SQLite's migration table (pg_schema has its own check, tests/test_pg_store.py)")
def test_a_state_file_from_a_newer_syncd_is_refused(config, tmp_path):
    assert syncd(config, "status").returncode == 0
    with sqlite3.connect(tmp_path / "state" / "syncd.db") as conn:  # as a newer syncd would leave the file
        conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                     "VALUES ('syncd', 'm999_from_the_future', '2030-01-01')")
    for args in (("status",), ("sync", "lincoln")):
        _clean(syncd(config, *args), 1, "newer syncd")


def test_a_state_dir_that_is_a_file_is_refused(box, tmp_path):
    (tmp_path / "state").write_text("not a directory")
    config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    for args in (("status",), ("sync", "lincoln")):
        result = syncd(config, *args)
        _clean(result, 1, "state")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_a_read_only_state_dir_is_refused(box, tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o500)
    config = box.write_config(tmp_path / "syncd.toml", state)
    _clean(syncd(config, "sync", "lincoln"), 1, "state")


OPEN_AT_ONCE = """
import os, sys, time
from pathlib import Path
from syncd.store import Store
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
Store.open(Path(sys.argv[1])).close()
"""


def test_forty_processes_opening_a_fresh_state_dir_at_once(config, tmp_path):
    """Forty processes, each released at the same instant, set up one fresh state file."""
    import sys

    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, str(tmp_path / "state"), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
             for _ in range(40)]
    time.sleep(4)  # every interpreter started and waiting
    go.touch()
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    failed = [r[2].strip().splitlines()[-1] for r in results if r[0] != 0]
    assert failed == []
    statuses = [syncd(config, "status") for _ in range(2)]
    assert all(r.returncode == 0 and "Traceback" not in r.stderr for r in statuses)


@pytest.mark.sqlite_only("the tenant lock file beside the SQLite file (PostgreSQL: a lease)")
def test_a_lock_file_that_is_a_symlink_is_not_followed(config, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    locks = tmp_path / "state" / "locks"
    locks.mkdir(parents=True)
    (locks / "lincoln.lock").symlink_to(victim)
    result = syncd(config, "sync", "lincoln")
    _clean(result, 1, "lincoln.lock")
    assert victim.read_text() == "keep me"


# --- the config file and its secrets ----------------------------------------------------------


@pytest.mark.parametrize("content", [
    pytest.param(b"[daemon]\nstate_dir = \"/tmp/x\xff\xfe\"\n", id="not UTF-8"),
    pytest.param(b"a = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", id="nested 100k deep"),
    pytest.param(b"a = " + b"{b = " * 50_000 + b"1" + b"}" * 50_000 + b"\n", id="inline tables 50k deep"),
])
def test_an_unreadable_config_exits_2_with_one_line(tmp_path, content):
    path = tmp_path / "syncd.toml"
    path.write_bytes(content)
    _clean(syncd(path, "config", "validate"), 2, str(path))


def _with_secret(box, tmp_path: Path, reference: str) -> Path:
    config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    config.write_text(config.read_text().replace(f'token = "{box.provision.token}"', f'token = "{reference}"'))
    return config


@pytest.mark.parametrize("where", ["/dev/zero", "fifo", "directory", "huge"])
def test_a_secret_file_that_is_not_a_small_regular_file_is_refused_at_once(box, tmp_path, where):
    path = {"/dev/zero": Path("/dev/zero"), "fifo": tmp_path / "fifo", "directory": tmp_path,
            "huge": tmp_path / "huge"}[where]
    if where == "fifo":
        os.mkfifo(path)
    if where == "huge":
        path.write_bytes(b"x" * (1 << 20))
    config = _with_secret(box, tmp_path, f"file:{path}")
    started = time.monotonic()
    result = syncd(config, "config", "validate", timeout=30)
    _clean(result, 2, "target.token", "cannot read secret file")
    assert time.monotonic() - started < 15


def test_a_secret_file_that_is_not_utf8_is_reported_without_a_byte_of_it(box, tmp_path):
    secret = tmp_path / "token"
    secret.write_bytes(b"abc\xe9\xfa-secret-token")
    config = _with_secret(box, tmp_path, f"file:{secret}")
    result = syncd(config, "config", "validate")
    _clean(result, 2, "is not UTF-8 text")
    for leak in ("\\xe9", "0xe9", "\\xfa", "0xfa", "secret-token", "abc"):
        assert leak not in result.stderr


# --- Ctrl-C -------------------------------------------------------------------------------------


def test_ctrl_c_during_a_sync_exits_130_without_a_traceback(box, config):
    box.provision.latency_s = 0.3  # slow enough to be interrupted mid-push
    proc = subprocess.Popen([SYNCD, "--config", str(config), "sync", "lincoln"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and proc.returncode == 130, (proc.returncode, err[-2000:])
    box.provision.latency_s = 0
    assert syncd(config, "sync", "lincoln").returncode == 0
    assert box.provision.duplicates() == 0


# --- the watchdog -----------------------------------------------------------------------------


def test_the_watchdog_stops_pinging_while_a_run_is_stuck(box, tmp_path):
    config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state", target_extra="concurrency = 1\n")
    config.write_text(config.read_text().replace('log_format = "json"\n', 'log_format = "json"\nmax_run_s = 2\n'))
    box.provision.latency_s = 1.0  # a run of a hundred calls, one at a time: far past 2 s
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(0.2)
    messages: list[tuple[float, str]] = []
    daemon = subprocess.Popen([SYNCD, "--config", str(config), "run"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                              env={**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(m.startswith("STATUS=stuck") for _, m in messages):
            with contextlib.suppress(TimeoutError):
                messages.append((time.monotonic(), listener.recv(4096).decode()))
        stuck_at = next(t for t, m in messages if m.startswith("STATUS=stuck"))
        quiet_until = time.monotonic() + 2
        while time.monotonic() < quiet_until:
            with contextlib.suppress(TimeoutError):
                messages.append((time.monotonic(), listener.recv(4096).decode()))
        syncing_at = next(t for t, m in messages if m == "STATUS=syncing lincoln")
        assert any(m == "WATCHDOG=1" for t, m in messages if t < syncing_at + 1)  # alive while the run is young
        assert not any(m == "WATCHDOG=1" for t, m in messages if t > stuck_at)  # silent once it is stuck
    finally:
        daemon.kill()
        _out, err = daemon.communicate(timeout=30)
        listener.close()
    assert "Traceback" not in err and "daemon.run_stuck" in err
