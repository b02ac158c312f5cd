"""The one HTTP policy: sessions, deadlines, bounded bodies, same-origin redirects, retries with
backoff, typed errors, redaction.

Sources and the target call :func:`send` (or :func:`download` for a file); none of them retries,
sleeps or follows a redirect on its own.

Limits, each a defence against a server that misbehaves (see README, "Limits"):

- every attempt has a wall-clock deadline (``ATTEMPT_DEADLINE_FACTOR`` x the timeout): a server
  that drips one byte at a time is cut off, since a read timeout alone only bounds the gap
  between two bytes; a whole request, retries and waits included, has a budget
  (``BUDGET_FACTOR`` x the timeout);
- a body is read as a stream and counted after decoding (gzip bombs included): at most
  ``MAX_BODY_BYTES``;
- ``Retry-After`` is honoured up to ``MAX_RETRY_AFTER_S``; a server asking for longer fails the
  request now (the next run tries again) rather than holding the run;
- redirects are never followed by requests itself: a redirect to the same origin (scheme, host,
  port) is followed by hand, one to another origin is refused, because the request may carry a
  credential (a ``token`` header, an Authorization header, a client secret in the body).
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import heapq
import http.client
import itertools
import json
import random
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import IO, Any, NoReturn

import requests
import requests.adapters
import urllib3
import urllib3.connection

from syncd import __version__, errors, logs, wire

USER_AGENT = f"syncd/{__version__} (+roster sync for SmarterProctoring)"
SENSITIVE_PARAMS = re.compile(
    r"(?i)^(access_token|refresh_token|token|client_secret|code|password|oauth_[a-z_]+|sig|signature)$"
)
CREDENTIAL_HEADERS = ("authorization", "token", "proxy-authorization", "cookie")
ATTEMPT_DEADLINE_FACTOR = 4.0  # one attempt (connect, headers, body) ends within 4 x timeout
BUDGET_FACTOR = 12.0  # one request, every retry and wait included, ends within 12 x timeout
MAX_BODY_BYTES = 64 << 20  # a decoded answer; a page of 1,000 records is well under 2 MiB
MAX_DOWNLOAD_BYTES = 4 << 30  # a report file, spooled to disk
MAX_RETRY_AFTER_S = 60.0
MAX_REDIRECTS = 5
BREAKER_FAILURES = 8  # requests in a row that failed for good: the server is down for this run
_CHUNK = 1 << 14  # small reads: a compressed chunk decodes to at most this much at a time
# Set when the process is asked to stop: backoff sleeps end early and no new attempt starts.
# A session may carry its own (``session.stop``); this one is the default for all.
stopping = threading.Event()


class HttpError(errors.SyncError):
    """A request that did not succeed; the message is safe to log (no secret, no token). Raised as
    one of the three below; a bare one (or a subclass such as target.InvalidResponse) is to be
    retried when the status says so (none, 429, 5xx), else recorded."""

    def __init__(self, message: str, status: int | None = None, url: str = "", attempts: int = 1,
                 detail: str | None = None):
        # A server may echo what we sent (a token in "token X is not valid"): every message is
        # redacted here, once, before anyone can store or show it. ``detail``: what the server
        # said, without our method and URL (what an admin reads in `syncd errors`).
        super().__init__(logs.redact(message), status, logs.redact(detail or message))
        self.url = url
        self.attempts = attempts

    @property
    def action(self) -> errors.Action:  # type: ignore[override]
        status = self.status
        return "retry" if status is None or status == 429 or status >= 500 else "record"


class TransientError(HttpError, errors.RetryLater):
    """Timeouts, connection errors, 429 and 5xx that outlasted every retry (a deadline exceeded
    included): a later run may succeed."""

    action: errors.Action = "retry"  # type: ignore[assignment]


class RejectedError(HttpError, errors.RecordFailed):
    """The server refused this request (4xx), or answered in a way we refuse (a redirect to another
    origin, a body over the cap); retrying it now would not help: record it and go on."""

    action: errors.Action = "record"  # type: ignore[assignment]


class AuthError(HttpError, errors.RunStopped):
    """The credentials were refused even after one refresh: nothing more can be asked this run."""

    action: errors.Action = "stop"  # type: ignore[assignment]


RETRY, THROTTLE, REAUTHORIZE, AUTH, REJECT = "retry", "throttle", "reauthorize", "auth", "reject"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_s: float = 0.25
    cap_s: float = 20.0
    max_retry_after_s: float = MAX_RETRY_AFTER_S

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s) + random.uniform(0, 0.05)
        # "Full jitter": spreads retries of parallel workers instead of having them collide.
        return random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))

    @staticmethod
    def classify(response: requests.Response, vendor_transient: bool, can_reauthorize: bool) -> str:
        """What to do with a non-2xx answer: retry it, retry it as a throttle, refresh the
        credentials once, or give up (auth or reject)."""
        status = response.status_code
        if status == 401 and can_reauthorize:
            return REAUTHORIZE
        if vendor_transient:
            return THROTTLE
        if status == 429 or status >= 500:
            return RETRY
        return AUTH if status in (401, 403) else REJECT


# --- deadlines: a watchdog that shuts the socket of an attempt past its deadline ------------


class _Watch:
    """The connections one attempt uses; :meth:`fire` shuts them, which ends any blocked read."""

    def __init__(self) -> None:
        self.connections: list[Any] = []
        self.fired = False
        self.done = False
        self._lock = threading.Lock()

    def attach(self, connection: Any) -> None:
        with self._lock:
            self.connections.append(connection)
            if self.fired:
                _shut(connection)

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            for connection in self.connections:
                _shut(connection)


def _shut(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    # The plain socket's shutdown, also for TLS: it wakes a recv() blocked in another thread.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Timers:
    """One thread for every deadline of the process (a heap), rather than a thread per request."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._compact_at = 1024

    def add(self, when: float, watch: _Watch) -> None:
        with self._cond:
            heap = self._heap
            while heap and heap[0][2].done:  # attempts that ended: dropped here, not by a wake-up
                heapq.heappop(heap)
            if len(heap) > self._compact_at:  # ended attempts behind a long one (a report download)
                heap[:] = [entry for entry in heap if not entry[2].done]
                heapq.heapify(heap)
                self._compact_at = 2 * len(heap) + 1024
            earliest = not heap or when < heap[0][0]
            heapq.heappush(heap, (when, next(self._seq), watch))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="http-deadlines", daemon=True)
                self._thread.start()
            # The thread sleeps until the earliest deadline: it is woken only if this one comes
            # sooner (deadlines mostly come in order), not once per request.
            if earliest:
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    watch = heapq.heappop(self._heap)[2]
                    if not watch.done:
                        watch.fire()
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_timers = _Timers()
_current = threading.local()


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[_Watch]:
    watch = _Watch()
    _current.watch = watch
    _timers.add(time.monotonic() + seconds, watch)
    try:
        yield watch
    finally:
        watch.done = True
        _current.watch = None


