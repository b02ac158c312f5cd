"""Acknowledgements: what the target confirmed, written only here, one transaction per batch of
returned calls, before anything is sent again on their behalf; tombstones restored; disabled users."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from syncd.entities import ENTITIES, KEYS, PLURAL, Call, Entity, Part
from syncd.model import canonical_json
from syncd.store.base import Scoped, join, key_json, utcnow


@dataclass(frozen=True)
class CallLog:
    """One returned (or failed) call, as `syncd explain` shows it: per object carried, whether the
    target acknowledged it (its ``sid`` and answer) or what went wrong (``message``)."""

    run_id: str
    call: Call
    outcome: str  # acknowledged | rejected | failed
    http_status: int | None = None
    message: str | None = None
    sids: dict[Entity, str] = field(default_factory=dict)
    answers: dict[Entity, str] = field(default_factory=dict)
    outcomes: dict[Entity, str] = field(default_factory=dict)  # per object, where it differs from outcome


@functools.cache
def _ack_sql(entity: Entity) -> str:
    plural, columns = PLURAL[entity], ("tenant", *KEYS[entity])
    return (f"INSERT INTO acked_{plural} ({', '.join(columns)}, sid, hash, body, acked_at, removed_at) "
            f"VALUES ({','.join('?' * len(columns))}, ?, ?, ?, ?, NULL) "
            f"ON CONFLICT ({', '.join(columns)}) DO UPDATE SET sid = excluded.sid, hash = excluded.hash, "
            "body = excluded.body, acked_at = excluded.acked_at, removed_at = NULL")


def _ack_row(key: tuple[str, ...], sid: str, part: Part, now: str) -> tuple[Any, ...]:
    """The acknowledged row: the body as sent, without the sid the target keeps in ids."""
    body = part.body
    ids = body.get("ids")
    if isinstance(ids, dict) and "sid" in ids:
        return (*key, sid, part.hash, canonical_json({**body, "ids": {k: v for k, v in ids.items() if k != "sid"}}),
                now)
    return (*key, sid, part.hash, part.text if part.text is not None else canonical_json(body), now)


class Acknowledgements(Scoped):

    def acknowledge(self, acks: Iterable[tuple[Call, Mapping[str, str]]], call_log: Iterable[CallLog] = ()) -> None:
        """Record what the target acknowledged for the calls that just returned, in one
        transaction, before any further call is sent on their behalf. ``sids`` is entity -> sid,
        plus ``configuration`` -> the exam's configuration sid when the call carried an exam. One
        ``executemany`` per table (in call order: a later acknowledgement of the same object wins),
        so PostgreSQL pipelines the batch instead of a round trip per row.
        ``call_log`` is each returned call's answer, kept for `syncd explain`."""
        now = utcnow()
        rows: dict[Entity, list[tuple[Any, ...]]] = {}
        acked: list[tuple[Entity, tuple[str, ...]]] = []
        exams: list[tuple[Call, str, str, str | None, str | None, dict[str, Any]]] = []
        for call, sids in acks:
            for entity, part in call.parts.items():
                if entity == "exam" and entity in sids:
                    exams.append((call, part.key[0], sids["exam"], sids.get("configuration"), part.hash, part.body))
                elif entity in sids:
                    rows.setdefault(entity, []).append(
                        _ack_row((self.name, *part.key), sids[entity], part, now))
                    acked.append((entity, part.key))
        with self._write():
            self._log_calls(call_log, now)
            for entity, batch in rows.items():
                self.conn.executemany(_ack_sql(entity), batch)
            # Most pushes have nothing in escrow: one look saves a DELETE (and its key's text) per
            # acknowledged part.
            if acked and self.conn.execute("SELECT 1 FROM escrow WHERE tenant = ? LIMIT 1",
                                           (self.name,)).fetchone() is not None:
                self.conn.executemany("DELETE FROM escrow WHERE tenant = ? AND entity = ? AND key = ?",
                                      [(self.name, entity, key_json(key)) for entity, key in acked])
            for call, source_id, sid, configuration_sid, digest, body in exams:
                self._ack_exam(call, source_id, sid, configuration_sid, digest, body, now)

    def _log_calls(self, entries: Iterable[CallLog], now: str) -> None:
        """The last call of each (course, user) pair ("" for a course alone) and, per object it
        carried, the target's answer: [outcome, sid, answer]."""
        rows = []
        for entry in entries:
            call = entry.call
            answers = {e: [entry.outcomes.get(e, entry.outcome), entry.sids.get(e), entry.answers.get(e)]
                       for e in call.parts}
            rows.append((self.name, call.course_id, call.user_id or "", entry.run_id, call.seq, now, entry.outcome,
                         entry.http_status, entry.message, json.dumps(answers, separators=(",", ":"))))
        if not rows:
            return
        self.conn.executemany(
            "INSERT INTO call_log (tenant, course_id, user_id, run_id, seq, at, outcome, http_status, message, "
            "answers) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, course_id, user_id) DO UPDATE SET "
            "run_id = excluded.run_id, seq = excluded.seq, at = excluded.at, outcome = excluded.outcome, "
            "http_status = excluded.http_status, message = excluded.message, answers = excluded.answers", rows)

    def _ack_exam(self, call: Call, source_id: str, sid: str, configuration_sid: str | None, digest: str | None,
                  body: dict[str, Any], now: str) -> None:
        """An exam with both its sids; acknowledging it again undoes a soft delete (the target
        reactivates an exam provisioned again)."""
        stored = {**body, "ids": {k: v for k, v in body.get("ids", {}).items() if k != "sid"}}
        self.conn.execute(
            "INSERT INTO acked_exams (tenant, source_id, course_id, sid, configuration_sid, hash, body, acked_at, "
            "removed_at, deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL) ON CONFLICT (tenant, source_id) "
            "DO UPDATE SET course_id = excluded.course_id, sid = excluded.sid, "
            "configuration_sid = coalesce(excluded.configuration_sid, acked_exams.configuration_sid), "
            "hash = excluded.hash, "
            "body = excluded.body, acked_at = excluded.acked_at, removed_at = NULL, deleted_at = NULL",
            (self.name, source_id, call.course_id, sid, configuration_sid, digest, canonical_json(stored), now))

    def exams_to_delete(self) -> list[tuple[str, str, str, str]]:
        """Tombstoned exams not yet deleted in the target: (source id, course sid, exam sid, title)."""
        return self.conn.execute(
            f"SELECT x.source_id, c.sid, x.sid, {self.dialect.member('x.body', 'title')} FROM acked_exams x "
            "JOIN acked_courses c ON c.tenant = x.tenant AND c.source_id = x.course_id "
            "WHERE x.tenant = ? AND x.removed_at IS NOT NULL AND x.deleted_at IS NULL AND x.sid IS NOT NULL "
            "AND c.sid IS NOT NULL ORDER BY x.source_id", (self.name,)).fetchall()

    def set_exam_deleted(self, source_id: str) -> None:
        with self._write():
            self.conn.execute("UPDATE acked_exams SET deleted_at = ? WHERE tenant = ? AND source_id = ?",
                              (utcnow(), self.name, source_id))

    def users_to_disable(self) -> list[tuple[str, str]]:
        return self.conn.execute("SELECT source_id, sid FROM acked_users WHERE tenant = ? AND removed_at IS NOT NULL "
                                 "AND disabled_at IS NULL AND sid IS NOT NULL", (self.name,)).fetchall()

    def users_to_enable(self) -> list[tuple[str, str]]:
        return self.conn.execute("SELECT source_id, sid FROM acked_users WHERE tenant = ? AND removed_at IS NULL "
                                 "AND disabled_at IS NOT NULL", (self.name,)).fetchall()

    def set_disabled(self, source_id: str, disabled: bool) -> None:
        with self._write():
            self.conn.execute("UPDATE acked_users SET disabled_at = ? WHERE tenant = ? AND source_id = ?",
                              (utcnow() if disabled else None, self.name, source_id))

    def restore_returning(self) -> None:
        """Clear tombstones of objects that are back in scope (same source id: restore, never
        duplicate). Their sid is kept, so the next push updates the same target object."""
        with self._write():
            for entity in ENTITIES:
                plural = PLURAL[entity]
                self.conn.execute(
                    f"UPDATE acked_{plural} AS a SET removed_at = NULL WHERE a.tenant = ? "
                    f"AND a.removed_at IS NOT NULL AND EXISTS (SELECT 1 FROM desired_{plural} d "
                    f"WHERE {join('d', 'a', entity)})", (self.name,))
