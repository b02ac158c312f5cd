"""The read-only queries of `syncd explain`: one record's trail through the state of one tenant.

Nothing here writes. Each method answers one question about one record, named by its entity and
its key (``("c1",)``, or ``("c1", "u1")`` for an enrollment), and returns plain rows; turning them
into scope rules, a verdict and a story is ``syncd/explain.py``'s job.
"""

from __future__ import annotations

import json
from typing import Any

from syncd.entities import KEYS, SPECS, Entity
from syncd.store.base import Scoped, key_json


class Trail(Scoped):

    def _dicts(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        return [dict(row) for row in self._rows(sql, params)]

    def _dict(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        rows = self._dicts(sql, params)
        return rows[0] if rows else None

    def last_extract_run(self) -> dict[str, Any] | None:
        """The last run that staged what the source said (a run refused at authorization staged nothing)."""
        return self._dict(
            "SELECT run_id, started_at, finished_at, status, dry_run, extract_complete, message FROM runs "
            "WHERE tenant = ? AND coalesce(message, '') NOT LIKE ? "  # a parameter: no '%' in the SQL (psycopg)
            "ORDER BY started_at DESC LIMIT 1", (self.name, "source authorization failed%"))

    def staged_rows(self, entity: Entity, key: tuple[str, ...]) -> list[dict[str, Any]]:
        """What the last extract said of the record: several rows for an enrollment whose
        (course, user) pair the source lists more than once."""
        if entity == "enrollment":
            rows = self._dicts("SELECT * FROM stage_enrollments WHERE tenant = ? AND course_id = ? AND user_id = ? "
                               "ORDER BY source_id", (self.name, *key))
        else:
            rows = self._dicts(f"SELECT * FROM {SPECS[entity].stage} WHERE tenant = ? AND source_id = ?",
                               (self.name, key[0]))
        for row in rows:
            row.pop("tenant", None)
            row.pop("page", None)  # where the row was read from (store.pages), not what the source said
            row["active"] = bool(row["active"])
        return rows

    def staged_enrollments_of(self, user_id: str) -> list[dict[str, Any]]:
        rows = self._dicts("SELECT * FROM stage_enrollments WHERE tenant = ? AND user_id = ? ORDER BY source_id",
                           (self.name, user_id))
        for row in rows:
            row.pop("tenant", None)
            row.pop("page", None)  # where the row was read from (store.pages), not what the source said
            row["active"] = bool(row["active"])
        return rows

    def desired_row(self, entity: Entity, key: tuple[str, ...]) -> dict[str, Any] | None:
        row = self._dict(f"SELECT * FROM {SPECS[entity].desired} WHERE tenant = ? AND {_where(entity)}",
                         (self.name, *key))
        if row:
            row["body"] = json.loads(row["body"])
        return row

    def acked_row(self, entity: Entity, key: tuple[str, ...]) -> dict[str, Any] | None:
        return self._dict(f"SELECT * FROM {SPECS[entity].acked} WHERE tenant = ? AND {_where(entity)}",
                          (self.name, *key))

    def has_enrollment(self, course_id: str, user_id: str) -> bool:
        """Whether the last extract or the synced state knows this (course, user) pair."""
        return self.conn.execute(
            "SELECT 1 FROM stage_enrollments WHERE tenant = ? AND course_id = ? AND user_id = ? "
            "UNION ALL SELECT 1 FROM acked_enrollments WHERE tenant = ? AND course_id = ? AND user_id = ? LIMIT 1",
            (self.name, course_id, user_id, self.name, course_id, user_id)).fetchone() is not None

    def extract_errors(self, entity: Entity, key: tuple[str, ...], source_ids: list[str],
                       run_id: str | None) -> list[dict[str, Any]]:
        """The record errors of one run's extract for this record (unreadable, duplicate, dangling)."""
        if run_id is None:
            return []
        # An enrollment's errors may name its (course, user) instead of a source id; a course's or user's never.
        pair, params = ("OR (course_id = ? AND user_id = ?)", key) if entity == "enrollment" else ("", ())
        return self._dicts(
            "SELECT source_id, message FROM errors WHERE run_id = ? AND entity = ? AND stage = 'extract' "
            f"AND (source_id IN ({self.dialect.each_text('?')}) {pair}) ORDER BY id",
            (run_id, entity, json.dumps(source_ids), *params))

    def record_errors(self, entity: Entity, key: tuple[str, ...], source_ids: list[str]) -> list[dict[str, Any]]:
        """The record's errors over the retained runs, oldest first; for a user also their
        enrollments' (a rejected call is attributed to the enrollment it carried, and the user may be
        what was refused)."""
        select = ("SELECT e.run_id, e.entity, e.stage, e.http_status, e.message, e.attempts, e.first_seen, "
                  "e.last_seen, e.next_retry_at, e.source_id, e.course_id, e.user_id FROM errors e "
                  "JOIN runs r ON r.run_id = e.run_id WHERE e.tenant = ? AND ")
        order = " ORDER BY r.started_at, e.id"
        if entity == "enrollment":
            return self._dicts(select + f"e.entity = 'enrollment' AND (e.source_id IN ({self.dialect.each_text('?')}) "
                               "OR (e.course_id = ? AND e.user_id = ?))" + order,
                               (self.name, json.dumps([*source_ids, "/".join(key)]), *key))
        if entity == "user":
            return self._dicts(select + "((e.entity = 'user' AND e.source_id = ?) OR "
                               "(e.entity = 'enrollment' AND e.user_id = ?))" + order, (self.name, key[0], key[0]))
        return self._dicts(select + "e.entity = 'course' AND e.source_id = ?" + order, (self.name, key[0]))

    def last_call(self, entity: Entity, key: tuple[str, ...]) -> dict[str, Any] | None:
        """The last call that carried the record, and the target's answer for it: ``carried`` (the
        entities of the call), ``outcome``, ``sid`` and ``answer`` for this record."""
        where = {"enrollment": "course_id = ? AND user_id = ?", "course": "course_id = ?",
                 "user": "user_id = ?"}[entity]  # a user's: a scan, fine for one manual question
        row = self._dict(f"SELECT run_id, seq, at, http_status, message, answers FROM call_log WHERE tenant = ? "
                         f"AND {where} ORDER BY at DESC LIMIT 1", (self.name, *key))
        if row is None:
            return None
        answers = json.loads(row.pop("answers"))
        outcome, sid, answer = answers.get(entity, [None, None, None])
        if outcome is None:
            return None
        return {**row, "carried": list(answers), "outcome": outcome, "sid": sid, "answer": answer or row["message"]}

    def escrow_entry(self, entity: Entity, key: tuple[str, ...]) -> dict[str, Any] | None:
        return self._dict("SELECT attempts, next_retry_at, http_status, message, first_seen, run_id FROM escrow "
                          "WHERE tenant = ? AND entity = ? AND key = ?", (self.name, entity, key_json(key)))

    def holds_of(self, entity: Entity, key: tuple[str, ...]) -> list[dict[str, Any]]:
        """Every retained run that held back a change of the record, with its approval if any."""
        return self._dicts(
            "SELECT h.run_id, h.kind, r.started_at, r.message, a.approved_at, a.spent_by FROM held h "
            "JOIN runs r ON r.run_id = h.run_id LEFT JOIN approvals a ON a.run_id = h.run_id "
            "WHERE h.tenant = ? AND h.entity = ? AND h.key = ? ORDER BY r.started_at",
            (self.name, entity, key_json(key)))

    def removal_pending(self, entity: Entity, key: tuple[str, ...]) -> bool:
        return self.conn.execute("SELECT 1 FROM pending_removals WHERE tenant = ? AND entity = ? AND key = ?",
                                 (self.name, entity, key_json(key))).fetchone() is not None

    def enrollment_pairs_near(self, course_id: str, user_id: str, limit: int = 10000) -> list[tuple[str, str]]:
        """Known (course, user) pairs that share the course or the user."""
        return [(r[0], r[1]) for r in self.conn.execute(
            "SELECT course_id, user_id FROM stage_enrollments WHERE tenant = ? AND (course_id = ? OR user_id = ?) "
            "UNION SELECT course_id, user_id FROM acked_enrollments WHERE tenant = ? "
            "AND (course_id = ? OR user_id = ?) LIMIT ?",
            (self.name, course_id, user_id, self.name, course_id, user_id, limit))]

    def ids_by_external_id(self, entity: Entity, external: str) -> list[str]:
        """The records whose SIS (external) id is this: a Canvas id is what the store keys on."""
        spec = SPECS[entity]
        return [row[0] for row in self.conn.execute(
            f"SELECT source_id FROM {spec.stage} WHERE tenant = ? AND external_id = ? UNION SELECT source_id "
            f"FROM {spec.acked} WHERE tenant = ? AND {self.dialect.member('body', 'ids.external')} = ?",
            (self.name, external, self.name, external))]

    def known_names(self, entity: Entity) -> dict[str, str]:
        """Every known id of a course or user (last extract and synced state) with its name."""
        member = self.dialect.member
        if entity == "course":
            staged = "SELECT source_id, title FROM stage_courses WHERE tenant = ?"
            acked = f"SELECT source_id, {member('body', 'title')} FROM acked_courses WHERE tenant = ?"
        else:
            staged = "SELECT source_id, trim(first_name || ' ' || last_name) FROM stage_users WHERE tenant = ?"
            acked = (f"SELECT source_id, trim(coalesce({member('body', 'firstName')}, '') || ' ' || "
                     f"coalesce({member('body', 'lastName')}, '')) FROM acked_users WHERE tenant = ?")
        names: dict[str, str] = {}
        for sql in (staged, acked):
            for ident, name in self.conn.execute(sql, (self.name,)):
                names.setdefault(ident, name or "")
        return names


def _where(entity: Entity) -> str:
    return " AND ".join(f"{k} = ?" for k in KEYS[entity])
