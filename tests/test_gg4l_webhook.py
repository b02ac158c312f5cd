"""The GG4L webhook logic (SPEC §9): directly, and over real HTTP through a tiny WSGI wrapper."""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import requests

from syncd.gg4l.webhook import MAX_BODY, BufferedRecorder, Delivery, Trigger, Webhook
from syncd.gg4l_store import DistrictStore
from syncd.sandbox.gg4l import WEBHOOK_KEY, send_webhook

GUID = "6f9619ff-8b86-d011-b42d-00c04fc964ff"
HEADERS = {"X-Syncd-Key": WEBHOOK_KEY, "X-Second": "another-header-value"}
GOOD = {"x-syncd-key": WEBHOOK_KEY, "X-SECOND": "another-header-value"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DistrictStore]:
    store = DistrictStore.open(str(tmp_path / "state.db"))
    yield store
    store.close()


class Triggers:
    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.count += 1


@pytest.fixture
def hook(store: DistrictStore) -> tuple[Webhook, Triggers]:
    triggers = Triggers()
    return Webhook(HEADERS, store.record_webhook, triggers), triggers


def post(hook: Webhook, body: Any = None, *, headers: dict[str, str] | None = None, query: str = "",
         content_type: str = "application/json", method: str = "POST") -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    return hook(method, GOOD if headers is None else headers, query, raw, content_type)


class TestDirect:
    @pytest.mark.parametrize(("body", "query", "content_type"), [
        ({"districtGUID": GUID, "mode": "standard"}, "", "application/json"),
        ({"districtguid": GUID, "mode": "standard"}, "", "application/json"),
        ({"DistrictGuid": GUID, "mode": "standard", "districtName": "x", "extra": {"a": 1}}, "", "application/json"),
        (f"districtGUID={GUID}&mode=standard".encode(), "", "application/x-www-form-urlencoded"),
        (b"", f"DISTRICTGUID={GUID}&mode=standard", ""),
        ({"districtGUID": GUID, "mode": "standard"}, "", ""),  # JSON sent without a content type
    ])
    def test_valid_webhooks_are_accepted_in_every_shape(self, hook, store, body, query, content_type):
        webhook, triggers = hook
        status, answer = post(webhook, body, query=query, content_type=content_type)
        assert (status, answer) == (200, {"status": "accepted"})
        assert triggers.count == 1
        assert [(w["guid"], w["mode"]) for w in store.webhooks()] == [(GUID, "standard")]

    @pytest.mark.parametrize("headers", [
        {},
        {"X-Syncd-Key": WEBHOOK_KEY},  # one of two
        {"X-Syncd-Key": WEBHOOK_KEY, "X-Second": "wrong"},
        {"X-Syncd-Key": WEBHOOK_KEY[:-1], "X-Second": "another-header-value"},
        {"X-Syncd-Key": WEBHOOK_KEY + "0", "X-Second": "another-header-value"},
        {"X-Syncd-Key": "", "X-Second": ""},
    ])
    def test_a_missing_or_wrong_header_is_401_without_saying_which(self, hook, store, headers):
        webhook, triggers = hook
        status, answer = post(webhook, {"districtGUID": GUID, "mode": "standard"}, headers=headers)
        assert (status, answer) == (401, {"error": "unauthorized"})
        assert triggers.count == 0 and store.webhooks() == []

    def test_no_header_configured_refuses_everything(self, store):
        webhook = Webhook({}, store.record_webhook, lambda: None)
        assert post(webhook, {"districtGUID": GUID}, headers={})[0] == 401

    @pytest.mark.parametrize(("body", "content_type", "query"), [
        (b"{not json", "application/json", ""),
        (b"[1, 2]", "application/json", ""),
        (b"\xff\xfe", "application/json", ""),
        ({"mode": "standard"}, "application/json", ""),
        ({"districtGUID": "../../etc/passwd", "mode": "standard"}, "application/json", ""),
        ({"districtGUID": "x" * 65}, "application/json", ""),
        ({"districtGUID": 1234}, "application/json", ""),
        (b"districtGUID=a&&&=b=c&", "application/x-www-form-urlencoded", ""),
        (b"", "", ""),
    ])
    def test_a_bad_body_is_400_and_records_nothing(self, hook, store, body, content_type, query):
        webhook, triggers = hook
        status, answer = post(webhook, body, content_type=content_type, query=query)
        assert status == 400 and answer["error"]
        assert triggers.count == 0 and store.webhooks() == []

    def test_over_16_kib_is_413(self, hook, store):
        webhook, _ = hook
        body = json.dumps({"districtGUID": GUID, "pad": "x" * MAX_BODY}).encode()
        assert post(webhook, body)[0] == 413
        assert store.webhooks() == []

    @pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD"])
    def test_other_methods_are_405(self, hook, method):
        webhook, triggers = hook
        assert post(webhook, {"districtGUID": GUID}, method=method)[0] == 405
        assert triggers.count == 0

    def test_an_unknown_mode_is_answered_200_and_ignored(self, hook, store):
        webhook, triggers = hook
        assert post(webhook, {"districtGUID": GUID, "mode": "promo"}) == (200, {"status": "ignored",
                                                                               "reason": "unknown mode"})
        assert store.webhooks() == [] and triggers.count == 0

    def test_a_replay_changes_nothing(self, hook, store):
        webhook, _triggers = hook
        for _ in range(3):
            assert post(webhook, {"districtGUID": GUID, "mode": "standard"})[0] == 200
        post(webhook, {"districtGUID": GUID.upper(), "mode": "standard"})
        rows = store.webhooks()
        assert len(rows) == 1 and rows[0]["deliveries"] == 4
        assert store.districts() == {}  # a webhook never creates a tenant

    def test_a_new_mode_for_the_same_district_is_a_second_record(self, hook, store):
        webhook, _ = hook
        post(webhook, {"districtGUID": GUID, "mode": "test"})
        post(webhook, {"districtGUID": GUID, "mode": "standard"})
        assert store.webhook_modes() == {GUID: ["test", "standard"]}


