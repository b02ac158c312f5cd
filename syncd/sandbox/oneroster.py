"""A fake OneRoster 1.1 / 1.2 server with the quirks real vendors have.

- 1.1: every request must carry a valid OAuth 1.0a signature (HMAC-SHA256 or -SHA1), verified
  with oauthlib's signature endpoint, query parameters included, nonces not replayable.
- 1.2: OAuth 2 client credentials at ``/oauth/token`` (Basic auth), bearer tokens that expire
  after ``token_ttl`` seconds; several live tokens per client. ``auth`` overrides the version's
  choice (GG4L serves 1.1 behind OAuth 2).
- Paging by limit/offset; ``max_limit`` clamps silently (GG4L: 500); ``X-Total-Count`` / ``Link``
  can be off; ``link_style = "gg4l"`` writes the Link header as GG4L documents it (no ``<>``,
  smart quotes, ``next`` one past the right offset); ``latency_s`` per page; ``peak_in_flight``
  records the most requests served at once.
- 1.2 value formats: ``roles[]`` on users, ``"true"``/``"false"`` strings, nulls.
- Faults: per collection and offset, a status for N requests (or forever), HTML with 200,
  an offset-ignoring server (pagination loop).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from oauthlib.oauth1 import RequestValidator, SignatureOnlyEndpoint

from syncd.sandbox import oneroster_lineitems
from syncd.sandbox.roster import Roster
from syncd.sandbox.server import DROP, Request, Response

COLLECTIONS = ("courses", "classes", "users", "enrollments", "academicSessions", "orgs")


@dataclass
class Fault:
    status: int
    times: int | None = None  # None: forever
    retry_after: str | None = None
    collection: str | None = None
    offset: int | None = None
    html: bool = False
    drop: bool = False

    def matches(self, collection: str, offset: int) -> bool:
        return (self.collection in (None, collection)) and (self.offset in (None, offset)) and (
            self.times is None or self.times > 0)


@dataclass
class OneRosterApp:
    roster: Roster
    version: str = "1.1"
    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret-0000"
    prefix: str = ""
    max_limit: int | None = None
    total_count: bool = True
    link: bool = True
    link_style: str = "rfc"  # "rfc" | "gg4l"
    auth: str = ""  # "oauth1" | "oauth2"; "": by version
    latency_s: float = 0.0  # per collection page: the time a real server takes to build it
    # Serve each page's JSON from a cache (per roster revision): a real server builds pages in
    # parallel, this one has one GIL, so the benchmarks keep its own CPU out of the way.
    cache_pages: bool = False
    # ``filter=dateLastModified>'…'`` (delta runs): False answers 400, as a server without filters.
    delta_filter: bool = True
    filtered_requests: int = 0
    token_ttl: float = 3600.0
    ignore_offset: bool = False
    expire_tokens_at_request: int | None = None  # revoke every token when this request arrives
    faults: list[Fault] = field(default_factory=list)
    # Gradebook lineItems (oneroster_lineitems.py); gradebook = False: the provider serves none (404).
    line_items: dict[str, dict[str, Any]] = field(default_factory=dict)
    gradebook: bool = True
    requests: int = 0
    token_requests: int = 0
    rejected_auth: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    _tokens: dict[str, float] = field(default_factory=dict)
    _nonces: set[tuple[str, str]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _order: dict[str, tuple[tuple[int, int], list[str]]] = field(default_factory=dict)
    _cache: dict[tuple[Any, ...], tuple[bytes, dict[str, str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.prefix:
            self.prefix = "/ims/oneroster/v1p1" if self.version == "1.1" else "/ims/oneroster/rostering/v1p2"
        self._endpoint = SignatureOnlyEndpoint(_Validator(self))
        if not self.auth:
            self.auth = "oauth1" if self.version == "1.1" else "oauth2"

    # --- dispatch ------------------------------------------------------------------------

    def __call__(self, request: Request) -> Response | object:
        if request.method == "POST" and request.path == "/oauth/token":
            return self._token(request)
        line_items = oneroster_lineitems.serve(self, request)
        if line_items is not None:
            return line_items
        if request.method != "GET" or not request.path.startswith(self.prefix + "/"):
            return _error(404, "unknownobject", f"no route {request.method} {request.path}")
        collection = request.path[len(self.prefix) + 1:]
        if collection not in COLLECTIONS:
            return _error(404, "unknownobject", f"unknown collection {collection}")
        with self._lock:
            self.requests += 1
            if self.requests == self.expire_tokens_at_request:
                self._tokens.clear()
        denied = self._authorize(request)
        if denied:
            with self._lock:
                self.rejected_auth += 1
            return denied
        try:
            limit = int(request.arg("limit", "100") or 100)
            offset = int(request.arg("offset", "0") or 0)
        except ValueError:
            return _error(400, "invalid_data", "limit and offset must be integers")
        if limit < 1 or offset < 0:
            return _error(400, "invalid_data", "limit must be >= 1 and offset >= 0")
        since = None
        if request.arg("filter", ""):
            since = _since(request.arg("filter", ""))
            if not self.delta_filter or since is None:
                return _error(400, "invalid_filter_field", "filter is not supported")
            with self._lock:
                self.filtered_requests += 1
        fault = self._fault(collection, offset)
        if fault:
            return fault
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.latency_s:  # counted from the request's arrival
                request.wait_latency(self.latency_s)
            if self.cache_pages:
                return self._cached_page(request, collection, limit, offset, since)
            if since is not None:
                return self._page(request, collection, limit, offset, since)
            return self._page(request, collection, limit, offset)  # the form tests wrap
        finally:
            with self._lock:
                self.in_flight -= 1

    def _fault(self, collection: str, offset: int) -> Response | object | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(collection, offset):
                    if fault.times is not None:
                        fault.times -= 1
                    if fault.drop:
                        return DROP
                    if fault.html:
                        return Response(fault.status, raw=b"<html><body>Service maintenance</body></html>",
                                        headers={"Content-Type": "text/html"})
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    return Response(fault.status, _imsx("failure", "server_busy", "scripted fault"), headers)
        return None

    def _page(self, request: Request, collection: str, limit: int, offset: int,
              since: str | None = None) -> Response:
        records = self.roster.collection(collection) if hasattr(self.roster, collection) else {}
        ids = self._ids(collection, records)
        if since is not None:
            # A record without a date is listed: a delta must never miss what it cannot date.
            ids = [i for i in ids if (records[i].get("dateLastModified") or "9") > since]
        size = min(limit, self.max_limit) if self.max_limit else limit
        start = 0 if self.ignore_offset else offset
        page = [self._render(collection, records[i]) for i in ids[start:start + size] if i in records]
        headers = {}
        if self.total_count:
            headers["X-Total-Count"] = str(len(ids))
        if self.link and start + size < len(ids):
            headers["Link"] = self._link(request.url.split("?")[0], limit, start, size)
        return Response(200, {collection: page}, headers)

    def _cached_page(self, request: Request, collection: str, limit: int, offset: int,
                     since: str | None = None) -> Response:
        key = (collection, limit, offset, self.roster.revision, len(self.roster.collection(collection)), since)
        cached = self._cache.get(key)
        if cached is None:
            response = self._page(request, collection, limit, offset, since)
            cached = self._cache[key] = (json.dumps(response.body).encode(), response.headers)
        return Response(200, raw=cached[0], headers=dict(cached[1]))

    def _link(self, url: str, limit: int, start: int, size: int) -> str:
        if self.link_style == "gg4l":
            # As dev.gg4l.com/reference/pagination shows it: no <>, smart quotes, next one too far.
            prev = f"{url}?{urllib.parse.urlencode({'limit': limit, 'offset': max(0, start - size)})}"
            nxt = f"{url}?{urllib.parse.urlencode({'limit': limit, 'offset': start + size + 1})}"
            header = f"{prev}; rel=\u201cprev\u201d, {nxt}; rel=\u201cnext\u201d"
            return header.encode().decode("latin-1")  # UTF-8 bytes on the wire, as a vendor would send
        query = urllib.parse.urlencode({"limit": limit, "offset": start + size})
        return f'<{url}?{query}>; rel="next"'

    def _ids(self, collection: str, records: dict[str, Any]) -> list[str]:
        key = (self.roster.revision, len(records))
        cached = self._order.get(collection)
        if cached is None or cached[0] != key:
            cached = (key, sorted(records))
            self._order[collection] = cached
        return cached[1]

    def _render(self, collection: str, record: dict[str, Any]) -> dict[str, Any]:
        if self.version == "1.1":
            return record
        out = dict(record)
        if collection == "users":
            role = out.pop("role", "student")
            orgs = out.pop("orgs", [])
            out["roles"] = [{"roleType": "primary", "role": role, "org": orgs[0] if orgs else None}]
            out["enabledUser"] = "true" if record.get("enabledUser", True) else "false"
            out["primaryOrg"] = orgs[0] if orgs else None
        elif collection == "enrollments":
            out["primary"] = "true" if record.get("primary") else "false"
        return out

    # --- auth ----------------------------------------------------------------------------

    def _authorize(self, request: Request) -> Response | None:
        if self.auth == "oauth1":
            valid, _ = self._endpoint.validate_request(request.url, "GET", None,
                                                       {"Authorization": request.headers.get("authorization", "")})
            return None if valid else _error(401, "unauthorisedrequest", "invalid OAuth 1.0a signature")
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        with self._lock:
            expires = self._tokens.get(token)
        if expires is None or expires < time.monotonic():
            return _error(401, "unauthorisedrequest", "invalid or expired access token")
        return None

    def _token(self, request: Request) -> Response:
        with self._lock:
            self.token_requests += 1
        header = request.headers.get("authorization", "")
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            user = password = ""
        form = urllib.parse.parse_qs(request.body.decode())
        if (urllib.parse.unquote(user), urllib.parse.unquote(password)) != (self.client_id, self.client_secret):
            return Response(401, {"error": "invalid_client"})
        if form.get("grant_type") != ["client_credentials"]:
            return Response(400, {"error": "unsupported_grant_type"})
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_ttl
        return Response(200, {"access_token": token, "token_type": "bearer",
                              "expires_in": int(self.token_ttl) if self.token_ttl >= 1 else 1,
                              "scope": (form.get("scope") or [""])[0]})

    def expire_tokens(self) -> None:
        """Make every token issued so far invalid (a server restart, a revoked grant)."""
        with self._lock:
            self._tokens.clear()


class _Validator(RequestValidator):
    enforce_ssl = False

    def __init__(self, app: OneRosterApp):
        super().__init__()
        self.app = app

    @property
    def allowed_signature_methods(self) -> tuple[str, ...]:
        return ("HMAC-SHA256", "HMAC-SHA1")

    @property
    def dummy_client(self) -> str:
        return "dummy-client"

    def check_client_key(self, client_key: str) -> bool:
        return bool(client_key)

    def check_nonce(self, nonce: str) -> bool:
        return bool(nonce)

    def validate_client_key(self, client_key: str, request: Any) -> bool:
        return client_key == self.app.client_id

    def get_client_secret(self, client_key: str, request: Any) -> str:
        return self.app.client_secret if client_key == self.app.client_id else "dummy-secret"

    def validate_timestamp_and_nonce(self, client_key: str, timestamp: str, nonce: str, request: Any,
                                     request_token: str | None = None, access_token: str | None = None) -> bool:
        with self.app._lock:
            if (timestamp, nonce) in self.app._nonces:
                return False  # a replayed request
            self.app._nonces.add((timestamp, nonce))
        return True


def _imsx(major: str, minor: str, description: str) -> dict[str, Any]:
    return {"imsx_codeMajor": major, "imsx_severity": "error", "imsx_description": description,
            "imsx_CodeMinor": {"imsx_codeMinorField": [
                {"imsx_codeMinorFieldName": "TargetEndSystem", "imsx_codeMinorFieldValue": minor}]}}


def _error(status: int, minor: str, description: str) -> Response:
    return Response(status, _imsx("failure", minor, description))


def _since(text: str) -> str | None:
    """The time of ``dateLastModified>'…'``, the one filter this server understands."""
    match = re.fullmatch(r"\s*dateLastModified\s*>\s*'([^']+)'\s*", text)
    return match.group(1) if match else None
