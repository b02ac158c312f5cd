"""``POST /webhooks/gg4l``: GG4L's hint that a district activated the application (SPEC §9).

The handler is a plain function of the request, so that any HTTP server can mount it:
``Webhook(...)(method, headers, query, body, content_type) -> (status, json-able body)``.

- Every configured header must match, each compared in constant time; else 401, without saying
  which header failed. The answer is the same whether a header is missing or wrong.
- ``districtGUID`` is found whatever its case, in a JSON body, a form body or the query string,
  and must be GUID-like and at most 64 characters; ``mode`` is test, trial or standard (absent:
  standard; unknown: recorded, answered 200 and ignored, so that GG4L does not retry garbage).
- The answer is 200 as soon as the event is recorded; a discovery is triggered (the trigger
  coalesces). A webhook never creates a tenant: only the Partner API list does.
- Replays and concurrent duplicates change nothing: the recorder keys events on (GUID, mode).
- 400 for a body that cannot be read, 413 over 16 KiB, 405 for any method but POST.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from syncd.gg4l import MODES, valid_guid

MAX_BODY = 16 * 1024
GUID_KEY = "districtguid"
log = structlog.get_logger("syncd.gg4l.webhook")


@dataclass(frozen=True)
class Delivery:
    """A valid webhook, as the recorder stores it."""

    guid: str
    mode: str
    body_sha256: str
    remote_addr: str = ""


# The recorder returns True when the (GUID, mode) pair is new, False for a repeat.
Recorder = Callable[[Delivery], bool]


class Webhook:
    """The webhook logic; thread-safe as long as the recorder and trigger are."""

    def __init__(self, headers: Mapping[str, str], record: Recorder, trigger: Callable[[], None]):
        # Header names are case-insensitive in HTTP; the expected values are secrets.
        self._expected = [(name.lower(), value.encode()) for name, value in headers.items()]
        self._record = record
        self._trigger = trigger

    def __call__(self, method: str, headers: Mapping[str, str], query: str, body: bytes,
                 content_type: str | None = None, remote_addr: str = "") -> tuple[int, dict[str, Any]]:
        if method.upper() != "POST":
            return 405, {"error": "method not allowed: use POST"}
        if len(body) > MAX_BODY:
            return 413, {"error": f"request body over {MAX_BODY} bytes"}
        if not self._authorized(headers):
            log.warning("gg4l.webhook_unauthorized", remote_addr=remote_addr)
            return 401, {"error": "unauthorized"}
        fields, problem = _fields(query, body, content_type or "")
        if problem:
            return 400, {"error": problem}
        guid = fields.get(GUID_KEY)
        if guid is None:
            return 400, {"error": "no districtGUID in the body or the query"}
        if not valid_guid(guid):
            return 400, {"error": "districtGUID must be GUID-like (letters, digits, '-'), at most 64 characters"}
        mode = (fields.get("mode") or "standard").strip().lower()
        if mode not in MODES:
            log.warning("gg4l.webhook_unknown_mode", guid=guid, mode=mode[:20])
            return 200, {"status": "ignored", "reason": "unknown mode"}
        delivery = Delivery(guid, mode, hashlib.sha256(body).hexdigest(), remote_addr)
        new = self._record(delivery)
        # A repeat is logged at debug only: a replay storm must not flood the journal.
        (log.info if new else log.debug)("gg4l.webhook_received", guid=guid, mode=mode, repeat=not new)
        self._trigger()
        return 200, {"status": "accepted"}

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        if not self._expected:
            return False  # no header configured: the webhook is off (config says so)
        received = {name.lower(): value for name, value in headers.items()}
        ok = True
        # Compare every header, even after a mismatch, so that the time says nothing of which failed.
        for name, expected in self._expected:
            ok &= hmac.compare_digest(received.get(name, "").encode(), expected)
        return ok


def _fields(query: str, body: bytes, content_type: str) -> tuple[dict[str, str], str]:
    """The request's fields by lowercased name: the body's first, then the query's."""
    fields: dict[str, str] = {}
    kind = content_type.split(";")[0].strip().lower()
    if body.strip():
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return {}, "the body is not UTF-8"
        # GG4L does not document its content type: a body that looks like JSON is read as JSON.
        if kind.endswith("json") or (not kind.endswith("x-www-form-urlencoded") and text.lstrip()[:1] in "{["):
            try:
                data = json.loads(text)
            except ValueError:
                return {}, "the body is not valid JSON"
            if not isinstance(data, dict):
                return {}, "the JSON body must be an object"
            pairs = [(k, v) for k, v in data.items() if isinstance(v, str)]
            pairs += [(k, "") for k, v in data.items() if not isinstance(v, str) and v is not None]
        else:
            try:
                pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=True,
                                               max_num_fields=100)
            except ValueError:
                return {}, "the body is neither JSON nor a form"
        for key, value in pairs:
            fields.setdefault(str(key).lower(), value)
    try:
        for key, value in urllib.parse.parse_qsl(query or "", keep_blank_values=True, max_num_fields=100):
            fields.setdefault(key.lower(), value)
    except ValueError:
        return {}, "the query string is malformed"
    return fields, ""


class Trigger:
    """Asks for a discovery, coalescing bursts: at most one run in flight, one queued, ``min_gap_s`` apart.

    ``start()`` runs ``discover`` on a daemon thread; a failing discovery is logged, never raised.
    """

    def __init__(self, discover: Callable[[], object], min_gap_s: float = 5.0):
        self._discover = discover
        self._min_gap_s = min_gap_s
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0

    def __call__(self) -> None:
        self._wanted.set()

    def start(self) -> Trigger:
        self._thread = threading.Thread(target=self._loop, name="gg4l-discovery", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wanted.set()
        if self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wanted.wait()
            if self._stop.is_set():
                return
            self._wanted.clear()
            started = time.monotonic()
            try:
                self._discover()
            except Exception as exc:  # noqa: BLE001 - the listener must outlive a failed discovery
                log.error("gg4l.discovery_failed", error=str(exc))
            self.runs += 1
            self._stop.wait(max(0.0, self._min_gap_s - (time.monotonic() - started)))


class BufferedRecorder:
    """Records deliveries on a writer thread, so that the answer never waits on a busy state store.

    A sync holds SQLite's write lock for a page at a time; the webhook must still answer within a
    second. Repeats are recognised in memory (the store's unique key stays the authority), and a
    delivery lost in a crash loses nothing: the periodic discovery finds the district anyway.
    """

    def __init__(self, record: Recorder, remember: int = 10_000, backlog: int = 10_000):
        self._record = record
        self._seen: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._remember = remember
        self._queue: queue.Queue[Delivery | None] = queue.Queue(backlog)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="gg4l-webhook-writer", daemon=True)
        self._thread.start()
        self.dropped = 0

    def __call__(self, delivery: Delivery) -> bool:
        key = (delivery.guid.lower(), delivery.mode)
        with self._lock:
            new = key not in self._seen
            self._seen[key] = None
            self._seen.move_to_end(key)
            while len(self._seen) > self._remember:
                self._seen.popitem(last=False)
        try:
            self._queue.put_nowait(delivery)
        except queue.Full:
            self.dropped += 1  # a flood: the discovery poll still covers every district
        return new

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued delivery is written; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            delivery = self._queue.get()
            try:
                if delivery is None:
                    return
                self._record(delivery)
            except Exception as exc:  # noqa: BLE001 - one failed write must not stop the writer
                log.error("gg4l.webhook_record_failed", guid=delivery.guid if delivery else None, error=str(exc))
            finally:
                self._queue.task_done()
