"""Canvas REST source: account courses, users with e-mail, per-course enrollments, or the
provisioning report for large accounts; mapped to records as SPEC §4's Canvas column says.

The crawl follows ``Link: rel="next"`` only (never builds page URLs, survives a silent
``per_page`` cap) and fetches courses in parallel within a per-token budget: at most
``concurrency`` requests in flight, fewer when ``X-Rate-Limit-Remaining`` runs low, halved on a
throttled answer (``403 Forbidden (Rate Limit Exceeded)`` or 429), which is retried after a pause.
The source knows nothing of the store or the target; ``complete`` is True only when every
collection was read to its end.
"""

from __future__ import annotations

import csv
import io
import queue
import tempfile
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import requests
import structlog

from syncd import http
from syncd.model import Course, Enrollment, Entity, Record, RecordError, User
from syncd.sources import SourceError, map_record, text_field
from syncd.sources.canvas_auth import CanvasToken

if TYPE_CHECKING:
    from syncd.config import TenantConfig

log = structlog.get_logger("syncd.canvas")

# Enrollment type -> SPEC §4 role. The Test Student (StudentViewEnrollment) is never provisioned.
TYPE_ROLES = {"StudentEnrollment": "student", "TeacherEnrollment": "teacher", "TaEnrollment": "ta",
              "DesignerEnrollment": "designer", "ObserverEnrollment": "observer"}
ROLE_TYPES = {role: kind for kind, role in TYPE_ROLES.items()}
TEST_STUDENT = "StudentViewEnrollment"
IN_SCOPE_COURSES = ("available", "unpublished")
# `state[]` values for the account course list: unpublished is Canvas's created + claimed.
COURSE_STATES = ("created", "claimed", "available")
# Courses in scope above which `mode = "auto"` reads the provisioning report instead of crawling
# each course: the break-even measured by bench/canvas.py (see README, Benchmark).
REPORT_MIN_COURSES = 800
# Throttled answers are retried longer than other transient faults: the bucket drains at ~10/s.
THROTTLE_POLICY = http.RetryPolicy(attempts=8, base_s=1.0, cap_s=30.0)
LOW_REMAINING, HIGH_REMAINING = 150.0, 350.0
DONE = object()


