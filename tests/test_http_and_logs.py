"""The HTTP policy (retries, Retry-After, typed errors) and the logs (JSON, no secrets)."""

from __future__ import annotations

import json
import time

import pytest
import requests
from conftest import log_events, summary, syncd

from syncd import http, logs
from syncd.sandbox import Roster, Sandbox, Scripted
from syncd.sandbox.provision import ProvisionApp
from syncd.sandbox.server import Serving


@pytest.fixture
def target():
    app = ProvisionApp()
    server = Serving(app)
    yield app, f"{server.url}/v2/installs/{app.install_sid}/provision"
    server.stop()


BODY = {"course": {"ids": {"external": "c1"}, "title": "Art"}}
FAST = http.RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05)


def post(url: str, app: ProvisionApp, policy: http.RetryPolicy = FAST) -> requests.Response:
    return http.send(http.new_session(), "POST", url, timeout=5, policy=policy, json=BODY,
                     headers={"token": app.token})


def test_429_and_5xx_are_retried_until_they_pass(target):
    app, url = target
    app.script += [Scripted(429, retry_after="0"), Scripted(502), Scripted(503)]
    assert post(url, app).json()["course"]["result"] == "Created"
    assert app.calls == 4


def test_the_session_counts_the_429s_it_was_answered_as_throttles(target):
    app, url = target
    app.script += [Scripted(429, retry_after="0"), Scripted(503), Scripted(429)]
    session = http.new_session()
    http.send(session, "POST", url, timeout=5, policy=FAST, json=BODY, headers={"token": app.token})
    assert (session.requests, session.throttles) == (4, 2)  # a 503 is a failure, not a throttle


def test_retry_after_is_honoured(target):
    app, url = target
    app.script.append(Scripted(429, retry_after="1"))
    started = time.monotonic()
    post(url, app)
    assert time.monotonic() - started >= 1.0


def test_a_lost_response_is_retried_and_the_upsert_makes_no_duplicate(target):
    app, url = target
    app.script.append(Scripted("drop_after_apply"))
    response = post(url, app)
    assert response.json()["course"]["result"] == "Found Existing"  # the same body, applied before
    assert len(app.courses) == 1 and app.applied == 2


def test_transient_faults_that_outlast_the_retries_raise_a_transient_error(target):
    app, url = target
    app.script.append(Scripted(500, times=10))
    with pytest.raises(http.TransientError) as caught:
        post(url, app)
    assert caught.value.status == 500 and caught.value.attempts == 4


def test_a_4xx_is_a_rejection_with_the_servers_message(target):
    app, url = target
    with pytest.raises(http.RejectedError) as caught:
        http.send(http.new_session(), "POST", url, timeout=5, policy=FAST, json={"course": {}},
                  headers={"token": app.token})
    assert caught.value.status == 400 and caught.value.detail == "course.ids needs sid, external or lms"


def test_a_refused_token_is_an_auth_error(target):
    _, url = target
    with pytest.raises(http.AuthError):
        http.send(http.new_session(), "POST", url, timeout=5, policy=FAST, json=BODY, headers={"token": "x"})


def test_urls_are_redacted():
    assert http.redact_url("https://u:p@h/x?access_token=abc&limit=5") == "https://h/x?access_token=***&limit=5"


def test_registered_secrets_never_reach_a_log_line(capsys):
    logs.configure("debug", "json")
    logs.register_secrets(["hunter2-very-secret"])
    logs.structlog.get_logger("t").info("x", detail="token was hunter2-very-secret", authorization="Bearer q")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["detail"] == "token was ***" and line["authorization"] == "***"
    assert {"timestamp", "level", "event"} <= set(line) and line["timestamp"].endswith("Z")


def test_a_debug_run_through_faults_prints_no_secret(tmp_path):
    secret, token = "Src-Secret-7f3a9c", "Target-Token-5e1d2b"
    roster = Roster.generate(seed=9, users=40, classes=4, enrollments=120)
    with Sandbox(roster, version="1.2", client_secret=secret, expire_tokens_at_request=3) as box:
        box.provision.token = token
        box.provision.script.append(Scripted(503, retry_after="0"))
        box.provision.reject = lambda body: (400, "no") if body["course"]["ids"]["external"] == "cls-00002" else None
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state", log_level="debug")
        result = syncd(config, "sync", "lincoln", "--json")
        errors = syncd(config, "errors", "--json")
        status = syncd(config, "status", "--json")
    assert summary(result)["status"] == "completed_with_errors"
    assert any(e["event"] == "sync.finished" for e in log_events(result))
    state = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir() if p.is_file())
    for value in (secret, token):
        assert value not in result.stdout + result.stderr + errors.stdout + status.stdout
        assert value.encode() not in state


# --- a gate (a source's request slot) is held only while an attempt's bytes travel -------------


class Gate:
    """Records when it is entered and left; refuses entry while ``closed``."""

    def __init__(self, events: list[str], closed: bool = False):
        self.events, self.closed = events, closed

    def __enter__(self) -> None:
        if self.closed:
            raise LookupError("not wanted any more")
        self.events.append("gate entered")

    def __exit__(self, *exc: object) -> None:
        self.events.append("gate left")


def test_a_request_is_signed_before_its_gate_and_counted_inside_it(target):
    app, url = target
    events: list[str] = []

    def sign(request: requests.PreparedRequest) -> requests.PreparedRequest:
        events.append("signed")
        request.headers["token"] = app.token
        return request

    app.script.append(Scripted(503))
    session = http.new_session()
    http.send(session, "POST", url, timeout=5, policy=FAST, data=json.dumps(BODY), auth=sign,
              headers={"Content-Type": "application/json"}, gate=Gate(events),
              on_attempt=lambda: events.append("sent"))
    # Each attempt signs anew (a nonce is never reused), outside the gate; the retry's pause too.
    assert events == ["signed", "gate entered", "sent", "gate left"] * 2
    assert session.requests == app.calls == 2  # type: ignore[attr-defined]


def test_a_gate_that_refuses_sends_nothing_and_counts_nothing(target):
    app, url = target
    session = http.new_session()
    with pytest.raises(LookupError):
        http.send(session, "POST", url, timeout=5, policy=FAST, json=BODY, headers={"token": app.token},
                  gate=Gate([], closed=True))
    assert session.requests == app.calls == 0  # type: ignore[attr-defined]
