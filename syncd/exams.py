"""Exams (SPEC §7): source assessments mapped to provision ``exam`` objects, as pure functions.

A Canvas classic quiz, a New Quiz (its assignment plus its quiz-API settings) or a OneRoster
lineItem becomes an :class:`Exam`, a :class:`~syncd.model.RecordError` (it is in scope but cannot
be mapped: no window, no time limit and no default, no password and no default), or None (the
tenant's ``select`` does not pick it). :func:`exam_body` builds the provision object.

The password is a secret of the institution: it lives in memory only. What is stored and
compared is :func:`password_digest`, an HMAC-SHA256 under a per-install key kept owner-only in
``state_dir/credentials/`` (:func:`password_key`), so a change is detected and a stolen state file
reveals nothing, not even which exams share a password with another install's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import html.parser
import math
import os
import re
import secrets
import unicodedata
import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

from syncd.entities import Entity
from syncd.exams_config import ExamsConfig
from syncd.model import RecordError
from syncd.sources import CONTROL, MAX_TEXT, text_field

ENTITY: Entity = "exam"
KEY_FILE = "exam-password.key"
DIGEST_PREFIX = "hmac-sha256:"
DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# What a window guard protects: students may have booked sessions against these (exams.md §4).
GUARDED = ("configuration.access.open", "configuration.access.close", "configuration.duration")


@dataclass(frozen=True, slots=True)
class Exam:
    """One provision exam, mapped. Times are UTC ``YYYY-MM-DDTHH:MM:SSZ``."""

    source_id: str  # "quiz:123" | "assignment:456" | "lineitem:abc" (also exam.ids.external)
    course_id: str
    title: str
    published: bool
    description: str | None = None
    practice: bool = False
    url: str | None = None
    open: str | None = None
    close: str | None = None
    duration_min: int | None = None
    password: str | None = field(default=None, repr=False)  # in memory only, never stored
    attempts: int | None = None  # None: unlimited or unknown, omitted from the body
    override_count: int = 0  # students with their own window or extra time (accommodations)


@dataclass(frozen=True, slots=True)
class CourseWindow:
    """The course's own dates (raw source values): the window of an exam that sets none."""

    start: str | None = None
    end: str | None = None


# --- times ---------------------------------------------------------------------------------


def utc(value: Any, zone: zoneinfo.ZoneInfo | None = None, end_of_day: bool = False) -> str | None:
    """A source time as UTC ``Z`` with whole seconds; None when absent.

    Accepts ``Z``, offsets (``-06:00``), fractional seconds, and (OneRoster) a bare date or a
    time without offset, read in the tenant's ``time_zone`` (else UTC). A bare date that closes a
    window means the end of that day, not its first second.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a date-time")
    text = value.strip()
    if not text:
        return None
    try:
        if DATE_ONLY.match(text):
            day = datetime.fromisoformat(text).date()
            moment = datetime.combine(day + timedelta(days=1), time()) - timedelta(seconds=1) if end_of_day \
                else datetime.combine(day, time())
        else:
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone or UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# --- text ----------------------------------------------------------------------------------


class _Text(html.parser.HTMLParser):
    BLOCKS = {"p", "br", "div", "li", "ul", "ol", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6",
              "blockquote", "pre", "hr", "table", "section", "article"}
    HIDDEN = {"script", "style", "head", "title", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def clean_text(value: str) -> str | None:
    """As ``text_field`` cleans: control characters out, whitespace collapsed, NFC. A description
    longer than a mapped field may be is cut (with "…"), not failed: it is prose, not an id."""
    text = " ".join(unicodedata.normalize("NFC", CONTROL.sub(" ", value)).split())
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT - 1].rstrip() + "…"
    return text or None


def html_text(value: Any) -> str | None:
    """A Canvas rich-text field (HTML) as plain text."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"description is not a string ({type(value).__name__})")
    parser = _Text()
    parser.feed(value)
    parser.close()
    return clean_text("".join(parser.parts))


def _title(item: dict[str, Any], key: str) -> str:
    """The title, cleaned as every mapped text is (text_field); "" when missing, so that selection
    can look at it before a missing title makes a selected exam fail."""
    return text_field(item, key) or ""


