"""The real `syncd run` daemon in a subprocess against the sandbox: scheduling, locks, signals,
sd_notify, and the unit file."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import state as state_store
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.date import DateTrigger
from conftest import SYNCD, summary, syncd

from syncd.daemon import run_until_stopped
from syncd.sandbox import Roster, Sandbox, state_toml
from syncd.store import StateError

UNIT = Path(__file__).parent.parent / "systemd" / "syncd.service"


class Daemon:
    """`syncd run` with its stderr (JSON logs) in a file."""

    def __init__(self, config: Path, tmp_path: Path, env: dict[str, str] | None = None):
        self.log_path = tmp_path / "daemon.log"
        self.log_file = self.log_path.open("w")
        self.process = subprocess.Popen([SYNCD, "--config", str(config), "run"], stdout=subprocess.DEVNULL,
                                        stderr=self.log_file, stdin=subprocess.DEVNULL,
                                        env={**os.environ, **(env or {})})

    def events(self) -> list[dict]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            assert self.process.poll() is None, f"daemon exited: {self.log_path.read_text()[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {self.log_path.read_text()[-3000:]}")

    def has(self, event: str) -> bool:
        return any(e["event"] == event for e in self.events())

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.log_file.close()


@pytest.fixture
def daemon_factory(tmp_path):
    started: list[Daemon] = []

    def start(config: Path, env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(config, tmp_path, env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def runs(state: Path, tenant: str = "lincoln") -> list[dict]:
    if not state_store.url_of(state) and not (state / "syncd.db").exists():
        return []
    try:
        with state_store.store_at(state) as store:
            return store.runs(tenant, limit=1_000_000)[::-1]  # oldest first
    except (sqlite3.OperationalError, StateError):
        return []  # the daemon holds the file


def finished(state: Path, tenant: str = "lincoln") -> list[dict]:
    return [r for r in runs(state, tenant) if r["finished_at"]]


def test_a_sigterm_at_any_moment_of_start_up_stops_the_daemon(sandbox, tmp_path):
    """systemctl stop right after start: a SIGTERM that arrives before the scheduler runs is acted on
    once it does (it used to kill the signal thread and leave the daemon running for ever)."""
    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    for delay in (0.2, 0.3, 0.4, 0.5, 0.6, 0.8):
        home = tmp_path / f"after-{delay}"
        home.mkdir()
        daemon = Daemon(config, home)
        time.sleep(delay)
        code = daemon.stop(timeout=30)  # raises TimeoutExpired if it hangs
        log = daemon.log_path.read_text()
        assert "Traceback" not in log, log[-2000:]
        assert code in (0, -signal.SIGTERM), (delay, code, log[-2000:])  # before its handlers: the default


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                    reason="tgkill (syscall 234 on x86-64): a signal sent to one thread of another process")
def test_a_sigterm_the_kernel_gives_to_another_thread_stops_the_daemon_at_once(sandbox, tmp_path):
    """The kernel may hand a process's SIGTERM to any of its threads. The main thread sleeps in the
    scheduler until its next job (30 s here, a tenant's interval in general), and a Python handler runs
    only in the main thread: the stop waited that long (test_alerts' digest test hung on it)."""
    import ctypes

    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    daemon = Daemon(config, tmp_path)
    try:
        daemon.wait_for(lambda: daemon.has("daemon.run_done"), what="the first run")
        pid = daemon.process.pid
        other = next(int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid)
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(234, pid, other, signal.SIGTERM) == 0  # 234: tgkill on x86-64
        assert daemon.process.wait(timeout=10) == 0
        assert daemon.has("daemon.stopped")
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


@pytest.mark.sqlite_only("on PostgreSQL a tenant runs once per minute slot (daemon.py slot_done): no 2 s schedule")
def test_jobs_fire_on_their_interval_and_sigterm_exits_zero(sandbox, tmp_path, daemon_factory):
    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state", extra="")
    config.write_text(config.read_text().replace('schedule = "every 15m"', 'schedule = "every 2s"'))
    daemon = daemon_factory(config)
    daemon.wait_for(lambda: len(finished(tmp_path / "state")) >= 3, timeout=60, what="three runs")
    assert daemon.stop() == 0
    done = finished(tmp_path / "state")
    assert [r["status"] for r in done[:3]] == ["completed"] * 3
    assert json.loads(done[1]["summary"])["calls"] == 0  # the schedule resyncs: nothing changed
    assert daemon.has("daemon.stopped")


def _slow_sandbox(latency: float = 0.02) -> Sandbox:
    box = Sandbox(Roster.generate(seed=3, users=150, classes=15, enrollments=600))
    box.provision.latency_s = latency
    return box


def test_a_manual_sync_during_a_scheduled_run_waits_and_never_overlaps(tmp_path, daemon_factory):
    with _slow_sandbox() as box:
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state", target_extra="concurrency = 2")
        daemon = daemon_factory(config)  # never synced: overdue, so it runs at start
        daemon.wait_for(lambda: box.provision.calls > 20, what="the scheduled run to push")
        busy = syncd(config, "sync", "lincoln", "--no-wait", "--json")
        holder = "by node " if state_store.url_of(tmp_path / "state") else "by another process"  # PostgreSQL names it
        assert busy.returncode == 4 and f"being synced {holder}" in busy.stderr
        manual = syncd(config, "sync", "lincoln", "--json", timeout=120)
        assert manual.returncode == 0, manual.stderr[-2000:]
        assert "waiting" in manual.stderr
        assert summary(manual)["calls"] == 0  # the scheduled run had done everything
        assert daemon.stop() == 0
    done = finished(tmp_path / "state")
    assert len(done) == 2
    assert done[0]["finished_at"] <= done[1]["started_at"]  # one after the other, never both


def test_two_tenants_sync_in_parallel(tmp_path, daemon_factory):
    with _slow_sandbox(0.01) as box:
        config = tmp_path / "syncd.toml"
        config.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\nlog_format = "json"\n\n'
                          + state_toml(tmp_path / "state") + box.tenant_toml("north") + box.tenant_toml("south"))
        daemon = daemon_factory(config)
        daemon.wait_for(lambda: all(finished(tmp_path / "state", t) for t in ("north", "south")),
                        timeout=60, what="both tenants")
        assert daemon.stop() == 0
    north, south = finished(tmp_path / "state", "north")[0], finished(tmp_path / "state", "south")[0]
    assert north["started_at"] < south["finished_at"] and south["started_at"] < north["finished_at"]


def test_sigterm_during_a_push_acknowledges_every_finished_call(tmp_path, daemon_factory):
    with _slow_sandbox(0.05) as box:
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state")
        daemon = daemon_factory(config)
        daemon.wait_for(lambda: box.provision.calls > 40, what="the push to start")
        assert daemon.stop(timeout=30) == 0
        applied = len(box.provision.enrollments)
        assert 0 < applied < 550  # stopped partway
        with state_store.store_at(tmp_path / "state") as store:
            acked = store.tenant("lincoln").acked_counts()["enrollment"]  # nothing was removed: all of them
        assert acked == applied  # every call that reached the target is acknowledged
        stopped = finished(tmp_path / "state")[-1]
        assert stopped["status"] == "failed" and "stopped by a signal" in stopped["message"]
        resumed = syncd(config, "sync", "lincoln", "--json")
        assert resumed.returncode == 0
        assert box.provision.duplicates() == 0


def test_sighup_with_a_broken_config_keeps_the_daemon_on_the_old_one(sandbox, tmp_path, daemon_factory):
    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    good = config.read_text()
    daemon = daemon_factory(config)
    daemon.wait_for(lambda: len(finished(tmp_path / "state")) >= 1, what="the first run")
    config.write_text(good.replace('schedule = "every 15m"', 'schedule = "every fortnight"'))
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: daemon.has("daemon.reload_rejected"), what="the reload to be rejected")
    rejected = next(e for e in daemon.events() if e["event"] == "daemon.reload_rejected")
    assert any("tenants.lincoln.schedule" in line for line in rejected["errors"])
    time.sleep(0.5)
    assert daemon.process.poll() is None

    config.write_text(good + sandbox.tenant_toml("second"))
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: daemon.has("daemon.reloaded"), what="the reload")
    daemon.wait_for(lambda: len(finished(tmp_path / "state", "second")) >= 1, what="the new tenant's run")
    assert daemon.stop() == 0


