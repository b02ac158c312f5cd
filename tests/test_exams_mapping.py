"""The exam mapping of SPEC §7, table by table: classic quizzes, New Quizzes, lineItems, bodies."""

from __future__ import annotations

import dataclasses
import re
import stat
import threading
import zoneinfo
from datetime import UTC, datetime

import pytest

from syncd import exams
from syncd.exams import CourseWindow, Exam
from syncd.exams_config import ExamsConfig
from syncd.model import RecordError

TS = "TS4b894875a1b24f4e9b2e1c9d0f8a7b6c"
CONFIG = ExamsConfig(select="all", proctor_types={TS: {}})
CHICAGO = zoneinfo.ZoneInfo("America/Chicago")


def quiz(**changes) -> dict:
    item = {"id": 501, "title": "Midterm", "html_url": "https://canvas.example.edu/courses/7/quizzes/501",
            "description": "<p>Bring a <b>calculator</b>.</p>", "quiz_type": "assignment", "time_limit": 60,
            "allowed_attempts": 2, "access_code": "sesame", "has_access_code": True, "published": True,
            "unlock_at": "2026-10-01T14:00:00Z", "lock_at": "2026-10-01T18:00:00Z"}
    item.update(changes)
    return {k: v for k, v in item.items() if v is not ...}


def assignment(**changes) -> dict:
    item = {"id": 901, "name": "Final", "html_url": "https://canvas.example.edu/courses/7/assignments/901",
            "description": "<div>Chapters 1&ndash;4</div>", "published": True, "is_quiz_lti_assignment": True,
            "unlock_at": "2026-12-10T15:00:00Z", "lock_at": "2026-12-10T19:00:00Z"}
    item.update(changes)
    return {k: v for k, v in item.items() if v is not ...}


def settings(**changes) -> dict:
    body = {"has_time_limit": True, "session_time_limit_in_seconds": 5400, "require_student_access_code": True,
            "student_access_code": "nq-code", "multiple_attempts": {"multiple_attempts_enabled": False}}
    body.update(changes)
    return {"id": "901", "title": "Final", "quiz_settings": body}


def line(**changes) -> dict:
    item = {"sourcedId": "li-1", "status": "active", "title": "Unit test", "description": "  Ch. 3\n ",
            "assignDate": "2026-10-05T08:00:00-06:00", "dueDate": "2026-10-05", "class": {"sourcedId": "cls-1",
                                                                                        "type": "class"}}
    item.update(changes)
    return {k: v for k, v in item.items() if v is not ...}


# --- times ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "zone", "end", "expected"), [
    ("2026-10-01T14:00:00Z", None, False, "2026-10-01T14:00:00Z"),
    ("2026-10-01T14:00:00z", None, False, "2026-10-01T14:00:00Z"),
    ("2026-10-01T08:00:00-06:00", None, False, "2026-10-01T14:00:00Z"),
    ("2026-10-01T16:00:00+02:00", None, False, "2026-10-01T14:00:00Z"),
    ("2026-10-01T14:00:00.123Z", None, False, "2026-10-01T14:00:00Z"),
    ("2026-10-01T14:00:00.000+00:00", None, False, "2026-10-01T14:00:00Z"),
    # A local 23:59 stored as UTC is the next day: kept as the instant it is.
    ("2026-10-01T23:59:00-06:00", None, False, "2026-10-02T05:59:00Z"),
    ("2026-10-01T09:00:00", None, False, "2026-10-01T09:00:00Z"),
    ("2026-10-01T09:00:00", CHICAGO, False, "2026-10-01T14:00:00Z"),
    ("2026-10-01", None, False, "2026-10-01T00:00:00Z"),
    ("2026-10-01", None, True, "2026-10-01T23:59:59Z"),
    ("2026-10-01", CHICAGO, True, "2026-10-02T04:59:59Z"),
    ("2026-01-15", CHICAGO, False, "2026-01-15T06:00:00Z"),
    (None, None, False, None),
    ("", None, False, None),
    ("  ", None, False, None),
])
def test_source_times_become_utc_z(value, zone, end, expected):
    assert exams.utc(value, zone, end_of_day=end) == expected


@pytest.mark.parametrize("value", ["tomorrow", "2026-13-01T00:00:00Z", "2026-10-01T25:00:00Z", 1759327200])
def test_a_time_that_is_not_iso_8601_is_refused(value):
    with pytest.raises(ValueError, match="date-time"):
        exams.utc(value)