def _require(title: str, key: str) -> str:
    if not title:
        raise ValueError(f"has no {key}")
    return title


def _id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


# --- selection -----------------------------------------------------------------------------


def selected(config: ExamsConfig, raw_id: str, source_id: str, title: str, has_code: bool) -> bool:
    """Whether the tenant's ``select`` picks this assessment (published or not)."""
    if config.select == "all":
        return True
    if config.select == "access_code":
        return has_code
    if config.select == "title":
        return bool(config.title_pattern and config.title_pattern.search(title))
    return raw_id in config.ids or source_id in config.ids


# --- Canvas classic quiz -------------------------------------------------------------------


def classic_quiz(item: Any, course_id: str, course: CourseWindow, config: ExamsConfig,
                 zone: zoneinfo.ZoneInfo | None = None) -> Exam | RecordError | None:
    """``GET /api/v1/courses/:id/quizzes`` item (SPEC §7, classic column)."""
    if not isinstance(item, dict):
        return RecordError(ENTITY, "", f"quiz is not an object: {type(item).__name__}")
    raw_id = _id(item.get("id"))
    if raw_id is None:
        return RecordError(ENTITY, "", f"quiz has no valid id ({item.get('id')!r})")
    source_id = f"quiz:{raw_id}"
    try:
        title = _title(item, "title")
        code = item.get("access_code")
        has_code = bool(code) or item.get("has_access_code") is True
        if not selected(config, raw_id, source_id, title, has_code):
            return None
        _require(title, "title")
        published = item.get("published") is True
        password = code if isinstance(code, str) and code else None
        if published and password is None and item.get("has_access_code") is True:
            raise ValueError("has an access code that this token cannot read (its user needs the right to "
                             "manage or grade the course)")
        open_, close = base_dates(item, course, zone)
        attempts = item.get("allowed_attempts")
        return _finish(config, Exam(
            source_id=source_id, course_id=course_id, title=title, published=published,
            description=html_text(item.get("description")), practice=item.get("quiz_type") == "practice_quiz",
            url=_url(item.get("html_url")), open=open_, close=close,
            duration_min=_minutes(item.get("time_limit"), "time_limit"), password=password,
            attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool) and attempts > 0
            else None))
    except ValueError as exc:
        return RecordError(ENTITY, source_id, f"quiz {raw_id} {exc}")


def base_dates(item: dict[str, Any], course: CourseWindow, zone: zoneinfo.ZoneInfo | None = None
               ) -> tuple[str | None, str | None]:
    """The window everyone gets: the ``base: true`` entry of ``all_dates`` over the top-level
    dates (which an admin token may see override-skewed), else the course's start and end."""
    dates: dict[str, Any] = item
    for entry in item.get("all_dates") or ():
        if isinstance(entry, dict) and entry.get("base") is True:
            dates = entry
            break
    open_ = utc(dates.get("unlock_at"), zone) or utc(course.start, zone)
    close = utc(dates.get("lock_at"), zone, end_of_day=True) or utc(course.end, zone, end_of_day=True)
    return open_, close


def _minutes(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"has a {key} that is not a number ({value!r})")
    return math.ceil(value) if value > 0 else None


def _url(value: Any) -> str | None:
    return value if isinstance(value, str) and value.startswith(("https://", "http://")) else None


# --- Canvas New Quiz -----------------------------------------------------------------------


