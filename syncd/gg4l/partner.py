"""The GG4L Partner API: which districts share data with us, and each one's Data API credentials.

``POST {partner_url}/datahub/oauth/token`` (client credentials, HTTP Basic) gives a bearer token;
``GET {partner_url}/datahub/services/vendor/onboarding/credentials`` lists the districts. The list is
read leniently, because GG4L's own documentation of it is inconsistent (gg4l.md §2): an object
instead of an array, a missing comma, ``lastDataProcessingCompleteTimestamp`` without the "d",
``"YYYY - MM - dd'T'…"`` dates with spaces, millis or not, ``Z`` or ``+00:00``, relative URLs.

Every request goes through :func:`syncd.http.send` (timeout, TLS verified, backoff on 429/5xx, one
re-authorization on a 401). The partner secret, the bearer token and every district secret are
registered with the log redactor before anything could print them.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
import structlog

from syncd import http, logs
from syncd.config import is_loopback
from syncd.gg4l import valid_guid

TOKEN_PATH = "/datahub/oauth/token"  # noqa: S105 - a path, not a password
CREDENTIALS_PATH = "/datahub/services/vendor/onboarding/credentials"
# Refresh the token at 90 % of its life (gg4l.md §9), and never trust a lifetime below a minute.
TOKEN_MARGIN = 0.9
MAX_LIST_BYTES = 50 * 1024 * 1024

log = structlog.get_logger("syncd.gg4l")


class PartnerError(Exception):
    """Discovery could not be read; the message is safe to log (no secret, no token)."""


@dataclass(frozen=True)
class Listing:
    """One district as the Partner API lists it. ``problem`` says why it cannot be used, if so."""

    guid: str
    name: str = ""
    api_url: str = ""
    token_url: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    expiry: datetime | None = None
    data_ts: datetime | None = None
    created: datetime | None = None
    problem: str = ""

    def public(self) -> dict[str, Any]:
        """What may be shown or logged: everything but the secret."""
        return {"guid": self.guid, "name": self.name, "api_url": self.api_url, "token_url": self.token_url,
                "client_id": self.client_id, "expiry": iso(self.expiry), "data_ts": iso(self.data_ts),
                "created": iso(self.created), "problem": self.problem or None}


# --- parsing the list --------------------------------------------------------------------------


def parse_listing(text: str, base_url: str) -> tuple[list[Listing], list[str]]:
    """The districts in a credentials answer, and one warning per entry that had to be skipped."""
    data = _loads_lenient(text)
    entries = _entries(data)
    listings, warnings = [], []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            warnings.append(f"entry {i}: not an object")
            continue
        listing = parse_entry(entry, base_url)
        if listing is None:
            warnings.append(f"entry {i}: no valid districtGuid")
            continue
        if listing.guid.lower() in seen:
            warnings.append(f"entry {i}: district {listing.guid} listed twice; the first entry wins")
            continue
        seen.add(listing.guid.lower())
        listings.append(listing)
    return listings, warnings


def _loads_lenient(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    # The documented example: "{ {" for "[ {", and a missing comma between two members.
    repaired = re.sub(r"^\s*\{\s*\{", "[{", text)
    repaired = re.sub(r"\}\s*\}\s*$", "}]", repaired) if repaired != text else repaired
    repaired = re.sub(r'("|\d|true|false|null|\}|\])(\s*\n\s*)(["{])', r"\1,\2\3", repaired)
    try:
        return json.loads(repaired)
    except ValueError:
        raise PartnerError("the Partner API answered with something that is not JSON") from None


def _entries(data: Any) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if _key(data, "districtGuid") is not None:
            return [data]  # one object instead of an array (a documentation quirk)
        for value in data.values():  # an envelope such as {"credentials": [...]}
            if isinstance(value, list):
                return value
        return []
    raise PartnerError(f"the Partner API list is {type(data).__name__}, not an array of districts")


def _key(entry: dict[str, Any], *names: str) -> Any:
    lowered = {k.lower(): v for k, v in entry.items() if isinstance(k, str)}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def parse_entry(entry: dict[str, Any], base_url: str) -> Listing | None:
    guid = _key(entry, "districtGuid", "districtGUID", "districtId")
    if isinstance(guid, str):
        guid = guid.strip()
    if not valid_guid(guid):
        return None
    problems = []
    urls = {}
    for name, keys in (("api_url", ("apiUrl",)), ("token_url", ("tokenUrl",))):
        url, problem = _url(_key(entry, *keys), base_url)
        urls[name] = url
        if problem:
            problems.append(f"{keys[0]} {problem}")
    client_id = _text(_key(entry, "clientId"))
    secret = _text(_key(entry, "clientSecret"))
    if not client_id or not secret:
        problems.append("no clientId or clientSecret")
    if secret:
        logs.register_secrets([secret])
    stamps = {}
    for name, keys in (("expiry", ("expiryDate",)),
                       ("data_ts", ("lastDataProcessingCompletedTimestamp", "lastDataProcessingCompleteTimestamp")),
                       ("created", ("createdTimestamp",))):
        raw = _key(entry, *keys)
        stamps[name] = parse_time(raw)
        if raw not in (None, "") and stamps[name] is None:
            problems.append(f"{keys[0]} {str(raw)[:40]!r} is not a date")
    return Listing(guid=guid, name=_text(_key(entry, "districtName", "name"))[:200], client_id=client_id,
                   client_secret=secret, problem="; ".join(problems), **urls, **stamps)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ("" if value is None else str(value))


def _url(value: Any, base_url: str) -> tuple[str, str]:
    """An absolute URL (host-relative ones joined to the partner URL), or why it cannot be used."""
    if not isinstance(value, str) or not value.strip():
        return "", "is missing"
    url = urllib.parse.urljoin(base_url + "/", value.strip()).rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname or "")):
        return url, ""
    return "", "must be an https:// URL"


def parse_time(value: Any) -> datetime | None:
    """A GG4L timestamp in any of the documented shapes, as an aware UTC datetime; None if absent or bad."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 1e11 else value  # epoch milliseconds or seconds
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    text = "".join(value.split())  # "2027 - 06 - 30T…" as the documentation writes it
    if not text:
        return None
    if text.isascii() and text.isdigit():  # not str.isdigit alone: '²' is a digit to it
        return parse_time(int(text))
    text = re.sub(r"[zZ]$", "+00:00", text)
    text = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", text)  # +0000
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def iso(stamp: datetime | None) -> str | None:
    return stamp.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if stamp else None