# --- classic quizzes ------------------------------------------------------------------------


def test_a_classic_quiz_maps_field_by_field():
    exam = exams.classic_quiz(quiz(), "7", CourseWindow(), CONFIG)
    assert exam == Exam(source_id="quiz:501", course_id="7", title="Midterm", published=True,
                        description="Bring a calculator.", practice=False,
                        url="https://canvas.example.edu/courses/7/quizzes/501", open="2026-10-01T14:00:00Z",
                        close="2026-10-01T18:00:00Z", duration_min=60, password="sesame", attempts=2)
    assert "sesame" not in repr(exam)


@pytest.mark.parametrize(("changes", "field", "expected"), [
    ({"quiz_type": "practice_quiz"}, "practice", True),
    ({"quiz_type": "graded_survey"}, "practice", False),
    ({"allowed_attempts": -1}, "attempts", None),
    ({"allowed_attempts": None}, "attempts", None),
    ({"allowed_attempts": 1}, "attempts", 1),
    ({"published": False}, "published", False),
    ({"published": ...}, "published", False),
    ({"description": None}, "description", None),
    ({"description": "<p>  </p>"}, "description", None),
    ({"description": "<style>p{}</style><p>A&amp;B</p><p>C\u0000D</p>"}, "description", "A&B C D"),
    ({"description": "Cafe\u0301 <br>x"}, "description", "Café x"),
    ({"description": "<p>" + "word " * 400 + "</p>"}, "description", ("word " * 400)[:1023].rstrip() + "…"),
    ({"title": "  Final\texam  "}, "title", "Final exam"),
    ({"time_limit": 45.5}, "duration_min", 46),
    ({"id": "501"}, "source_id", "quiz:501"),
    # The base entry of all_dates wins over top-level dates an admin may see override-skewed.
    ({"all_dates": [{"id": 3, "unlock_at": "2026-10-01T00:00:00Z", "lock_at": "2026-10-09T00:00:00Z"},
                    {"base": True, "unlock_at": "2026-10-01T08:00:00-06:00", "lock_at": None}]},
     "open", "2026-10-01T14:00:00Z"),
    ({"unlock_at": "2026-10-01T08:00:00.000-06:00"}, "open", "2026-10-01T14:00:00Z"),
    ({"lock_at": "2026-10-01T23:59:59-06:00"}, "close", "2026-10-02T05:59:59Z"),
])
def test_classic_quiz_fields(changes, field, expected):
    exam = exams.classic_quiz(quiz(**changes), "7", CourseWindow(end="2026-12-20T06:00:00Z"), CONFIG)
    assert isinstance(exam, Exam), exam
    assert getattr(exam, field) == expected


def test_a_quiz_without_dates_takes_its_course_window():
    course = CourseWindow(start="2026-08-20T03:00:00-05:00", end="2026-12-20T06:00:00Z")
    exam = exams.classic_quiz(quiz(unlock_at=None, lock_at=None), "7", course, CONFIG)
    assert (exam.open, exam.close) == ("2026-08-20T08:00:00Z", "2026-12-20T06:00:00Z")
    base_null = quiz(all_dates=[{"base": True, "unlock_at": None, "lock_at": None}])
    assert exams.classic_quiz(base_null, "7", course, CONFIG).close == "2026-12-20T06:00:00Z"


@pytest.mark.parametrize(("changes", "course", "config", "message"), [
    ({"time_limit": None}, None, CONFIG, "quiz 501 has no time limit and exams.default_duration_min is not set"),
    ({"time_limit": 0}, None, CONFIG, "has no time limit"),
    ({"access_code": None, "has_access_code": False}, None, CONFIG,
     "quiz 501 has no access code and exams.default_password is not set"),
    ({"access_code": ...}, None, CONFIG, "has an access code that this token cannot read"),
    ({"lock_at": None}, CourseWindow(), CONFIG, "quiz 501 has no closing date and its course has none either"),
    ({"lock_at": None, "unlock_at": None}, CourseWindow(), CONFIG, "has no opening and closing date"),
    ({"lock_at": "2026-10-01T13:00:00Z"}, None, CONFIG, "closes (2026-10-01T13:00:00Z) before it opens"),
    ({"unlock_at": "next week"}, None, CONFIG, "is not an ISO 8601 date-time"),
    ({"time_limit": "60"}, None, CONFIG, "time_limit that is not a number"),
    ({"title": None}, None, CONFIG, "quiz 501 has no title"),
    ({"title": ["x"]}, None, CONFIG, "title is not a string"),
    ({"html_url": None}, None, CONFIG, "has no URL"),
    ({"description": 3}, None, CONFIG, "description is not a string"),
])
def test_a_quiz_that_cannot_be_mapped_is_a_record_error_alone(changes, course, config, message):
    result = exams.classic_quiz(quiz(**changes), "7", course or CourseWindow(), config)
    assert isinstance(result, RecordError), result
    assert (result.entity, result.source_id) == ("exam", "quiz:501")
    assert message in result.message
    assert "sesame" not in result.message


