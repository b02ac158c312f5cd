"""The planner's SQL (``plan_calls``): the questions :mod:`syncd.plan` asks and the calls read back."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from syncd.entities import Call, Entity, Part
from syncd.store import exams as exam_sql
from syncd.store.base import Scoped


class Planning(Scoped):
    def plan_enrollment_calls(self) -> None:
        """Every new or changed enrollment needs a call of its own (which covers its user and course)."""
        with self._write():
            self.conn.execute(
                "INSERT INTO plan_calls (tenant, seq, course_id, user_id) "
                "SELECT tenant, row_number() OVER (ORDER BY course_id, user_id), course_id, user_id "
                "FROM desired_enrollments WHERE tenant = ? AND change IN ('create', 'update')", (self.name,))
            for sql in self.dialect.analyze("plan_calls"):
                self.conn.execute(sql)

    def uncovered_edges(self) -> Iterator[tuple[str, str]]:
        """(user, course) enrollment pairs of changed users not yet covered by a call, towards
        changed courses not yet covered: the choices that let one call cover both."""
        yield from self.conn.execute(
            f"WITH {UNCOVERED} SELECT e.user_id, e.course_id FROM desired_enrollments e "
            "JOIN users_left u ON u.source_id = e.user_id "
            "JOIN courses_left c ON c.source_id = e.course_id WHERE e.tenant = ?", (self.name,) * 5)

    def uncovered_users(self) -> Iterator[tuple[str, str]]:
        """Each changed user not yet covered, with one of their in-scope enrollments' course."""
        yield from self.conn.execute(
            f"WITH {UNCOVERED} SELECT u.source_id, (SELECT min(e.course_id) FROM desired_enrollments e "
            "WHERE e.tenant = ? AND e.user_id = u.source_id) FROM users_left u", (self.name,) * 5)

    def _last_seq(self) -> int:
        return self.conn.execute("SELECT coalesce(max(seq), 0) FROM plan_calls WHERE tenant = ?",
                                 (self.name,)).fetchone()[0]

    def add_calls(self, calls: Iterable[tuple[str, str | None]]) -> None:
        with self._write():
            start = self._last_seq()
            self.conn.executemany(
                "INSERT INTO plan_calls (tenant, seq, course_id, user_id) VALUES (?, ?, ?, ?)",
                ((self.name, start + i, course, user) for i, (course, user) in enumerate(calls, 1)))

    def plan_course_calls(self) -> None:
        """A changed course that no call covers yet is sent alone, unless a changed exam of its
        own will carry it (plan_exam_calls)."""
        with self._write():
            self.conn.execute(
                "INSERT INTO plan_calls (tenant, seq, course_id, user_id) "
                "SELECT tenant, ? + row_number() OVER (ORDER BY source_id), source_id, NULL "
                "FROM desired_courses d WHERE tenant = ? AND change IN ('create', 'update') AND NOT EXISTS "
                "(SELECT 1 FROM plan_calls p WHERE p.tenant = d.tenant AND p.course_id = d.source_id) "
                "AND NOT EXISTS (SELECT 1 FROM desired_exams x WHERE x.tenant = d.tenant AND x.course_id = d.source_id "
                "AND x.change IN ('create', 'update'))",
                (self._last_seq(), self.name))

    def exam_seats(self) -> dict[str, int]:
        """Courses with changed exams -> the calls they still need beyond their enrollment calls
        (exam_plan.py): ``max(changed exams, 1 if the course changed) - enrollment calls``, at least 0.
        Asked after the enrollment calls are planned; empty when no exam changed."""
        rows = self.conn.execute(
            "SELECT x.course_id, count(*), "
            "coalesce((SELECT CASE WHEN c.change IN ('create', 'update') THEN 1 ELSE 0 END FROM desired_courses c "
            "          WHERE c.tenant = x.tenant AND c.source_id = x.course_id), 0), "
            "(SELECT count(*) FROM plan_calls p WHERE p.tenant = x.tenant AND p.course_id = x.course_id) "
            "FROM desired_exams x WHERE x.tenant = ? AND x.change IN ('create', 'update') "
            "GROUP BY x.tenant, x.course_id",
            (self.name,))
        return {course: max(0, max(exams, changed) - calls) for course, exams, changed, calls in rows}

    def exam_edges(self) -> Iterator[tuple[str, str]]:
        """(user, course) enrollment pairs of changed users not yet covered, towards courses with
        changed exams: a rider there costs nothing while the course has free seats."""
        yield from self.conn.execute(
            f"WITH {UNCOVERED} SELECT e.user_id, e.course_id FROM desired_enrollments e "
            "JOIN users_left u ON u.source_id = e.user_id WHERE e.tenant = ? AND EXISTS (SELECT 1 FROM desired_exams x "
            "WHERE x.tenant = e.tenant AND x.course_id = e.course_id AND x.change IN ('create', 'update'))",
            (self.name,) * 5)

    def plan_exam_calls(self) -> None:
        """Each changed exam rides on a planned call of its course with no exam yet; the rest get
        a call each."""
        with self._write():
            for sql, params in exam_sql.plan_steps(self.name):
                self.conn.execute(sql, params)

    def call_count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM plan_calls WHERE tenant = ?", (self.name,)).fetchone()[0]

    def calls(self, *, with_sids: bool = True, batch: int = 500) -> Iterator[Call]:
        """The planned calls in order, with bodies and known sids, read in bounded batches."""
        last = 0
        while True:
            rows = self.conn.execute(CALLS, (self.name, last, batch)).fetchall()
            if not rows:
                return
            for row in rows:
                yield _call(row, with_sids)
            last = rows[-1][0]

    def keep_calls_of(self, entity: str, source_id: str) -> int:
        """Drop every planned call that does not carry this object; returns the calls kept."""
        column = {"user": "user_id", "exam": "exam_id"}.get(entity, "course_id")
        with self._write():
            self.conn.execute(f"DELETE FROM plan_calls WHERE tenant = ? AND {self.dialect.differs(column, '?')}",
                              (self.name, source_id))
        return self.call_count()


