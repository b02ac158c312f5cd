"""Exams in the state store, ready to be wired in once the store is a package (issues 10 and 12).

``SCHEMA`` is the migration, ``stage_row`` the staging of one mapped :class:`~syncd.exams.Exam`
(its password only as a keyed digest), and ``DESIRED_EXAMS`` the SQL that builds the exam bodies
in scope, equal (tests/test_exams_store.py) to :func:`syncd.exams.stored_body` of
:func:`syncd.exams.exam_body`. Nothing here runs yet: store.py is left to the engine's owner.
"""

from __future__ import annotations

import json
from typing import Any

from syncd import exams
from syncd.exams import Exam
from syncd.exams_config import ExamsConfig

# The migration: staging, desired and acknowledged exams, and the plan's exam column.
SCHEMA = """
CREATE TABLE stage_exams (
    tenant TEXT, source_id TEXT, course_id TEXT, title TEXT, description TEXT, practice INTEGER,
    published INTEGER, url TEXT, open_at TEXT, close_at TEXT, duration_min INTEGER, password_digest TEXT,
    attempts INTEGER, override_count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, source_id)) WITHOUT ROWID;
CREATE TABLE desired_exams (
    tenant TEXT, source_id TEXT, course_id TEXT, body TEXT, hash TEXT, change TEXT,
    PRIMARY KEY (tenant, source_id)) WITHOUT ROWID;
CREATE INDEX desired_exams_by_course ON desired_exams (tenant, course_id, change);
CREATE TABLE acked_exams (
    tenant TEXT, source_id TEXT, course_id TEXT, sid TEXT, configuration_sid TEXT, hash TEXT, body TEXT,
    acked_at TEXT, removed_at TEXT, deleted_at TEXT,
    PRIMARY KEY (tenant, source_id)) WITHOUT ROWID;
"""
PLAN_COLUMN = """
ALTER TABLE plan_calls ADD COLUMN exam_id TEXT;
CREATE INDEX plan_calls_by_exam ON plan_calls (tenant, exam_id);
"""
STAGE_COLUMNS = ("tenant", "source_id", "course_id", "title", "description", "practice", "published", "url",
                 "open_at", "close_at", "duration_min", "password_digest", "attempts", "override_count")

# An exam is in scope when it is published and its course is (desired_courses is built first).
# json_patch('{}', …) drops the NULL fields (description, attempts) as the course and user bodies do.
DESIRED_EXAMS = """
INSERT INTO desired_exams (tenant, source_id, course_id, body, hash)
SELECT tenant, source_id, course_id, body, digest(body) FROM (
    SELECT x.tenant, x.source_id, x.course_id, json_patch('{}', json_object(
        'ids', json_object('external', x.source_id),
        'title', x.title,
        'description', x.description,
        'type', 'online',
        'practice', json(CASE WHEN x.practice THEN 'true' ELSE 'false' END),
        'limitedScope', json(:limited_scope),
        'configuration', json_object(
            'type', 'primary',
            'url', x.url,
            'access', json_object('open', x.open_at, 'close', x.close_at),
            'duration', x.duration_min,
            'password', x.password_digest,
            'attempts', x.attempts,
            'proctorTypes', json(:proctor_types)))) AS body
    FROM stage_exams x
    JOIN desired_courses c ON c.tenant = x.tenant AND c.source_id = x.course_id
    WHERE x.tenant = :tenant AND x.published = 1)
"""


def stage_row(tenant: str, exam: Exam, key: bytes) -> tuple[Any, ...]:
    """One ``stage_exams`` row; the password leaves memory only as its HMAC under ``key``."""
    digest = exams.password_digest(key, exam.password) if exam.password else None
    return (tenant, exam.source_id, exam.course_id, exam.title, exam.description, int(exam.practice),
            int(exam.published), exam.url, exam.open, exam.close, exam.duration_min, digest, exam.attempts,
            exam.override_count)


def desired_params(tenant: str, config: ExamsConfig) -> dict[str, str]:
    """The tenant-wide fields of every exam body: a change to them updates every exam."""
    return {"tenant": tenant, "limited_scope": json.dumps(config.limited_scope),
            "proctor_types": json.dumps(config.proctor_types)}


def with_password(body: dict[str, Any], password: str) -> dict[str, Any]:
    """A stored body with the clear password put back, for the request only (held in memory for the
    run: the source read it, or it is the tenant's default)."""
    return {**body, "configuration": {**body["configuration"], "password": password}}


# The planner's last steps (exam_plan.py has the whole rule): each changed exam rides on a planned
# call of its course that carries no exam yet (the n-th exam on the n-th call), then the exams left
# over get a call each. Riders must first be seated where exams need calls (exam_plan._seat) for
# the total to be the minimum.
PLAN_EXAM_RIDES = """
WITH x AS (SELECT source_id, course_id, row_number() OVER (PARTITION BY course_id ORDER BY source_id) AS n
           FROM desired_exams WHERE tenant = :tenant AND change IN ('create', 'update')),
     p AS (SELECT seq, course_id, row_number() OVER (PARTITION BY course_id ORDER BY seq) AS n
           FROM plan_calls WHERE tenant = :tenant AND exam_id IS NULL)
UPDATE plan_calls SET exam_id = (SELECT x.source_id FROM p JOIN x USING (course_id, n) WHERE p.seq = plan_calls.seq)
WHERE tenant = :tenant AND seq IN (SELECT p.seq FROM p JOIN x USING (course_id, n))
"""
PLAN_EXAM_CALLS = """
INSERT INTO plan_calls (tenant, seq, course_id, user_id, exam_id)
SELECT :tenant, (SELECT coalesce(max(seq), 0) FROM plan_calls WHERE tenant = :tenant)
                + row_number() OVER (ORDER BY d.course_id, d.source_id), d.course_id, NULL, d.source_id
FROM desired_exams d
WHERE d.tenant = :tenant AND d.change IN ('create', 'update')
  AND NOT EXISTS (SELECT 1 FROM plan_calls p WHERE p.tenant = :tenant AND p.exam_id = d.source_id)
"""
