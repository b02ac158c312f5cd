"""Alerts through Apprise, received by a real SMTP server (aiosmtpd) and a JSON webhook receiver on
loopback: exactly one message per state change, a recovery message, a channel that is down never
slowing a sync, `syncd alerts test`, and the daily digest."""

from __future__ import annotations

import email
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import state as state_store
from aiosmtpd.controller import Controller
from conftest import syncd
from test_daemon import Daemon, finished

from syncd import alerts
from syncd.config import AlertsConfig
from syncd.sandbox import Fault
from syncd.store import Store

# alerts.py keeps its alert state and reads the digest in the SQLite file, whatever [state] url says.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mailbox:
    """A real SMTP server on loopback that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, _server, _session, envelope) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"

    @property
    def url(self) -> str:
        return f"mailto://127.0.0.1:{self.port}?from=syncd@example.org&to=admin@example.org"

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]


class Hook:
    """A JSON webhook receiver on loopback (Apprise's json:// posts title and message)."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def titles(self) -> list[str]:
        return [m["title"] for m in self.received]


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    box.controller.start()
    yield box
    box.controller.stop()


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def with_alerts(config: Path, *urls: str, extra: str = "") -> Path:
    config.write_text(config.read_text() + f"\n[alerts]\nurls = {json.dumps(list(urls))}\n{extra}")
    return config


def run_now(daemon: Daemon, n: int) -> None:
    """SIGUSR1 until run ``n`` has started, then wait for its job to end. (APScheduler skips a
    signalled run while the previous one's job function is still returning: send it again.)"""
    def skipped() -> int:
        return sum("maximum number of running instances" in e["event"] for e in daemon.events())

    for _ in range(20):
        before = skipped()
        daemon.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and skipped() == before:
            if sum(e["event"] == "sync.started" for e in daemon.events()) >= n:
                daemon.wait_for(lambda: jobs_done(daemon) >= n, what=f"run {n}")
                return
            assert daemon.process.poll() is None, daemon.log_path.read_text()[-3000:]
            time.sleep(0.05)
    raise AssertionError(f"run {n} never started: {daemon.log_path.read_text()[-3000:]}")


def jobs_done(daemon: Daemon) -> int:
    """Runs the daemon has wholly finished (its run row is written a moment before: a SIGUSR1 sent
    in between finds the tenant still running and is ignored)."""
    return sum(e["event"] == "daemon.run_done" for e in daemon.events())


def wait(predicate, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_one_message_per_state_change_and_one_on_recovery(sandbox, tmp_path, mailbox, hook, start_daemon):
    state = tmp_path / "state"
    config = with_alerts(sandbox.write_config(tmp_path / "syncd.toml", state), mailbox.url, hook.url)
    daemon = start_daemon(config)
    daemon.wait_for(lambda: jobs_done(daemon) == 1, what="the first run")

    def run_once(n: int) -> None:
        run_now(daemon, n)
        assert jobs_done(daemon) == n

    sandbox.oneroster.faults.append(Fault(400, collection="users"))  # every extract now fails
    for n in range(2, 7):  # five failed runs: failed, failed, degraded (3 in a row), degraded, degraded
        run_once(n)
    assert [r["status"] for r in finished(state)] == ["completed"] + ["failed"] * 5
    sandbox.oneroster.faults.clear()
    run_once(7)
    run_once(8)  # still fine: nothing more to say
    wait(lambda: len(mailbox.messages) >= 3 and len(hook.received) >= 3, what="three messages on each channel")
    time.sleep(1.0)  # anything extra would have arrived by now
    expected = ["syncd: lincoln: sync failed", "syncd: lincoln is degraded: its runs keep failing",
                "syncd: lincoln recovered"]
    assert mailbox.subjects() == expected
    assert hook.titles() == expected
    failed, degraded, recovered = (m["message"] for m in hook.received)
    assert "extract failed" in failed and "HTTP 400" in failed
    assert "3 runs in a row failed" in degraded
    assert "completed" in recovered and "It was degraded since" in recovered
    assert "HTTP 400" in mailbox.messages[0].get_body(("plain",)).get_content()
    assert daemon.stop() == 0

    # A restart remembers what was alerted: a healthy run after it says nothing again.
    again = start_daemon(config)
    again.wait_for(lambda: again.has("daemon.started"), what="the restart")
    run_now(again, 1)
    assert len(finished(state)) == 9
    assert finished(state)[-1]["status"] == "completed"
    assert again.stop() == 0
    time.sleep(0.5)
    assert len(hook.received) == 3 and len(mailbox.messages) == 3


def test_held_and_credential_states_alert_once_each_across_restarts(tmp_path, hook):
    """The state machine against a real store: the daemon's Alerts, restarted between calls."""
    store = Store.open(tmp_path / "state", state_store.url_of(tmp_path / "state"))
    store.close()

    def fresh() -> alerts.Alerts:
        dispatcher = alerts.Alerts(lambda: AlertsConfig(urls=(hook.url,)), tmp_path / "state",
                                  url=state_store.url_of(tmp_path / "state"))
        dispatcher.start()
        return dispatcher

    held = {"status": "held", "run_id": "r1", "held_because": ["users removals held: 40 % > 10 %"]}
    sequence = [
        (held, None, 0), (held, None, 0),
        (None, "the target refused the token: POST …: HTTP 401: bad token", 1),
        ({"status": "failed", "run_id": "r4"}, "the target refused the token: POST …: HTTP 401: bad token", 2),
        ({"status": "completed_with_errors", "run_id": "r5"}, None, 0),
        ({"status": "completed", "run_id": "r6"}, None, 0),
    ]
    sent = []
    for summary, message, failures in sequence:
        dispatcher = fresh()  # as if the daemon restarted between runs
        sent.append(dispatcher.after_run("lincoln", summary, message, failures, 3))
        dispatcher.stop()
    assert sent == [True, False, True, False, True, False]
    assert hook.titles() == ["syncd: lincoln is held: a safety threshold stopped changes",
                             "syncd: lincoln: credentials refused", "syncd: lincoln recovered"]
    assert "(run r1)" in hook.received[0]["message"] and "syncd approve lincoln" in hook.received[0]["message"]

    # Another topic (a GG4L district's lifecycle) does not disturb the sync state.
    dispatcher = fresh()
    assert dispatcher.notify_state("lincoln", "revoked", "absent from discovery 3 times", topic=alerts.GG4L)
    assert not dispatcher.notify_state("lincoln", "revoked", "still absent", topic=alerts.GG4L)
    assert not dispatcher.after_run("lincoln", {"status": "completed", "run_id": "r7"}, None, 0, 3)
    dispatcher.stop()
    assert hook.titles()[-1] == "syncd: lincoln: district revoked"
    assert len(hook.received) == 4


def test_a_channel_that_is_down_neither_slows_nor_fails_a_sync(sandbox, tmp_path, hook, start_daemon):
    state = tmp_path / "state"
    down = f"json://127.0.0.1:{free_port()}/"  # nothing listens there
    config = with_alerts(sandbox.write_config(tmp_path / "syncd.toml", state), down, hook.url)
    sandbox.oneroster.faults.append(Fault(400, collection="users"))
    daemon = start_daemon(config)
    daemon.wait_for(lambda: jobs_done(daemon) == 1, what="the failing first run")
    sandbox.oneroster.faults.clear()
    started = time.monotonic()
    run_now(daemon, 2)  # while the dead channel is still being retried
    assert time.monotonic() - started < 10  # not held behind the retries (2 s + 10 s)
    assert [r["status"] for r in finished(state)] == ["failed", "completed"]
    wait(lambda: hook.titles() == ["syncd: lincoln: sync failed", "syncd: lincoln recovered"], what="both messages")
    daemon.wait_for(lambda: daemon.has("alerts.channel_failed"), what="the failure logged")
    failures = [e for e in daemon.events() if e["event"] == "alerts.channel_failed"]
    assert failures[0]["channel"] == 1 and "127.0.0.1" not in json.dumps(failures)
    stopping = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - stopping < 15


def test_alerts_test_sends_one_message_to_every_channel(sandbox, tmp_path, mailbox, hook):
    config = with_alerts(sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state"), mailbox.url, hook.url)
    result = syncd(config, "alerts", "test")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["channel 1: sent", "channel 2: sent"]
    assert mailbox.subjects() == ["syncd: test alert"] and hook.titles() == ["syncd: test alert"]

    down = with_alerts(sandbox.write_config(tmp_path / "down.toml", tmp_path / "state"), hook.url,
                       f"json://127.0.0.1:{free_port()}/hook?token=hush-hush-1234")
    result = syncd(down, "alerts", "test")
    assert result.returncode == 1
    assert "channel 2: FAILED" in result.stdout
    assert "hush-hush-1234" not in result.stdout + result.stderr

    none = sandbox.write_config(tmp_path / "none.toml", tmp_path / "state")
    result = syncd(none, "alerts", "test")
    assert result.returncode == 2 and "no [alerts] urls" in result.stderr


def test_the_daily_digest_sums_up_each_tenant(sandbox, config, tmp_path):
    assert syncd(config, "sync", "lincoln", "--json").returncode == 0
    assert syncd(config, "sync", "lincoln", "--json").returncode == 0
    message = alerts.digest(tmp_path / "state", ["lincoln", "never-ran"], url=state_store.url_of(tmp_path / "state"))
    assert message.title == "syncd: daily summary, 2 tenant(s)"
    lincoln, never = message.body.split("\n\n")
    assert lincoln.splitlines()[:2] == ["lincoln", "  runs: 2 completed"]
    pushed = sum(len(sandbox.provision.snapshot()[k]) for k in ("courses", "users", "enrollments"))
    assert f"  changes pushed: {pushed}" in lincoln
    assert "  in escrow: 0" in lincoln and "  held: 0" in lincoln and "  record errors: 0" in lincoln
    assert never.splitlines()[1] == "  runs: none"


def test_the_daemon_schedules_the_digest(sandbox, tmp_path, hook, start_daemon):
    config = with_alerts(sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state"), hook.url,
                         extra='digest = "07:00"\ntime_zone = "America/Chicago"\n')
    daemon = start_daemon(config)
    daemon.wait_for(lambda: daemon.has("alerts.digest_scheduled"), what="the digest job")
    scheduled = next(e for e in daemon.events() if e["event"] == "alerts.digest_scheduled")
    assert scheduled["at"] == "07:00" and scheduled["time_zone"] == "America/Chicago"
    assert daemon.stop() == 0


def test_a_held_tenant_alerts_once_with_the_approve_command_then_recovers(sandbox, tmp_path, hook, start_daemon):
    state = tmp_path / "state"
    config = with_alerts(sandbox.write_config(tmp_path / "syncd.toml", state), hook.url)
    daemon = start_daemon(config)
    daemon.wait_for(lambda: jobs_done(daemon) == 1, what="the first run")
    made = sandbox.roster.mutate(seed=9, fraction=0.4)  # drops a fifth of the enrollments: over 10 %
    assert made["dropped"] > 0
    run_now(daemon, 2)
    run_now(daemon, 3)  # held again: the same state, no second message
    assert [r["status"] for r in finished(state)] == ["completed", "held", "held"]
    wait(lambda: len(hook.received) == 1, what="the held message")
    held = hook.received[0]
    assert held["title"] == "syncd: lincoln is held: a safety threshold stopped changes"
    last_run = finished(state)[-1]["run_id"]
    assert "enrollments removals held" in held["message"]
    assert f"(run {finished(state)[1]['run_id']})" in held["message"]  # the run that changed the state
    assert held["message"].endswith("Release once with: syncd approve lincoln")  # the latest held run
    approved = syncd(config, "approve", "lincoln")
    assert approved.returncode == 0 and f"approved run {last_run}" in approved.stdout
    run_now(daemon, 4)
    assert finished(state)[-1]["status"] == "completed"
    wait(lambda: len(hook.received) == 2, what="the recovery")
    assert hook.titles()[1] == "syncd: lincoln recovered" and "It was held since" in hook.received[1]["message"]
    time.sleep(0.5)
    assert len(hook.received) == 2
    assert daemon.stop() == 0