def _attach(connection: Any) -> None:
    watch = getattr(_current, "watch", None)
    if watch is not None:
        watch.attach(connection)


class _HTTPConnection(urllib3.connection.HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)
        super().request(*args, **kwargs)


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)
        super().request(*args, **kwargs)


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


# --- sessions ----------------------------------------------------------------------------


class _Session(requests.Session):
    """A Session that reads its environment (proxies, CA bundle) once per host, not per request,
    counts its requests, and carries the stop token its requests obey.

    requests re-reads proxy variables and probes the CA bundle path with os.path calls on every
    request; at hundreds of calls a second that is a tenth of the push's CPU.
    """

    def __init__(self, stop: threading.Event | None = None) -> None:
        super().__init__()
        # Never pick up ~/.netrc credentials: they must not reach a source or the target.
        self.auth = _no_auth
        self.stop = stop or stopping
        self.requests = 0  # attempts sent, for metrics
        self.throttles = 0  # answers that said "slow down" (429, or a vendor's own throttle), for metrics
        self.failures_in_a_row = 0  # requests that failed for good (see send's breaker)
        self._count_lock = threading.Lock()
        self._environment: dict[tuple[str, str], dict[str, Any]] = {}
        self._routes: dict[tuple[str, str, tuple[tuple[str, str], ...]], _Route] = {}

    def count(self) -> None:
        with self._count_lock:
            self.requests += 1

    def count_throttle(self) -> None:
        with self._count_lock:
            self.throttles += 1

    def route(self, method: str, url: str, headers: dict[str, str]) -> _Route:
        """How ``session.request`` would send a JSON body with these headers, decided once per method,
        URL and headers (see ``_request``)."""
        key = (method, url, tuple(sorted(headers.items())))
        route = self._routes.get(key)
        if route is None:
            route = _Route.of(self, method, url, headers)
            with self._count_lock:
                self._routes = {**self._routes, key: route} if len(self._routes) < 64 else {key: route}
        return route

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        if proxies or verify is not None or cert is not None:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        key = tuple(urllib.parse.urlsplit(url)[:2])
        if key not in self._environment:
            self._environment[key] = super().merge_environment_settings(url, {}, None, None, None)
        settings = self._environment[key]
        # ``stream`` (always set by send) only passes through: it does not depend on the environment.
        return {**settings, "proxies": dict(settings["proxies"]), "stream": stream}


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


