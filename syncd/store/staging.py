"""Staging and the desired state: what the source said this run, mapped to provision bodies in SQL."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

from syncd.entities import SPECS, Entity
from syncd.exams import Exam
from syncd.exams_config import ExamsConfig
from syncd.model import Course, CourseCode, Enrollment, Record, RecordError, User
from syncd.store import exams as exam_sql
from syncd.store.base import Scoped
from syncd.store.dialect import Dialect, Obj

STAGE_TABLES: dict[type, tuple[str, Entity]] = {
    Course: ("stage_courses", "course"),
    CourseCode: ("stage_course_codes", "course"),
    User: ("stage_users", "user"),
    Enrollment: ("stage_enrollments", "enrollment"),
    Exam: ("stage_exams", "exam"),
}
STAGE_NAMES = ("stage_courses", "stage_course_codes", "stage_users", "stage_enrollments")
RUN_TABLES = ("stage_courses", "stage_course_codes", "stage_users", "stage_enrollments", "stage_exams",
              "desired_courses", "desired_users", "desired_enrollments", "desired_exams", "plan_calls")


class Staging(Scoped):
    # The install's key for exam passwords (exams.password_key): set by the engine when the tenant
    # has exams; a password is staged only as its keyed digest.
    exam_key: bytes | None = None

    def reset_stage(self) -> None:
        """Forget the last run's staged rows, desired state and plan."""
        with self._write():
            for table in RUN_TABLES:
                self.conn.execute(f"DELETE FROM {table} WHERE tenant = ?", (self.name,))

    def stage(self, records: list[Record]) -> list[RecordError]:
        """Stage one page in one transaction. Returns the records that could not be staged:
        those the source could not read, and duplicates of an id already read (first one wins)."""
        failed: list[RecordError] = [r for r in records if isinstance(r, RecordError)]
        rows: dict[type, list[tuple[Any, ...]]] = {kind: [] for kind in STAGE_TABLES}
        for record in records:
            if isinstance(record, Exam):
                if self.exam_key is None:
                    raise ValueError("an exam was read for a tenant without exams")
                rows[Exam].append(exam_sql.stage_row(self.name, record, self.exam_key))
            elif not isinstance(record, RecordError):
                rows[type(record)].append(_stage_row(self.name, record))
        with self._write():
            for kind, batch in rows.items():
                if batch:
                    failed += self._insert_stage(kind, batch)
        return failed

    def _insert_stage(self, kind: type, batch: list[tuple[Any, ...]]) -> list[RecordError]:
        table, entity = STAGE_TABLES[kind]
        ids = [row[1] for row in batch]
        already = {r[0] for r in self.conn.execute(
            f"SELECT source_id FROM {table} WHERE tenant = ? "
            f"AND source_id IN ({self.dialect.each_text('?')})", (self.name, json.dumps(ids)))}
        duplicates: list[RecordError] = []
        fresh: list[tuple[Any, ...]] = []
        for row in batch:
            if row[1] in already:
                duplicates.append(RecordError(entity, row[1], "duplicate id: an earlier record with "
                                                              "this id was read first and wins"))
            else:
                already.add(row[1])
                fresh.append(row)
        if hasattr(self.conn, "copy_rows"):  # PostgreSQL: COPY, one round trip per page
            self.conn.copy_rows(table, fresh)
        else:
            marks = ",".join("?" * len(batch[0]))
            self.conn.executemany(f"INSERT INTO {table} VALUES ({marks})", fresh)
        return duplicates

    def staged_counts(self) -> dict[Entity, int]:
        return {e: self.conn.execute(f"SELECT count(*) FROM {spec.stage} WHERE tenant = ?",
                                     (self.name,)).fetchone()[0] for e, spec in SPECS.items()}

    def build_desired(self, roles: dict[str, str], time_zone: str | None, exams: ExamsConfig | None = None) -> None:
        """Map staged rows to provision bodies in scope (SPEC §4, §7), all in SQL."""
        role_rows = json.dumps([[source, target] for source, target in roles.items()])
        with self._write():
            for sql in self.dialect.analyze(*STAGE_NAMES):
                self.conn.execute(sql)
            courses, enrollments, users = desired_sql(self.dialect)
            self.conn.execute(courses, (self.name,))
            self.conn.execute(enrollments, (role_rows, self.name))
            self.conn.execute(users, (time_zone, self.name))
            if exams is not None:  # after the courses: an exam is in scope when its course is
                self.conn.execute(exam_sql.DESIRED_EXAMS, exam_sql.desired_params(self.name, exams))
            for sql in self.dialect.analyze("desired_courses", "desired_users", "desired_enrollments"):
                self.conn.execute(sql)

    def dangling_enrollments(self) -> Iterator[tuple[str, str, str, str]]:
        """Active enrollments whose class or user is missing from a complete extract."""
        yield from self.conn.execute(
            "SELECT e.source_id, e.course_id, e.user_id, "
            "CASE WHEN c.source_id IS NULL THEN 'class' ELSE 'user' END "
            "FROM stage_enrollments e "
            "LEFT JOIN stage_courses c ON c.tenant = e.tenant AND c.source_id = e.course_id "
            "LEFT JOIN stage_users u ON u.tenant = e.tenant AND u.source_id = e.user_id "
            "WHERE e.tenant = ? AND e.active = 1 AND (c.source_id IS NULL OR u.source_id IS NULL)",
            (self.name,),
        )


