"""Classic quizzes and New Quizzes for the fake Canvas, with the quirks of reference/exams.md §6.

Seeded per course: classic quizzes (``/api/v1/courses/:id/quizzes``) and New Quizzes (assignments
with ``is_quiz_lti_assignment``, settings on ``/api/quiz/v1/…``), beside ordinary assignments.

Quirks: ``access_code`` only for a token that may manage the course (``token_can_manage``);
``all_dates`` with a ``base: true`` entry plus override entries, and (an older serializer) top-level
dates skewed by an override; ``time_limit: null``; ``allowed_attempts: -1``; ``lock_at: null``;
unpublished quizzes; ``Z`` and ``-06:00`` stamps; a local 23:59 stored as next-day UTC; no
``updated_at``; deleted quizzes absent from lists and 404 by id; a course whose Quizzes tab is off
(404 ``{message}``); ``is_quiz_lti_assignment`` absent when false; ``override_assignment_dates``
(default true: the admin caller sees an ad-hoc override's dates); ``new_quizzes=true`` filter;
``all_dates_count`` at 25+ overrides; the quiz API on its own base path with its own Link paging,
string ids, time limits in seconds and some ``quiz_settings: null``; quiz submissions wrapped in
``{"quiz_submissions": […]}`` with ``settings_only`` extension rows.

:func:`expected_exams` is written from SPEC §7 without syncd's code, for end-to-end comparisons.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from syncd.sandbox.server import Request, Response

SCOPES = {
    "quizzes": "url:GET|/api/v1/courses/:course_id/quizzes",
    "quiz": "url:GET|/api/v1/courses/:course_id/quizzes/:id",
    "quiz_overrides": "url:GET|/api/v1/courses/:course_id/quizzes/assignment_overrides",
    "quiz_submissions": "url:GET|/api/v1/courses/:course_id/quizzes/:quiz_id/submissions",
    "assignments": "url:GET|/api/v1/courses/:course_id/assignments",
    "assignment_overrides": "url:GET|/api/v1/courses/:course_id/assignments/:assignment_id/overrides",
    "new_quizzes": "url:GET|/api/quiz/v1/courses/:course_id/quizzes",
    "new_quiz": "url:GET|/api/quiz/v1/courses/:course_id/quizzes/:assignment_id",
}
CENTRAL = timedelta(hours=-6)  # the seeded institution's offset (America/Chicago in winter)
MANY_OVERRIDES = 25  # from here Canvas sends all_dates_count instead of all_dates


def stamp(moment: datetime, local: bool) -> str:
    """A Canvas timestamp: UTC ``Z``, or the same instant at ``-06:00``."""
    if local:
        return (moment + CENTRAL).strftime("%Y-%m-%dT%H:%M:%S") + "-06:00"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class CanvasQuizzes:
    quizzes: dict[int, dict[str, Any]] = field(default_factory=dict)  # classic, by quiz id
    assignments: dict[int, dict[str, Any]] = field(default_factory=dict)  # every assignment, by id
    new_quizzes: dict[int, dict[str, Any]] = field(default_factory=dict)  # quiz API objects, by assignment id
    overrides: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # by assignment id
    submissions: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # by classic quiz id
    tab_disabled: set[int] = field(default_factory=set)  # courses whose Quizzes tab is off
    token_can_manage: bool = True  # False: the token's user may not see access codes
    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    revision: int = 0
    _next_id: int = 9_000_000
    _by_course: dict[Any, dict[int, list[Any]]] = field(default_factory=dict)

    # --- seeding -------------------------------------------------------------------------

    @classmethod
    def generate(cls, courses: dict[int, dict[str, Any]], seed: int = 1, per_course: int = 5,
                 now: datetime | None = None) -> CanvasQuizzes:
        """``per_course`` exams for every course (about 60 % classic), plus an ordinary assignment."""
        rng = random.Random(seed)
        book = cls(now=(now or datetime.now(UTC)).replace(microsecond=0))
        classic = math.ceil(per_course * 0.6)
        n = 0
        for course_id, course in courses.items():
            if course_id % 9 == 4:
                book.tab_disabled.add(course_id)
            if course_id % 4 == 1:
                # Some courses end: a quiz without lock_at closes with the course.
                course["end_at"] = stamp(book.now + timedelta(days=120), local=False)
            for k in range(1, per_course + 1):
                n += 1
                if k <= classic and course_id not in book.tab_disabled:
                    book._classic(course_id, course_id * 100 + k, n, rng)
                elif k > classic:
                    book._new_quiz(course_id, course_id * 100 + 50 + k, n, rng)
            book._assignment(course_id, course_id * 100 + 99, "Reading response", {})
        return book

    def _window(self, n: int) -> tuple[datetime, datetime]:
        # Some windows opened in the past (the guard applies), most are still to come.
        opens = self.now + timedelta(days=(n % 40) - 10, hours=n % 24)
        return opens, opens + timedelta(hours=2 + n % 3)

    def _classic(self, course_id: int, quiz_id: int, n: int, rng: random.Random) -> None:
        opens, closes = self._window(n)
        local = n % 2 == 0
        if n % 13 == 5:
            # Due "23:59" local: stored as the next day in UTC.
            day = (opens + CENTRAL).date()
            closes = datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=UTC) - CENTRAL
        quiz: dict[str, Any] = {
            "id": quiz_id, "course_id": course_id, "title": f"{'Proctored ' if n % 3 else ''}Quiz {n}",
            "html_url": f"/courses/{course_id}/quizzes/{quiz_id}",
            "description": f"<p>Covers <b>chapter {n % 12 + 1}</b> &amp; notes.</p><script>x()</script>",
            "quiz_type": "practice_quiz" if n % 11 == 7 else "assignment",
            "time_limit": None if n % 7 == 3 else 30 + 15 * (n % 5),
            "allowed_attempts": -1 if n % 5 == 2 else 1 + n % 2,
            "access_code": None if n % 6 == 4 else f"code-{rng.randrange(10**6):06d}",
            "published": n % 9 != 5,
            "unlock_at": stamp(opens, local), "lock_at": None if n % 8 == 6 else stamp(closes, not local),
            "due_at": stamp(closes, local), "points_possible": 10.0, "question_count": 10,
            "assignment_id": None if n % 11 == 7 else quiz_id + 5_000_000,
            "one_time_results": False, "ip_filter": None, "version_number": 1,
        }
        quiz["has_access_code"] = quiz["access_code"] is not None
        self.quizzes[quiz_id] = quiz
        if quiz["assignment_id"]:
            self._assignment(course_id, quiz["assignment_id"], quiz["title"],
                             {"is_quiz_assignment": True, "quiz_id": quiz_id, "submission_types": ["online_quiz"]})
        if n % 10 == 1 and quiz["assignment_id"]:
            self.add_override(quiz_id, student_ids=[10_000 + n % 200 + 1], days=2)
        if n % 12 == 2:
            self.add_extension(quiz_id, user_id=10_000 + (n * 7) % 200 + 1, extra_time=30)

    def _new_quiz(self, course_id: int, assignment_id: int, n: int, rng: random.Random) -> None:
        opens, closes = self._window(n)
        body = self._assignment(course_id, assignment_id, f"{'Proctored ' if n % 3 else ''}Final {n}", {
            "is_quiz_lti_assignment": True, "submission_types": ["external_tool"],
            "description": f"<div>Final exam, part {n % 4 + 1}</div>",
            "unlock_at": stamp(opens, n % 2 == 1), "lock_at": stamp(closes, n % 2 == 0), "due_at": stamp(closes, False),
            "published": n % 10 != 4,
        })
        settings: dict[str, Any] | None = {
            "has_time_limit": n % 6 != 1,
            "session_time_limit_in_seconds": (60 + 30 * (n % 3)) * 60 + (30 if n % 5 == 0 else 0),
            "require_student_access_code": n % 4 != 2,
            "student_access_code": f"nq-{rng.randrange(10**6):06d}" if n % 4 != 2 else None,
            "multiple_attempts": ({"multiple_attempts_enabled": True, "attempt_limit": True, "max_attempts": 3}
                                  if n % 10 == 5 else {"multiple_attempts_enabled": False}),
            "calculator_type": "none", "one_at_a_time_type": "none", "shuffle_answers": False,
        }
        if n % 7 == 0:
            settings = None  # a New Quiz whose settings Canvas never filled
        self.new_quizzes[assignment_id] = {
            "id": str(assignment_id), "title": body["name"], "instructions": body["description"],
            "assignment_group_id": str(course_id), "points_possible": 10.0, "due_at": body["due_at"],
            "lock_at": body["lock_at"], "unlock_at": body["unlock_at"], "published": body["published"],
            "grading_type": "points", "quiz_settings": settings,
        }
        if n % 20 == 9:
            self.add_override(assignment_id, student_ids=[10_000 + n % 200 + 1], days=3, assignment=True)

    def _assignment(self, course_id: int, assignment_id: int, name: str, extra: dict[str, Any]) -> dict[str, Any]:
        body = {"id": assignment_id, "course_id": course_id, "name": name, "description": None,
                "html_url": f"/courses/{course_id}/assignments/{assignment_id}", "published": True,
                "workflow_state": "published", "due_at": None, "lock_at": None, "unlock_at": None,
                "submission_types": ["online_text_entry"], "allowed_attempts": -1, "position": len(self.assignments),
                "updated_at": "2026-11-20T10:00:00Z", "only_visible_to_overrides": False, **extra}
        self.assignments[assignment_id] = body
        return body

    def add_override(self, exam_id: int, student_ids: list[int], days: int, assignment: bool = False) -> None:
        """An ad-hoc override (an accommodation): the students' own window, ``days`` later."""
        assignment_id = exam_id if assignment else self.quizzes[exam_id]["assignment_id"]
        source = self.assignments[assignment_id] if assignment else self.quizzes[exam_id]
        shift = timedelta(days=days)
        self._next_id += 1
        override = {"id": self._next_id, "assignment_id": assignment_id, "student_ids": student_ids,
                    "title": f"{len(student_ids)} student(s)",
                    "unlock_at": stamp(_parse(source["unlock_at"]) + shift, False),
                    "lock_at": stamp(_parse(source["lock_at"] or source["due_at"]) + shift, False),
                    "due_at": stamp(_parse(source["due_at"] or source["lock_at"]) + shift, False)}
        if not assignment:
            override["quiz_id"] = exam_id
        self.overrides.setdefault(assignment_id, []).append(override)

    def add_extension(self, quiz_id: int, user_id: int, extra_time: int) -> None:
        self._next_id += 1
        self.submissions.setdefault(quiz_id, []).append({
            "id": self._next_id, "quiz_id": quiz_id, "user_id": user_id, "extra_time": extra_time,
            "extra_attempts": None, "manually_unlocked": None, "workflow_state": "settings_only",
            "attempt": None, "end_at": None, "started_at": None, "finished_at": None})

    # --- mutations between runs ----------------------------------------------------------

    def published_classic(self) -> list[int]:
        return [q for q, v in self.quizzes.items() if v["published"] and not v.get("deleted")]

    def rename(self, quiz_id: int) -> str:
        self.revision += 1
        self.quizzes[quiz_id]["title"] += f" (rev {self.revision})"
        return f"quiz:{quiz_id}"

    def shift_window(self, quiz_id: int, hours: int = 24) -> str:
        quiz = self.quizzes[quiz_id]
        for key in ("unlock_at", "lock_at", "due_at"):
            if quiz[key]:
                quiz[key] = stamp(_parse(quiz[key]) + timedelta(hours=hours), False)
        return f"quiz:{quiz_id}"

    def change_limit(self, quiz_id: int, minutes: int) -> str:
        self.quizzes[quiz_id]["time_limit"] = minutes
        return f"quiz:{quiz_id}"

    def unpublish(self, quiz_id: int) -> str:
        self.quizzes[quiz_id]["published"] = False
        return f"quiz:{quiz_id}"

    def delete(self, quiz_id: int) -> str:
        self.quizzes[quiz_id]["deleted"] = True  # gone from lists, 404 by id
        return f"quiz:{quiz_id}"

    def to_new_quiz(self, quiz_id: int) -> tuple[str, str]:
        """Classic -> New Quiz migration: the classic quiz goes, an assignment with a new id comes."""
        quiz = self.quizzes[quiz_id]
        quiz["deleted"] = True
        self._next_id += 1
        assignment_id = self._next_id
        self._new_quiz(quiz["course_id"], assignment_id, 3, random.Random(assignment_id))
        self.assignments[assignment_id].update(name=quiz["title"], original_quiz_id=quiz_id, published=True)
        self.new_quizzes[assignment_id]["title"] = quiz["title"]
        return f"quiz:{quiz_id}", f"assignment:{assignment_id}"

    # --- HTTP ----------------------------------------------------------------------------

    def route(self, app: Any, request: Request, grant: Any) -> Response | None:
        """The exam endpoints, or None for any other path. ``app`` is the CanvasApp (paging, scopes)."""
        path = request.path.rstrip("/")
        match = re.fullmatch(r"/api/quiz/v1/courses/(\d+)/quizzes(?:/(\d+))?", path)
        if match:
            return self._quiz_api(app, request, grant, int(match[1]), match[2])
        match = re.fullmatch(r"/api/v1/courses/(\d+)/(quizzes|assignments)(?:/([^/]+))?(?:/(\w+))?", path)
        if not match:
            return None
        course_id, kind, item, sub = int(match[1]), match[2], match[3], match[4]
        if course_id not in app.roster.courses:
            return _not_found()
        if kind == "quizzes":
            return self._quizzes(app, request, grant, course_id, item, sub)
        return self._assignments(app, request, grant, course_id, item, sub)

    def _quizzes(self, app: Any, request: Request, grant: Any, course_id: int, item: str | None,
                 sub: str | None) -> Response:
        if course_id in self.tab_disabled:
            return Response(404, {"message": "That page has been disabled for this course"})
        if item is None:
            if not app._scoped(grant, "quizzes"):
                return _unauthorized()
            term = (request.arg("search_term") or "").lower()
            rows = [q for q in self._course_quizzes(course_id) if term in q["title"].lower()]
            return app._numeric_page(request, rows, lambda q: self._quiz_json(request, q))
        if item == "assignment_overrides" and sub is None:
            if not app._scoped(grant, "quiz_overrides"):
                return _unauthorized()
            wanted = set(request.query.get("quiz_assignment_overrides[][quiz_ids][]", []))
            sets = [{"quiz_id": q["id"], "due_dates": self._all_dates(q)[1:], "all_dates": self._all_dates(q)}
                    for q in self._course_quizzes(course_id) if not wanted or str(q["id"]) in wanted]
            return Response(200, {"quiz_assignment_overrides": sets})
        quiz = self.quizzes.get(int(item)) if item.isdigit() else None
        if quiz is None or quiz.get("deleted") or quiz["course_id"] != course_id:
            return _not_found()
        if sub is None:
            return Response(200, self._quiz_json(request, quiz)) if app._scoped(grant, "quiz") else _unauthorized()
        if sub == "submissions":
            if not app._scoped(grant, "quiz_submissions"):
                return _unauthorized()
            rows = self.submissions.get(quiz["id"], [])
            page = app._numeric_page(request, rows)
            return Response(200, {"quiz_submissions": page.body}, page.headers)
        return _not_found()

    def _of_course(self, table: str, course_id: int) -> list[Any]:
        """Rows of ``table`` for one course, from an index rebuilt when rows are added (a scan of
        every course's quizzes per request would make the fake, not syncd, the benchmark)."""
        rows: dict[int, dict[str, Any]] = getattr(self, table)
        key = (table, len(rows))
        if key not in self._by_course:
            index: dict[int, list[Any]] = {}
            for row_id, row in rows.items():
                course = self.assignments[row_id]["course_id"] if table == "new_quizzes" else row["course_id"]
                index.setdefault(course, []).append(row_id if table == "new_quizzes" else row)
            self._by_course[key] = index
        return self._by_course[key].get(course_id, [])

    def _course_quizzes(self, course_id: int) -> list[dict[str, Any]]:
        return [q for q in self._of_course("quizzes", course_id) if not q.get("deleted")]

    def _all_dates(self, quiz: dict[str, Any]) -> list[dict[str, Any]]:
        base = {"base": True, "due_at": quiz["due_at"], "unlock_at": quiz["unlock_at"], "lock_at": quiz["lock_at"]}
        overrides = self.overrides.get(quiz["assignment_id"], []) if quiz["assignment_id"] else []
        return [base] + [{k: o[k] for k in ("id", "title", "due_at", "unlock_at", "lock_at")} for o in overrides]

    def _quiz_json(self, request: Request, quiz: dict[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in quiz.items() if k not in ("course_id", "deleted")}
        body["html_url"] = _absolute(request, quiz["html_url"])
        body["mobile_url"] = body["html_url"] + "?persist_headless=1"
        if not self.token_can_manage:
            body.pop("access_code")  # only a user who may grade or manage the course sees it
        dates = self._all_dates(quiz)
        body["all_dates"] = dates
        if len(dates) > 1:
            # An older serializer shows an admin the override's dates at the top level.
            body.update({k: dates[1][k] for k in ("unlock_at", "lock_at", "due_at")})
        return body

    def _assignments(self, app: Any, request: Request, grant: Any, course_id: int, item: str | None,
                     sub: str | None) -> Response:
        if item is None:
            if not app._scoped(grant, "assignments"):
                return _unauthorized()
            rows = [a for a in self._of_course("assignments", course_id) if not a.get("deleted")]
            if request.arg("new_quizzes") == "true":
                rows = [a for a in rows if a.get("is_quiz_lti_assignment")]
            apply = request.arg("override_assignment_dates", "true") != "false"
            includes = set(request.query.get("include[]", [])) if app._includes(grant) else set()
            return app._numeric_page(request, rows, lambda a: self._assignment_json(request, a, apply, includes))
        assignment = self.assignments.get(int(item)) if item.isdigit() else None
        if assignment is None or assignment.get("deleted") or assignment["course_id"] != course_id:
            return _not_found()
        if sub == "overrides":
            if not app._scoped(grant, "assignment_overrides"):
                return _unauthorized()
            return app._numeric_page(request, self.overrides.get(assignment["id"], []))
        return _not_found()

    def _assignment_json(self, request: Request, assignment: dict[str, Any], apply: bool,
                         includes: set[str]) -> dict[str, Any]:
        body = {k: v for k, v in assignment.items() if k != "deleted"}
        body["html_url"] = _absolute(request, assignment["html_url"])
        overrides = self.overrides.get(assignment["id"], [])
        body["has_overrides"] = bool(overrides)
        if apply and overrides:
            # The admin caller gets every override applied; an ad-hoc one comes first.
            chosen = overrides[0]
            body.update({k: chosen[k] for k in ("unlock_at", "lock_at", "due_at")})
        if "all_dates" in includes:
            if len(overrides) >= MANY_OVERRIDES:
                body["all_dates_count"] = len(overrides) + 1
            else:
                base = {"base": True, **{k: assignment[k] for k in ("due_at", "unlock_at", "lock_at")}}
                body["all_dates"] = [base] + [{k: o[k] for k in ("id", "title", "due_at", "unlock_at", "lock_at")}
                                              for o in overrides]
        return body

    def _quiz_api(self, app: Any, request: Request, grant: Any, course_id: int, item: str | None) -> Response:
        if course_id not in app.roster.courses:
            return _not_found()
        live = {a: self.new_quizzes[a] for a in self._of_course("new_quizzes", course_id)
                if not self.assignments[a].get("deleted")}
        if item is None:
            if not app._scoped(grant, "new_quizzes"):
                return _unauthorized()
            return app._numeric_page(request, list(live.values()))
        if not app._scoped(grant, "new_quiz"):
            return _unauthorized()
        quiz = live.get(int(item))
        return Response(200, quiz) if quiz else _not_found()


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _absolute(request: Request, path: str) -> str:
    return request.url.split("/api/")[0] + path


def _not_found() -> Response:
    return Response(404, {"errors": [{"message": "The specified resource does not exist."}]})


def _unauthorized() -> Response:
    message = "user not authorized to perform that action"
    return Response(401, {"status": "unauthorized", "errors": [{"message": message}]})


# --- the exams a target should end with (SPEC §7), written independently --------------------


def _z(value: str | None) -> str | None:
    return _parse(value).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def _plain(html: str | None) -> str | None:
    if not html:
        return None
    text = re.sub(r"<script.*?</script>", "", html, flags=re.S)
    text = re.sub(r"</?(p|div|br)[^>]*>", " ", text)
    text = re.sub(r"<[^>]+>", "", text).replace("&amp;", "&")
    return " ".join(text.split()) or None


def expected_exams(book: CanvasQuizzes, courses: dict[int, dict[str, Any]], base_url: str, *,
                   select: str = "access_code", new_quizzes: bool = True, duration: int | None = None,
                   password: str | None = None, proctor_types: dict[str, Any] | None = None,
                   limited_scope: bool = False, account_ids: set[int] | None = None
                   ) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """(exam bodies keyed by ``ids.external``, the source ids that must be record errors).

    ``select``: "access_code" or "all". Bodies carry the password in clear, as the target keeps it.
    """
    in_scope = {c for c, v in courses.items() if v["workflow_state"] in ("available", "unpublished")
                and (account_ids is None or v["account_id"] in account_ids)}
    bodies: dict[str, dict[str, Any]] = {}
    failed: set[str] = set()

    def add(external: str, course: dict[str, Any], fields: dict[str, Any]) -> None:
        opens = fields["open"] or _z(course.get("start_at"))
        closes = fields["close"] or _z(course.get("end_at"))
        minutes, code = fields["duration"] or duration, fields["password"] or password
        if not (opens and closes and minutes and code) or closes <= opens:
            failed.add(external)
            return
        configuration = {"type": "primary", "url": base_url + fields["url"], "access": {"open": opens, "close": closes},
                         "duration": minutes, "password": code, "proctorTypes": proctor_types or {}}
        if fields["attempts"]:
            configuration["attempts"] = fields["attempts"]
        body: dict[str, Any] = {"title": fields["title"], "type": "online", "practice": fields["practice"],
                                "limitedScope": limited_scope, "configuration": configuration}
        if fields["description"]:
            body["description"] = fields["description"]
        bodies[external] = body

    for quiz in book.quizzes.values():
        course = courses[quiz["course_id"]]
        if quiz.get("deleted") or not quiz["published"] or quiz["course_id"] not in in_scope:
            continue
        if select == "access_code" and not quiz["access_code"]:
            continue
        external = f"quiz:{quiz['id']}"
        if quiz["access_code"] and not book.token_can_manage:
            failed.add(external)
            continue
        add(external, course, {
            "title": quiz["title"], "description": _plain(quiz["description"]), "url": quiz["html_url"],
            "practice": quiz["quiz_type"] == "practice_quiz", "open": _z(quiz["unlock_at"]),
            "close": _z(quiz["lock_at"]),
            "duration": quiz["time_limit"], "password": quiz["access_code"],
            "attempts": quiz["allowed_attempts"] if quiz["allowed_attempts"] > 0 else None})
    for assignment_id, quiz in book.new_quizzes.items() if new_quizzes else ():
        assignment = book.assignments[assignment_id]
        if assignment.get("deleted") or not assignment["published"] or assignment["course_id"] not in in_scope:
            continue
        settings = quiz["quiz_settings"] or {}
        code = settings.get("student_access_code") if settings.get("require_student_access_code") else None
        if select == "access_code" and not code:
            continue
        tries = settings.get("multiple_attempts") or {}
        add(f"assignment:{assignment_id}", courses[assignment["course_id"]], {
            "title": assignment["name"], "description": _plain(assignment["description"]),
            "url": assignment["html_url"], "practice": False, "open": _z(assignment["unlock_at"]),
            "close": _z(assignment["lock_at"]),
            "duration": -(-settings["session_time_limit_in_seconds"] // 60) if settings.get("has_time_limit") else None,
            "password": code, "attempts": tries.get("max_attempts") if tries.get("multiple_attempts_enabled") else 1})
    return bodies, failed


def expected_override_counts(book: CanvasQuizzes) -> dict[str, int]:
    """Students per exam with an accommodation to mirror: an ad-hoc override or quiz extra time."""
    counts: dict[str, int] = {}
    for quiz_id, quiz in book.quizzes.items():
        students = {s for o in book.overrides.get(quiz["assignment_id"], []) for s in o["student_ids"]}
        students |= {s["user_id"] for s in book.submissions.get(quiz_id, []) if (s["extra_time"] or 0) > 0}
        counts[f"quiz:{quiz_id}"] = len(students)
    for assignment_id in book.new_quizzes:
        counts[f"assignment:{assignment_id}"] = len({s for o in book.overrides.get(assignment_id, [])
                                                     for s in o["student_ids"]})
    return counts
