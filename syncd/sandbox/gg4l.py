"""A fake GG4L: the Partner API, a OneRoster 1.1 Data API per district, and a webhook sender.

Reproduces what gg4l.md §10 lists, so that the client has to survive it:

- Partner API: ``POST /datahub/oauth/token`` (client credentials, HTTP Basic only, ``expires_in``
  configurable, expired tokens refused) and ``GET /datahub/services/vendor/onboarding/credentials``
  (Bearer). Districts are scriptable: they appear (optionally after a delay), get their data ready,
  expire, are extended, rotate their secret or client id, vanish and come back.
- The list's format switches: an array, one bare object (the doc's quirk), an envelope, or the
  doc's invalid example (``{ {`` and a missing comma); timestamps with or without millis, ``Z`` or
  ``+00:00``, the spaced ``"YYYY - MM - dd'T'…"`` expiry; ``lastDataProcessingCompleteTimestamp``
  without the "d"; host-relative ``tokenUrl``/``apiUrl``; scripted 429 / 5xx.
- Data API per district under ``/d/{guid}``: OAuth 2 client credentials at its ``tokenUrl``
  (refused once the district expired or left the list); OneRoster 1.1 at
  ``/datahub/services/ims/oneroster/v1p1``; ``limit`` default 100, clamped to 500; a ``Link`` header
  without ``<>``, with smart quotes and an off-by-one ``next``; Privacy Shield (names masked to
  ``R***``, e-mails empty or random ``@gg4l.com``).
"""

from __future__ import annotations

import base64
import json
import random
import secrets
import string
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from syncd.sandbox import state_toml
from syncd.sandbox.provision import ProvisionApp
from syncd.sandbox.roster import Roster
from syncd.sandbox.server import Request, Response, Serving

PARTNER_TOKEN = "/datahub/oauth/token"
CREDENTIALS = "/datahub/services/vendor/onboarding/credentials"
DATA_PREFIX = "/datahub/services/ims/oneroster/v1p1"
COLLECTIONS = ("courses", "classes", "users", "enrollments", "academicSessions", "orgs")
MAX_LIMIT = 500
WEBHOOK_KEY = "sandbox-webhook-key-0000"


@dataclass
class FakeDistrict:
    guid: str
    roster: Roster
    name: str = "Sandbox District"
    client_id: str = ""
    client_secret: str = ""
    expiry: datetime | None = None
    data_ts: datetime | None = None
    created: datetime | None = None
    listed: bool = True
    appear_at: float = 0.0  # time.monotonic() before which the list does not show it
    privacy_shield: bool = False
    email_mode: str = "empty"  # Privacy Shield e-mails: "empty" | "random" (stable) | "random_each"
    requests: int = 0
    token_requests: int = 0
    _tokens: dict[str, float] = field(default_factory=dict)
    _emails: dict[str, str] = field(default_factory=dict)

    def rotate_secret(self) -> str:
        """A new client secret; tokens issued so far keep working until they expire."""
        self.client_secret = "dsec-" + secrets.token_urlsafe(18)
        return self.client_secret

    def rotate_client(self) -> None:
        self.client_id = "dcli-" + secrets.token_hex(6)
        self.rotate_secret()
        self._tokens.clear()