def new_session(pool_size: int = 10, stop: threading.Event | None = None) -> requests.Session:
    session = _Session(stop)
    session.headers["User-Agent"] = USER_AGENT
    adapter = _Adapter(pool_connections=4, pool_maxsize=max(pool_size, 4))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _stop_of(session: requests.Session) -> threading.Event:
    return getattr(session, "stop", stopping)


# --- one request ---------------------------------------------------------------------------


def send(session: requests.Session, method: str, url: str, *, timeout: float, **kwargs: Any) -> requests.Response:
    """:func:`_send`, behind the session's breaker: once ``BREAKER_FAILURES`` requests in a row have
    failed for good (every retry spent), the server is taken to be down for this run and every
    further request fails at once, so a dead or stalling server costs a run minutes, not hours."""
    failing = getattr(session, "failures_in_a_row", None)
    if failing is not None and failing >= BREAKER_FAILURES:
        shown = redact_url(url)
        raise TransientError(f"{method} {shown}: not sent: the server failed {failing} requests in a row",
                             None, shown, 0, f"not sent: the server failed {failing} requests in a row this run")
    try:
        response = _send(session, method, url, timeout=timeout, **kwargs)
    except TransientError:
        if failing is not None:
            session.failures_in_a_row += 1  # type: ignore[attr-defined]
        raise
    if failing is not None:
        session.failures_in_a_row = 0  # type: ignore[attr-defined]
    return response