# --- over HTTP ---------------------------------------------------------------------------------


def wsgi(webhook: Webhook):
    """The smallest WSGI mount of the webhook: what web.py's router will do for real."""
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_BODY:
            status, body = 413, {"error": "too large"}
        else:
            headers = {k[5:].replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
            status, body = webhook(environ["REQUEST_METHOD"], headers, environ.get("QUERY_STRING", ""),
                                   environ["wsgi.input"].read(length) if length else b"",
                                   environ.get("CONTENT_TYPE"), environ.get("REMOTE_ADDR", ""))
        payload = json.dumps(body).encode()
        start_response(f"{status} X", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return [payload]
    return app


class _Threaded(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 128


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def served(store: DistrictStore) -> Iterator[tuple[str, Triggers]]:
    triggers = Triggers()
    server = make_server("127.0.0.1", 0, wsgi(Webhook({"X-Syncd-Key": WEBHOOK_KEY}, store.record_webhook, triggers)),
                         server_class=_Threaded, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/webhooks/gg4l", triggers
    server.shutdown()
    server.server_close()


class TestOverHttp:
    @pytest.mark.parametrize(("style", "key"), [("json", "districtGUID"), ("form", "districtGuid"),
                                                ("query", "DistrictGUID")])
    def test_the_sender_in_each_style_gets_200_fast(self, served, store, style, key):
        url, triggers = served
        sent = send_webhook(url, GUID, style=style, key=key)
        assert sent.ok and sent.latency_s < 1.0
        assert store.webhooks()[0]["guid"] == GUID and triggers.count == 1

    def test_header_names_ignore_case_over_http(self, served):
        url, _ = served
        assert send_webhook(url, GUID, headers={"x-SYNCD-key": WEBHOOK_KEY}).status == 200

    def test_wrong_or_missing_header_get_the_same_401(self, served, store):
        url, _ = served
        wrong = send_webhook(url, GUID, headers={"X-Syncd-Key": "nope"})
        missing = send_webhook(url, GUID, headers={})
        assert (wrong.status, wrong.body) == (missing.status, missing.body) == (401, '{"error": "unauthorized"}')
        assert store.webhooks() == []

    def test_get_is_405_and_a_big_body_413(self, served):
        url, _ = served
        assert send_webhook(url, GUID, method="GET").status == 405
        assert send_webhook(url, GUID, body=b"{" + b" " * (MAX_BODY + 10) + b"}").status == 413

    def test_50_concurrent_duplicates_make_one_record(self, served, store):
        url, triggers = served
        session = requests.Session()
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(lambda _: send_webhook(url, GUID, session=session), range(50)))
        assert [r.status for r in results] == [200] * 50
        rows = store.webhooks()
        assert len(rows) == 1 and rows[0]["deliveries"] == 50
        assert triggers.count == 50
        assert store.districts() == {}


class TestTrigger:
    def test_a_burst_of_triggers_coalesces_into_few_discoveries(self):
        runs = []
        trigger = Trigger(lambda: (runs.append(time.monotonic()), time.sleep(0.05)), min_gap_s=0.2).start()
        try:
            for _ in range(100):
                trigger()
            deadline = time.monotonic() + 3
            while len(runs) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)
        finally:
            trigger.stop()
        assert 1 <= len(runs) <= 2

    def test_a_failing_discovery_does_not_kill_the_trigger(self):
        calls = []

        def discover() -> None:
            calls.append(1)
            raise RuntimeError("partner down")

        trigger = Trigger(discover, min_gap_s=0.0).start()
        try:
            trigger()
            deadline = time.monotonic() + 3
            while not calls and time.monotonic() < deadline:
                time.sleep(0.01)
            trigger()
            while len(calls) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            trigger.stop()
        assert len(calls) == 2


class TestBufferedRecorder:
    def test_the_answer_does_not_wait_for_a_locked_store(self, tmp_path, store):
        other = DistrictStore.open(str(tmp_path / "state.db"))
        other.conn.execute("BEGIN IMMEDIATE")  # another process holds the write lock (a sync's page)
        recorder = BufferedRecorder(store.record_webhook)
        try:
            webhook = Webhook(HEADERS, recorder, lambda: None)
            started = time.monotonic()
            for _ in range(20):
                assert post(webhook, {"districtGUID": GUID, "mode": "standard"})[0] == 200
            assert time.monotonic() - started < 1.0
            other.conn.execute("COMMIT")
            assert recorder.flush()
        finally:
            recorder.stop()
            other.close()
        rows = store.webhooks()
        assert len(rows) == 1 and rows[0]["deliveries"] == 20

    def test_repeats_are_known_in_memory(self, store):
        recorder = BufferedRecorder(store.record_webhook, remember=2)
        try:
            assert recorder(Delivery(GUID, "standard", "")) is True
            assert recorder(Delivery(GUID.upper(), "standard", "")) is False
            assert recorder(Delivery(GUID, "test", "")) is True
            assert recorder.flush()
        finally:
            recorder.stop()
        assert [w["deliveries"] for w in store.webhooks()] == [2, 1]