def test_tenant_defaults_fill_what_the_quiz_lacks():
    config = dataclasses.replace(CONFIG, default_duration_min=75, default_password="tenant-pw")
    exam = exams.classic_quiz(quiz(time_limit=None, access_code=None, has_access_code=False), "7",
                              CourseWindow(), config)
    assert (exam.duration_min, exam.password) == (75, "tenant-pw")
    own = exams.classic_quiz(quiz(), "7", CourseWindow(), config)
    assert (own.duration_min, own.password) == (60, "sesame")  # the source's own values win


def test_an_unpublished_quiz_is_staged_out_of_scope_never_an_error():
    exam = exams.classic_quiz(quiz(published=False, time_limit=None, access_code=..., lock_at=None), "7",
                              CourseWindow(), CONFIG)
    assert isinstance(exam, Exam) and exam.published is False and exam.duration_min is None


@pytest.mark.parametrize("item", [None, [], {"title": "x"}, {"id": True}, {"id": ""}])
def test_a_quiz_without_an_id_is_a_record_error(item):
    result = exams.classic_quiz(item, "7", CourseWindow(), CONFIG)
    assert isinstance(result, RecordError) and result.source_id == ""


# --- selection ------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "item", "picked"), [
    (ExamsConfig(select="access_code"), quiz(), True),
    (ExamsConfig(select="access_code"), quiz(access_code=None, has_access_code=False), False),
    (ExamsConfig(select="access_code"), quiz(access_code=...), True),  # a code the token cannot read
    (ExamsConfig(select="all"), quiz(access_code=None, has_access_code=False, time_limit=None), True),
    (ExamsConfig(select="title", title_pattern=re.compile(r"(?i)\bproctored\b")),
     quiz(title="Final (Proctored)"), True),
    (ExamsConfig(select="title", title_pattern=re.compile(r"(?i)\bproctored\b")), quiz(title="Unproctored"), False),
    (ExamsConfig(select="ids", ids=frozenset({"501"})), quiz(), True),
    (ExamsConfig(select="ids", ids=frozenset({"quiz:501"})), quiz(), True),
    (ExamsConfig(select="ids", ids=frozenset({"502"})), quiz(), False),
    # An unselected quiz is nothing at all, even when it could not be mapped.
    (ExamsConfig(select="ids", ids=frozenset({"1"})), quiz(title=None, time_limit=None), False),
])
def test_select_picks_quizzes(config, item, picked):
    config = dataclasses.replace(config, proctor_types={TS: {}}, default_password="d")
    result = exams.classic_quiz(item, "7", CourseWindow(), config)
    assert (result is not None) == picked, result


# --- New Quizzes ----------------------------------------------------------------------------


def test_a_new_quiz_maps_from_its_assignment_and_its_settings():
    exam = exams.new_quiz(assignment(), settings(), "7", CourseWindow(), CONFIG)
    assert exam == Exam(source_id="assignment:901", course_id="7", title="Final", published=True,
                        description="Chapters 1\u20134", practice=False,
                        url="https://canvas.example.edu/courses/7/assignments/901", open="2026-12-10T15:00:00Z",
                        close="2026-12-10T19:00:00Z", duration_min=90, password="nq-code", attempts=1)


@pytest.mark.parametrize(("quiz_settings", "field", "expected"), [
    ({"session_time_limit_in_seconds": 3601}, "duration_min", 61),  # seconds, rounded up to minutes
    ({"multiple_attempts": {"multiple_attempts_enabled": True, "attempt_limit": True, "max_attempts": 3}},
     "attempts", 3),
    ({"multiple_attempts": {"multiple_attempts_enabled": True, "attempt_limit": False, "max_attempts": None}},
     "attempts", None),
    ({"multiple_attempts": None}, "attempts", 1),
])
def test_new_quiz_settings(quiz_settings, field, expected):
    exam = exams.new_quiz(assignment(), settings(**quiz_settings), "7", CourseWindow(), CONFIG)
    assert getattr(exam, field) == expected