def _send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    timeout: float,
    policy: RetryPolicy = RetryPolicy(),
    reauthorize: Callable[[], None] | None = None,
    on_attempt: Callable[[], None] | None = None,
    transient_status: Callable[[requests.Response], bool] | None = None,
    throttle_policy: RetryPolicy | None = None,
    max_bytes: int = MAX_BODY_BYTES,
    gate: contextlib.AbstractContextManager[Any] | None = None,
    **kwargs: Any,
) -> requests.Response:
    """Send one request under the policy and return the 2xx response (its body read), or raise a
    typed error.

    ``gate`` is entered around each attempt's exchange (after the request is prepared and signed,
    before its deadline starts): a source's request slot, held only while bytes are in flight.

    ``reauthorize`` is called once on a 401 (refresh a token) before the request is tried again.
    ``transient_status`` lets a client classify vendor-specific throttling (Canvas 403) as retryable;
    such answers are retried under ``throttle_policy`` (longer: a throttle drains slowly) if given.
    """
    kwargs.pop("stream", None)  # every body is streamed and counted here
    kwargs.pop("allow_redirects", None)
    _register_sent_credentials(kwargs.get("headers"))
    stop = _stop_of(session)
    budget_end = time.monotonic() + BUDGET_FACTOR * timeout
    reauthorized = False
    attempt = 0
    shown = redact_url(url)

    def sending() -> None:  # an attempt's request is about to leave (not one its gate refused)
        if on_attempt:
            on_attempt()
        if isinstance(session, _Session):
            session.count()

    while True:
        attempt += 1
        try:
            response = _attempt(session, method, url, timeout, max_bytes, kwargs, gate, sending)
        except _Failed as exc:
            if exc.final or attempt >= policy.attempts or stop.is_set():
                kind = RejectedError if exc.final else TransientError
                raise kind(f"{method} {shown}: {exc}", None, shown, attempt,
                           f"{exc} after {attempt} attempt(s)") from None
            _pause(stop, policy.delay(attempt, None), budget_end, method, shown, attempt, str(exc))
            continue
        status = response.status_code
        if status < 300:
            _register_received_tokens(response)
            return response
        action = RetryPolicy.classify(response, bool(transient_status and transient_status(response)),
                                      bool(reauthorize) and not reauthorized)
        if action == REAUTHORIZE:
            reauthorized = True
            reauthorize()  # type: ignore[misc]
            attempt -= 1  # the refresh is "once", not one of the transient retries
            continue
        if isinstance(session, _Session) and (action == THROTTLE or status == 429):
            session.count_throttle()
        detail = error_message(response)
        message = f"{method} {shown}: HTTP {status}: {detail}"
        if action in (RETRY, THROTTLE):
            rules = throttle_policy if action == THROTTLE and throttle_policy else policy
            if attempt >= rules.attempts or stop.is_set():
                raise TransientError(message, status, shown, attempt, f"HTTP {status} after {attempt} "
                                     f"attempt(s): {detail}")
            wait = retry_after(response)
            if wait is not None and wait > rules.max_retry_after_s:
                raise TransientError(message, status, shown, attempt,
                                     f"HTTP {status}: the server asked to wait {wait:.0f} s, more than the "
                                     f"{rules.max_retry_after_s:.0f} s syncd waits; trying again next run: {detail}")
            _pause(stop, rules.delay(attempt, wait), budget_end, method, shown, attempt, f"HTTP {status}: {detail}",
                   status)
            continue
        raise (AuthError if action == AUTH else RejectedError)(message, status, shown, attempt, detail)


class _Failed(Exception):
    """One attempt failed before a usable answer; ``final``: retrying cannot help."""

    def __init__(self, problem: str, final: bool = False):
        super().__init__(problem)
        self.final = final


def _attempt(session: requests.Session, method: str, url: str, timeout: float, max_bytes: int,
             kwargs: dict[str, Any], gate: contextlib.AbstractContextManager[Any] | None = None,
             sending: Callable[[], None] | None = None) -> requests.Response:
    """One attempt, redirects to the same origin followed by hand, the body read and capped."""
    deadline_s = ATTEMPT_DEADLINE_FACTOR * timeout
    lean = _is_lean(session, kwargs)
    prepared = None
    if not lean and isinstance(session, requests.Session):
        with _classified(deadline_s, max_bytes):
            prepared = _prepare(session, method, url, kwargs)
    with gate or contextlib.nullcontext(), _deadline(deadline_s) as watch, _classified(deadline_s, max_bytes, watch):
        if sending:
            sending()
        for _hop in range(MAX_REDIRECTS + 1):
            if lean:
                response = _lean(session, method, url, kwargs, timeout, max_bytes)  # type: ignore[arg-type]
            else:
                response = _sent(session, method, url, kwargs, timeout, prepared)
                prepared = None
            if not response.is_redirect:
                _read_body(response, max_bytes)
                return response
            response.close()
            target = urllib.parse.urljoin(url, response.headers.get("Location", ""))
            if origin(target) != origin(url):
                raise _Failed(f"HTTP {response.status_code} redirect to another origin "
                              f"({redact_url(target)}); not followed, so no credential leaves "
                              f"{origin(url)}", final=True)
            if response.status_code in (301, 302, 303) and method != "GET":
                method, kwargs = "GET", {k: v for k, v in kwargs.items() if k not in ("data", "json", "files")}
                lean = False
            url = target
        raise _Failed(f"more than {MAX_REDIRECTS} redirects", final=True)