class CanvasSource:
    def __init__(self, tenant: TenantConfig, state_dir: Path, session: requests.Session | None = None):
        self.config = tenant.source
        self.tenant = tenant.name
        self.roles = tuple(tenant.roles)
        self.session = session or http.new_session(pool_size=self.config.concurrency + 2)
        self.complete = False
        self.requests = 0
        self.mode_used = ""
        self.exams = tenant.exams  # SPEC §7: None when the tenant provisions no exams
        self.time_zone = tenant.time_zone
        self._count_lock = threading.Lock()
        self.budget = Budget(self.config.concurrency)
        self.auth = CanvasToken(tenant.name, self.config, state_dir, self.session, self._count)
        self._host = urllib.parse.urlsplit(self.config.base_url)[:2]

    def _count(self) -> None:
        with self._count_lock:
            self.requests += 1

    def check(self) -> None:
        """Fail before anything is staged when the token, its scopes or the account are wrong."""
        self._get(self._courses_url(per_page=1))

    # --- extract ---------------------------------------------------------------------------

    def extract(self) -> Iterator[list[Record]]:
        course_ids: list[str] = []
        windows: dict[str, tuple[Any, Any]] = {}  # course -> its (start_at, end_at): an exam's fallback window
        for page in self._follow(self._courses_url()):
            records = [_map("course", _course, item) for item in page]
            course_ids += [r.source_id for r in records if isinstance(r, Course) and r.active]
            if self.exams is not None:
                windows |= {r.source_id: (item.get("start_at"), item.get("end_at"))
                            for item, r in zip(page, records, strict=True) if isinstance(r, Course) and r.active}
            yield records
        exam_chains = self._exam_chains(windows)
        mode = self.config.mode
        if mode == "auto":
            threshold = self.config.report_min_courses or REPORT_MIN_COURSES
            mode = "report" if len(course_ids) >= threshold else "api"
        self.mode_used = mode
        log.info("canvas.extract_mode", mode=mode, courses=len(course_ids), configured=self.config.mode)
        if mode == "report":
            yield from self._report(set(course_ids))
            # Canvas has no quiz report: exams are read per course even in report mode.
            yield from parallel(exam_chains, self.config.concurrency)
        else:
            yield from self._crawl(course_ids, exam_chains)
        self.complete = True
        log.info("canvas.extract_cost", requests=self.requests, request_cost=round(self.budget.cost, 2),
                 throttled=self.budget.throttles, concurrency_at_end=int(self.budget.limit))

    def _courses_url(self, per_page: int | None = None) -> str:
        params: list[tuple[str, str]] = [("state[]", s) for s in COURSE_STATES]
        if self.config.term_id:
            params.append(("enrollment_term_id", self.config.term_id))
        params += [("by_subaccounts[]", a) for a in self.config.sub_accounts]
        params.append(("per_page", str(per_page or self.config.page_size)))
        return self._url(f"/api/v1/accounts/{_path_id(self.config.account_id)}/courses", params)

    def _exam_chains(self, windows: dict[str, tuple[Any, Any]]) -> list[Callable[[], Iterator[list[Any]]]]:
        """One chain per in-scope course reading its exams (canvas_exams), when the tenant has exams."""
        if self.exams is None:
            return []
        from zoneinfo import ZoneInfo

        from syncd.exams import CourseWindow
        from syncd.sources import canvas_exams

        reader, config = canvas_exams.CanvasReader.of(self), self.exams
        zone = ZoneInfo(self.time_zone) if self.time_zone else None

        def chain(course_id: str, window: CourseWindow) -> Callable[[], Iterator[list[Any]]]:
            return lambda: canvas_exams.course_exams(reader, course_id, window, config, zone,
                                                     count_overrides=config.count_overrides)

        return [chain(c, CourseWindow(start, end)) for c, (start, end) in windows.items()]

    def _crawl(self, course_ids: list[str], extra: Sequence[Callable[[], Iterator[list[Any]]]] = ()
               ) -> Iterator[list[Record]]:
        """Users (with e-mail) and every course's enrollments (and ``extra`` chains: exams),
        fetched in parallel."""
        types = [("type[]", ROLE_TYPES[r]) for r in self.roles if r in ROLE_TYPES]
        if not types:
            log.warning("canvas.no_mapped_roles", roles=list(self.roles),
                        hint="roles keys for Canvas are student, teacher, ta, designer, observer")
        users_url = self._url(f"/api/v1/accounts/{_path_id(self.config.account_id)}/users",
                              [("include[]", "email"), ("per_page", str(self.config.page_size))])
        emails = _EmailWatch()

        def users() -> Iterator[list[Record]]:
            for page in self._follow(users_url):
                yield [emails.see(_map("user", _user, item)) for item in page]

        def enrollments(course_id: str) -> Callable[[], Iterator[list[Record]]]:
            url = self._url(f"/api/v1/courses/{course_id}/enrollments",
                            [*types, ("state[]", "active"), ("include[]", "user"),
                             ("per_page", str(self.config.page_size))])
            return lambda: (_enrollments(page, course_id) for page in self._follow(url))

        chains = [users, *(enrollments(c) for c in course_ids)] if types else [users]
        chains += list(extra)
        yield from parallel(chains, self.config.concurrency)
        emails.report()

    # --- HTTP ------------------------------------------------------------------------------

    def _url(self, path: str, params: Iterable[tuple[str, str]]) -> str:
        return f"{self.config.base_url}{path}?{urllib.parse.urlencode(list(params), safe='[]:')}"

    def _get(self, url: str, method: str = "GET", **kwargs: Any) -> requests.Response:
        with self.budget:
            response = http.send(self.session, method, url, timeout=self.config.timeout_s,
                                 auth=self.auth, reauthorize=self.auth.refresh, on_attempt=self._count,
                                 transient_status=self._throttled, throttle_policy=THROTTLE_POLICY,
                                 headers={"Accept": "application/json"}, **kwargs)
        self.budget.observe(response.headers.get("X-Rate-Limit-Remaining"), response.headers.get("X-Request-Cost"))
        return response

    def _throttled(self, response: requests.Response) -> bool:
        """Canvas throttles with 403 "Rate Limit Exceeded" (older) or 429 (since 2025)."""
        throttled = response.status_code == 429 or (
            response.status_code == 403 and ("rate limit exceeded" in response.text.lower()
                                             or _float(response.headers.get("X-Rate-Limit-Remaining")) == 0.0))
        if throttled:
            self.budget.throttled()
        return throttled

    def _follow(self, url: str) -> Iterator[list[Any]]:
        """Pages of one collection, following rel="next" until it is absent."""
        seen: set[str] = set()
        while url:
            response = self._get(url)
            try:
                page = response.json()
            except ValueError:
                kind = response.headers.get("Content-Type", "unknown content")
                raise SourceError(f"{http.redact_url(url)}: response is not JSON ({kind})") from None
            if not isinstance(page, list):
                raise SourceError(f"{http.redact_url(url)}: expected a JSON list, got {type(page).__name__}")
            yield page
            url = self._next(response, seen)

    def _next(self, response: requests.Response, seen: set[str]) -> str:
        link = response.links.get("next", {}).get("url", "")
        if not link:
            return ""
        link = urllib.parse.urljoin(response.url, link)
        if urllib.parse.urlsplit(link)[:2] != self._host:
            # Following it would send our token to another host.
            raise SourceError(f"Link rel=next points to another host ({http.redact_url(link)}); not followed")
        if link in seen:
            raise SourceError(f"pagination loop: rel=next repeats {http.redact_url(link)}")
        seen.add(link)
        return link

    # --- the provisioning report -------------------------------------------------------------

    def _report(self, course_ids: set[str]) -> Iterator[list[Record]]:
        """Users and enrollments from one provisioning_csv report: a handful of requests."""
        base = f"/api/v1/accounts/{_path_id(self.config.account_id)}/reports/provisioning_csv"
        form = {"parameters[users]": "true", "parameters[enrollments]": "true"}
        if self.config.term_id:
            form["parameters[enrollment_term_id]"] = self.config.term_id
        report = self._get(self._url(base, []), method="POST", data=form).json()
        file_url = self._wait_for(base, report)
        with tempfile.TemporaryFile() as spool:  # on disk, not in memory, whatever its size
            self._download(file_url, spool)
            spool.seek(0)
            yield from _report_records(spool, course_ids, set(self.roles))

    def _wait_for(self, base: str, report: dict[str, Any]) -> str:
        started = time.monotonic()
        deadline = started + self.config.report_timeout_s
        pause = 0.5
        while True:
            status = report.get("status")
            if status == "complete":
                url = report.get("file_url") or (report.get("attachment") or {}).get("url")
                if not url:
                    raise SourceError("the provisioning report is complete but has no file_url")
                return str(url)
            if status in ("error", "aborted", "deleted") or not isinstance(report.get("id"), int | str):
                raise SourceError(f"the provisioning report ended with status {status!r}")
            if time.monotonic() > deadline:
                raise SourceError(f"the provisioning report was not ready after {self.config.report_timeout_s:g} s "
                                  "(raise source.report_timeout_s, or use mode = \"api\")")
            if http.stopping.wait(_poll_pause(report, time.monotonic() - started, pause)):
                raise SourceError("stopped while waiting for the provisioning report")
            pause = min(pause * 1.5, 10.0)
            report = self._get(self._url(f"{base}/{report['id']}", [])).json()

    def _download(self, url: str, spool: IO[bytes]) -> None:
        # https only (http to loopback), the token only to Canvas itself, size and time capped.
        http.download(self.session, url, spool, timeout=self.config.timeout_s, credentials_origin=self.config.base_url,
                      auth=self.auth, on_attempt=self._count, deadline_s=self.config.report_timeout_s)


