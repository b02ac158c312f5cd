"""The planner's SQL (``plan_calls``): the questions :mod:`syncd.plan` asks and the calls read back."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from syncd.entities import SPECS, Call, Entity, Part
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
        """A changed course that no call covers yet is sent alone."""
        with self._write():
            self.conn.execute(
                "INSERT INTO plan_calls (tenant, seq, course_id, user_id) "
                "SELECT tenant, ? + row_number() OVER (ORDER BY source_id), source_id, NULL "
                "FROM desired_courses d WHERE tenant = ? AND change IN ('create', 'update') AND NOT EXISTS "
                "(SELECT 1 FROM plan_calls p WHERE p.tenant = d.tenant AND p.course_id = d.source_id)",
                (self._last_seq(), self.name))

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
        column = "user_id" if entity == "user" else "course_id"
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
SELECT p.seq, p.course_id, p.user_id,
       dc.source_id, dc.body, ac.sid, dc.hash,
       du.source_id, du.body, au.sid, du.hash,
       de.source_id, de.body, ae.sid, de.hash
FROM plan_calls p
JOIN desired_courses dc ON dc.tenant = p.tenant AND dc.source_id = p.course_id
LEFT JOIN acked_courses ac ON ac.tenant = p.tenant AND ac.source_id = p.course_id
LEFT JOIN desired_users du ON du.tenant = p.tenant AND du.source_id = p.user_id
LEFT JOIN acked_users au ON au.tenant = p.tenant AND au.source_id = p.user_id
LEFT JOIN desired_enrollments de ON de.tenant = p.tenant AND de.course_id = p.course_id
     AND de.user_id = p.user_id
LEFT JOIN acked_enrollments ae ON ae.tenant = p.tenant AND ae.course_id = p.course_id
     AND ae.user_id = p.user_id
WHERE p.tenant = ? AND p.seq > ? ORDER BY p.seq LIMIT ?
"""


def _call(row: tuple[Any, ...], with_sids: bool) -> Call:
    """A row of CALLS: the seq, then (key, source id, body, sid, hash) per entity; a part whose
    body is NULL is not carried by this call."""
    seq, course_id, user_id = row[0], row[1], row[2]
    keys: dict[Entity, tuple[str, ...]] = {"course": (course_id,), "user": (user_id,),
                                           "enrollment": (course_id, user_id)}
    parts: dict[Entity, Part] = {}
    for i, entity in enumerate(SPECS):
        source_id, body, sid, digest = row[3 + 4 * i: 7 + 4 * i]
        if body is None or (entity != "course" and user_id is None):
            break
        parts[entity] = Part(keys[entity], json.loads(body), sid if with_sids else None, digest,
                             source_id if entity == "enrollment" else None)
    return Call(seq, parts)