@contextlib.contextmanager
def _classified(deadline_s: float, max_bytes: int, watch: _Watch | None = None) -> Iterator[None]:
    """What went wrong in an attempt, as a :class:`_Failed` (retried unless final)."""
    try:
        yield
    except _Failed:
        raise
    except wire.TooLarge:
        raise _too_large(max_bytes) from None
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        if watch is not None and watch.fired:
            raise _Failed(f"no complete answer within the {deadline_s:g} s deadline") from None
        if isinstance(exc, requests.Timeout):
            raise _Failed("timed out") from None
        raise _Failed("connection failed") from None


def _is_lean(session: requests.Session, kwargs: dict[str, Any]) -> bool:
    """A request with only a JSON body and headers (a provision call) on a session without cookies
    or hooks takes :func:`_lean`: the same bytes through the same urllib3 pool, without what
    requests does again on every call (merge the session's settings, cookies and hooks, parse the
    URL, look up the proxy and the CA bundle, extract cookies, build a cookie jar per answer):
    half of a push call's CPU."""
    return (isinstance(session, _Session) and "json" in kwargs and kwargs.keys() <= {"json", "headers"}
            and not session.cookies and not any(session.hooks.values()))


def _prepare(session: requests.Session, method: str, url: str, kwargs: dict[str, Any]) -> requests.PreparedRequest:
    """``session.request``'s first half: the request with the session's headers, cookies and auth
    (an OAuth 1.0a signature is made here, so each attempt signs anew)."""
    return session.prepare_request(requests.Request(method=method.upper(), url=url, **kwargs))


def _sent(session: requests.Session, method: str, url: str, kwargs: dict[str, Any], timeout: float,
          prepared: requests.PreparedRequest | None) -> requests.Response:
    """``session.request``'s second half (the first too, if not done yet), unstreamed redirects off.
    A wrapper that only has ``request`` (gg4l's ``_AuthSession``) is called as such."""
    if not isinstance(session, requests.Session):
        return session.request(method, url, timeout=timeout, allow_redirects=False, stream=True, **kwargs)
    prepared = prepared or _prepare(session, method, url, kwargs)
    settings = session.merge_environment_settings(prepared.url, {}, True, None, None)
    return session.send(prepared, timeout=timeout, allow_redirects=False, **settings)


class _Route:
    """What ``session.request`` decides for one method, URL and header set, decided once: the
    prepared request (session headers merged, no body), the environment settings (proxies, TLS
    verification, CA bundle, client certificate), the adapter's urllib3 pool for them with the
    TLS settings applied (``cert_verify``), and the request target (the path, or the whole URL
    through a plain HTTP proxy)."""

    def __init__(self, prepared: requests.PreparedRequest, adapter: requests.adapters.HTTPAdapter,
                 settings: dict[str, Any]):
        self.prepared = prepared
        self.adapter = adapter
        self.settings = settings
        self.target = adapter.request_url(prepared, settings["proxies"])
        self.headers = dict(prepared.headers)
        self.pool = self._pool()
        # Written and read by syncd.wire, unless through a proxy (its tunnel or absolute target
        # is urllib3's business).
        self.wire = self.pool.proxy is None and self.target.startswith("/")

    @classmethod
    def of(cls, session: _Session, method: str, url: str, headers: dict[str, str]) -> _Route:
        prepared = session.prepare_request(requests.Request(method=method.upper(), url=url, headers=headers,
                                                            json={}))
        prepared.body = None
        prepared.headers.pop("Content-Length", None)  # set with each body; Content-Type stays
        settings = session.merge_environment_settings(prepared.url, {}, True, None, None)
        return cls(prepared, session.get_adapter(prepared.url or url), settings)

    def _pool(self) -> Any:
        settings, url = self.settings, self.prepared.url or ""
        try:
            if hasattr(self.adapter, "get_connection_with_tls_context"):  # requests >= 2.32.2
                pool = self.adapter.get_connection_with_tls_context(
                    self.prepared, settings["verify"], proxies=settings["proxies"], cert=settings["cert"])
            else:
                pool = self.adapter.get_connection(url, settings["proxies"])
        except urllib3.exceptions.LocationValueError as exc:
            raise requests.exceptions.InvalidURL(exc) from None
        self.adapter.cert_verify(pool, url, settings["verify"], settings["cert"])
        return pool

    def connection_pool(self) -> Any:
        """The pool, or a fresh one if the adapter's pool manager closed it (it keeps a few hosts)."""
        if self.pool.pool is None:
            self.pool = self._pool()
        return self.pool