def _poll_pause(report: dict[str, Any], elapsed: float, backoff: float) -> float:
    """How long to wait before asking again: the time Canvas's own progress figure says is left
    (so a finished report is noticed soon), else a growing pause; between 0.25 s and 10 s."""
    progress = report.get("progress")
    if isinstance(progress, int | float) and 0 < progress < 100:
        left = elapsed * (100 - progress) / progress
        return min(10.0, max(0.25, left / 2))
    return backoff


# --- parallel chains with bounded memory ----------------------------------------------------


def parallel(chains: list[Callable[[], Iterator[list[Record]]]], workers: int) -> Iterator[list[Record]]:
    """Run each chain (a paged crawl) on a pool; yield their pages as they come, in this thread.

    The queue is bounded, so a slow consumer (SQLite) holds the crawl back instead of letting
    pages pile up in memory. The first failure stops every chain and is raised here.
    """
    pages: queue.Queue[Any] = queue.Queue(maxsize=workers * 2)
    stop = threading.Event()

    def run(chain: Callable[[], Iterator[list[Record]]]) -> None:
        try:
            for page in chain():
                if stop.is_set():
                    return
                _put(pages, page, stop)
            _put(pages, DONE, stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            _put(pages, exc, stop)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="canvas")
    try:
        for chain in chains:
            pool.submit(run, chain)
        left = len(chains)
        while left:
            item = pages.get()
            if item is DONE:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def _put(pages: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            pages.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


class Budget:
    """How many requests may be in flight on this token now: AIMD on Canvas's throttle signals."""

    def __init__(self, limit: int):
        self.max = float(limit)
        self.limit = float(limit)
        self.in_flight = 0
        self.throttles = 0
        self.cost = 0.0  # the sum of X-Request-Cost: what this run took from the token's quota
        self._cond = threading.Condition()

    def __enter__(self) -> Budget:
        with self._cond:
            while self.in_flight >= max(1, int(self.limit)):
                self._cond.wait()
            self.in_flight += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self.in_flight -= 1
            self._cond.notify()

    def observe(self, remaining: str | None, cost: str | None = None) -> None:
        value = _float(remaining)
        with self._cond:
            self.cost += _float(cost) or 0.0
            if value is None:
                return
            if value < LOW_REMAINING:
                self.limit = max(1.0, self.limit - 1)
            elif value > HIGH_REMAINING and self.limit < self.max:
                self.limit = min(self.max, self.limit + 0.2)
                self._cond.notify_all()

    def throttled(self) -> None:
        with self._cond:
            self.throttles += 1
            self.limit = max(1.0, self.limit / 2)
        log.info("canvas.throttled", concurrency=int(self.limit))


class _EmailWatch:
    """Notices an account where no user has an e-mail: the key drops include[] (scoped tokens)."""

    def __init__(self) -> None:
        self.users = 0
        self.with_email = 0

    def see(self, record: Record) -> Record:
        if isinstance(record, User):
            self.users += 1
            self.with_email += record.email is not None
        return record

    def report(self) -> None:
        if self.users and not self.with_email:
            log.warning("canvas.no_emails", users=self.users,
                        hint="no user came with an e-mail: tick 'Allow Include Parameters' on the developer key")


# --- mapping (SPEC §4, Canvas column) -------------------------------------------------------


def _map(entity: Entity, mapper: Callable[[dict[str, Any]], Record], item: Any) -> Record:
    return map_record(entity, mapper, item, lambda fields: _sid(fields.get("id")))


def _course(item: dict[str, Any]) -> Record:
    source_id = _required_id(item, "id")
    state = item.get("workflow_state")
    if not isinstance(state, str):
        raise ValueError("course has no workflow_state")
    active = state in IN_SCOPE_COURSES
    title = _text(item, "name")
    if active and not title:
        raise ValueError("course has no name")
    return Course(source_id=source_id, title=title or "", active=active, code=_text(item, "course_code"),
                  external_id=_text(item, "sis_course_id"), lms_id=source_id, status=state)


def _user(item: dict[str, Any]) -> Record:
    return _user_record(_required_id(item, "id"), item)


def _user_record(source_id: str, fields: dict[str, Any]) -> User:
    """The one mapping of a Canvas user, whether the crawl or the report read it: every text goes
    through ``text_field``, so switching paths never turns the same person into an update.
    ``fields`` has the API's names; the report's ``first_name``/``last_name`` serve only when
    there is no ``sortable_name`` or ``name``."""
    sortable, name = _text(fields, "sortable_name"), _text(fields, "name")
    if sortable or name:
        first, last = split_name(sortable, name)
    else:
        first, last = _text(fields, "first_name") or "", _text(fields, "last_name") or ""
    if not first:
        raise ValueError("user has no name")
    return User(source_id=source_id, first_name=first, last_name=last or first, active=True,
                email=_text(fields, "email"), external_id=_text(fields, "sis_user_id"), lms_id=source_id)


def _enrollments(page: list[Any], course_id: str) -> list[Record]:
    records: list[Record] = []
    for item in page:
        if isinstance(item, dict) and item.get("type") == TEST_STUDENT:
            continue  # the course's Test Student: never provisioned, not an error
        record = _map("enrollment", lambda e: _enrollment(e, course_id), item)
        if record is not None:
            records.append(record)
    return records


def _enrollment(item: dict[str, Any], course_id: str) -> Record:
    source_id = _required_id(item, "id")
    kind = item.get("type")
    if kind not in TYPE_ROLES:
        raise ValueError(f"unknown enrollment type {kind!r}")
    user_id = _sid(item.get("user_id")) or _sid((item.get("user") or {}).get("id"))
    if not user_id:
        raise ValueError("enrollment has no user_id")
    # A cross-listed section's enrollment names the course it now lives in; trust that over the URL.
    course = _sid(item.get("course_id")) or course_id
    return Enrollment(source_id=source_id, course_id=course, user_id=user_id, role=TYPE_ROLES[kind],
                      active=item.get("enrollment_state") == "active", status=_text(item, "enrollment_state"))


def split_name(sortable: str | None, name: str | None) -> tuple[str, str]:
    """SPEC §4: ``sortable_name`` split at the first ", " (last, first); without a comma, ``name``
    split at its last space; one word serves as both."""
    if sortable and ", " in sortable:
        last, first = sortable.split(", ", 1)
        if first.strip() and last.strip():
            return first.strip(), last.strip()
    whole = (name or sortable or "").strip()
    if " " in whole:
        first, last = whole.rsplit(" ", 1)
        return first.strip(), last.strip()
    return whole, whole


# --- report CSV -----------------------------------------------------------------------------

REPORT_ROLES = {"student": "StudentEnrollment", "teacher": "TeacherEnrollment", "ta": "TaEnrollment",
                "designer": "DesignerEnrollment", "observer": "ObserverEnrollment"}
REPORT_BATCH = 1000


def _report_records(spool: IO[bytes], course_ids: set[str], roles: set[str]) -> Iterator[list[Record]]:
    try:
        archive = zipfile.ZipFile(spool)
    except zipfile.BadZipFile:
        raise SourceError("the provisioning report is not a zip of CSV files") from None
    with archive:
        names = {Path(n).name: n for n in archive.namelist()}
        for required in ("users.csv", "enrollments.csv"):
            if required not in names:
                raise SourceError(f"the provisioning report has no {required}")
        yield from _csv_batches(archive, names["users.csv"], _report_user)
        yield from _csv_batches(archive, names["enrollments.csv"],
                                lambda row: _report_enrollment(row, course_ids, roles))


def _csv_batches(archive: zipfile.ZipFile, name: str,
                 mapper: Callable[[dict[str, str]], Record | None]) -> Iterator[list[Record]]:
    entity: Entity = "user" if name.endswith("users.csv") else "enrollment"
    with archive.open(name) as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
        batch: list[Record] = []
        for row in reader:
            try:
                record = mapper(row)
            except ValueError as exc:
                record = RecordError(entity, row.get("canvas_user_id" if entity == "user" else "canvas_course_id")
                                     or "", str(exc))
            if record is not None:
                batch.append(record)
            if len(batch) >= REPORT_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch


def _report_user(row: dict[str, str]) -> Record | None:
    source_id = (row.get("canvas_user_id") or "").strip()
    if not source_id.isdigit():
        raise ValueError(f"users.csv row has no canvas_user_id ({source_id!r})")
    if (row.get("status") or "active") != "active":
        return None
    # The report's columns under the API's names: one mapping for both paths.
    return _user_record(source_id, {"sortable_name": row.get("sortable_name"), "name": row.get("full_name"),
                                    "first_name": row.get("first_name"), "last_name": row.get("last_name"),
                                    "email": row.get("email"), "sis_user_id": row.get("user_id")})


def _report_enrollment(row: dict[str, str], course_ids: set[str], roles: set[str]) -> Record | None:
    course_id = (row.get("canvas_course_id") or "").strip()
    user_id = (row.get("canvas_user_id") or "").strip()
    if course_id not in course_ids or row.get("status") != "active":
        return None  # a course out of scope (term, sub-account, state) or an enrollment not active
    kind = row.get("base_role_type") or REPORT_ROLES.get((row.get("role") or "").lower(), "")
    if kind == TEST_STUDENT:
        return None
    if kind not in TYPE_ROLES:
        raise ValueError(f"unknown enrollment role {row.get('role')!r}")
    if TYPE_ROLES[kind] not in roles:
        return None
    if not user_id.isdigit():
        raise ValueError("enrollments.csv row has no canvas_user_id")
    # The report has no enrollment id; the section makes a multi-section student's rows distinct.
    source_id = f"{course_id}:{user_id}:{row.get('canvas_section_id') or ''}:{kind}"
    return Enrollment(source_id=source_id, course_id=course_id, user_id=user_id, role=TYPE_ROLES[kind],
                      active=True)


# --- values ---------------------------------------------------------------------------------


def _sid(value: Any) -> str | None:
    """Canvas ids are integers, or strings with ``Accept: application/json+canvas-string-ids``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip().isdigit():
        return value.strip()
    return None


def _required_id(item: dict[str, Any], key: str) -> str:
    value = _sid(item.get(key))
    if value is None:
        raise ValueError(f"record has no valid {key} ({item.get(key)!r})")
    return value


def _text(item: dict[str, Any], key: str) -> str | None:
    return text_field(item, key)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _path_id(value: str) -> str:
    return urllib.parse.quote(value, safe=":")