@dataclass
class Gg4lApp:
    """The Partner API and every district's Data API, on one loopback server."""

    client_id: str = "sandbox-vendor"
    client_secret: str = "sandbox-partner-secret-0000"
    token_ttl: float = 7199.0
    list_shape: str = "array"  # array | object | envelope | doc
    time_style: str = "millis_z"  # millis_z | offset | seconds | spaced
    complete_field: str = "lastDataProcessingCompletedTimestamp"
    relative_urls: bool = False
    link: bool = True
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    faults: list[tuple[str, int, int]] = field(default_factory=list)  # (path prefix, status, times)
    base_url: str = ""
    districts: dict[str, FakeDistrict] = field(default_factory=dict)
    partner_requests: int = 0
    partner_token_requests: int = 0
    _tokens: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- scripting -----------------------------------------------------------------------

    def add_district(self, guid: str, roster: Roster | None = None, *, ready: bool = True,
                     expires_in: timedelta = timedelta(days=365), appear_after_s: float = 0.0,
                     **options: Any) -> FakeDistrict:
        now = self.clock()
        district = FakeDistrict(guid=guid, roster=roster or Roster.generate(seed=len(self.districts) + 3, users=40,
                                                                           classes=4, enrollments=120),
                                client_id="dcli-" + secrets.token_hex(6), client_secret="",
                                expiry=now + expires_in, data_ts=now - timedelta(minutes=5) if ready else None,
                                created=now - timedelta(minutes=10), appear_at=time.monotonic() + appear_after_s,
                                **options)
        district.rotate_secret()
        with self._lock:
            self.districts[guid] = district
        return district

    def fault(self, path_prefix: str, status: int, times: int = 1) -> None:
        with self._lock:
            self.faults.append((path_prefix, status, times))

    # --- dispatch ------------------------------------------------------------------------

    def __call__(self, request: Request) -> Response:
        fault = self._fault(request.path)
        if fault:
            return fault
        if request.path == PARTNER_TOKEN and request.method == "POST":
            with self._lock:
                self.partner_token_requests += 1
            return self._issue(request, self.client_id, self.client_secret, self._tokens)
        if request.path == CREDENTIALS and request.method == "GET":
            with self._lock:
                self.partner_requests += 1
            if not self._bearer_ok(request, self._tokens):
                return Response(401, {"error": "invalid_token"})
            return Response(200, raw=self._listing().encode())
        if request.path.startswith("/d/"):
            return self._district(request)
        return Response(404, {"error": f"no route {request.method} {request.path}"})

    def _fault(self, path: str) -> Response | None:
        with self._lock:
            for i, (prefix, status, times) in enumerate(self.faults):
                if path.startswith(prefix) and times > 0:
                    self.faults[i] = (prefix, status, times - 1)
                    return Response(status, {"error": "scripted fault"})
        return None

    def _issue(self, request: Request, client_id: str, secret: str, tokens: dict[str, float]) -> Response:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("basic "):
            return Response(401, {"error": "invalid_client", "error_description": "Basic auth required"})
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return Response(401, {"error": "invalid_client"})
        if (user, password) != (client_id, secret):
            return Response(401, {"error": "invalid_client"})
        if urllib.parse.parse_qs(request.body.decode()).get("grant_type") != ["client_credentials"]:
            return Response(400, {"error": "unsupported_grant_type"})
        token = secrets.token_urlsafe(24)
        with self._lock:
            tokens[token] = time.monotonic() + self.token_ttl
        return Response(200, {"access_token": token, "token_type": "bearer", "expires_in": int(self.token_ttl)})

    @staticmethod
    def _bearer_ok(request: Request, tokens: dict[str, float]) -> bool:
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        expires = tokens.get(token)
        return expires is not None and expires > time.monotonic()

    def expire_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()
            for district in self.districts.values():
                district._tokens.clear()

    # --- the credentials list ------------------------------------------------------------

    def visible(self) -> list[FakeDistrict]:
        now = time.monotonic()
        with self._lock:
            return [d for d in self.districts.values() if d.listed and d.appear_at <= now]

    def _listing(self) -> str:
        entries = [self._entry(d) for d in self.visible()]
        if self.list_shape == "object" and len(entries) == 1:
            return json.dumps(entries[0])
        if self.list_shape == "envelope":
            return json.dumps({"credentials": entries})
        if self.list_shape == "doc":
            # The documentation's example: "{ {" instead of "[ {", and no comma after districtName.
            inner = ",\n".join(json.dumps(e, indent=1) for e in entries)
            inner = inner.replace('",\n "tokenUrl"', '"\n "tokenUrl"')
            return "{ " + inner + " }" if entries else "[]"
        return json.dumps(entries)

    def _entry(self, d: FakeDistrict) -> dict[str, Any]:
        root = "" if self.relative_urls else self.base_url
        return {
            "createdTimestamp": self._time(d.created),
            self.complete_field: self._time(d.data_ts),
            "districtName": d.name,
            "tokenUrl": f"{root}/d/{d.guid}{PARTNER_TOKEN}",
            "apiUrl": f"{root}/d/{d.guid}{DATA_PREFIX}",
            "clientId": d.client_id,
            "clientSecret": d.client_secret,
            "districtGuid": d.guid,
            "expiryDate": self._time(d.expiry, expiry=True),
        }

    def _time(self, stamp: datetime | None, expiry: bool = False) -> str | None:
        if stamp is None:
            return None
        stamp = stamp.astimezone(UTC)
        millis = f"{stamp:%Y-%m-%dT%H:%M:%S}.{stamp.microsecond // 1000:03d}"
        if self.time_style == "offset":
            return millis + "+00:00"
        if self.time_style == "seconds":
            return f"{stamp:%Y-%m-%dT%H:%M:%S}Z"
        if self.time_style == "spaced" and expiry:
            return f"{stamp:%Y - %m - %d}T{stamp:%H:%M:%S}.{stamp.microsecond // 1000:03d}+00:00"
        return millis + "Z"

    # --- a district's Data API -----------------------------------------------------------

    def _district(self, request: Request) -> Response:
        guid, _, rest = request.path[3:].partition("/")
        with self._lock:
            district = self.districts.get(guid)
        if district is None:
            return Response(404, {"error": "unknown district"})
        district.requests += 1
        available = district.listed and (district.expiry is None or district.expiry > self.clock())
        if "/" + rest == PARTNER_TOKEN and request.method == "POST":
            district.token_requests += 1
            if not available:
                return Response(401, {"error": "invalid_client", "error_description": "data access expired"})
            return self._issue(request, district.client_id, district.client_secret, district._tokens)
        if not ("/" + rest).startswith(DATA_PREFIX + "/") or request.method != "GET":
            return Response(404, {"error": f"no route {request.method} {request.path}"})
        if not available or not self._bearer_ok(request, district._tokens):
            return Response(401, {"imsx_codeMajor": "failure", "imsx_description": "unauthorized"})
        collection = rest[len(DATA_PREFIX):].lstrip("/")
        if collection not in COLLECTIONS:
            return Response(404, {"imsx_codeMajor": "failure", "imsx_description": "unknown collection"})
        try:
            limit = int(request.arg("limit", "100") or 100)
            offset = int(request.arg("offset", "0") or 0)
        except ValueError:
            return Response(400, {"imsx_codeMajor": "failure", "imsx_description": "limit/offset must be integers"})
        return self._page(request, district, collection, max(1, min(limit, MAX_LIMIT)), max(0, offset))

    def _page(self, request: Request, district: FakeDistrict, collection: str, limit: int, offset: int) -> Response:
        records = district.roster.collection(collection) if hasattr(district.roster, collection) else {}
        ids = sorted(records)
        page = [self._shield(district, collection, records[i]) for i in ids[offset:offset + limit]]
        headers = {"X-Total-Count": str(len(ids))}
        if self.link:
            base = request.url.split("?")[0]
            links = []
            if offset + limit < len(ids):
                # GG4L's documented format: no <>, smart quotes, and next one past the right offset.
                links.append(f"{base}?limit={limit}&offset={offset + limit + 1}; rel=\u201dnext\u201d")
            if offset > 0:
                links.append(f"{base}?limit={limit}&offset={max(0, offset - limit)}; rel=\u201cprev\u201d")
            if links:
                # The smart quotes go out as UTF-8 bytes (http.server writes headers as latin-1), so a
                # client reads them the way requests does: as latin-1 mojibake of those bytes.
                headers["Link"] = ", ".join(links).encode().decode("latin-1")
        body = json.dumps({collection: page}, ensure_ascii=False).encode()
        return Response(200, raw=body, headers={**headers, "Content-Type": "application/json; charset=utf-8"})

    def _shield(self, district: FakeDistrict, collection: str, record: dict[str, Any]) -> dict[str, Any]:
        if collection != "users" or not district.privacy_shield:
            return record
        out = dict(record)
        for name in ("givenName", "familyName", "middleName"):
            if out.get(name):
                out[name] = out[name][0] + "***"
        if district.email_mode == "empty":
            out["email"] = ""
        elif district.email_mode == "random_each":
            out["email"] = _random_email()
        else:
            out["email"] = district._emails.setdefault(record["sourcedId"], _random_email())
        return out