def _lean(session: _Session, method: str, url: str, kwargs: dict[str, Any], timeout: float,
          max_bytes: int) -> requests.Response:
    """Send the JSON body as ``session.send`` would through the adapter of the URL's route (same
    request line, headers, body bytes, pool, timeouts, no urllib3 retry, no redirect) and answer a
    ``requests.Response`` as the adapter builds it, minus the per-answer cookie jar: a
    ``Set-Cookie`` still reaches the session's jar (and later calls then take ``session.request``).
    Without a proxy the bytes go through :mod:`syncd.wire`, the body read and capped there."""
    route = session.route(method, url, kwargs.get("headers") or {})
    try:
        data = requests.compat.json.dumps(kwargs["json"], allow_nan=False).encode("utf-8")
    except ValueError as exc:
        raise requests.exceptions.InvalidJSONError(exc) from None
    headers = {**route.headers, "Content-Length": str(len(data))}
    if route.wire:
        return _wired(session, route, headers, data, timeout, max_bytes)
    try:
        raw = route.connection_pool().urlopen(
            method=route.prepared.method, url=route.target, body=data, headers=headers, redirect=False,
            assert_same_host=False, preload_content=False, decode_content=False, retries=route.adapter.max_retries,
            timeout=urllib3.Timeout(connect=timeout, read=timeout), chunked=False)
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.ReadTimeout(exc) from None
    except urllib3.exceptions.MaxRetryError as exc:
        _connect_failed(exc.reason, exc)
    response = _response(route, raw.status, raw.reason, requests.structures.CaseInsensitiveDict(raw.headers))
    response.raw = raw
    if "set-cookie" in raw.headers:
        requests.cookies.extract_cookies_to_jar(session.cookies, route.prepared, raw)
    return response


def _wired(session: _Session, route: _Route, headers: dict[str, str], data: bytes, timeout: float,
           max_bytes: int) -> requests.Response:
    try:
        answer = wire.exchange(route.connection_pool(), _attach, route.prepared.method or "POST", route.target,
                               headers, data, timeout, max_bytes)
    except TimeoutError as exc:  # a read (socket.timeout); a connect timeout comes as urllib3's
        raise requests.ReadTimeout(exc) from None
    except (urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.NewConnectionError) as exc:
        _connect_failed(exc, exc)
    fields = requests.structures.CaseInsensitiveDict()
    for name, value in answer.headers:
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    response = _response(route, answer.status, answer.reason, fields)
    response._content, response._content_consumed = answer.body, True
    if "set-cookie" in fields:
        message = http.client.HTTPMessage()
        for name, value in answer.headers:
            message[name] = value
        requests.cookies.extract_cookies_to_jar(session.cookies, route.prepared,
                                                SimpleNamespace(_original_response=SimpleNamespace(msg=message)))
    return response


def _connect_failed(reason: Any, exc: Exception) -> NoReturn:
    """requests' own reading: a connect timeout is a timeout, a refused connection is not."""
    if isinstance(reason, urllib3.exceptions.ConnectTimeoutError) and not isinstance(
            reason, urllib3.exceptions.NewConnectionError):
        raise requests.ConnectTimeout(exc) from None
    raise requests.ConnectionError(exc) from None