def _stage_row(tenant: str, record: Record) -> tuple[Any, ...]:
    if isinstance(record, Course):
        return (tenant, record.source_id, record.title, record.code, record.external_id, record.lms_id,
                record.parent_id, int(record.active), record.status)
    if isinstance(record, CourseCode):
        return (tenant, record.source_id, record.code)
    if isinstance(record, User):
        return (tenant, record.source_id, record.first_name, record.last_name, record.email,
                record.external_id, record.lms_id, int(record.active), record.status)
    assert isinstance(record, Enrollment)
    return (tenant, record.source_id, record.course_id, record.user_id, record.role, int(record.active),
            record.status, record.end_date)


# The bodies' text is their canonical JSON (model.canonical_json: keys sorted, nested ones too, an
# empty field omitted, not null), built by the dialect (dialect.py), so the hash is taken over it.
def _desired_courses(d: Dialect) -> str:
    body = d.body(Obj({"code": "coalesce(c.code, cc.code)",
                       "ids": Obj({"external": "c.external_id", "lms": "c.lms_id"}), "title": "c.title"}))
    return f"""
INSERT INTO desired_courses (tenant, source_id, body, hash)
SELECT tenant, source_id, body, {d.hash('body')} FROM (
    SELECT c.tenant, c.source_id, {body} AS body
    FROM stage_courses c
    LEFT JOIN stage_course_codes cc ON cc.tenant = c.tenant AND cc.source_id = c.parent_id
    WHERE c.tenant = ? AND c.active = 1) AS b
"""


# One enrollment per (course, user): the role listed first in `roles` wins.
def _desired_enrollments(d: Dialect) -> str:
    return f"""
INSERT INTO desired_enrollments (tenant, course_id, user_id, source_id, body, hash)
SELECT tenant, course_id, user_id, source_id, body, {d.hash('body')} FROM (
    SELECT e.tenant, e.course_id, e.user_id, e.source_id, {d.body(Obj({"role": "r.target_role"}))} AS body,
           row_number() OVER (PARTITION BY e.tenant, e.course_id, e.user_id ORDER BY r.priority) AS choice
    FROM stage_enrollments e
    JOIN ({d.roles('?')}) r ON r.source_role = e.role
    JOIN stage_courses c ON c.tenant = e.tenant AND c.source_id = e.course_id AND c.active = 1
    JOIN stage_users u ON u.tenant = e.tenant AND u.source_id = e.user_id AND u.active = 1
    WHERE e.tenant = ? AND e.active = 1) AS b
WHERE choice = 1
"""


def _desired_users(d: Dialect) -> str:
    body = d.body(Obj({"email": "u.email", "firstName": "u.first_name",
                       "ids": Obj({"external": "u.external_id", "lms": "u.lms_id"}),
                       "lastName": "u.last_name", "timeZone": "CAST(? AS TEXT)"}))
    return f"""
INSERT INTO desired_users (tenant, source_id, body, hash)
SELECT tenant, source_id, body, {d.hash('body')} FROM (
    SELECT u.tenant, u.source_id, {body} AS body
    FROM stage_users u
    WHERE u.tenant = ? AND u.active = 1 AND EXISTS (
        SELECT 1 FROM desired_enrollments e WHERE e.tenant = u.tenant AND e.user_id = u.source_id)) AS b
"""


@functools.cache
def desired_sql(d: Dialect) -> tuple[str, str, str]:
    """The three statements that build the desired state, in the order they run."""
    return _desired_courses(d), _desired_enrollments(d), _desired_users(d)