def _random_email() -> str:
    return "".join(random.choices(string.ascii_lowercase, k=12)) + "@gg4l.com"


class Gg4lSandbox:
    """The fake GG4L and the provision API on loopback, and a config that points at them."""

    def __init__(self, **options: Any):
        self.gg4l = Gg4lApp(**options)
        self.provision = ProvisionApp()
        self._servers = [Serving(self.gg4l), Serving(self.provision)]
        self.partner_url = self.gg4l.base_url = self._servers[0].url
        self.target_url = self._servers[1].url

    def __enter__(self) -> Gg4lSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for server in self._servers:
            server.stop()

    def gg4l_toml(self, *, on_new_district: str = "sync", modes: str = '["standard"]', template_sid: bool = True,
                  extra: str = "") -> str:
        app = self.gg4l
        sid = f'install_sid = "{self.provision.install_sid}"\n' if template_sid else ""
        return (f'[gg4l]\npartner_url = "{self.partner_url}"\nclient_id = "{app.client_id}"\n'
                f'client_secret = "{app.client_secret}"\n'
                f'webhook_headers = {{ "X-Syncd-Key" = "{WEBHOOK_KEY}" }}\nmodes = {modes}\n'
                f'on_new_district = "{on_new_district}"\ndiscovery_interval = "1h"\npurge_after_days = 30\n{extra}\n'
                f'[gg4l.tenant]\nschedule = "every 1h"\nroles = {{ student = "learner", teacher = "instructor" }}\n'
                f'[gg4l.tenant.target]\nbase_url = "{self.target_url}"\n{sid}token = "{self.provision.token}"\n')

    def write_config(self, path: Path, state_dir: Path, *, state_url: str | None = None, **options: Any) -> Path:
        """A config for this fake's districts; ``state_url``: see :func:`syncd.sandbox.state_toml`."""
        path.write_text(f'[daemon]\nstate_dir = "{state_dir}"\nlog_format = "json"\n\n'
                        + state_toml(state_dir, state_url) + self.gg4l_toml(**options), encoding="utf-8")
        path.chmod(0o600)
        return path