@pytest.mark.parametrize(("quiz", "message"), [
    (None, "New Quiz 901 has no time limit"),
    ({"id": "901", "quiz_settings": None}, "has no time limit"),
    (settings(has_time_limit=False), "has no time limit"),
    (settings(require_student_access_code=False), "has no access code"),
    (settings(multiple_attempts={"multiple_attempts_enabled": True, "max_attempts": 0}), "max_attempts"),
    ({"id": "901", "quiz_settings": "x"}, "quiz_settings that are not an object"),
])
def test_a_new_quiz_without_settings_needs_the_defaults(quiz, message):
    result = exams.new_quiz(assignment(), quiz, "7", CourseWindow(), CONFIG)
    assert isinstance(result, RecordError) and result.source_id == "assignment:901"
    assert message in result.message
    defaults = dataclasses.replace(CONFIG, default_duration_min=30, default_password="pw")
    if "max_attempts" not in message and "not an object" not in message:
        assert isinstance(exams.new_quiz(assignment(), quiz, "7", CourseWindow(), defaults), Exam)


def test_new_quiz_selection_by_access_code_reads_the_settings():
    config = ExamsConfig(select="access_code", proctor_types={TS: {}})
    assert exams.new_quiz(assignment(), settings(), "7", CourseWindow(), config) is not None
    assert exams.new_quiz(assignment(), settings(require_student_access_code=False), "7", CourseWindow(),
                          config) is None
    assert exams.new_quiz(assignment(), {"quiz_settings": None}, "7", CourseWindow(), config) is None


# --- OneRoster lineItems --------------------------------------------------------------------


LINE_CONFIG = ExamsConfig(select="all", proctor_types={TS: {}}, default_duration_min=50,
                          default_password="or-pw", url_template="https://lms.example.edu/c/{class_id}/a/{id}")


def test_a_line_item_maps_with_tenant_defaults():
    exam = exams.line_item(line(), LINE_CONFIG, CHICAGO)
    assert exam == Exam(source_id="lineitem:li-1", course_id="cls-1", title="Unit test", published=True,
                        description="Ch. 3", url="https://lms.example.edu/c/cls-1/a/li-1",
                        open="2026-10-05T14:00:00Z", close="2026-10-06T04:59:59Z", duration_min=50,
                        password="or-pw", attempts=1)


@pytest.mark.parametrize(("changes", "config", "message"), [
    ({}, dataclasses.replace(LINE_CONFIG, url_template=None), "lineItem li-1 has no URL (set exams.url_template)"),
    ({}, dataclasses.replace(LINE_CONFIG, default_duration_min=None), "has no time limit"),
    ({}, dataclasses.replace(LINE_CONFIG, default_password=None), "has no access code"),
    ({"dueDate": None}, LINE_CONFIG, "has no closing date"),
    ({"class": None}, LINE_CONFIG, "has no class"),
    ({"description": 5}, LINE_CONFIG, "description that is not a string"),
])
def test_a_line_item_that_cannot_be_mapped_is_a_record_error(changes, config, message):
    result = exams.line_item(line(**changes), config)
    assert isinstance(result, RecordError) and result.source_id == "lineitem:li-1"
    assert message in result.message


def test_line_item_status_and_class_forms():
    assert exams.line_item(line(status="tobedeleted"), LINE_CONFIG).published is False
    assert exams.line_item(line(**{"class": "cls-9"}), LINE_CONFIG).course_id == "cls-9"
    picked = dataclasses.replace(LINE_CONFIG, select="title", title_pattern=re.compile("Exam"))
    assert exams.line_item(line(), picked) is None
    assert isinstance(exams.line_item({"title": "x"}, LINE_CONFIG), RecordError)


# --- the provision body ---------------------------------------------------------------------


def test_the_body_is_spec_7_exactly():
    config = dataclasses.replace(CONFIG, limited_scope=True)
    body = exams.exam_body(exams.classic_quiz(quiz(quiz_type="practice_quiz"), "7", CourseWindow(), CONFIG),
                           config)
    assert body == {
        "ids": {"external": "quiz:501"}, "title": "Midterm", "description": "Bring a calculator.",
        "type": "online", "practice": True, "limitedScope": True,
        "configuration": {"type": "primary", "url": "https://canvas.example.edu/courses/7/quizzes/501",
                          "access": {"open": "2026-10-01T14:00:00Z", "close": "2026-10-01T18:00:00Z"},
                          "duration": 60, "password": "sesame", "attempts": 2, "proctorTypes": {TS: {}}},
    }


