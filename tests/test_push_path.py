"""The provision call's lean path (http._lean) keeps every guarantee of session.request, and the
sandbox answers ``latency_s`` after a request arrived (issue 15, push at the bound)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from conftest import log_events, summary, syncd

from syncd import http
from syncd.sandbox import Scripted
from syncd.sandbox.hostile import Hostile, drip, endless_body, gzip_bomb, redirect, respond
from syncd.sandbox.provision import ProvisionApp
from syncd.sandbox.server import Request, Response, Serving, Timing

BODY = {"course": {"ids": {"external": "c1"}, "title": "Art"}}
ONCE = http.RetryPolicy(attempts=1)


@pytest.fixture
def target() -> Iterator[tuple[ProvisionApp, str]]:
    app = ProvisionApp()
    server = Serving(app)
    yield app, f"{server.url}/v2/installs/{app.install_sid}/provision"
    server.stop()


def post(session: requests.Session, url: str, token: str, timeout: float = 5, **kwargs: Any) -> requests.Response:
    return http.send(session, "POST", url, timeout=timeout, policy=ONCE, json=BODY,
                     headers={"token": token, "Accept": "application/json"}, **kwargs)


def lean(session: requests.Session) -> bool:
    """The call went through http._lean (it keeps a route per URL), not session.request."""
    return bool(session._routes)  # type: ignore[attr-defined]


# --- the sandbox's latency ---------------------------------------------------------------------


def test_an_answer_leaves_latency_s_after_the_request_arrived_not_after_it_was_parsed():
    app = ProvisionApp(latency_s=1.0)
    server = Serving(app)
    body = json.dumps(BODY).encode()
    head = (f"Host: 127.0.0.1\r\ntoken: {app.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(f"POST /v2/installs/{app.install_sid}/provision HTTP/1.1\r\n".encode())
            arrived = time.monotonic()
            time.sleep(0.5)  # the rest of the request comes late: the server still counts from the first line
            sock.sendall(head + body)
            answer = sock.recv(65536)
            elapsed = time.monotonic() - arrived
    finally:
        server.stop()
    assert answer.startswith(b"HTTP/1.1 200")
    # From arrival: ~1.0 s. Counted from the parse, it would be ~1.5 s.
    assert 1.0 <= elapsed < 1.4
    assert app.applied == 1


def test_wait_latency_sleeps_only_what_remains():
    request = Request("POST", "/", {}, {}, b"", "http://x/", received=time.monotonic() - 0.5)
    started = time.monotonic()
    request.wait_latency(0.7)
    assert time.monotonic() - request.received >= 0.7
    assert time.monotonic() - started < 0.45  # ~0.2 s; a full sleep would be 0.7 s
    started = time.monotonic()
    request.wait_latency(0.3)  # already past: no sleep at all
    assert time.monotonic() - started < 0.1


def test_answers_leave_latency_s_after_arrival_on_average_though_sleeps_end_late_and_applying_takes_time():
    app = ProvisionApp(latency_s=0.005)
    server = Serving(app)
    session = http.new_session()
    try:
        for _ in range(200):
            post(session, f"{server.url}/v2/installs/{app.install_sid}/provision", app.token)
    finally:
        server.stop()
    timing = server.timing
    # A plain sleep ends ~0.1-0.3 ms late, and the apply and the write come after it: ~0.5 ms per
    # answer, 10 % of this latency. The server learnt to end its waits earlier by that much.
    assert timing.lead > 0
    assert timing.answers == 200
    assert timing.mean_latency_s == pytest.approx(0.005, abs=0.0003)


def test_the_lead_follows_the_mean_lateness_and_stays_bounded():
    timing = Timing()
    for _ in range(400):  # every answer 0.5 ms late: the lead grows to take it back
        timing.left(received=0.0, due=0.020, now=0.0205 - timing.lead)
    assert timing.lead == pytest.approx(0.0005, abs=0.00002)
    for _ in range(400):  # a server stalled for 50 ms each time: the lead stops at its bound
        timing.left(received=0.0, due=0.020, now=0.070)
    assert timing.lead == Timing.MAX_LEAD_S
    assert timing.answers == 800


def test_a_call_through_the_client_takes_at_least_the_latency(target):
    app, url = target
    app.latency_s = 0.2
    started = time.monotonic()
    post(http.new_session(), url, app.token)
    assert 0.2 <= time.monotonic() - started < 1.2


# --- the lean path sends what session.request sends ----------------------------------------------


def test_the_lean_path_sends_the_same_request_as_session_request():
    seen: list[Request] = []

    def app(request: Request) -> Response:
        seen.append(request)
        return Response(200, {"ok": True})

    server = Serving(app)
    try:
        headers = {"token": "T0ken-abcdef", "Accept": "application/json"}
        session = http.new_session()
        http.send(session, "POST", f"{server.url}/p?q=1", timeout=5, json=BODY, headers=headers)
        assert lean(session)
        reference = http.new_session()
        reference.request("POST", f"{server.url}/p?q=1", json=BODY, headers=headers, timeout=5)
    finally:
        server.stop()
    ours, theirs = seen
    assert (ours.method, ours.path, ours.query, ours.body) == (theirs.method, theirs.path, theirs.query, theirs.body)
    assert ours.headers == theirs.headers


def test_a_cookie_the_target_sets_is_kept_and_sent_back():
    cookies: list[str | None] = []

    def app(request: Request) -> Response:
        cookies.append(request.headers.get("cookie"))
        return Response(200, {"ok": True}, {"Set-Cookie": "lb=node7; Path=/"})

    server = Serving(app)
    try:
        session = http.new_session()
        for _ in range(2):
            http.send(session, "POST", f"{server.url}/p", timeout=5, json=BODY, headers={"token": "abcd"})
    finally:
        server.stop()
    assert cookies == [None, "lb=node7"]


def test_the_lean_path_uses_the_environments_proxy(monkeypatch):
    with Hostile() as proxy:
        proxy.fault = lambda request: respond(200, b'{"ok": true}')
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        session = http.new_session()
        answer = http.send(session, "POST", "http://provision.invalid/v2/x", timeout=5, policy=ONCE, json=BODY,
                           headers={"token": "abcd"})
    assert answer.json() == {"ok": True} and lean(session)
    assert [r.path for r in proxy.seen] == ["http://provision.invalid/v2/x"]  # an absolute URL: to a proxy


# --- the guarantees of http.send, on the lean path ------------------------------------------------


@pytest.mark.parametrize("status", [307, 308, 302])
def test_the_lean_path_refuses_a_redirect_to_another_origin(target, status):
    app, url = target
    with Hostile(url.rsplit("/v2/", 1)[0]) as front, Hostile() as thief:
        front.fault = redirect(thief.url, status)
        session = http.new_session()
        with pytest.raises(http.RejectedError, match="another origin") as caught:
            post(session, front.url + "/v2/installs/" + app.install_sid + "/provision", app.token)
    assert lean(session)
    assert thief.seen == []
    assert app.token not in str(caught.value)


def test_the_lean_path_follows_a_redirect_within_the_origin_with_the_body(target):
    app, url = target
    with Hostile(url.rsplit("/v2/", 1)[0]) as front:
        front.fault = lambda r: respond(307, b"", {"Location": r.path + "?moved=1"}) if "moved" not in r.path else None
        session = http.new_session()
        answer = post(session, front.url + "/v2/installs/" + app.install_sid + "/provision", app.token)
    assert answer.json()["course"]["result"] == "Created" and lean(session)
    assert [json.loads(r.body) for r in front.seen] == [BODY, BODY]


@pytest.mark.parametrize("fault", ["gzip bomb", "endless body"])
def test_the_lean_path_caps_the_answer_once_decoded(fault):
    with Hostile() as server:
        server.fault = gzip_bomb(8) if fault == "gzip bomb" else endless_body(64 << 20)
        session = http.new_session()
        with pytest.raises(http.RejectedError, match="larger than 1 MiB"):
            post(session, server.url + "/provision", "abcd", max_bytes=1 << 20)
    assert lean(session)


def test_the_lean_path_cuts_a_dripping_answer_at_the_attempt_deadline():
    with Hostile() as server:
        server.fault = drip(seconds=30)
        session = http.new_session()
        started = time.monotonic()
        with pytest.raises(http.TransientError, match="deadline"):
            post(session, server.url + "/provision", "abcd", timeout=0.6)  # a deadline of 2.4 s
    assert time.monotonic() - started < 10 and lean(session)


def test_the_lean_path_times_out_and_fails_to_connect_like_session_request():
    with Hostile() as server:
        server.fault = lambda request: lambda out: time.sleep(3)  # never answers
        session = http.new_session()
        with pytest.raises(http.TransientError, match="timed out"):
            post(session, server.url + "/provision", "abcd", timeout=0.3)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(http.TransientError, match="connection failed"):
        post(http.new_session(), f"http://127.0.0.1:{port}/provision", "abcd")


def test_the_lean_path_retries_a_throttle_and_counts_it(target):
    app, url = target
    app.script += [Scripted(429, retry_after="0"), Scripted(503)]
    session = http.new_session()
    answer = http.send(session, "POST", url, timeout=5, policy=http.RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05),
                       json=BODY, headers={"token": app.token})
    assert answer.json()["course"]["result"] == "Created" and lean(session)
    assert (session.requests, session.throttles, app.calls) == (3, 1, 3)  # type: ignore[attr-defined]


# --- the engine ------------------------------------------------------------------------------------


def test_sync_planned_is_logged_once_as_the_push_begins(config, sandbox):
    sandbox.provision.latency_s = 0.005
    result = syncd(config, "sync", "lincoln", "--json")
    events = log_events(result)
    names = [e["event"] for e in events]
    planned = [e for e in events if e["event"] == "sync.planned"]
    assert len(planned) == 1 and planned[0]["level"] == "info"
    assert planned[0]["planned_calls"] == summary(result)["planned_calls"] == sandbox.provision.calls > 0
    assert names.index("sync.extracted") < names.index("sync.planned") < names.index("sync.finished")
    assert summary(result)["status"] == "completed" and sandbox.provision.duplicates() == 0


def test_the_last_settle_waits_on_the_calls_not_on_reports_already_taken():
    """A Ctrl-C can land in a settle after it took a call's report off the queue and before it
    acknowledged the call: the settle that follows (the push's `finally`) must still acknowledge
    every call sent, and not wait for that report again."""
    import queue
    import threading
    from concurrent.futures import ALL_COMPLETED, Future
    from types import SimpleNamespace

    from syncd import engine
    from syncd.entities import Call, Part
    from syncd.target import Outcome

    calls = [Call(seq, {"course": Part((f"c{seq}",), {"title": "T"})}) for seq in (1, 2)]
    futures: list[Future[Outcome]] = [Future(), Future()]
    for future in futures:
        future.set_result(Outcome(sids={"course": "sid"}))
    in_flight = dict(zip(futures, calls, strict=True))
    returned: queue.SimpleQueue[Future[Outcome]] = queue.SimpleQueue()
    returned.put(futures[1])  # the first call's report was taken by the interrupted settle
    acknowledged: list[int] = []
    store = SimpleNamespace(acknowledge=lambda acks, answers: acknowledged.extend(c.seq for c, _ in acks))
    state = SimpleNamespace(run_id="r", options=engine.Options(),
                            tenant=SimpleNamespace(target=SimpleNamespace(concurrency=2)))
    settling = threading.Thread(target=engine._settle, args=(state, store, in_flight, returned, ALL_COMPLETED),
                                daemon=True)
    settling.start()
    settling.join(timeout=10)
    assert not settling.is_alive(), "the last settle waits for a report that was already taken"
    assert acknowledged == [1, 2] and in_flight == {}


def test_calls_that_returned_while_the_last_batch_was_acknowledged_share_the_next_transaction():
    """Against a fast target the workers outrun the acknowledgements: what came back meanwhile
    is acknowledged in one transaction, not in batches of ``concurrency`` that fall behind."""
    import queue
    from concurrent.futures import FIRST_COMPLETED, Future
    from types import SimpleNamespace

    from syncd import engine
    from syncd.entities import Call, Part
    from syncd.target import Outcome

    calls = [Call(seq, {"course": Part((f"c{seq}",), {"title": "T"})}) for seq in range(1, 13)]
    futures: list[Future[Outcome]] = [Future() for _ in calls]
    returned: queue.SimpleQueue[Future[Outcome]] = queue.SimpleQueue()
    for future in reversed(futures):
        future.set_result(Outcome(sids={"course": "sid"}))
        returned.put(future)
    in_flight = dict(zip(futures, calls, strict=True))
    transactions: list[list[int]] = []
    store = SimpleNamespace(acknowledge=lambda acks, answers: transactions.append([c.seq for c, _ in acks]))
    state = SimpleNamespace(run_id="r", options=engine.Options(),
                            tenant=SimpleNamespace(target=SimpleNamespace(concurrency=4)))
    engine._settle(state, store, in_flight, returned, FIRST_COMPLETED)
    assert transactions == [list(range(1, 13))] and in_flight == {}