def test_sigusr1_runs_every_tenant_now(sandbox, tmp_path, daemon_factory):
    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    assert syncd(config, "sync", "lincoln").returncode == 0  # a fresh run: not overdue at start
    daemon = daemon_factory(config)
    daemon.wait_for(lambda: daemon.has("daemon.scheduled"), what="scheduling")
    time.sleep(0.5)
    assert len(finished(tmp_path / "state")) == 1
    daemon.process.send_signal(signal.SIGUSR1)
    daemon.wait_for(lambda: len(finished(tmp_path / "state")) == 2, what="the signalled run")
    assert daemon.stop() == 0


def test_sd_notify_messages_arrive_in_order(sandbox, tmp_path, daemon_factory):
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(0.2)
    messages: list[str] = []

    def drain() -> None:
        while True:
            try:
                messages.append(listener.recv(4096).decode())
            except TimeoutError:
                return

    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    daemon = daemon_factory(config, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    daemon.wait_for(lambda: (drain(), any("WATCHDOG=1" in m for m in messages))[1] and
                    len(finished(tmp_path / "state")) >= 1, what="watchdog pings and a run")
    assert daemon.stop() == 0
    drain()
    listener.close()
    assert messages[0].startswith("READY=1\nSTATUS=")
    assert any(m == "STATUS=syncing lincoln" for m in messages)
    assert sum(m == "WATCHDOG=1" for m in messages) >= 2
    stopping = next(i for i, m in enumerate(messages) if m.startswith("STOPPING=1"))
    assert stopping > 0 and all("READY" not in m for m in messages[stopping:])


def test_status_shows_the_next_run_and_errors_name_the_record(sandbox, tmp_path):
    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    refused = next(iter(sandbox.roster.users.values()))
    sandbox.provision.reject = lambda body: (
        (422, "e-mail taken") if body.get("user", {}).get("ids", {}).get("external") == refused["sourcedId"]
        else None)
    assert syncd(config, "sync", "lincoln").returncode == 1
    status = json.loads(syncd(config, "status", "lincoln", "--json").stdout)
    assert status["next_run"] and status["running"] is False
    assert status["runs"][0]["status"] == "completed_with_errors" and status["runs"][0]["errors"] > 0
    rows = json.loads(syncd(config, "errors", "--json").stdout)
    name = f"{refused['givenName']} {refused['familyName']}"
    assert rows and all(name in row["name"] for row in rows)
    assert all(row["http_status"] == 422 and row["message"] == "e-mail taken" for row in rows)
    csv_out = syncd(config, "errors", "lincoln", "--csv").stdout.splitlines()
    assert csv_out[0].startswith("run_id,tenant,entity,source_id,name,stage")


def test_old_runs_and_errors_are_pruned(sandbox, tmp_path):
    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    assert syncd(config, "sync", "lincoln").returncode == 0
    # Time travel: the store has no API to age a run (nor should it), so plain SQL writes it.
    state_store.query(config, "UPDATE runs SET started_at = '2020-01-01T00:00:00.000Z'")
    state_store.query(config, "INSERT INTO errors (run_id, tenant, entity, source_id, stage, message, attempts, "
                      "first_seen, last_seen) SELECT run_id, tenant, 'user', 'u', 'push', 'm', 1, started_at, "
                      "started_at FROM runs")
    with state_store.store_at(tmp_path / "state") as store:
        old = [run["run_id"] for run in store.runs(limit=100)]
    assert syncd(config, "sync", "lincoln").returncode == 0
    with state_store.store_at(tmp_path / "state") as store:
        kept = [run["run_id"] for run in store.runs(limit=100)]
        assert len(kept) == 1
        assert store.errors(old + kept) == []
    assert state_store.query(config, "SELECT count(*) FROM errors") == [(0,)]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_unit_is_hardened_to_an_exposure_of_two_or_lower():
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    line = next(line for line in result.stdout.splitlines() if "Overall exposure level" in line)
    exposure = float(line.split(":")[1].split()[0])
    assert exposure <= 2.0, result.stdout


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_unit_verifies_clean(tmp_path):
    # ExecStart must exist for verify: point it at this venv's syncd, as an install would.
    unit = tmp_path / "syncd.service"
    unit.write_text(UNIT.read_text().replace("/opt/syncd/bin/syncd", SYNCD))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "syncd.service" in line and "network-online.target" not in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_sd_notify_is_a_no_op_outside_systemd(monkeypatch):
    from syncd.notify import notify, watchdog_interval_s

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert notify("READY=1") is False
    assert watchdog_interval_s() is None  # the watchdog belongs to another process


def test_a_manual_sync_on_a_terminal_shows_a_progress_bar_per_phase(sandbox, tmp_path):
    import pty

    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    leader, follower = pty.openpty()
    process = subprocess.Popen([SYNCD, "--config", str(config), "sync", "lincoln"], stdout=subprocess.PIPE,
                               stderr=follower, stdin=subprocess.DEVNULL, text=True)
    os.close(follower)
    terminal = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        terminal += chunk
    os.close(leader)
    process.wait(timeout=60)
    text = terminal.decode()
    assert process.returncode == 0
    for phase in ("extract", "plan", "push"):
        assert f"lincoln {phase}" in text
    assert "records" in text and "#" * 30 in text


# --- a stop that lands while the scheduler removes a one-off job it just started -----------------


def _racing_scheduler(started: list[str]):
    """A real BlockingScheduler whose executor, handed a job, shuts the scheduler down from another
    thread (a SIGTERM at that moment) and returns once the scheduler is marked stopped."""

    class StopsOnSubmit(ThreadPoolExecutor):
        def submit_job(self, job, run_times):
            super().submit_job(job, run_times)
            threading.Thread(target=self._scheduler.shutdown, kwargs={"wait": False}).start()
            while self._scheduler.state != STATE_STOPPED:
                time.sleep(0.001)

    scheduler = BlockingScheduler(executors={"default": StopsOnSubmit(1)})
    scheduler.add_job(lambda: started.append("retry:t02"), DateTrigger(), id="retry:t02")
    return scheduler


def test_apscheduler_raises_when_a_stop_lands_as_it_removes_a_one_off_job():
    # The race itself, so that the next test cannot pass for want of it.
    with pytest.raises(Exception, match="retry:t02"):
        _racing_scheduler([]).start()


def test_a_stop_that_races_a_one_off_job_ends_the_daemon_cleanly():
    started: list[str] = []
    stopping = threading.Event()
    stopping.set()  # Daemon._stop sets it before it shuts the scheduler down
    run_until_stopped(_racing_scheduler(started), stopping)
    time.sleep(0.2)
    assert started == ["retry:t02"]  # the job it was starting still ran


def test_the_same_error_without_a_stop_is_not_hidden():
    with pytest.raises(Exception, match="retry:t02"):
        run_until_stopped(_racing_scheduler([]), threading.Event())