def test_the_body_omits_what_is_empty_and_refuses_what_is_incomplete():
    exam = exams.classic_quiz(quiz(allowed_attempts=-1, description=None), "7", CourseWindow(), CONFIG)
    body = exams.exam_body(exam, CONFIG)
    assert "attempts" not in body["configuration"] and "description" not in body
    unpublished = exams.classic_quiz(quiz(published=False, time_limit=None), "7", CourseWindow(), CONFIG)
    with pytest.raises(ValueError, match="not complete"):
        exams.exam_body(unpublished, CONFIG)


def test_the_stored_body_keeps_a_keyed_digest_never_the_password(tmp_path):
    key = exams.password_key(tmp_path)
    body = exams.exam_body(exams.classic_quiz(quiz(), "7", CourseWindow(), CONFIG), CONFIG)
    stored = exams.stored_body(body, key)
    assert "sesame" not in repr(stored) and body["configuration"]["password"] == "sesame"
    assert stored["configuration"]["password"].startswith("hmac-sha256:")
    assert stored == exams.stored_body(body, key)  # stable: no change, no call
    other = exams.stored_body(exams.exam_body(exams.classic_quiz(quiz(access_code="other"), "7", CourseWindow(),
                                                                 CONFIG), CONFIG), key)
    assert other["configuration"]["password"] != stored["configuration"]["password"]
    # Another install's key gives another digest: equal passwords are not linkable across state files.
    assert exams.stored_body(body, exams.password_key(tmp_path / "other")) != stored


def test_the_password_key_is_owner_only_and_made_once(tmp_path):
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(exams.password_key(tmp_path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    path = tmp_path / "credentials" / exams.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [exams.KEY_FILE]  # no temporary file left
    path.write_text("garbage\n")
    with pytest.raises(ValueError, match="not an exam password key"):
        exams.password_key(tmp_path)


def test_a_dry_run_diff_names_fields_and_hides_the_password(tmp_path):
    key = exams.password_key(tmp_path)
    old = exams.stored_body(exams.exam_body(exams.classic_quiz(quiz(), "7", CourseWindow(), CONFIG), CONFIG), key)
    new = exams.stored_body(exams.exam_body(exams.classic_quiz(quiz(title="Midterm 2", access_code="new-secret"),
                                                               "7", CourseWindow(), CONFIG), CONFIG), key)
    lines = exams.changes(old, new)
    assert lines == ["configuration.password: changed", "title: 'Midterm' -> 'Midterm 2'"]
    assert exams.changes(old, old) == []
    assert "configuration.duration: None -> 60" in exams.changes(None, old)


@pytest.mark.parametrize(("changes", "now", "held"), [
    ({"lock_at": "2026-10-01T19:00:00Z"}, "2026-10-01T15:00:00Z", ["close: '2026-10-01T18:00:00Z' -> "
                                                                    "'2026-10-01T19:00:00Z'"]),
    ({"time_limit": 90}, "2026-10-01T14:00:00Z", ["duration: 60 -> 90"]),  # opened this very second
    ({"time_limit": 90}, "2026-10-01T13:59:59Z", []),  # not open yet: changes go through
    ({"title": "Renamed"}, "2026-10-01T15:00:00Z", []),  # a rename is not guarded
    ({"unlock_at": "2026-10-03T14:00:00Z", "lock_at": "2026-10-03T18:00:00Z"}, "2026-10-02T00:00:00Z",
     ["open: '2026-10-01T14:00:00Z' -> '2026-10-03T14:00:00Z'", "close: '2026-10-01T18:00:00Z' -> "
                                                                 "'2026-10-03T18:00:00Z'"]),
])
def test_the_window_guard_holds_window_and_duration_changes_after_opening(tmp_path, changes, now, held):
    key = exams.password_key(tmp_path)

    def stored(item):
        return exams.stored_body(exams.exam_body(exams.classic_quiz(item, "7", CourseWindow(), CONFIG), CONFIG), key)

    moment = datetime.strptime(now, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert exams.guarded_change(stored(quiz()), stored(quiz(**changes)), moment) == held
    assert exams.guarded_change(None, stored(quiz(**changes)), moment) == []  # a new exam is never held
