"""The one HTTP policy: sessions, timeouts, retries with backoff, typed errors, redaction.

Sources and the target call :func:`send`; none of them retries or sleeps on its own.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
import requests.adapters

from syncd import __version__

USER_AGENT = f"syncd/{__version__} (+roster sync for SmarterProctoring)"
SENSITIVE_PARAMS = re.compile(
    r"(?i)^(access_token|refresh_token|token|client_secret|code|password|oauth_[a-z_]+|sig|signature)$"
)
# Set when the process is asked to stop: backoff sleeps end early and no new attempt starts.
stopping = threading.Event()


class HttpError(Exception):
    """A request that did not succeed; the message is safe to log (no secret, no token)."""

    def __init__(self, message: str, status: int | None = None, url: str = "", attempts: int = 1,
                 detail: str | None = None):
        super().__init__(message)
        self.status = status
        self.url = url
        self.attempts = attempts
        # What the server said, without our method and URL: what an admin reads in `syncd errors`.
        self.detail = detail or message


class TransientError(HttpError):
    """Timeouts, connection errors, 429 and 5xx that outlasted every retry."""


class RejectedError(HttpError):
    """The server refused this request (4xx); retrying it now would not help."""


class AuthError(HttpError):
    """The credentials were refused even after one refresh."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_s: float = 0.25
    cap_s: float = 20.0
    max_retry_after_s: float = 120.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s) + random.uniform(0, 0.05)
        # "Full jitter": spreads retries of parallel workers instead of having them collide.
        return random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))


class _Session(requests.Session):
    """A Session that reads its environment (proxies, CA bundle) once per host, not per request.

    requests re-reads proxy variables and probes the CA bundle path with os.path calls on every
    request; at hundreds of calls a second that is a tenth of the push's CPU.
    """

    def __init__(self) -> None:
        super().__init__()
        # Never pick up ~/.netrc credentials: they must not reach a source or the target.
        self.auth = _no_auth
        self._environment: dict[tuple[str, str], dict[str, Any]] = {}

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        if proxies or stream is not None or verify is not None or cert is not None:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        key = tuple(urllib.parse.urlsplit(url)[:2])
        if key not in self._environment:
            self._environment[key] = super().merge_environment_settings(url, {}, None, None, None)
        settings = self._environment[key]
        return {**settings, "proxies": dict(settings["proxies"])}


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


def new_session(pool_size: int = 10) -> requests.Session:
    session = _Session()
    session.headers["User-Agent"] = USER_AGENT
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(pool_size, 4))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def send(
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
    **kwargs: Any,
) -> requests.Response:
    """Send one request under the policy and return the 2xx response, or raise a typed error.

    ``reauthorize`` is called once on a 401 (refresh a token) before the request is tried again.
    ``transient_status`` lets a client classify vendor-specific throttling (Canvas 403) as retryable;
    such answers are retried under ``throttle_policy`` (longer: a throttle drains slowly) if given.
    """
    reauthorized = False
    attempt = 0
    shown = redact_url(url)
    while True:
        attempt += 1
        if on_attempt:
            on_attempt()
        try:
            response = session.request(method, url, timeout=timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            problem = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
            if attempt >= policy.attempts or stopping.is_set():
                raise TransientError(f"{method} {shown}: {problem}", None, shown, attempt,
                                     f"{problem} after {attempt} attempt(s)") from None
            _pause(policy.delay(attempt, None))
            continue
        status = response.status_code
        if status < 300:
            return response
        if status == 401 and reauthorize and not reauthorized:
            reauthorized = True
            reauthorize()
            attempt -= 1  # the refresh is "once", not one of the transient retries
            continue
        # The vendor's classifier sees every failure, so that it can also react to a plain 429.
        vendor_transient = bool(transient_status and transient_status(response))
        retryable = vendor_transient or status == 429 or status >= 500
        detail = error_message(response)
        message = f"{method} {shown}: HTTP {status}: {detail}"
        if retryable:
            rules = throttle_policy if vendor_transient and throttle_policy else policy
            if attempt >= rules.attempts or stopping.is_set():
                raise TransientError(message, status, shown, attempt, f"HTTP {status} after {attempt} "
                                     f"attempt(s): {detail}")
            _pause(rules.delay(attempt, retry_after(response)))
            continue
        if status in (401, 403):
            raise AuthError(message, status, shown, attempt, detail)
        raise RejectedError(message, status, shown, attempt, detail)


def _pause(seconds: float) -> None:
    stopping.wait(seconds)


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
    """A short human message from an error body: JSON message fields if any, else the text."""
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
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "")


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
