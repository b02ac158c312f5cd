"""Exams in the state store (SPEC §7): the migration, the staging row, the desired and planning SQL.

``SCHEMA`` is the migration, ``stage_row`` the staging of one mapped :class:`~syncd.exams.Exam`
(its password only as a keyed digest), and ``desired_exams_sql`` the SQL that builds the exam bodies
in scope on either store (dialect.py), equal (tests/test_exams_store.py) to :func:`syncd.exams.stored_body` of
:func:`syncd.exams.exam_body`; ``plan_steps`` are the planner's last steps.
"""

from __future__ import annotations

import json
from typing import Any

from syncd import exams
from syncd.exams import Exam
from syncd.exams_config import ExamsConfig
from syncd.model import canonical_json
from syncd.store.dialect import POSTGRES, SQLITE, Dialect, Json, Obj

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
# The body is the dialect's canonical JSON text (NULL fields, description and attempts, omitted as
# in the course and user bodies); Json members are already JSON (numbers, booleans, objects).
# Parameters: the tenant's limitedScope and proctorTypes as JSON text (desired_params, joined as
# ``t``: the members' order, and so the placeholders', differs by dialect), then the tenant.
def desired_exams_sql(d: Dialect) -> str:
    body = d.body(Obj({
        "ids": Obj({"external": "x.source_id"}),
        "title": "x.title",
        "description": "x.description",
        "type": "'online'",
        "practice": Json("CASE WHEN x.practice = 1 THEN 'true' ELSE 'false' END"),
        "limitedScope": Json("t.limited_scope"),
        "configuration": Obj({
            "type": "'primary'",
            "url": "x.url",
            "access": Obj({"open": "x.open_at", "close": "x.close_at"}, ordered=True),
            "duration": Json("x.duration_min"),
            "password": "x.password_digest",
            "attempts": Json("x.attempts"),
            "proctorTypes": Json("t.proctor_types")}, ordered=True)}, ordered=True))
    return f"""
INSERT INTO desired_exams (tenant, source_id, course_id, body, hash)
SELECT tenant, source_id, course_id, body, {d.hash('body')} FROM (
    SELECT x.tenant, x.source_id, x.course_id, {body} AS body
    FROM stage_exams x
    JOIN desired_courses c ON c.tenant = x.tenant AND c.source_id = x.course_id
    CROSS JOIN (SELECT CAST(? AS TEXT) AS limited_scope, CAST(? AS TEXT) AS proctor_types) AS t
    WHERE x.tenant = ? AND x.published = 1) AS b
"""


def stage_row(tenant: str, exam: Exam, key: bytes) -> tuple[Any, ...]:
    """One ``stage_exams`` row; the password leaves memory only as its HMAC under ``key``."""
    digest = exams.password_digest(key, exam.password) if exam.password else None
    return (tenant, exam.source_id, exam.course_id, exam.title, exam.description, int(exam.practice),
            int(exam.published), exam.url, exam.open, exam.close, exam.duration_min, digest, exam.attempts,
            exam.override_count)


def desired_params(tenant: str, config: ExamsConfig, d: Dialect = SQLITE) -> tuple[str, str, str]:
    """The parameters of :func:`desired_exams_sql`: the tenant-wide fields of every exam body (a
    change to them updates every exam), then the tenant. SQLite rewrites JSON text as it nests it;
    PostgreSQL nests it as given, so it gets the canonical text."""
    text = canonical_json if d is POSTGRES else json.dumps
    return text(config.limited_scope), text(config.proctor_types), tenant


def desired(d: Dialect, tenant: str, config: ExamsConfig) -> tuple[str, tuple[str, ...]]:
    """The statement that builds the tenant's desired exams, with its parameters."""
    return desired_exams_sql(d), desired_params(tenant, config, d)


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
           FROM desired_exams WHERE tenant = ? AND change IN ('create', 'update')),
     p AS (SELECT seq, course_id, row_number() OVER (PARTITION BY course_id ORDER BY seq) AS n
           FROM plan_calls WHERE tenant = ? AND exam_id IS NULL)