def new_quiz(assignment: Any, quiz: dict[str, Any] | None, course_id: str, course: CourseWindow,
             config: ExamsConfig, zone: zoneinfo.ZoneInfo | None = None) -> Exam | RecordError | None:
    """An assignment with ``is_quiz_lti_assignment`` (read with ``override_assignment_dates=false``)
    and its quiz-API object (``/api/quiz/v1/courses/:id/quizzes/:assignment_id``), which may be
    missing or carry ``quiz_settings: null``."""
    if not isinstance(assignment, dict):
        return RecordError(ENTITY, "", f"assignment is not an object: {type(assignment).__name__}")
    raw_id = _id(assignment.get("id"))
    if raw_id is None:
        return RecordError(ENTITY, "", f"assignment has no valid id ({assignment.get('id')!r})")
    source_id = f"assignment:{raw_id}"
    try:
        title = _title(assignment, "name")
        settings = (quiz or {}).get("quiz_settings") or {}
        if not isinstance(settings, dict):
            raise ValueError("has quiz_settings that are not an object")
        code = settings.get("student_access_code") if settings.get("require_student_access_code") else None
        if not selected(config, raw_id, source_id, title, bool(code)):
            return None
        _require(title, "name")
        open_, close = base_dates(assignment, course, zone)
        return _finish(config, Exam(
            source_id=source_id, course_id=course_id, title=title, published=assignment.get("published") is True,
            description=html_text(assignment.get("description")), practice=False,
            url=_url(assignment.get("html_url")), open=open_, close=close, duration_min=_quiz_minutes(settings),
            password=code if isinstance(code, str) and code else None, attempts=_quiz_attempts(settings)))
    except ValueError as exc:
        return RecordError(ENTITY, source_id, f"New Quiz {raw_id} {exc}")


def _quiz_minutes(settings: dict[str, Any]) -> int | None:
    """``session_time_limit_in_seconds`` when ``has_time_limit``: seconds, rounded up to minutes."""
    if settings.get("has_time_limit") is False:
        return None
    seconds = _minutes(settings.get("session_time_limit_in_seconds"), "session_time_limit_in_seconds")
    return math.ceil(seconds / 60) if seconds else None


def _quiz_attempts(settings: dict[str, Any]) -> int | None:
    """``multiple_attempts.max_attempts`` when several attempts are limited; one attempt otherwise;
    unlimited attempts are omitted, as a classic quiz's -1 is."""
    attempts = settings.get("multiple_attempts")
    if not isinstance(attempts, dict) or not attempts.get("multiple_attempts_enabled"):
        return 1
    limit = attempts.get("max_attempts")
    if attempts.get("attempt_limit") is False or limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"has max_attempts that is not a positive integer ({limit!r})")
    return limit


# --- OneRoster lineItem --------------------------------------------------------------------


def line_item(item: Any, config: ExamsConfig, zone: zoneinfo.ZoneInfo | None = None
              ) -> Exam | RecordError | None:
    """A OneRoster 1.1 ``/lineItems`` or 1.2 gradebook lineItem: a weak source (exams.md §3), whose
    duration and password come from the tenant's defaults and whose URL from ``url_template``."""
    if not isinstance(item, dict):
        return RecordError(ENTITY, "", f"lineItem is not an object: {type(item).__name__}")
    raw_id = _id(item.get("sourcedId"))
    if raw_id is None:
        return RecordError(ENTITY, "", "lineItem has no sourcedId")
    source_id = f"lineitem:{raw_id}"
    try:
        title = _title(item, "title")
        if not selected(config, raw_id, source_id, title, False):
            return None
        _require(title, "title")
        klass = item.get("class")
        class_id = _id(klass.get("sourcedId") if isinstance(klass, dict) else klass)
        if class_id is None:
            raise ValueError("has no class")
        status = item.get("status") or "active"
        description = item.get("description")
        if description is not None and not isinstance(description, str):
            raise ValueError("has a description that is not a string")
        url = config.url_template.format(id=raw_id, class_id=class_id) if config.url_template else None
        return _finish(config, Exam(
            source_id=source_id, course_id=class_id, title=title, published=status == "active",
            description=clean_text(description) if description else None, url=url,
            open=utc(item.get("assignDate"), zone), close=utc(item.get("dueDate"), zone, end_of_day=True),
            attempts=1))
    except ValueError as exc:
        return RecordError(ENTITY, source_id, f"lineItem {raw_id} {exc}")


# --- defaults and required fields ------------------------------------------------------------