# --- the client --------------------------------------------------------------------------------


class PartnerClient:
    """The vendor's Partner API credentials, a cached bearer token, and the district list."""

    def __init__(self, partner_url: str, client_id: str, client_secret: str, *, timeout_s: float = 30.0,
                 policy: http.RetryPolicy | None = None, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.partner_url = partner_url.rstrip("/")
        self._client_id = client_id
        self._secret = client_secret
        self.timeout_s = timeout_s
        self.policy = policy or http.RetryPolicy()
        self.session = session or http.new_session()
        self._clock = clock
        self._token = ""
        self._token_expires = 0.0
        self._lock = threading.Lock()
        self.token_requests = 0
        logs.register_secrets([client_secret])

    def token(self) -> str:
        with self._lock:
            if self._token and self._clock() < self._token_expires:
                return self._token
            self._token = self._fetch_token()
            return self._token

    def forget_token(self) -> None:
        with self._lock:
            self._token = ""

    def _fetch_token(self) -> str:
        self.token_requests += 1
        basic = base64.b64encode(f"{self._client_id}:{self._secret}".encode()).decode()
        try:
            response = http.send(self.session, "POST", self.partner_url + TOKEN_PATH, timeout=self.timeout_s,
                                 policy=self.policy, data={"grant_type": "client_credentials"},
                                 headers={"Authorization": f"Basic {basic}", "Accept": "application/json"})
        except http.AuthError as exc:
            raise PartnerError(f"the Partner API refused the client credentials (HTTP {exc.status})") from None
        except http.HttpError as exc:
            raise PartnerError(f"Partner API token request failed: {exc.detail}") from None
        try:
            body = response.json()
            token = body["access_token"]
            lifetime = float(body.get("expires_in") or 3600)
        except (ValueError, KeyError, TypeError):
            raise PartnerError("the Partner API token answer has no access_token") from None
        if not isinstance(token, str) or not token:
            raise PartnerError("the Partner API token answer has no access_token")
        logs.register_secrets([token])
        self._token_expires = self._clock() + max(1.0, lifetime * TOKEN_MARGIN)
        return token

    def list_districts(self) -> tuple[list[Listing], list[str]]:
        """Every district the Partner API lists now, and warnings about entries that were skipped."""
        def reauthorize() -> None:
            self.forget_token()

        def headers() -> dict[str, str]:
            return {"Authorization": f"Bearer {self.token()}", "Accept": "application/json"}

        session = _AuthSession(self.session, headers)
        try:
            response = http.send(session, "GET", self.partner_url + CREDENTIALS_PATH, timeout=self.timeout_s,
                                 policy=self.policy, reauthorize=reauthorize)
        except http.AuthError as exc:
            raise PartnerError(f"the Partner API refused the token (HTTP {exc.status})") from None
        except http.HttpError as exc:
            raise PartnerError(f"Partner API list failed: {exc.detail}") from None
        if len(response.content) > MAX_LIST_BYTES:
            raise PartnerError("the Partner API list is larger than 50 MB")
        return parse_listing(response.text, self.partner_url)


class _AuthSession:
    """Adds a fresh bearer header to each attempt, so that a retry after a 401 uses the new token."""

    def __init__(self, session: requests.Session, headers: Callable[[], dict[str, str]]):
        self._session = session
        self._headers = headers

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        return self._session.request(method, url, headers=self._headers(), **kwargs)
