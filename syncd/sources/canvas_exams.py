"""Canvas exams (SPEC §7): classic quizzes and New Quizzes of one course, as mapped exams.

These functions read through a :class:`CanvasReader`: the source's own request, next-link and URL
helpers (``CanvasSource._get``, ``._next``, ``._url``), so that exam requests share the crawl's
token, per-token throttle budget, retries, host check and pagination-loop guard.

Per course in scope: one paged request for classic quizzes (404 when the Quizzes tab is off:
no quizzes, not an error); with ``new_quizzes``, one for the course's New Quiz assignments
(``override_assignment_dates=false``: base dates, not the admin's override-skewed view), and one
for their settings on the quiz API's own base path, only when the course has any. Override
counts (students with their own window or extra time) cost one or two requests per exam and are
read only when asked for.
"""

from __future__ import annotations

import dataclasses
import zoneinfo
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
import structlog

from syncd import exams, http
from syncd.exams import CourseWindow, Exam
from syncd.exams_config import ExamsConfig
from syncd.model import RecordError
from syncd.sources import SourceError

if TYPE_CHECKING:
    from syncd.sources.canvas import CanvasSource

log = structlog.get_logger("syncd.canvas")

# What the developer key must allow, on top of the roster's scopes, when exams are on.
CLASSIC_SCOPES = ("url:GET|/api/v1/courses/:course_id/quizzes",)
OVERRIDE_SCOPES = (
    "url:GET|/api/v1/courses/:course_id/quizzes/:quiz_id/submissions",  # extra time (quiz extensions)
    "url:GET|/api/v1/courses/:course_id/assignments/:assignment_id/overrides",  # students' own windows
)
NEW_QUIZ_SCOPES = (
    "url:GET|/api/v1/courses/:course_id/assignments",
    "url:GET|/api/quiz/v1/courses/:course_id/quizzes",
    "url:GET|/api/quiz/v1/courses/:course_id/quizzes/:assignment_id",
)

Mapped = Exam | RecordError


def scopes(config: ExamsConfig | None) -> tuple[str, ...]:
    """The extra scopes exams need: nothing when exams are off; New Quiz endpoints only with them."""
    if config is None:
        return ()
    return CLASSIC_SCOPES + OVERRIDE_SCOPES + (NEW_QUIZ_SCOPES if config.new_quizzes else ())


@dataclass(frozen=True)
class CanvasReader:
    get: Callable[[str], requests.Response]
    next_link: Callable[[requests.Response, set[str]], str]
    url: Callable[[str, Iterable[tuple[str, str]]], str]
    page_size: int = 100

    @classmethod
    def of(cls, source: CanvasSource) -> CanvasReader:
        return cls(source._get, source._next, source._url, source.config.page_size)

    def pages(self, path: str, params: Iterable[tuple[str, str]] = (), envelope: str | None = None
              ) -> Iterator[list[Any]]:
        """Pages of one collection (a JSON list, or ``{envelope: [...]}``), rel="next" only."""
        url = self.url(path, [*params, ("per_page", str(self.page_size))])
        seen: set[str] = set()
        while url:
            response = self.get(url)
            try:
                body = response.json()
            except ValueError:
                raise SourceError(f"{http.redact_url(url)}: response is not JSON") from None
            page = (body.get(envelope) if isinstance(body, dict) else None) if envelope else body
            if not isinstance(page, list):
                raise SourceError(f"{http.redact_url(url)}: expected a list"
                                  + (f" in '{envelope}'" if envelope else ""))
            yield page
            url = self.next_link(response, seen)


def course_exams(reader: CanvasReader, course_id: str, course: CourseWindow, config: ExamsConfig,
                 zone: zoneinfo.ZoneInfo | None = None, count_overrides: bool = False) -> Iterator[list[Mapped]]:
    """Every selected exam of one course, page by page: classic quizzes, then New Quizzes."""
    yield from classic_quizzes(reader, course_id, course, config, zone, count_overrides)
    if config.new_quizzes:
        yield from new_quizzes(reader, course_id, course, config, zone, count_overrides)


def classic_quizzes(reader: CanvasReader, course_id: str, course: CourseWindow, config: ExamsConfig,
                    zone: zoneinfo.ZoneInfo | None = None, count_overrides: bool = False
                    ) -> Iterator[list[Mapped]]:
    """``GET /api/v1/courses/:id/quizzes``: active quizzes only (a deleted one is simply absent)."""
    try:
        for page in reader.pages(f"/api/v1/courses/{course_id}/quizzes"):
            records = []
            for item in page:
                record = exams.classic_quiz(item, course_id, course, config, zone)
                if isinstance(record, Exam) and record.published and count_overrides:
                    record = _counted(record, override_students(reader, course_id, item))
                if record is not None:
                    records.append(record)
            yield records
    except http.RejectedError as exc:
        if exc.status != 404:
            raise
        # Canvas answers 404 when the course's Quizzes tab is hidden: the course has no quizzes.
        log.debug("canvas.quizzes_unavailable", course_id=course_id)