def _response(route: _Route, status: int, reason: str, headers: Any) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.headers = headers
    response.encoding = requests.utils.get_encoding_from_headers(headers)
    response.reason = reason
    response.url = route.prepared.url or ""
    response.request = route.prepared
    response.connection = route.adapter
    return response


class _TooLarge(Exception):
    pass


def _read_body(response: requests.Response, max_bytes: int) -> None:
    """Read the body now, counting decoded bytes, so a bomb or an endless body stops at the cap."""
    if response._content_consumed and isinstance(response._content, bytes):  # read (and capped) by wire
        _charset(response)
        return
    length = _plain_length(response)
    if length is not None:  # the common case, read in one call rather than 16 KiB at a time
        if length > max_bytes:
            response.close()
            raise _too_large(max_bytes)
        data = response.raw.read(length, decode_content=False) if length else b""
        if len(data) != length:
            raise urllib3.exceptions.ProtocolError(f"the body ended after {len(data)} of {length} bytes")
        response._content, response._content_consumed = data, True
        _charset(response)
        return
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            response.close()
            raise _too_large(max_bytes)
        chunks.append(chunk)
    response._content = b"".join(chunks)
    response._content_consumed = True
    _charset(response)


def _plain_length(response: requests.Response) -> int | None:
    """The body's length when it is sent as is (no content or transfer coding) with one length."""
    headers = response.headers
    length = headers.get("Content-Length", "")
    if response.status_code in (204, 304) or (response.request is not None and response.request.method == "HEAD"):
        return None  # no body, whatever Content-Length says
    if not length.isdigit() or headers.get("Transfer-Encoding") or \
            headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        return None
    return int(length)


def _too_large(max_bytes: int) -> _Failed:
    return _Failed(f"the answer is larger than {max_bytes >> 20} MiB once decoded; not read", final=True)


def _charset(response: requests.Response) -> None:
    """Text is decoded by its declared charset; without one it must be UTF-8 (RFC 8259 for JSON),
    never guessed: Latin-1 bytes fail the request loudly instead of becoming U+FFFD silently.
    (An error body is only read for its message, so it is decoded leniently.)"""
    if "charset=" in response.headers.get("Content-Type", "").lower():
        return
    if response.status_code >= 300:
        response.encoding = "utf-8"
        return
    try:
        response.content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Failed(f"the answer is not UTF-8 (byte {exc.start}) and declares no charset", final=True) from None
    response.encoding = "utf-8"


def _pause(stop: threading.Event, seconds: float, budget_end: float, method: str, shown: str, attempt: int,
           problem: str, status: int | None = None) -> None:
    if time.monotonic() + seconds > budget_end:
        raise TransientError(f"{method} {shown}: {problem}", status, shown, attempt,
                             f"{problem} (gave up after {attempt} attempt(s): the request's time budget is spent)")
    stop.wait(seconds)


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the default port filled in: what a credential is bound to."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


# --- a file (the Canvas report) -----------------------------------------------------------


def download(session: requests.Session, url: str, spool: IO[bytes], *, timeout: float, credentials_origin: str,
             auth: Any = None, on_attempt: Callable[[], None] | None = None,
             max_bytes: int = MAX_DOWNLOAD_BYTES, deadline_s: float = 3600.0) -> int:
    """Stream ``url`` into ``spool``; returns the bytes written.

    Only https (or http to a loopback host) is fetched, at every hop. ``auth`` is sent only to
    ``credentials_origin`` (Canvas itself); a redirect to file storage elsewhere is followed
    without it. At most ``max_bytes``, within ``deadline_s``.
    """
    attempts = RetryPolicy().attempts
    for attempt in range(1, attempts + 1):
        try:
            return _download_once(session, url, spool, timeout, origin(credentials_origin), auth, on_attempt,
                                  max_bytes, deadline_s)
        except TransientError:
            if attempt >= attempts or _stop_of(session).is_set():
                raise
            spool.seek(0)
            spool.truncate()
            _stop_of(session).wait(RetryPolicy().delay(attempt, None))
    raise AssertionError("unreachable")


