"""The exams' SQL (staging, desired bodies) builds exactly the bodies the Python mapping does."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

from syncd import exams
from syncd.exams import CourseWindow, Exam
from syncd.exams_config import ExamsConfig
from syncd.model import content_hash
from syncd.store import exams as exams_store
from syncd.store.dialect import SQLITE

TS = "TS4b894875a1b24f4e9b2e1c9d0f8a7b6c"
CONFIG = ExamsConfig(select="all", proctor_types={TS: {"options": {"recordScreen": {}}}}, limited_scope=True,
                     default_duration_min=30, default_password="tenant-pw",
                     url_template="https://lms.example.edu/{class_id}/{id}")


def database() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")  # the module's SQL alone, on the smallest schema it needs
    conn.create_function("digest", 1, content_hash, deterministic=True)
    conn.executescript("CREATE TABLE desired_courses (tenant TEXT, source_id TEXT, body TEXT, hash TEXT, change TEXT);"
                       "CREATE TABLE plan_calls (tenant TEXT, seq INTEGER, course_id TEXT, user_id TEXT);")
    conn.executescript(exams_store.SCHEMA + exams_store.PLAN_COLUMN)
    conn.executemany("INSERT INTO desired_courses (tenant, source_id) VALUES (?, ?)", [("t", "7"), ("t", "cls-1")])
    return conn


def sample() -> list[Exam]:
    quiz = {"id": 501, "title": "Midterm", "html_url": "https://c.example.edu/courses/7/quizzes/501",
            "description": "<p>Bring a <b>calculator</b>.</p>", "quiz_type": "practice_quiz", "time_limit": 60,
            "allowed_attempts": -1, "access_code": "sesame", "published": True,
            "unlock_at": "2026-10-01T08:00:00-06:00", "lock_at": "2026-10-01T18:00:00Z"}
    assignment = {"id": 901, "name": "Final", "html_url": "https://c.example.edu/courses/7/assignments/901",
                  "published": True, "unlock_at": "2026-12-10T15:00:00Z", "lock_at": "2026-12-10T19:00:00Z"}
    settings = {"quiz_settings": {"has_time_limit": True, "session_time_limit_in_seconds": 5400,
                                  "require_student_access_code": True, "student_access_code": "nq"}}
    line = {"sourcedId": "li-1", "status": "active", "title": "Unit test", "assignDate": "2026-10-05",
            "dueDate": "2026-10-05", "class": {"sourcedId": "cls-1"}}
    mapped = [exams.classic_quiz(quiz, "7", CourseWindow(), CONFIG),
              exams.new_quiz(assignment, settings, "7", CourseWindow(), CONFIG),
              exams.line_item(line, CONFIG),
              exams.classic_quiz({**quiz, "id": 502, "published": False}, "7", CourseWindow(), CONFIG),
              exams.classic_quiz({**quiz, "id": 503}, "99", CourseWindow(), CONFIG)]  # course out of scope
    assert all(isinstance(m, Exam) for m in mapped)
    return [dataclasses.replace(m, override_count=i) for i, m in enumerate(mapped)]


def test_the_desired_sql_builds_the_python_bodies_and_only_in_scope(tmp_path):
    key = exams.password_key(tmp_path)
    conn = database()
    staged = sample()
    marks = ",".join("?" * len(exams_store.STAGE_COLUMNS))
    conn.executemany(f"INSERT INTO stage_exams ({','.join(exams_store.STAGE_COLUMNS)}) VALUES ({marks})",
                     [exams_store.stage_row("t", e, key) for e in staged])
    conn.execute(*exams_store.desired(SQLITE, "t", CONFIG))
    rows = {sid: (course, json.loads(body), digest) for sid, course, body, digest in
            conn.execute("SELECT source_id, course_id, body, hash FROM desired_exams")}
    assert set(rows) == {"quiz:501", "assignment:901", "lineitem:li-1"}
    for exam in staged[:3]:
        course, body, digest = rows[exam.source_id]
        assert course == exam.course_id
        assert body == exams.stored_body(exams.exam_body(exam, CONFIG), key)
        assert digest == content_hash(conn.execute("SELECT body FROM desired_exams WHERE source_id = ?",
                                                   (exam.source_id,)).fetchone()[0])
        assert exams_store.with_password(body, exam.password) == exams.exam_body(exam, CONFIG)
    assert rows["quiz:501"][1]["practice"] is True and rows["quiz:501"][1]["limitedScope"] is True
    assert "attempts" not in rows["quiz:501"][1]["configuration"]
    assert "description" not in rows["assignment:901"][1]


def test_no_password_reaches_the_database(tmp_path):
    key = exams.password_key(tmp_path)
    conn = database()
    marks = ",".join("?" * len(exams_store.STAGE_COLUMNS))
    conn.executemany(f"INSERT INTO stage_exams VALUES ({marks})", [exams_store.stage_row("t", e, key)
                                                                   for e in sample()])
    conn.execute(*exams_store.desired(SQLITE, "t", CONFIG))
    dump = "\n".join(conn.iterdump())
    for password in ("sesame", "nq", "tenant-pw"):
        assert f"'{password}'" not in dump and f'"{password}"' not in dump
    assert "hmac-sha256:" in dump


def test_exams_ride_on_planned_calls_of_their_course_and_the_rest_get_their_own():
    conn = database()
    conn.executemany("INSERT INTO desired_exams (tenant, source_id, course_id, change) VALUES ('t', ?, ?, ?)",
                     [("quiz:1", "7", "create"), ("quiz:2", "7", "update"), ("quiz:3", "7", "create"),
                      ("quiz:4", "7", "none"), ("quiz:5", "8", "held"), ("assignment:6", "9", "update")])
    conn.executemany("INSERT INTO plan_calls (tenant, seq, course_id, user_id) VALUES ('t', ?, ?, ?)",
                     [(1, "7", "u1"), (2, "8", "u2"), (3, "7", None), (4, "5", "u3")])
    conn.execute("INSERT INTO plan_calls (tenant, seq, course_id, user_id) VALUES ('other', 1, '7', 'u9')")
    for sql, params in exams_store.plan_steps("t"):
        conn.execute(sql, params)
    calls = conn.execute("SELECT seq, course_id, user_id, exam_id FROM plan_calls WHERE tenant = 't' "
                         "ORDER BY seq").fetchall()
    assert calls == [(1, "7", "u1", "quiz:1"), (2, "8", "u2", None), (3, "7", None, "quiz:2"), (4, "5", "u3", None),
                     (5, "7", None, "quiz:3"), (6, "9", None, "assignment:6")]
    assert conn.execute("SELECT exam_id FROM plan_calls WHERE tenant = 'other'").fetchone() == (None,)


def test_the_store_builds_the_python_bodies_as_canonical_text_on_either_backend(make_store, state_backend, tmp_path):
    """The same check on the real store of each backend: PostgreSQL nests the JSON members as JSON
    (not strings) and writes the canonical text; SQLite keeps the text it always wrote."""
    from syncd.model import canonical_json

    store = make_store(tmp_path / "state")
    tenant = store.tenant("t")
    key = exams.password_key(tmp_path)
    staged = sample()
    marks = ",".join("?" * len(exams_store.STAGE_COLUMNS))
    conn = store.conn
    conn.executemany(f"INSERT INTO stage_exams ({','.join(exams_store.STAGE_COLUMNS)}) VALUES ({marks})",
                     [exams_store.stage_row("t", e, key) for e in staged])
    conn.executemany("INSERT INTO desired_courses (tenant, source_id, body) VALUES ('t', ?, '{}')",
                     [("7",), ("cls-1",)])
    conn.execute(*exams_store.desired(tenant.dialect, "t", CONFIG))
    rows = {sid: (body, digest) for sid, body, digest in
            conn.execute("SELECT source_id, body, hash FROM desired_exams WHERE tenant = 't'").fetchall()}
    assert set(rows) == {"quiz:501", "assignment:901", "lineitem:li-1"}
    for exam in staged[:3]:
        text, digest = rows[exam.source_id]
        expected = exams.stored_body(exams.exam_body(exam, CONFIG), key)
        assert json.loads(text) == expected
        if state_backend == "postgresql":
            assert text == canonical_json(expected)
            assert digest == conn.execute("SELECT md5(CAST(? AS TEXT))", (text,)).fetchone()[0]
        else:
            assert digest == content_hash(text)
    store.close()


def test_exams_ride_on_planned_calls_on_either_backend(make_store, tmp_path):
    store = make_store(tmp_path / "state")
    conn = store.conn
    conn.executemany("INSERT INTO desired_exams (tenant, source_id, course_id, change) VALUES ('t', ?, ?, ?)",
                     [("quiz:1", "7", "create"), ("quiz:2", "7", "update"), ("quiz:3", "7", "create"),
                      ("quiz:4", "7", "none"), ("quiz:5", "8", "held"), ("assignment:6", "9", "update")])
    conn.executemany("INSERT INTO plan_calls (tenant, seq, course_id, user_id) VALUES ('t', ?, ?, ?)",
                     [(1, "7", "u1"), (2, "8", "u2"), (3, "7", None), (4, "5", "u3")])
    conn.execute("INSERT INTO plan_calls (tenant, seq, course_id, user_id) VALUES ('other', 1, '7', 'u9')")
    for sql, params in exams_store.plan_steps("t"):
        conn.execute(sql, params)
    calls = conn.execute("SELECT seq, course_id, user_id, exam_id FROM plan_calls WHERE tenant = 't' "
                         "ORDER BY seq").fetchall()
    assert [tuple(c) for c in calls] == [(1, "7", "u1", "quiz:1"), (2, "8", "u2", None), (3, "7", None, "quiz:2"),
                                         (4, "5", "u3", None), (5, "7", None, "quiz:3"), (6, "9", None, "assignment:6")]
    store.close()
