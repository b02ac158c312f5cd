"""Bearer tokens that a source obtains itself (OAuth 2), with one behaviour for every source.

- One token serves every request until shortly before it expires (``EARLY_S``, or a tenth of a
  short lifetime), so no request leaves with a dying token; the deadline runs on the monotonic
  clock, so a wall clock that jumps cannot make a token live for years or die at once.
- A 401 invalidates it: the first thread refused gets a new one, the others in flight with the
  same dead token retry with that one (one token request serves them all).
- Where a token request costs something (Canvas charges 200 throttle units each), it is cached in
  ``state_dir/credentials/TENANT.access.json``, an owner-only file written atomically (never half
  a token), so that a run every few minutes does not request one each time; where it costs
  nothing (OneRoster's client credentials), it stays in memory and is in no file. The file says
  what the token is for (a digest of the token endpoint, the client id and the scope, never a
  secret): a token of other credentials is never sent.
- Never in SQLite, never in a log: every token read or obtained is registered with the log redactor.

OneRoster (client credentials) and Canvas (refresh token) differ in the grant, a function that
asks the token endpoint and returns its JSON answer, and in whether a cache file is given.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import structlog

from syncd import logs

log = structlog.get_logger("syncd.tokens")

EARLY_S = 120.0  # refresh this long before the server says the token dies
MIN_LIFETIME_S = 1.0
MAX_TOKEN_LIFETIME_S = 86_400.0  # a cached expiry further ahead than a day is a clock that was wrong
DEFAULT_LIFETIME_S = 3600.0  # a token endpoint that does not say (expires_in is optional in RFC 6749)

Grant = Callable[[], dict[str, Any]]


def credentials_dir(state_dir: Path) -> Path:
    path = state_dir / "credentials"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def cache_path(state_dir: Path, tenant: str) -> Path:
    """Where a tenant's access token is cached (one tenant, one source, one token)."""
    return state_dir / "credentials" / f"{tenant}.access.json"


def write_private(path: Path, text: str) -> None:
    """Write a file that only the owner can read, atomically (never a half-written token)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def audience(*parts: str) -> str:
    """What a token is for (token endpoint, client id, scope): a digest, so the file names no secret."""
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


def lifetime(payload: dict[str, Any]) -> float:
    """``expires_in`` of a token answer, in seconds (an hour when absent or unreadable)."""
    try:
        return float(payload.get("expires_in") or DEFAULT_LIFETIME_S)
    except (TypeError, ValueError):
        return DEFAULT_LIFETIME_S


def usable_for(seconds: float) -> float:
    """How long a token that lives ``seconds`` is used before a new one is asked for."""
    return max(MIN_LIFETIME_S, seconds - min(EARLY_S, seconds / 10))


def save(path: Path, token: str, expires_in: float, for_: str) -> None:
    """Cache ``token`` (usable for ``expires_in`` more seconds) for ``for_`` (see :func:`audience`)."""
    credentials_dir(path.parent.parent)
    write_private(path, json.dumps({"access_token": token, "expires_at": time.time() + expires_in, "for": for_}))


def load(path: Path, for_: str, legacy: bool = False) -> tuple[str, float] | None:
    """The cached token for ``for_`` and the seconds it stays usable, or None. ``legacy``: also a
    file written before the cache said what it is for (Canvas's, from syncd before this module),
    so an upgrade does not ask the admin to authorize again."""
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        token, expires_at = str(cached["access_token"]), float(cached["expires_at"])
        owner = cached.get("for")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if owner != for_ and not (legacy and owner is None):
        return None
    remaining = expires_at - time.time()
    # An expiry further ahead than any token lives (a clock that was ahead when it was written)
    # is not trusted: the token is refreshed instead of being used for years.
    if not 0 < remaining <= MAX_TOKEN_LIFETIME_S:
        return None
    logs.register_secrets([token])
    return token, remaining


class BearerToken(requests.auth.AuthBase):
    """A bearer token obtained by ``grant``, reused until shortly before it expires, invalidated
    once per dead token on a 401 (``refresh``, called by http.send), cached in ``cache``."""

    def __init__(self, grant: Grant, *, for_: str, cache: Path | None = None, legacy_cache: bool = False,
                 name: str = "source"):
        self.grant = grant
        self.for_ = for_
        self.cache = cache
        self.name = name  # the source, in log events: "oneroster.token_obtained"
        self._token: str | None = None
        self._deadline = 0.0  # time.monotonic() after which a new token is asked for
        # The grant accepted this client's credentials in this process (a cached token does not
        # say so): requests that carry its token cannot be refused for bad credentials.
        self.granted = False
        self._lock = threading.Lock()
        self._sent = threading.local()  # the token this thread's last request carried
        cached = load(cache, for_, legacy_cache) if cache else None
        if cached:
            self._token, self._deadline = cached[0], time.monotonic() + cached[1]

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self.token()
        self._sent.token = token
        request.headers["Authorization"] = f"Bearer {token}"
        return request

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._deadline:
                self._obtain()
            assert self._token is not None
            return self._token

    def refresh(self) -> None:
        """A 401: a new token, unless another thread already replaced the one refused (several
        requests in flight see the same dead token; one refresh serves them all)."""
        with self._lock:
            refused = getattr(self._sent, "token", None)
            if refused is None or refused == self._token:
                self._obtain()

    def _obtain(self) -> None:
        self._token = None  # a failed grant leaves no dead token behind
        payload = self.grant()
        token, seconds = str(payload["access_token"]), lifetime(payload)
        logs.register_secrets([token])  # obtained at run time: an echo of it must be masked too
        usable = usable_for(seconds)
        self._token, self._deadline = token, time.monotonic() + usable
        self.granted = True
        if self.cache:
            try:
                save(self.cache, token, usable, self.for_)
            except OSError as exc:
                log.warning(f"{self.name}.token_cache_unwritable", error=exc.strerror)
        log.info(f"{self.name}.token_obtained", expires_in=seconds)
