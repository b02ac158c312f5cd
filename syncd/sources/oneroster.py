"""OneRoster 1.1 / 1.2 REST source: auth, limit/offset paging, envelopes, vendor quirks.

Reads the top-level collections (``/courses`` for the courseCode fallback, ``/classes``,
``/users``, ``/enrollments``) page by page and yields mapped records (SPEC §4); it knows nothing
of the store or the target. ``complete`` is True only when every collection was read to its end.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import requests
import structlog
from oauthlib.oauth1 import SIGNATURE_HMAC_SHA256
from requests_oauthlib import OAuth1

from syncd import http
from syncd.model import Course, CourseCode, Enrollment, Entity, Record, User
from syncd.sources import DeltaRejected, SourceError, map_record, text_field, tokens
from syncd.sources.oneroster_config import OneRosterConfig
from syncd.sources.pages import COLLECTIONS, KnownPage, PageRecords, page_tag

log = structlog.get_logger("syncd.oneroster")

ACTIVE, GONE = "active", "gone"
STATUSES = {"active": ACTIVE, "tobedeleted": GONE, "inactive": GONE, "": ACTIVE}
DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[T ].*)?$")
# Bump when the mapping below changes what a page of the same bytes maps to: every stored page
# fingerprint then stops matching and each page is parsed again (syncd.store.pages).
MAPPING_VERSION = "1"


class OneRosterSource:
    def __init__(self, config: OneRosterConfig, today: date, session: requests.Session | None = None,
                 concurrency: int | None = None):
        self.config = config
        self.today = today
        # Requests in flight for this tenant (source.concurrency; 1 is the old sequential crawl).
        self.concurrency = max(1, concurrency or config.concurrency)
        self.session = session or http.new_session(pool_size=self.concurrency)
        self.complete = False
        # Delta runs: read only what changed after this time (filter=dateLastModified>'…').
        self.since: str | None = None
        self.short: list[str] = []
        # Page fingerprints of the last run (syncd.store.pages), by page_tag: a page whose bytes
        # hash the same is not parsed. None: every page is parsed and yields a plain list.
        self.known_pages: dict[int, KnownPage] | None = None
        self.requests = 0
        self._counter = threading.Lock()
        self._decoding = threading.Lock()
        # Requests in flight: pool workers beyond these wait here with the next page to ask for.
        self._slots = threading.BoundedSemaphore(self.concurrency)
        auth = config.auth or ("oauth2" if config.version == "1.2" else "oauth1")
        self._auth = _oauth2(config, self.session, self._count) if auth == "oauth2" else None
        self._oauth1 = (
            OAuth1(config.client_id, client_secret=config.client_secret,
                   signature_method=SIGNATURE_HMAC_SHA256)
            if auth == "oauth1" else None
        )

    # Set through methods, not attributes: a wrapper that forwards attribute reads to its source
    # (syncd.metrics.MeteredSource) would keep an attribute set on it for itself.
    def read_since(self, since: str | None) -> None:
        """Delta runs: read only what changed after ``since`` (None: everything, from the start)."""
        self.since = since
        if since is None:
            self.short = []

    def remember_pages(self, known: dict[int, KnownPage] | None) -> None:
        """Page fingerprints of the last run (None: parse every page and yield plain lists)."""
        self.known_pages = known

    def _count(self) -> None:
        with self._counter:  # called from the fetch workers
            self.requests += 1

    def check(self) -> None:
        """Fail fast on dead credentials before anything is staged (OAuth 2 token request)."""
        if self._auth:
            self._auth.token()

    def extract(self) -> Iterator[list[Record]]:
        """Mapped pages, each collection's pages in offset order, fetched ahead on a pool.

        The pool fetches, decodes and maps pages while the caller stages the previous ones.
        Memory is bounded: at most ``2 * concurrency`` pages asked for and fetched but not yet
        handed over, of which at most ``concurrency`` requests are in flight (a page asked for
        beyond those waits for a slot on its worker, so that a slot freed starts the next request
        at once, not when this thread next runs, and decoding a page never holds a slot).
        Pages are handed over in offset order within each collection, so the result is the one
        a sequential crawl gives (the first of two records with one id still wins), whatever
        order the answers come back in.
        """
        mappers: dict[str, tuple[Entity, Callable[[dict[str, Any]], Record]]] = {
            "courses": ("course", self._course_code),
            "classes": ("course", self._class),
            "users": ("user", self._user),
            "enrollments": ("enrollment", self._enrollment),
        }
        crawls = [_Crawl(name, *mappers[name], limit=self.config.page_size) for name in COLLECTIONS]
        pool = ThreadPoolExecutor(max_workers=2 * self.concurrency, thread_name_prefix="oneroster")
        inflight: dict[Future[_Page], _Crawl] = {}
        try:
            while not all(c.done for c in crawls):
                self._submit(pool, crawls, inflight)
                if not any(c.ready() for c in crawls):
                    if not inflight:  # cannot happen: a crawl not done always has a page to ask for
                        raise SourceError("OneRoster crawl stalled (internal error)")
                    finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    for future in finished:
                        inflight.pop(future).receive(future.result())
                for crawl in crawls:
                    while (page := crawl.ready()) is not None:
                        records = crawl.commit(page, self)
                        if records is not None:
                            self._submit(pool, crawls, inflight)  # keep the pool busy while we stage
                            yield records
        finally:
            # On an error or an early close: no new request starts; running ones end on their own.
            for crawl in crawls:
                crawl.abandoned = True  # a worker still waiting for a slot sends nothing
            pool.shutdown(wait=False, cancel_futures=True)
        # A collection that ended short of the X-Total-Count its server announced is read, but
        # the extract is not called complete: nothing can be inferred removed from it.
        self.complete = not self.short

    def _submit(self, pool: ThreadPoolExecutor, crawls: list[_Crawl],
                inflight: dict[Future[_Page], _Crawl]) -> None:
        """Ask for pages until ``2 * concurrency`` are asked for or fetched and waiting to be staged."""
        # The very first request goes alone: with refused credentials, one request is refused,
        # not one per collection (some servers lock a client out after a few). Under OAuth 2 a
        # token granted this run (the engine's check) has proven them already.
        proven = (self._auth is not None and self._auth.granted) or any(c.pages or c.done for c in crawls)
        while len(inflight) < (2 * self.concurrency if proven else 1):
            waiting = sum(len(c.buffer) for c in crawls)
            if len(inflight) + waiting >= 2 * self.concurrency:
                return
            # The request nearest to being staged first: a crawl blocked on its next page holds
            # everything behind it.
            candidates = [(distance, i, c) for i, c in enumerate(crawls)
                          if (distance := c.next_distance(self.concurrency)) is not None]
            if not candidates:
                return
            _, _, crawl = min(candidates)
            offset = crawl.take()
            inflight[pool.submit(self._fetch, crawl, offset, crawl.generation, crawl.sort)] = crawl

    def _fetch(self, crawl: _Crawl, offset: int, generation: int, sort: bool) -> _Page:
        """One page, fetched, decoded and mapped on a pool thread; an error travels in the page."""
        try:
            try:
                response = self._request(crawl, offset, generation, sort)
            except http.RejectedError as exc:
                if self.since is not None and exc.status == 400 and offset == 0:
                    raise DeltaRejected(f"the source refused filter=dateLastModified on /{crawl.name}") from exc
                if not (sort and exc.status == 400 and offset == 0):
                    raise
                # Some servers reject sorting; paging still works, duplicates are dropped later.
                log.warning("oneroster.sort_rejected", collection=crawl.name)
                sort = False
                response = self._request(crawl, offset, generation, sort)
            if response is None:  # receive() drops it: its generation is gone or its crawl done
                return _Page(offset, generation, sort)
            total = _int(response.headers.get("X-Total-Count"))
            tag, digest = page_tag(crawl.name, offset), ""
            if self.known_pages is not None:
                digest = self._digest(response)
                known = self.known_pages.get(tag)
                if known is not None and known.digest == digest:
                    skipped = PageRecords([], tag, digest, known.count, known.ids, skipped=True)
                    return _Page(offset, generation, sort, skipped, known.count, known.ids, total)
            # One page decoded at a time: the GIL runs one anyway, and a decoded page (dicts) is
            # ten times its mapped records, so this bounds the peak memory, not the speed.
            with self._decoding:
                items = _envelope(response, crawl.name)
                mapper, entity = crawl.mapper, crawl.entity
                records: list[Record] = [_map_safely(entity, mapper, item) for item in items]
                count, fingerprint = len(items), _fingerprint(items)
                del items
            if self.known_pages is not None:
                records = PageRecords(records, tag, digest, count, fingerprint)
            return _Page(offset, generation, sort, records, count, fingerprint, total)
        except Exception as exc:  # noqa: BLE001 - raised by the crawl if and when the page is needed
            return _Page(offset, generation, sort, error=exc)

    def _request(self, crawl: _Crawl, offset: int, generation: int, sort: bool) -> requests.Response | None:
        """The page's request, sent in one of the ``concurrency`` slots; None, unsent, when the page
        is no longer wanted by the time a slot is free (the extract closed, the collection ended,
        its grid restarted: each is final, so the answer would be dropped). An OAuth 1.0a request
        is prepared and signed before its slot is taken, so the slot is held only while its
        bytes travel."""
        def wanted() -> bool:
            return not (crawl.abandoned or crawl.done or crawl.generation != generation)

        if not wanted():
            return None
        slot = _Slot(self._slots, wanted)
        try:
            if self._auth:  # a bearer token is attached in the slot: one refreshed meanwhile is used
                with slot:
                    return self._get(crawl.name, self._params(offset, sort))
            return self._get(crawl.name, self._params(offset, sort), gate=slot)
        except _Unwanted:
            return None

    def _digest(self, response: requests.Response) -> str:
        """The page's raw bytes, with all else that decides what they map to: the date (an
        enrollment past its endDate is inactive), the mapping options and code, the charset."""
        context = (f"{MAPPING_VERSION}|{self.today.isoformat()}|{self.config.privacy_shield}|"
                   f"{response.headers.get('Content-Type', '')}|")
        digest = hashlib.blake2b(context.encode(), digest_size=16)
        digest.update(response.content)
        return digest.hexdigest()

    def _params(self, offset: int, sort: bool) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": self.config.page_size, "offset": offset}
        if sort:
            params |= {"sort": "sourcedId", "orderBy": "asc"}
        if self.since is not None:
            params["filter"] = f"dateLastModified>'{self.since}'"
        return params

    def _check_total(self, collection: str, read: int, total: int | None) -> None:
        if total is not None and read < total:
            self.short.append(collection)
            log.warning("oneroster.short_collection", collection=collection, read=read, total_count=total,
                        consequence="the extract is not complete: nothing is inferred removed")

    def _get(self, collection: str, params: dict[str, Any], gate: _Slot | None = None) -> requests.Response:
        url = f"{self.config.base_url}/{collection}?{urllib.parse.urlencode(params)}"
        headers = {"Accept": "application/json"}
        auth: Any = self._oauth1
        reauthorize = None
        if self._auth:
            auth = self._auth
            reauthorize = self._auth.refresh
        return http.send(self.session, "GET", url, timeout=self.config.timeout_s, auth=auth,
                         headers=headers, reauthorize=reauthorize, on_attempt=self._count, gate=gate)

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


# --- paging ---------------------------------------------------------------------------------


@dataclass
class _Page:
    """One answer of ``/collection?offset=…``: mapped records, or the error that stopped it."""

    offset: int
    generation: int
    sort: bool
    records: list[Record] = field(default_factory=list)
    count: int = 0  # items the server sent (mapped or not)
    fingerprint: str = ""
    total: int | None = None
    error: Exception | None = None


class _Unwanted(Exception):
    """A page no longer wanted by the time its slot was free: it is not sent."""


class _Slot:
    """One of the source's request slots for one attempt, refused (:class:`_Unwanted`) if the page
    stopped being wanted while it waited."""

    def __init__(self, slots: threading.BoundedSemaphore, wanted: Callable[[], bool]):
        self.slots, self.wanted = slots, wanted

    def __enter__(self) -> None:
        self.slots.acquire()
        if not self.wanted():
            self.slots.release()
            raise _Unwanted()

    def __exit__(self, *exc: object) -> None:
        self.slots.release()


@dataclass
class _Crawl:
    """The paging state of one collection: what was staged, what to ask for next.

    The rules are the sequential crawl's, applied to pages in offset order: an empty page ends
    the collection, and so does a page shorter than an earlier one (a server may clamp ``limit``
    silently, so a short *first* page proves nothing) unless X-Total-Count says more is there;
    X-Total-Count only ever makes us read more, never less; a page already read is a loop.
    Pages are asked for ahead on a grid of the longest page seen (the effective limit); when an
    answer breaks the grid (a page longer or shorter than expected, with more to read), the grid
    restarts at the cursor and answers to the old one are dropped.
    """

    name: str
    entity: Entity
    mapper: Callable[[dict[str, Any]], Record]
    limit: int  # the limit asked for
    cursor: int = 0  # items staged so far: the offset of the next page to stage
    step: int = 0  # the longest page seen; 0 until the first page is staged
    sort: bool = True
    total: int | None = None
    generation: int = 0
    next_offset: int = 0  # the next offset of the current grid to ask for
    asked: int = 0  # requests of the current grid not yet staged
    pages: int = 0  # pages staged
    done: bool = False
    abandoned: bool = False  # the extract ended early (an error, or the caller closed it)
    buffer: dict[int, _Page] = field(default_factory=dict)
    fingerprints: set[str] = field(default_factory=set)

    def next_distance(self, concurrency: int) -> int | None:
        """How many pages ahead of the cursor the next request would be; None: nothing to ask."""
        if self.done:
            return None
        if self.step == 0:  # the first page sets the grid: nothing is asked ahead of it
            return 0 if self.asked == 0 else None
        if self.total is not None:
            # Up to the page that would confirm the announced end; past it one page at a time.
            if self.next_offset > max(self.total, self.cursor):
                return None
        elif self.step < self.limit and self.pages < 2 and self.asked:
            # A short first page and no count: the end, or a clamped limit. Ask one page at a
            # time until a second page as long as the first shows the clamp.
            return None
        distance = (self.next_offset - self.cursor) // self.step
        return distance if distance < 2 * concurrency else None

    def take(self) -> int:
        offset = self.next_offset
        self.next_offset += self.step
        self.asked += 1
        return offset

    def receive(self, page: _Page) -> None:
        if page.generation != self.generation or self.done:
            return  # an answer to an abandoned grid, or past the end
        self.buffer[page.offset] = page

    def ready(self) -> _Page | None:
        return None if self.done else self.buffer.pop(self.cursor, None)

    def commit(self, page: _Page, source: OneRosterSource) -> list[Record] | None:
        """Apply the paging rules to the page at the cursor; its records, or None at the end."""
        self.asked -= 1
        if page.error is not None:
            raise page.error
        if self.step == 0:
            self.sort = page.sort
        if page.count == 0:
            self._finish(source)
            return None
        if page.fingerprint in self.fingerprints:
            raise SourceError(
                f"/{self.name}: pagination loop: offset {page.offset} returned a page already read "
                "(the server ignores offset?)"
            )
        self.fingerprints.add(page.fingerprint)
        step = self.step
        self.cursor += page.count
        self.pages += 1
        self.total = page.total
        self.step = max(step, page.count)
        if page.count < step and not (self.total and self.cursor < self.total):
            self._finish(source)
        elif step == 0:
            self.next_offset = self.cursor  # the first page: the grid starts after it
        elif page.count != step:
            self._restart_grid()  # pages ahead were asked at offsets this page did not end on
        return page.records

    def _restart_grid(self) -> None:
        self.generation += 1
        self.buffer.clear()
        self.next_offset = self.cursor
        self.asked = 0

    def _finish(self, source: OneRosterSource) -> None:
        self.done = True
        self.buffer.clear()
        source._check_total(self.name, self.cursor, self.total)


def _oauth2(config: OneRosterConfig, session: requests.Session, on_attempt: Callable[[], None]) -> tokens.BearerToken:
    """OAuth 2 client credentials, under syncd.sources.tokens's rules (reuse, 401), in memory only:
    a OneRoster token request costs nothing, so a run's token is never written anywhere."""
    def grant() -> dict[str, Any]:
        quote = urllib.parse.quote
        body = {"grant_type": "client_credentials"}
        if config.scope:
            body["scope"] = config.scope
        response = http.send(
            session, "POST", config.token_url, timeout=config.timeout_s, data=body,
            auth=(quote(config.client_id, safe=""), quote(config.client_secret, safe="")),
            headers={"Accept": "application/json"}, on_attempt=on_attempt,
        )
        try:
            payload = response.json()
            if not isinstance(payload, dict) or not payload.get("access_token"):
                raise ValueError
        except ValueError:
            raise SourceError("token endpoint answered without an access_token") from None
        return payload

    return tokens.BearerToken(grant, for_=tokens.audience(config.token_url, config.client_id, config.scope),
                              name="oneroster")


# --- value parsing -------------------------------------------------------------------------


def _map_safely(entity: Entity, mapper: Callable[[dict[str, Any]], Record], item: Any) -> Record:
    return map_record(entity, mapper, item, _sourced_id)


def _sourced_id(item: dict[str, Any]) -> str | None:
    source_id = item.get("sourcedId")
    return source_id if isinstance(source_id, str) else None


def _json_source(response: requests.Response) -> bytes | str:
    """The body as json.loads wants it: bytes (UTF-8, the fast path), or text decoded by the charset a
    server declared (http.send has refused undeclared bytes that are not UTF-8)."""
    content_type = response.headers.get("Content-Type", "").lower()
    if "charset=" in content_type and "charset=utf-8" not in content_type.replace('"', ""):
        return response.text
    return response.content


def _envelope(response: requests.Response, collection: str) -> list[Any]:
    try:
        # The stdlib, not orjson: orjson saved 5 % of a no-change run's CPU and cost 11 MB of its
        # peak RSS at 100k enrollments (bench/results.md); memory is the tighter budget.
        body = json.loads(_json_source(response))
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
    known = STATUSES.get(value) if type(value) is str else None
    if known is not None:
        return known  # "active" / "tobedeleted" as the spec writes them (fast path)
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