UNCOVERED = """
users_left AS (SELECT d.source_id FROM desired_users d WHERE d.tenant = ? AND d.change IN ('create', 'update')
    AND NOT EXISTS (SELECT 1 FROM plan_calls p WHERE p.tenant = ? AND p.user_id = d.source_id)),
courses_left AS (SELECT d.source_id FROM desired_courses d WHERE d.tenant = ? AND d.change IN ('create', 'update')
    AND NOT EXISTS (SELECT 1 FROM plan_calls p WHERE p.tenant = ? AND p.course_id = d.source_id))
"""

CALLS = """
SELECT p.seq, p.course_id, p.user_id, p.exam_id,
       dc.source_id, dc.body, ac.sid, dc.hash,
       du.source_id, du.body, au.sid, du.hash,
       de.source_id, de.body, ae.sid, de.hash,
       dx.source_id, dx.body, ax.sid, dx.hash
FROM plan_calls p
JOIN desired_courses dc ON dc.tenant = p.tenant AND dc.source_id = p.course_id
LEFT JOIN acked_courses ac ON ac.tenant = p.tenant AND ac.source_id = p.course_id
LEFT JOIN desired_users du ON du.tenant = p.tenant AND du.source_id = p.user_id
LEFT JOIN acked_users au ON au.tenant = p.tenant AND au.source_id = p.user_id
LEFT JOIN desired_enrollments de ON de.tenant = p.tenant AND de.course_id = p.course_id
     AND de.user_id = p.user_id
LEFT JOIN acked_enrollments ae ON ae.tenant = p.tenant AND ae.course_id = p.course_id
     AND ae.user_id = p.user_id
LEFT JOIN desired_exams dx ON dx.tenant = p.tenant AND dx.source_id = p.exam_id
LEFT JOIN acked_exams ax ON ax.tenant = p.tenant AND ax.source_id = p.exam_id
WHERE p.tenant = ? AND p.seq > ? ORDER BY p.seq LIMIT ?
"""


def _call(row: tuple[Any, ...], with_sids: bool) -> Call:
    """A row of CALLS: the seq and ids, then (source id, body, sid, hash) per entity in payload
    order; a part whose body is NULL is not carried by this call. The text of a desired body is
    its canonical JSON on either store (tests/test_plan.py), kept with the part."""
    seq, course_id, user_id, exam_id = row[0], row[1], row[2], row[3]
    keys: dict[Entity, tuple[str, ...] | None] = {
        "course": (course_id,), "user": (user_id,) if user_id else None,
        "enrollment": (course_id, user_id) if user_id else None, "exam": (exam_id,) if exam_id else None}
    parts: dict[Entity, Part] = {}
    for i, (entity, key) in enumerate(keys.items()):
        source_id, body, sid, digest = row[4 + 4 * i: 8 + 4 * i]
        if key is None or body is None:
            continue
        parts[entity] = Part(key, json.loads(body), sid if with_sids else None, digest,
                             source_id if entity == "enrollment" else None, body)
    return Call(seq, parts)