def new_quizzes(reader: CanvasReader, course_id: str, course: CourseWindow, config: ExamsConfig,
                zone: zoneinfo.ZoneInfo | None = None, count_overrides: bool = False
                ) -> Iterator[list[Mapped]]:
    """New Quizzes: assignments with ``is_quiz_lti_assignment`` (a key Canvas sends only when true),
    their settings from the quiz API (a quiz without settings is mapped with the defaults)."""
    params = [("override_assignment_dates", "false"), ("new_quizzes", "true")]
    assignments = [item for page in reader.pages(f"/api/v1/courses/{course_id}/assignments", params)
                   for item in page if isinstance(item, dict) and item.get("is_quiz_lti_assignment") is True]
    if not assignments:
        return
    quizzes = quiz_settings(reader, course_id)
    records: list[Mapped] = []
    for assignment in assignments:
        raw_id = str(assignment.get("id"))
        quiz = quizzes.get(raw_id) if quizzes is not None else None
        if quiz is None and quizzes is not None:
            quiz = _one_quiz(reader, course_id, raw_id)  # not in the list (another page size?): ask for it
        record = exams.new_quiz(assignment, quiz, course_id, course, config, zone)
        if isinstance(record, Exam) and record.published and count_overrides:
            record = _counted(record, override_students(reader, course_id, {"assignment_id": raw_id,
                                                                             "has_overrides": assignment.get(
                                                                                 "has_overrides", True)}))
        if record is not None:
            records.append(record)
    yield records


def quiz_settings(reader: CanvasReader, course_id: str) -> dict[str, dict[str, Any]] | None:
    """The course's New Quizzes by assignment id (strings), from the quiz API's list, which lives
    on its own base path (``/api/quiz/v1``) with its own Link paging; None when that API is absent."""
    found: dict[str, dict[str, Any]] = {}
    try:
        for page in reader.pages(f"/api/quiz/v1/courses/{course_id}/quizzes"):
            for quiz in page:
                if isinstance(quiz, dict) and quiz.get("id") is not None:
                    found[str(quiz["id"])] = quiz
    except http.RejectedError as exc:
        if exc.status != 404:
            raise
        # Debug: with New Quizzes off instance-wide this is every course; the engine sums it up.
        log.debug("canvas.quiz_api_unavailable", course_id=course_id,
                 consequence="New Quizzes are mapped without their settings (time limit, access code)")
        return None
    return found


def _one_quiz(reader: CanvasReader, course_id: str, assignment_id: str) -> dict[str, Any] | None:
    try:
        body = reader.get(reader.url(f"/api/quiz/v1/courses/{course_id}/quizzes/{assignment_id}", [])).json()
    except http.RejectedError as exc:
        if exc.status == 404:
            return None
        raise
    except ValueError:
        raise SourceError(f"the quiz API answered for quiz {assignment_id} with a body that is not JSON") from None
    return body if isinstance(body, dict) else None


def override_students(reader: CanvasReader, course_id: str, item: dict[str, Any]) -> int:
    """How many students have an accommodation to mirror: their own window (an ad-hoc override of
    the quiz's assignment) or extra time (a classic quiz extension). Skips the overrides request
    when Canvas says there are none (only the base entry in ``all_dates``; ``has_overrides``)."""
    students: set[str] = set()
    assignment_id = item.get("assignment_id")
    dates = item.get("all_dates")
    hinted = item.get("has_overrides", True) and not (
        isinstance(dates, list) and all(isinstance(d, dict) and d.get("base") for d in dates))
    if assignment_id is not None and hinted:
        for page in reader.pages(f"/api/v1/courses/{course_id}/assignments/{assignment_id}/overrides"):
            for override in page:
                if isinstance(override, dict):
                    students.update(str(s) for s in override.get("student_ids") or ())
    if "id" in item and "quiz_type" in item:  # a classic quiz: extensions show on its submissions
        for page in reader.pages(f"/api/v1/courses/{course_id}/quizzes/{item['id']}/submissions",
                                 envelope="quiz_submissions"):
            for submission in page:
                if isinstance(submission, dict) and (submission.get("extra_time") or 0) > 0:
                    students.add(str(submission.get("user_id")))
    return len(students)


def _counted(exam: Exam, count: int) -> Exam:
    return dataclasses.replace(exam, override_count=count)