UPDATE plan_calls SET exam_id = (SELECT x.source_id FROM p JOIN x USING (course_id, n) WHERE p.seq = plan_calls.seq)
WHERE tenant = ? AND seq IN (SELECT p.seq FROM p JOIN x USING (course_id, n))
"""
PLAN_EXAM_CALLS = """
INSERT INTO plan_calls (tenant, seq, course_id, user_id, exam_id)
SELECT CAST(? AS TEXT), (SELECT coalesce(max(seq), 0) FROM plan_calls WHERE tenant = ?)
                + row_number() OVER (ORDER BY d.course_id, d.source_id), d.course_id, NULL, d.source_id
FROM desired_exams d
WHERE d.tenant = ? AND d.change IN ('create', 'update')
  AND NOT EXISTS (SELECT 1 FROM plan_calls p WHERE p.tenant = ? AND p.exam_id = d.source_id)
"""


def plan_steps(tenant: str) -> list[tuple[str, tuple[str, ...]]]:
    """The planner's exam steps, in order, with their parameters (the same SQL on both stores)."""
    return [(PLAN_EXAM_RIDES, (tenant,) * 3), (PLAN_EXAM_CALLS, (tenant,) * 4)]


def exam_rows(conn: Any, tenant: str, run_id: str | None) -> list[dict[str, Any]]:
    """`syncd exams`: every exam of the tenant's last run (desired), acknowledged or failed, with its
    state: ``held`` (the run held it), ``failed`` (the run has an error on it), ``removed``
    (tombstoned), ``synced`` (acknowledged with the desired body), else ``pending``."""
    held = {json.loads(k)[0] for (k,) in conn.execute(
        "SELECT key FROM held WHERE run_id = ? AND entity = 'exam'", (run_id,))}
    failed = {s: m for s, m in conn.execute(
        "SELECT source_id, message FROM errors WHERE run_id = ? AND entity = 'exam' AND source_id != ''", (run_id,))}
    rows = conn.execute(
        "SELECT i.source_id, coalesce(d.course_id, a.course_id, s.course_id), coalesce(d.body, a.body), "
        "d.hash, a.hash, a.sid, a.removed_at, a.deleted_at, coalesce(s.override_count, 0), s.title "
        "FROM (SELECT source_id FROM desired_exams WHERE tenant = ? UNION SELECT source_id FROM acked_exams "
        "      WHERE tenant = ? UNION SELECT source_id FROM stage_exams WHERE tenant = ? AND published = 1) i "
        "LEFT JOIN desired_exams d ON d.tenant = ? AND d.source_id = i.source_id "
        "LEFT JOIN acked_exams a ON a.tenant = ? AND a.source_id = i.source_id "
        "LEFT JOIN stage_exams s ON s.tenant = ? AND s.source_id = i.source_id ORDER BY i.source_id",
        (tenant,) * 6).fetchall()
    out = []
    for source_id, course, body, desired, acked, sid, removed_at, deleted_at, overrides, staged_title in rows:
        data = json.loads(body) if body else {}
        configuration = data.get("configuration", {})
        if source_id in held:
            state = "held"
        elif source_id in failed:
            state = "failed"
        elif desired is None and removed_at:
            state = "removed"
        elif desired is not None and desired == acked:
            state = "synced"
        else:
            state = "pending"
        out.append({"source_id": source_id, "title": data.get("title") or staged_title, "course": course,
                    "open": configuration.get("access", {}).get("open"),
                    "close": configuration.get("access", {}).get("close"),
                    "duration_min": configuration.get("duration"), "attempts": configuration.get("attempts"),
                    "state": state, "sid": sid, "deleted": bool(deleted_at), "overrides": overrides,
                    **({"error": failed[source_id]} if source_id in failed else {})})
    for source_id in sorted(set(failed) - {r["source_id"] for r in out}):
        out.append({"source_id": source_id, "title": None, "course": None, "open": None, "close": None,
                    "duration_min": None, "attempts": None, "state": "failed", "sid": None, "deleted": False,
                    "overrides": 0, "error": failed[source_id]})
    return out