def _download_once(session: requests.Session, url: str, spool: IO[bytes], timeout: float,
                   allowed: tuple[str, str, int | None], auth: Any, on_attempt: Callable[[], None] | None,
                   max_bytes: int, deadline_s: float) -> int:
    with _deadline(deadline_s) as watch:
        try:
            for _hop in range(MAX_REDIRECTS + 1):
                _check_download_url(url)
                if on_attempt:
                    on_attempt()
                if isinstance(session, _Session):
                    session.count()
                response = session.request("GET", url, timeout=timeout, stream=True, allow_redirects=False,
                                           auth=auth if origin(url) == allowed else None)
                if response.is_redirect:
                    response.close()
                    url = urllib.parse.urljoin(url, response.headers.get("Location", ""))
                    continue
                if response.status_code >= 300:
                    response.close()
                    status = response.status_code
                    kind = TransientError if status == 429 or status >= 500 else RejectedError
                    raise kind(f"GET {redact_url(url)}: HTTP {response.status_code}", response.status_code,
                               redact_url(url))
                return _spool(response, spool, max_bytes, url)
            raise RejectedError(f"GET {redact_url(url)}: more than {MAX_REDIRECTS} redirects")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            problem = f"no complete file within {deadline_s:g} s" if watch.fired else type(exc).__name__
            raise TransientError(f"GET {redact_url(url)}: {problem}", None, redact_url(url)) from None


def _check_download_url(url: str) -> None:
    from syncd.config import is_loopback

    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname or "")):
        return
    raise RejectedError(f"refusing to fetch {redact_url(url)}: only https (or http to this machine) is allowed")


def _spool(response: requests.Response, spool: IO[bytes], max_bytes: int, url: str) -> int:
    written = 0
    with response:
        for chunk in response.iter_content(chunk_size=1 << 16):
            written += len(chunk)
            if written > max_bytes:
                raise RejectedError(f"GET {redact_url(url)}: the file is larger than {max_bytes >> 20} MiB; not read")
            spool.write(chunk)
    return written


# --- secrets and messages ----------------------------------------------------------------


def _register_sent_credentials(headers: Any) -> None:
    """What we send as a credential is a secret, whoever obtained it (runtime tokens included)."""
    if not headers:
        return
    for key, value in headers.items():
        if key.lower() in CREDENTIAL_HEADERS and isinstance(value, str):
            logs.register_secrets([value, value.partition(" ")[2]])


def _register_received_tokens(response: requests.Response) -> None:
    """A token endpoint's answer (OAuth 2): its tokens are secrets from now on."""
    content = response.content
    if not content or (b"access_token" not in content and b"refresh_token" not in content):
        return
    try:
        body = json.loads(content)
    except ValueError:
        return
    if isinstance(body, dict):
        logs.register_secrets(str(body[k]) for k in ("access_token", "refresh_token", "id_token") if body.get(k))


def retry_after(response: requests.Response) -> float | None:
    """Seconds the server asked us to wait: delta-seconds or an HTTP date."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_message(response: requests.Response, limit: int = 300) -> str:
    """A short human message from an error body: JSON message fields if any, else the text.
    Secrets syncd knows are masked (a server may echo them); control characters are dropped."""
    text = response.text or response.reason or ""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("message", "error_description", "error", "imsx_description", "detail", "errors"):
            if body.get(key):
                value = body[key]
                text = value if isinstance(value, str) else json.dumps(value)
                break
    text = logs.redact(" ".join("".join(c if c.isprintable() else " " for c in text[:4 * limit]).split()))
    return text[:limit] + ("…" if len(text) > limit else "")


@functools.lru_cache(maxsize=256)  # a push shows the same URL on every call
def redact_url(url: str) -> str:
    """The URL with credentials and token-like query parameters masked."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    masked = [(k, "***" if SENSITIVE_PARAMS.match(k) else v) for k, v in query]
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, urllib.parse.urlencode(masked, safe="[]*:"), "")
    )


def now_ts() -> float:
    return time.time()