# --- the webhook sender --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    status: int
    latency_s: float
    body: str

    @property
    def ok(self) -> bool:
        return self.status == 200  # GG4L counts anything but exactly 200 as a failure


def send_webhook(url: str, guid: str, mode: str = "standard", headers: Mapping[str, str] | None = None, *,
                 style: str = "json", key: str = "districtGUID", extra: Mapping[str, Any] | None = None,
                 method: str = "POST", body: bytes | None = None, timeout: float = 5.0,
                 session: requests.Session | None = None) -> Sent:
    """POST what GG4L sends (the documented fields as JSON, a form or a query), and time the answer.

    ``headers`` default to the sandbox's one configured header; pass ``{}`` to send none.
    """
    fields = {key: guid, "mode": mode, **(extra or {})}
    send_headers = dict({"X-Syncd-Key": WEBHOOK_KEY} if headers is None else headers)
    data: bytes | None = body
    if body is None and style == "json":
        data = json.dumps(fields).encode()
        send_headers.setdefault("Content-Type", "application/json")
    elif body is None and style == "form":
        data = urllib.parse.urlencode(fields).encode()
        send_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    elif body is None and style == "query":
        url = f"{url}?{urllib.parse.urlencode(fields)}"
    started = time.monotonic()
    response = (session or requests).request(method, url, data=data, headers=send_headers, timeout=timeout)
    return Sent(response.status_code, time.monotonic() - started, response.text)
