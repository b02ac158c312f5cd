"""The daemon's HTTP listener against the real `syncd run`: /healthz, /metrics scraped and parsed
with the Prometheus parser as runs happen, hostile requests, bind failure, and its config keys."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import state as state_store
from conftest import syncd
from prometheus_client.parser import text_string_to_metric_families
from test_alerts import run_now
from test_daemon import Daemon, finished

from syncd.sandbox import Fault, Roster, Sandbox


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_listener(config: Path, port: int, extra: str = "") -> Path:
    config.write_text(config.read_text() + f'\n[daemon.http]\nlisten = "127.0.0.1:{port}"\n{extra}')
    return config


def get(port: int, path: str, method: str = "GET", body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = get(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        assert family.name.startswith("syncd_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        for sample in family.samples:
            assert set(sample.labels) <= {"tenant", "status", "entity", "state", "kind", "outcome", "change", "le"}
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def status_line(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(OSError):  # the server may answer and close before reading it all
            sock.sendall(data)
        return sock.recv(200).split(b"\r\n")[0]


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_healthy(daemon: Daemon, port: int) -> dict:
    def ok() -> bool:
        try:
            return get(port, "/healthz")[0] == 200
        except OSError:
            return False
    daemon.wait_for(ok, what="/healthz to answer 200")
    return json.loads(get(port, "/healthz")[2])


def acked(state: Path, table: str, tenant: str = "lincoln") -> int:
    entity = {"acked_courses": "course", "acked_users": "user", "acked_enrollments": "enrollment"}[table]
    with state_store.store_at(state) as store:
        return store.tenant(tenant).acked_counts()[entity]


def test_metrics_move_as_runs_happen_and_state_survives_a_restart(sandbox, tmp_path, start_daemon):
    port = free_port()
    config = with_listener(sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state"), port)
    state = tmp_path / "state"
    daemon = start_daemon(config)
    health = wait_healthy(daemon, port)
    assert health["status"] == "ok" and health["tenants"] == 1
    daemon.wait_for(lambda: len(finished(state)) == 1, what="the first run")
    first = json.loads(finished(state)[0]["summary"])
    daemon.wait_for(lambda: value(scrape(port), "syncd_runs_total", tenant="lincoln", status="completed") == 1,
                    what="the first run in /metrics")
    m = scrape(port)
    assert value(m, "syncd_provision_calls_total", tenant="lincoln", outcome="acknowledged") == first["calls"] > 0
    assert value(m, "syncd_provision_requests_total", tenant="lincoln") == first["calls"]
    assert value(m, "syncd_source_requests_total", tenant="lincoln") > 0
    assert value(m, "syncd_record_changes_total", tenant="lincoln", entity="user", change="created") \
        == first["counts"]["users"]["created"]
    assert value(m, "syncd_records", tenant="lincoln", entity="enrollment", state="synced") \
        == acked(state, "acked_enrollments") > 0
    assert value(m, "syncd_run_duration_seconds_count", tenant="lincoln") == 1
    assert value(m, "syncd_escrow_records", tenant="lincoln", entity="user") == 0
    assert value(m, "syncd_tenant_degraded", tenant="lincoln") == 0
    assert value(m, "syncd_store_up") == 1
    last_success = value(m, "syncd_last_success_timestamp_seconds", tenant="lincoln")
    assert abs(last_success - time.time()) < 120

    assert value(m, "syncd_source_throttles_total", tenant="lincoln") == 0
    # SIGUSR1: a second run, with nothing to change: runs move, calls do not. One page is answered
    # 429 once (a OneRoster server's "slow down"): retried, and counted as a throttle.
    sandbox.oneroster.faults.append(Fault(status=429, times=1, retry_after="0", collection="users"))
    run_now(daemon, 2)
    daemon.wait_for(lambda: value(scrape(port), "syncd_runs_total", tenant="lincoln", status="completed") == 2,
                    what="the second run in /metrics")
    m2 = scrape(port)
    assert value(m2, "syncd_provision_calls_total", tenant="lincoln", outcome="acknowledged") == first["calls"]
    assert value(m2, "syncd_run_duration_seconds_count", tenant="lincoln") == 2
    assert value(m2, "syncd_source_requests_total", tenant="lincoln") \
        == 2 * value(m, "syncd_source_requests_total", tenant="lincoln") + 1  # the page answered 429
    assert value(m2, "syncd_source_throttles_total", tenant="lincoln") == 1
    assert value(m2, "syncd_last_success_timestamp_seconds", tenant="lincoln") > last_success
    dashboard = (Path(__file__).parent.parent / "docs" / "grafana-dashboard.json").read_text()
    used = set(re.findall(r"syncd_[a-z_]+", dashboard))
    assert used and used <= {name for name, _ in m2}, used - {name for name, _ in m2}
    assert daemon.stop() == 0

    # A restart: counters start again, what is state comes from the store.
    config.write_text(config.read_text().replace('schedule = "every 15m"', 'schedule = "0 0 1 1 *"'))
    again = start_daemon(config)
    wait_healthy(again, port)
    m3 = scrape(port)
    assert value(m3, "syncd_runs_total", tenant="lincoln", status="completed") == 0
    assert value(m3, "syncd_records", tenant="lincoln", entity="enrollment", state="synced") \
        == acked(state, "acked_enrollments")
    assert value(m3, "syncd_records", tenant="lincoln", entity="user", state="synced") == acked(state, "acked_users")
    assert value(m3, "syncd_last_success_timestamp_seconds", tenant="lincoln") \
        == value(m2, "syncd_last_success_timestamp_seconds", tenant="lincoln")

    # A sync from the CLI, beside the daemon, shows in the state read at the next scrape.
    made = sandbox.roster.mutate(seed=4, fraction=0.05)
    assert syncd(config, "sync", "lincoln").returncode == 0
    m4 = scrape(port)
    assert value(m4, "syncd_records", tenant="lincoln", entity="enrollment", state="synced") \
        == acked(state, "acked_enrollments") \
        == value(m3, "syncd_records", tenant="lincoln", entity="enrollment", state="synced") \
        + made["new_enrollments"] - made["dropped"]
    assert value(m4, "syncd_records", tenant="lincoln", entity="enrollment", state="removed") == made["dropped"] > 0
    assert value(m4, "syncd_runs_total", tenant="lincoln", status="completed") == 0  # not the daemon's run
    assert again.stop() == 0


def test_the_listener_keeps_serving_across_a_reload(sandbox, tmp_path, start_daemon):
    port = free_port()
    config = with_listener(sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state"), port)
    daemon = start_daemon(config)
    wait_healthy(daemon, port)
    daemon.wait_for(lambda: value(scrape(port), "syncd_runs_total", tenant="lincoln", status="completed") == 1,
                    what="the first run in /metrics")
    config.write_text(config.read_text().replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"))
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: daemon.has("daemon.reloaded"), what="the reload")
    assert daemon.has("daemon.http_unchanged")  # a new address takes effect on restart
    assert get(port, "/healthz")[0] == 200
    assert value(scrape(port), "syncd_runs_total", tenant="lincoln", status="completed") == 1  # same process
    assert daemon.stop() == 0


@pytest.mark.sqlite_only("locks the SQLite file and puts a trigger in it")
def test_healthz_is_503_with_the_reason_while_the_store_cannot_take_a_write(sandbox, tmp_path, start_daemon):
    port = free_port()
    config = with_listener(sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state"), port)
    daemon = start_daemon(config)
    assert wait_healthy(daemon, port)["store"] == "writable"
    daemon.wait_for(lambda: daemon.has("daemon.run_done"), what="the first run")
    db = tmp_path / "state" / "syncd.db"

    # Another writer holding the lock (a long run, a CLI sync) is use, not failure. (SQLite itself
    # here, not the store's API: the test is about the file's lock and the file's I/O errors.)
    blocker = sqlite3.connect(db, timeout=1)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        status, _, body = get(port, "/healthz")
    finally:
        blocker.rollback()
        blocker.close()
    assert status == 200 and json.loads(body)["store"] == "busy"

    # A store that refuses writes (here SQLite raises an I/O error on the write, as a full or
    # read-only disk would) is a 503 that says why. (Tests run as root: chmod cannot do it.)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON heartbeat BEGIN "
                     "SELECT RAISE(ABORT, 'disk I/O error (simulated)'); END")
    status, _, body = get(port, "/healthz")
    assert status == 503
    answer = json.loads(body)
    assert answer["status"] == "unavailable" and answer["store"] == "failed"
    assert answer["problems"] == ["state store is not writable: disk I/O error (simulated)"]
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER refuse")
    assert get(port, "/healthz")[0] == 200
    assert daemon.stop() == 0


@pytest.mark.postgresql
def test_healthz_on_postgresql_writes_the_heartbeat_there_and_is_503_when_it_refuses(sandbox, tmp_path, start_daemon,
                                                                                     pg_database):
    import psycopg

    port = free_port()
    config = with_listener(sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state", state_url=pg_database),
                           port)
    daemon = start_daemon(config)
    assert wait_healthy(daemon, port)["store"] == "writable"
    assert not (tmp_path / "state" / "syncd.db").exists()  # the heartbeat went to PostgreSQL
    with psycopg.connect(pg_database, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM heartbeat").fetchone()[0] == 1
        conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'disk full (simulated)'; END $$")
        conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON heartbeat FOR EACH ROW EXECUTE FUNCTION refuse()")
        status, _, body = get(port, "/healthz")
        assert status == 503
        answer = json.loads(body)
        assert answer["store"] == "failed"
        assert answer["problems"] == ["state store is not writable: disk full (simulated)"]
        conn.execute("DROP TRIGGER refuse ON heartbeat")
    assert get(port, "/healthz")[0] == 200
    assert daemon.stop() == 0


def test_healthz_says_stopping_while_the_daemon_drains_then_the_listener_stops(tmp_path, start_daemon):
    with Sandbox(Roster.generate(seed=3, users=150, classes=15, enrollments=600)) as box:
        box.provision.latency_s = 0.05
        port = free_port()
        config = with_listener(box.write_config(tmp_path / "syncd.toml", tmp_path / "state",
                                                target_extra="concurrency = 1"), port)
        daemon = start_daemon(config)
        daemon.wait_for(lambda: box.provision.calls > 5, what="the run to push")
        daemon.process.send_signal(signal.SIGTERM)
        daemon.wait_for(lambda: daemon.has("daemon.stopping"), what="the stop")
        status, _, body = get(port, "/healthz")
        assert status == 503 and "the daemon is stopping" in json.loads(body)["problems"]
        assert daemon.process.wait(60) == 0
    with pytest.raises(OSError):
        get(port, "/healthz")
    assert daemon.has("http.stopped")


def test_hostile_requests_get_4xx_and_change_nothing(sandbox, tmp_path, start_daemon):
    port = free_port()
    config = with_listener(sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state"), port,
                           "channel_timeout_s = 2\n")
    state = tmp_path / "state"
    daemon = start_daemon(config)
    wait_healthy(daemon, port)
    daemon.wait_for(lambda: finished(state), what="the first run")
    before = len(finished(state)), acked(state, "acked_users")

    # A slow client that never finishes its headers is cut off after channel_timeout_s, and
    # meanwhile the server goes on answering everyone else.
    slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    assert get(port, "/healthz")[0] == 200
    assert slow.recv(100) == b""  # closed by the server
    assert 1.5 < time.monotonic() - started < 8
    slow.close()

    # A declared body over the cap is refused from its headers, before any of it is read.
    assert status_line(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\nxxxx") \
        .startswith(b"HTTP/1.1 413")
    assert status_line(port, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 17409\r\n\r\n"
                       + b"x" * 17409).startswith(b"HTTP/1.1 413")  # over the 16 KiB default, whatever the path

    chunked = socket.create_connection(("127.0.0.1", port), timeout=10)
    chunked.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 8192
    with contextlib.suppress(OSError):  # the server may close as soon as the cap is crossed
        for _ in range(8):
            chunked.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    assert b" 413 " in chunked.recv(200).split(b"\r\n")[0] + b" "
    chunked.close()

    status, headers, _ = get(port, "/healthz", "DELETE")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, _, _ = get(port, "/metrics", "PUT", b"{}")
    assert status == 405
    assert get(port, "/nope")[0] == 404
    assert get(port, "/healthz/../metrics")[0] == 404  # paths are matched exactly, never resolved
    assert get(port, "/healthz", "HEAD")[0] == 200
    assert status_line(port, b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert status_line(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS to a plain port\r\n\r\n") \
        .startswith(b"HTTP/1.0 400")
    assert status_line(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n") \
        .startswith(b"HTTP/1.1 400")

    # Many requests at once: all answered, the daemon intact.
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(get(port, "/healthz")[0])) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert statuses == [200] * 30

    after = len(finished(state)), acked(state, "acked_users")
    assert after == before
    assert daemon.process.poll() is None
    assert daemon.stop() == 0


def test_a_port_already_taken_is_a_clear_error_and_nothing_runs(sandbox, tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        config = with_listener(sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state"), port)
        result = syncd(config, "run", timeout=60)
    finally:
        holder.close()
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "daemon.listen_failed" in result.stderr
    assert sandbox.provision.calls == 0


@pytest.mark.parametrize(("table", "error"), [
    ('[daemon.http]\nlisten = "example.org:80"\n', "daemon.http.listen: must be HOST:PORT"),
    ('[daemon.http]\nlisten = "127.0.0.1:70000"\n', "daemon.http.listen: must be HOST:PORT"),
    ('[daemon.http]\nmax_body_bytes = 100\n', "daemon.http.listen: required key is missing"),
    ('[daemon.http]\nlisten = "127.0.0.1:1"\nmax_body_bytes = 10\n', "daemon.http.max_body_bytes: must be between"),
    ('[daemon.http]\nlisten = "127.0.0.1:1"\nport = 3\n', "daemon.http.port: unknown key"),
    ('[alerts]\nurls = ["env:SYNCD_TEST_UNSET_ALERT"]\n', "alerts.urls[0]: environment variable SYNCD_TEST_UNSET"),
    ('[alerts]\nurls = ["not a url"]\n', "alerts.urls[0]: must be an Apprise URL"),
    ('[alerts]\nurls = [3]\n', "alerts.urls[0]: must be a string"),
    ('[alerts]\nurls = ["json://127.0.0.1:9/", "slack://not-enough-parts"]\n', "alerts.urls[1]: Apprise cannot use"),
    ('[alerts]\ndigest = "7am"\n', 'alerts.digest: must be a time of day HH:MM'),
    ('[alerts]\ntime_zone = "Mars/Olympus"\n', "alerts.time_zone: unknown time zone"),
    ('[alerts]\nemail = "x"\n', "alerts.email: unknown key"),
])
def test_bad_listener_and_alert_keys_exit_2_naming_the_key(sandbox, tmp_path, table, error):
    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    config.write_text(config.read_text() + "\n" + table)
    result = syncd(config, "config", "validate")
    assert result.returncode == 2, result.stderr
    assert error in result.stderr
    assert not (tmp_path / "state").exists()


def test_a_bare_port_listens_on_loopback_and_secret_alert_urls_are_never_shown(sandbox, tmp_path):
    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    config.write_text(config.read_text() + '\n[daemon.http]\nlisten = "8470"\n[alerts]\nurls = ["env:ALERT_URL"]\n'
                      'digest = "07:00"\n')
    from syncd import config as configuration

    secret = "json://127.0.0.1:9/hook?token=s3cret-hook-token"
    import os
    os.environ["ALERT_URL"] = secret
    try:
        parsed = configuration.load(config)
    finally:
        del os.environ["ALERT_URL"]
    assert (parsed.daemon.http.host, parsed.daemon.http.port) == ("127.0.0.1", 8470)
    assert parsed.alerts.urls == (secret,) and parsed.alerts.digest == (7, 0)
    assert secret in parsed.secrets and secret not in repr(parsed)


def test_a_registered_handler_gets_the_request_and_errors_stay_inside():
    """The contract other endpoints (the GG4L webhook) rely on: one register() line."""
    import io
    from wsgiref.util import setup_testing_defaults

    from syncd import web

    seen: list[web.Request] = []

    def echo(request: web.Request) -> web.Response:
        seen.append(request)
        if request.query.get("fail"):
            raise RuntimeError("secret-ish internal detail")
        return web.json_response(200, {"got": len(request.body)})

    def call(method: str, path: str, body: bytes = b"", query: str = "", **headers: str) -> tuple[str, dict, bytes]:
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                   "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": "application/json",
                   "wsgi.input": io.BytesIO(body), **{f"HTTP_{k.upper()}": v for k, v in headers.items()}}
        setup_testing_defaults(environ)
        answer: dict = {}
        chunks = app(environ, lambda status, hs: answer.update(status=status, headers=dict(hs)))
        return answer["status"], answer["headers"], b"".join(chunks)

    app = web.App(context="the daemon", max_body_bytes=64)
    web.register("POST", "/test/echo", echo)
    try:
        status, _, body = call("POST", "/test/echo", b'{"districtGUID": "x"}', "a=1&a=2", x_syncd_key="k")
        assert status == "200 OK" and json.loads(body) == {"got": 21}
        request = seen[-1]
        assert request.context == "the daemon" and request.query == {"a": ["1", "2"]}
        assert request.headers["x-syncd-key"] == "k" and request.headers["content-type"] == "application/json"
        status, headers, _ = call("GET", "/test/echo")
        assert status.startswith("405") and headers["Allow"] == "POST"
        status, _, body = call("POST", "/test/echo", b"x" * 65)
        assert status.startswith("413") and len(seen) == 1  # the handler never saw it
        status, _, body = call("POST", "/test/echo", query="fail=1")
        assert status.startswith("500") and b"secret-ish" not in body
    finally:
        web.ROUTES.pop(("POST", "/test/echo"))