def _finish(config: ExamsConfig, exam: Exam) -> Exam:
    """Apply the tenant's defaults; raise ValueError when a published exam still lacks what the
    target requires. An unpublished exam is out of scope, so it is never an error."""
    duration = exam.duration_min or config.default_duration_min
    password = exam.password or config.default_password
    if exam.published:
        if not exam.open or not exam.close:
            missing = " and ".join(n for n, v in (("opening", exam.open), ("closing", exam.close)) if not v)
            raise ValueError(f"has no {missing} date and its course has none either")
        if parse_utc(exam.close) <= parse_utc(exam.open):
            raise ValueError(f"closes ({exam.close}) before it opens ({exam.open})")
        if duration is None:
            raise ValueError("has no time limit and exams.default_duration_min is not set")
        if not password:
            raise ValueError("has no access code and exams.default_password is not set")
        if not exam.url:
            raise ValueError("has no URL" + (" (set exams.url_template)" if exam.source_id.startswith("lineitem:")
                                             else ""))
    return dataclasses.replace(exam, duration_min=duration, password=password)


# --- the provision body --------------------------------------------------------------------


def exam_body(exam: Exam, config: ExamsConfig) -> dict[str, Any]:
    """The provision ``exam`` object with its primary ``configuration`` (SPEC §7), password in clear:
    for the request only. Store and compare :func:`stored_body` instead."""
    if not (exam.url and exam.open and exam.close and exam.duration_min and exam.password):
        raise ValueError(f"exam {exam.source_id} is not complete enough to provision")
    configuration: dict[str, Any] = {
        "type": "primary", "url": exam.url, "access": {"open": exam.open, "close": exam.close},
        "duration": exam.duration_min, "password": exam.password, "proctorTypes": config.proctor_types,
    }
    if exam.attempts is not None:
        configuration["attempts"] = exam.attempts
    body: dict[str, Any] = {"ids": {"external": exam.source_id}, "title": exam.title}
    if exam.description:
        body["description"] = exam.description
    body |= {"type": "online", "practice": exam.practice, "limitedScope": config.limited_scope,
             "configuration": configuration}
    return body


def stored_body(body: dict[str, Any], key: bytes) -> dict[str, Any]:
    """``body`` with the password replaced by its keyed digest: what may be hashed, stored, diffed."""
    configuration = dict(body["configuration"])
    configuration["password"] = password_digest(key, configuration["password"])
    return {**body, "configuration": configuration}


def changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Field-level differences of two stored bodies, for a dry run; a password only says "changed"."""
    before, after = _flat(old or {}), _flat(new)
    lines = []
    for path in sorted(before.keys() | after.keys()):
        if before.get(path) == after.get(path):
            continue
        if path.endswith(".password"):
            lines.append(f"{path}: changed")
        else:
            lines.append(f"{path}: {before.get(path)!r} -> {after.get(path)!r}")
    return lines


def guarded_change(old: dict[str, Any] | None, new: dict[str, Any], now: datetime) -> list[str]:
    """The window or duration changes of an exam whose acknowledged window has opened (to hold);
    empty when nothing needs holding."""
    if not old:
        return []
    before, after = _flat(old), _flat(new)
    opened = before.get("configuration.access.open")
    if not isinstance(opened, str) or parse_utc(opened) > now:
        return []
    return [f"{path.rsplit('.', 1)[-1]}: {before.get(path)!r} -> {after.get(path)!r}"
            for path in GUARDED if before.get(path) != after.get(path)]


def _flat(body: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in body.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "proctorTypes":
            flat |= _flat(value, path + ".")
        else:
            flat[path] = value
    return flat


# --- the password's keyed hash -------------------------------------------------------------


def password_digest(key: bytes, password: str) -> str:
    return DIGEST_PREFIX + hmac.new(key, password.encode("utf-8"), hashlib.sha256).hexdigest()


def password_key(state_dir: Path) -> bytes:
    """This install's HMAC key: created once (32 random bytes, owner-only), then read.

    Two processes that start at once both end with the first key written: the file is linked
    into place only if absent, so no run ever hashes with a key that another run replaced.
    """
    directory = state_dir / "credentials"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / KEY_FILE
    if not path.exists():
        tmp = directory / f".{KEY_FILE}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race: use its key
        finally:
            tmp.unlink()
    text = path.read_text(encoding="ascii").strip()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ValueError(f"{path} is not an exam password key (64 hex digits); remove it to make a new one")
    return bytes.fromhex(text)
