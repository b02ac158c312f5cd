"""Staging and the desired state: what the source said this run, mapped to provision bodies in SQL."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from syncd.entities import SPECS, Entity
from syncd.model import Course, CourseCode, Enrollment, Record, RecordError, User
from syncd.store.base import Scoped

STAGE_TABLES: dict[type, tuple[str, Entity]] = {
    Course: ("stage_courses", "course"),
    CourseCode: ("stage_course_codes", "course"),
    User: ("stage_users", "user"),
    Enrollment: ("stage_enrollments", "enrollment"),
}
RUN_TABLES = ("stage_courses", "stage_course_codes", "stage_users", "stage_enrollments",
              "desired_courses", "desired_users", "desired_enrollments", "plan_calls")


class Staging(Scoped):
    def reset_stage(self) -> None:
        """Forget the last run's staged rows, desired state and plan."""
        with self._write():
            for table in RUN_TABLES:
                self.conn.execute(f"DELETE FROM {table} WHERE tenant = ?", (self.name,))

    def stage(self, records: list[Record]) -> list[RecordError]:
        """Stage one page in one transaction. Returns the records that could not be staged:
        those the source could not read, and duplicates of an id already read (first one wins)."""
        failed: list[RecordError] = []
        rows: dict[type, list[tuple[Any, ...]]] = {Course: [], CourseCode: [], User: [], Enrollment: []}
        for record in records:
            # A dict lookup on the exact type, not an isinstance chain: this runs once per record.
            to_row = _STAGE_ROW.get(type(record))
            if to_row is None:
                assert isinstance(record, RecordError)
                failed.append(record)
            else:
                rows[type(record)].append(to_row(self.name, record))
        with self._write():
            for kind, batch in rows.items():
                if batch:
                    failed += self._insert_stage(kind, batch)
        return failed

    def _insert_stage(self, kind: type, batch: list[tuple[Any, ...]]) -> list[RecordError]:
        """Insert a page's rows of one table. The common page has no duplicate id: INSERT OR IGNORE
        inserts it whole and its row count proves it. Otherwise the page is undone to a savepoint
        and inserted row by row, so that the first record read of an id wins and the rest fail."""
        table, entity = STAGE_TABLES[kind]
        marks = ",".join("?" * len(batch[0]))
        self.conn.execute("SAVEPOINT stage_page")
        cursor = self.conn.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", batch)
        if cursor.rowcount == len(batch):
            self.conn.execute("RELEASE stage_page")
            return []
        self.conn.execute("ROLLBACK TO stage_page")
        self.conn.execute("RELEASE stage_page")
        duplicates: list[RecordError] = []
        for row in batch:
            if self.conn.execute(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", row).rowcount == 0:
                duplicates.append(RecordError(entity, row[1], "duplicate id: an earlier record with "
                                                              "this id was read first and wins"))
        return duplicates

    def staged_counts(self) -> dict[Entity, int]:
        return {e: self.conn.execute(f"SELECT count(*) FROM {spec.stage} WHERE tenant = ?",
                                     (self.name,)).fetchone()[0] for e, spec in SPECS.items()}

    def build_desired(self, roles: dict[str, str], time_zone: str | None) -> None:
        """Map staged rows to provision bodies in scope (SPEC §4), all in SQL."""
        role_rows = json.dumps([[source, target] for source, target in roles.items()])
        with self._write():
            self.conn.execute(DESIRED_COURSES, (self.name,))
            self.conn.execute(DESIRED_ENROLLMENTS, (role_rows, self.name))
            self.conn.execute(DESIRED_USERS, (time_zone, self.name))

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


def _course_row(tenant: str, r: Course) -> tuple[Any, ...]:
    return (tenant, r.source_id, r.title, r.code, r.external_id, r.lms_id, r.parent_id, int(r.active))


def _course_code_row(tenant: str, r: CourseCode) -> tuple[Any, ...]:
    return (tenant, r.source_id, r.code)


def _user_row(tenant: str, r: User) -> tuple[Any, ...]:
    return (tenant, r.source_id, r.first_name, r.last_name, r.email, r.external_id, r.lms_id, int(r.active))


def _enrollment_row(tenant: str, r: Enrollment) -> tuple[Any, ...]:
    return (tenant, r.source_id, r.course_id, r.user_id, r.role, int(r.active))


_STAGE_ROW: dict[type, Callable[[str, Any], tuple[Any, ...]]] = {
    Course: _course_row, CourseCode: _course_code_row, User: _user_row, Enrollment: _enrollment_row}


# json_patch('{}', …) drops every null member (RFC 7396), so an empty field is omitted, not null.
# Keys are written in sorted order, nested ones too: the body text is then its canonical JSON
# (model.canonical_json), the text the content hash is defined over. The hash is left NULL here:
# Diff.classify takes it from the acknowledged row when the body text is the same and computes
# it (a Python function per row) only for the bodies that changed.
DESIRED_COURSES = """
INSERT INTO desired_courses (tenant, source_id, body, hash)
SELECT tenant, source_id, body, NULL FROM (
    SELECT c.tenant, c.source_id, json_patch('{}', json_object(
        'code', coalesce(c.code, cc.code), 'ids', json_object('external', c.external_id, 'lms', c.lms_id),
        'title', c.title)) AS body
    FROM stage_courses c
    LEFT JOIN stage_course_codes cc ON cc.tenant = c.tenant AND cc.source_id = c.parent_id
    WHERE c.tenant = ? AND c.active = 1)
"""

# One enrollment per (course, user): the role listed first in `roles` wins (SQLite returns the
# bare columns of the row that holds min()).
DESIRED_ENROLLMENTS = """
INSERT INTO desired_enrollments (tenant, course_id, user_id, source_id, body, hash)
SELECT tenant, course_id, user_id, source_id, body, NULL FROM (
    SELECT e.tenant, e.course_id, e.user_id, e.source_id, min(r.priority),
           json_object('role', r.target_role) AS body
    FROM stage_enrollments e
    JOIN (SELECT json_extract(value, '$[0]') AS source_role, json_extract(value, '$[1]') AS target_role,
                 CAST(key AS INTEGER) AS priority FROM json_each(?)) r ON r.source_role = e.role
    JOIN stage_courses c ON c.tenant = e.tenant AND c.source_id = e.course_id AND c.active = 1
    JOIN stage_users u ON u.tenant = e.tenant AND u.source_id = e.user_id AND u.active = 1
    WHERE e.tenant = ? AND e.active = 1
    GROUP BY e.tenant, e.course_id, e.user_id)
"""

DESIRED_USERS = """
INSERT INTO desired_users (tenant, source_id, body, hash)
SELECT tenant, source_id, body, NULL FROM (
    SELECT u.tenant, u.source_id, json_patch('{}', json_object(
        'email', u.email, 'firstName', u.first_name,
        'ids', json_object('external', u.external_id, 'lms', u.lms_id),
        'lastName', u.last_name, 'timeZone', ?)) AS body
    FROM stage_users u
    WHERE u.tenant = ? AND u.active = 1 AND EXISTS (
        SELECT 1 FROM desired_enrollments e WHERE e.tenant = u.tenant AND e.user_id = u.source_id))
"""

