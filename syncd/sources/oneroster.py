"""OneRoster 1.1 / 1.2 REST source: auth, limit/offset paging, envelopes, vendor quirks.

Reads the top-level collections (``/courses`` for the courseCode fallback, ``/classes``,
``/users``, ``/enrollments``) page by page and yields mapped records (SPEC §4); it knows nothing
of the store or the target. ``complete`` is True only when every collection was read to its end.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import requests
import structlog
from oauthlib.oauth1 import SIGNATURE_HMAC_SHA256
from requests_oauthlib import OAuth1

from syncd import http
from syncd.config import SourceConfig
from syncd.model import Course, CourseCode, Enrollment, Entity, Record, User
from syncd.sources import SourceError, map_record, text_field

log = structlog.get_logger("syncd.oneroster")

ACTIVE, GONE = "active", "gone"
STATUSES = {"active": ACTIVE, "tobedeleted": GONE, "inactive": GONE, "": ACTIVE}
DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[T ].*)?$")
# (path, envelope key, entity reported on record errors, mapper)
COLLECTIONS = ("courses", "classes", "users", "enrollments")


class OneRosterSource:
    def __init__(self, config: SourceConfig, today: date, session: requests.Session | None = None):
        self.config = config
        self.today = today
        self.session = session or http.new_session()
        self.complete = False
        self.short: list[str] = []
        self.requests = 0
        auth = config.auth or ("oauth2" if config.version == "1.2" else "oauth1")
        self._auth = _OAuth2Token(config, self.session, self._count) if auth == "oauth2" else None
        self._oauth1 = (
            OAuth1(config.client_id, client_secret=config.client_secret,
                   signature_method=SIGNATURE_HMAC_SHA256)
            if auth == "oauth1" else None
        )

    def _count(self) -> None:
        self.requests += 1

    def check(self) -> None:
        """Fail fast on dead credentials before anything is staged (1.2 token request)."""
        if self._auth:
            self._auth.token()

    def extract(self) -> Iterator[list[Record]]:
        mappers: dict[str, tuple[Entity, Callable[[dict[str, Any]], Record]]] = {
            "courses": ("course", self._course_code),
            "classes": ("course", self._class),
            "users": ("user", self._user),
            "enrollments": ("enrollment", self._enrollment),
        }
        for collection in COLLECTIONS:
            entity, mapper = mappers[collection]
            for page in self._pages(collection):
                yield [_map_safely(entity, mapper, item) for item in page]
        # A collection that ended short of the X-Total-Count its server announced is read, but
        # the extract is not called complete: nothing can be inferred removed from it.
        self.complete = not self.short

    # --- paging ------------------------------------------------------------------------

    def _pages(self, collection: str) -> Iterator[list[Any]]:
        """Pages of one collection until an empty page, or a page shorter than an earlier one.

        A server may clamp ``limit`` silently, so a first page shorter than asked for proves
        nothing: we read on until a page comes back shorter than one before it, or empty.
        X-Total-Count only ever makes us read more, never less.
        """
        limit = self.config.page_size
        offset = 0
        longest = 0
        seen_pages: set[str] = set()
        sort = True
        total: int | None = None
        while True:
            params = {"limit": limit, "offset": offset}
            if sort:
                params |= {"sort": "sourcedId", "orderBy": "asc"}
            try:
                response = self._get(collection, params)
            except http.RejectedError as exc:
                if sort and exc.status == 400 and offset == 0:
                    # Some servers reject sorting; paging still works, duplicates are dropped later.
                    log.warning("oneroster.sort_rejected", collection=collection)
                    sort = False
                    continue
                raise
            records = _envelope(response, collection)
            if not records:
                self._check_total(collection, offset, total)
                return
            fingerprint = _fingerprint(records)
            if fingerprint in seen_pages:
                raise SourceError(
                    f"/{collection}: pagination loop: offset {offset} returned a page already read "
                    "(the server ignores offset?)"
                )
            seen_pages.add(fingerprint)
            yield records
            offset += len(records)
            total = _int(response.headers.get("X-Total-Count"))
            shorter = len(records) < longest
            longest = max(longest, len(records))
            if shorter and not (total and offset < total):
                self._check_total(collection, offset, total)
                return

    def _check_total(self, collection: str, read: int, total: int | None) -> None:
        if total is not None and read < total:
            self.short.append(collection)
            log.warning("oneroster.short_collection", collection=collection, read=read, total_count=total,
                        consequence="the extract is not complete: nothing is inferred removed")

    def _get(self, collection: str, params: dict[str, Any]) -> requests.Response:
        url = f"{self.config.base_url}/{collection}?{urllib.parse.urlencode(params)}"
        headers = {"Accept": "application/json"}
        auth: Any = self._oauth1
        reauthorize = None
        if self._auth:
            auth = self._auth
            reauthorize = self._auth.refresh
        return http.send(self.session, "GET", url, timeout=self.config.timeout_s, auth=auth,
                         headers=headers, reauthorize=reauthorize, on_attempt=self._count)

    # --- mapping (SPEC §4) -------------------------------------------------------------

    def _course_code(self, item: dict[str, Any]) -> Record:
        return CourseCode(source_id=_id(item), code=_text(item, "courseCode"))

    def _class(self, item: dict[str, Any]) -> Record:
        source_id = _id(item)
        active = _status(item) == ACTIVE
        title = _text(item, "title")
        if active and not title:
            raise ValueError("class has no title")
        return Course(
            source_id=source_id,
            title=title or "",
            active=active,
            code=_text(item, "classCode"),
            external_id=source_id,
            parent_id=_ref(item.get("course")),
            status=_raw_status(item),
        )

    def _user(self, item: dict[str, Any]) -> Record:
        source_id = _id(item)
        active = _status(item) == ACTIVE
        first, last = _text(item, "givenName"), _text(item, "familyName")
        if active and not (first and last):
            missing = " and ".join(n for n, v in (("givenName", first), ("familyName", last)) if not v)
            raise ValueError(f"user has no {missing}")
        return User(
            source_id=source_id,
            first_name=first or "",
            last_name=last or "",
            active=active,
            email=shielded_email(_text(item, "email")) if self.config.privacy_shield else _text(item, "email"),
            external_id=source_id,
            status=_raw_status(item),
        )

    def _enrollment(self, item: dict[str, Any]) -> Record:
        source_id = _id(item)
        user_id, class_id = _ref(item.get("user")), _ref(item.get("class"))
        role = _text(item, "role")
        if not user_id or not class_id or not role:
            missing = [n for n, v in (("user", user_id), ("class", class_id), ("role", role)) if not v]
            raise ValueError(f"enrollment has no {', '.join(missing)}")
        active = _status(item) == ACTIVE
        end = _date(item.get("endDate"), "endDate")
        if end is not None and end <= self.today:
            active = False  # endDate is exclusive
        return Enrollment(source_id=source_id, course_id=class_id, user_id=user_id, role=role,
                          active=active, status=_raw_status(item), end_date=end.isoformat() if end else None)


class _OAuth2Token(requests.auth.AuthBase):
    """OAuth 2 client credentials: one token reused until it expires, refreshed once on a 401."""

    def __init__(self, config: SourceConfig, session: requests.Session, on_attempt: Callable[[], None]):
        self.config = config
        self.session = session
        self.on_attempt = on_attempt
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at:
                self._fetch()
            assert self._token is not None
            return self._token

    def refresh(self) -> None:
        with self._lock:
            self._fetch()

    def _fetch(self) -> None:
        quote = urllib.parse.quote
        body = {"grant_type": "client_credentials"}
        if self.config.scope:
            body["scope"] = self.config.scope
        response = http.send(
            self.session, "POST", self.config.token_url, timeout=self.config.timeout_s, data=body,
            auth=(quote(self.config.client_id, safe=""), quote(self.config.client_secret, safe="")),
            headers={"Accept": "application/json"}, on_attempt=self.on_attempt,
        )
        try:
            payload = response.json()
            token = payload["access_token"]
            lifetime = float(payload.get("expires_in") or 3600)
        except (ValueError, KeyError, TypeError):
            raise SourceError("token endpoint answered without an access_token") from None
        self._token = str(token)
        # Refresh a little early so that a request never leaves with a token about to die.
        self._expires_at = time.monotonic() + max(1.0, lifetime - min(60.0, lifetime / 10))
        log.debug("oneroster.token_obtained", expires_in=lifetime)


# --- value parsing -------------------------------------------------------------------------


def _map_safely(entity: Entity, mapper: Callable[[dict[str, Any]], Record], item: Any) -> Record:
    return map_record(entity, mapper, item, _sourced_id)


def _sourced_id(item: dict[str, Any]) -> str | None:
    source_id = item.get("sourcedId")
    return source_id if isinstance(source_id, str) else None


def _envelope(response: requests.Response, collection: str) -> list[Any]:
    try:
        body = response.json()
    except ValueError:
        kind = response.headers.get("Content-Type", "unknown content")
        raise SourceError(f"/{collection}: response is not JSON ({kind})") from None
    if not isinstance(body, dict) or not isinstance(body.get(collection), list):
        # A success-shaped answer without its envelope must never be read as an empty roster.
        raise SourceError(f"/{collection}: response has no '{collection}' list")
    return body[collection]


def _fingerprint(records: list[Any]) -> str:
    ids = "\x1f".join(str(r.get("sourcedId")) if isinstance(r, dict) else "?" for r in records)
    return hashlib.blake2b(ids.encode(), digest_size=16).hexdigest()


def _id(item: dict[str, Any]) -> str:
    value = item.get("sourcedId")
    if not isinstance(value, str) or not value.strip():
        raise ValueError("record has no sourcedId" if value in (None, "") else "sourcedId is not a string")
    return value


def _raw_status(item: dict[str, Any]) -> str | None:
    value = item.get("status")
    return value if isinstance(value, str) else None


def _status(item: dict[str, Any]) -> str:
    value = item.get("status")
    value = "" if value is None else value
    if not isinstance(value, str) or value.strip().lower() not in STATUSES:
        raise ValueError(f"unknown status {value!r}")
    return STATUSES[value.strip().lower()]


def shielded_email(value: str | None) -> str | None:
    """Under GG4L's Privacy Shield an e-mail is empty or random letters @gg4l.com, maybe new at every
    sync: never a change and never an identity, so it counts as none (gg4l.md §3, §9 step 8)."""
    if not value or value.strip().lower().endswith("@gg4l.com"):
        return None
    return value


def _text(item: dict[str, Any], key: str) -> str | None:
    return text_field(item, key)


def _ref(value: Any) -> str | None:
    """The sourcedId of a GUIDRef (``{"sourcedId": …}``); some vendors send a bare string."""
    if isinstance(value, dict):
        value = value.get("sourcedId")
    if isinstance(value, str) and value.strip():
        return value
    return None


def _date(value: Any, key: str) -> date | None:
    if value in (None, ""):
        return None
    match = DATE.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{key} {value!r} is not a date (YYYY-MM-DD)")
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        raise ValueError(f"{key} {value!r} is not a valid date") from None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
