"""Holds and escrow: removals waiting for the breaker, what a run held back and the admin's
approval of it, and the records the target keeps rejecting (retried on a schedule)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from syncd import limits
from syncd.entities import ENTITIES, KEYS, PLURAL, Entity
from syncd.store.base import Connected, Scoped, join, key_json, key_sql, utcnow

if TYPE_CHECKING:
    from syncd.store.staging import Remapped

# Retry delays of a record the target keeps rejecting, by consecutive rejections: then daily.
ESCROW_DELAYS_H = (1, 6, 24)
# This tenant's pending removals of one entity that the approved run (a parameter) did not hold.
UNAPPROVED = ("FROM pending_removals p WHERE p.tenant = ? AND p.entity = ? AND NOT EXISTS "
              "(SELECT 1 FROM held h WHERE h.run_id = ? AND h.entity = p.entity AND h.kind = 'remove' "
              "AND h.key = p.key)")


class Holds(Scoped):

    def collect_removals(self, entities: tuple[Entity, ...] = ENTITIES, run_id: str | None = None,
                         among: Remapped | None = None) -> dict[Entity, int]:
        """Acknowledged objects no longer in scope, into pending_removals; their count per entity.
        ``entities``: those whose extract was complete (exams may not be, when the roster is). An
        exam that failed to map in ``run_id`` is not removed: it is still in the source. ``among``:
        only the objects whose desired rows were mapped again this run (a run that began settled
        had nothing left to remove; what build_desired kept is still in scope)."""
        counts: dict[Entity, int] = dict.fromkeys(ENTITIES, 0)
        with self._write():
            self.conn.execute("DELETE FROM pending_removals WHERE tenant = ?", (self.name,))
            for entity in entities:
                plural = PLURAL[entity]
                failed = ("AND NOT EXISTS (SELECT 1 FROM errors e WHERE e.run_id = ? AND e.entity = 'exam' "
                          "AND e.source_id = a.source_id)" if entity == "exam" else "AND CAST(? AS TEXT) IS NULL")
                narrow, params = _among(entity, among, self.dialect.each_text("?"), self.dialect.each_pair("?"))
                counts[entity] = self.conn.execute(
                    "INSERT INTO pending_removals (tenant, entity, key) "
                    f"SELECT a.tenant, ?, {key_sql('a', entity, self.dialect)} "
                    f"FROM acked_{plural} a WHERE a.tenant = ? {narrow}AND a.removed_at IS NULL AND NOT EXISTS "
                    f"(SELECT 1 FROM desired_{plural} d WHERE {join('d', 'a', entity)}) {failed}",
                    (entity, self.name, *params, run_id if entity == "exam" else None)).rowcount
        return counts

    def pending_removals(self) -> list[tuple[Entity, tuple[str, ...]]]:
        return [(e, tuple(json.loads(k))) for e, k in self.conn.execute(
            "SELECT entity, key FROM pending_removals WHERE tenant = ? ORDER BY entity, key", (self.name,))]

    def pending_removal_counts(self) -> dict[Entity, int]:
        rows = dict(self.conn.execute("SELECT entity, count(*) FROM pending_removals WHERE tenant = ? GROUP BY 1",
                                      (self.name,)).fetchall())
        return {e: rows.get(e, 0) for e in ENTITIES}

    def open_approval(self) -> str | None:
        """The held run an admin approved and no run has acted on yet."""
        row = self.conn.execute("SELECT run_id FROM approvals WHERE tenant = ? AND spent_by IS NULL "
                                "ORDER BY approved_at DESC LIMIT 1", (self.name,)).fetchone()
        return row[0] if row else None

    def spend_approval(self, approved_run: str, by_run: str) -> None:
        with self._write():
            self.conn.execute("UPDATE approvals SET spent_by = ? WHERE run_id = ?", (by_run, approved_run))

    def held_keys(self, run_id: str) -> list[tuple[Entity, str, tuple[str, ...]]]:
        return [(e, kind, tuple(json.loads(k))) for e, kind, k in self.conn.execute(
            "SELECT entity, kind, key FROM held WHERE run_id = ? ORDER BY entity, kind, key", (run_id,))]

    def held_counts(self, run_id: str) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for entity, kind, n in self.conn.execute(
                "SELECT entity, kind, count(*) FROM held WHERE run_id = ? GROUP BY 1, 2", (run_id,)):
            counts.setdefault(entity, {})[kind] = n
        return counts

    def unapproved_removals(self, entity: Entity, approved_run: str | None) -> int:
        return self.conn.execute(f"SELECT count(*) {UNAPPROVED}", (self.name, entity, approved_run)).fetchone()[0]

    def hold_removals(self, run_id: str, entity: Entity, approved_run: str | None) -> int:
        """Hold this entity's pending removals that no approval covers; they stay acknowledged."""
        with self._write():
            held = self.conn.execute(
                f"INSERT INTO held (tenant, run_id, entity, kind, key) SELECT p.tenant, ?, p.entity, "
                f"'remove', p.key {UNAPPROVED} ON CONFLICT DO NOTHING",
                (run_id, self.name, entity, approved_run)).rowcount
            self.conn.execute(
                "DELETE FROM pending_removals WHERE tenant = ? AND entity = ? AND key IN "
                "(SELECT key FROM held WHERE run_id = ? AND entity = ? AND kind = 'remove')",
                (self.name, entity, run_id, entity))
        return held

    def hold_all_removals(self, run_id: str) -> dict[Entity, int]:
        """A freeze: every pending removal is held."""
        counts: dict[Entity, int] = {}
        with self._write():
            for entity in ENTITIES:
                counts[entity] = self.conn.execute(
                    "INSERT INTO held (tenant, run_id, entity, kind, key) SELECT tenant, ?, entity, "
                    "'remove', key FROM pending_removals WHERE tenant = ? AND entity = ? ON CONFLICT DO NOTHING",
                    (run_id, self.name, entity)).rowcount
            self.conn.execute("DELETE FROM pending_removals WHERE tenant = ?", (self.name,))
        return counts

    def apply_removals(self) -> dict[Entity, int]:
        """Tombstone the pending removals (one transaction)."""
        counts: dict[Entity, int] = {}
        now = utcnow()
        with self._write():
            for entity in ENTITIES:
                plural, keys = PLURAL[entity], KEYS[entity]
                # The pending keys' columns are looked up, not each acknowledged row's key built and
                # compared: a seek per removal instead of a pass over the tenant (32 ms -> 3.5 ms for
                # 300 of 100k enrollments).
                columns = ", ".join(f"a.{k}" for k in keys)
                elements = ", ".join(self.dialect.element("key", i) for i in range(len(keys)))
                counts[entity] = self.conn.execute(
                    f"UPDATE acked_{plural} AS a SET removed_at = ? WHERE a.tenant = ? AND a.removed_at IS NULL "
                    f"AND ({columns}) IN (SELECT {elements} FROM pending_removals WHERE tenant = ? AND entity = ?)",
                    (now, self.name, self.name, entity)).rowcount
            self.conn.execute("DELETE FROM pending_removals WHERE tenant = ?", (self.name,))
        return counts

    def hold_updates(self, run_id: str, entity: Entity) -> int:
        """The update breaker: this entity's updates keep the acknowledged body this run."""
        plural = PLURAL[entity]
        with self._write():
            held = self.conn.execute(
                f"INSERT INTO held (tenant, run_id, entity, kind, key) SELECT d.tenant, ?, ?, 'update', "
                f"{key_sql('d', entity, self.dialect)} FROM desired_{plural} d "
                "WHERE d.tenant = ? AND d.change = 'update' ON CONFLICT DO NOTHING",
                (run_id, entity, self.name)).rowcount
            self.conn.execute(
                f"UPDATE desired_{plural} AS d SET change = 'held', body = a.body, hash = a.hash "
                f"FROM acked_{plural} a WHERE {join('d', 'a', entity)} AND d.tenant = ? AND d.change = 'update'",
                (self.name,))
        return held

    def guarded_exam_updates(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """Changed exams with their acknowledged and desired bodies, for the window guard."""
        return [(source_id, json.loads(old), json.loads(new)) for source_id, old, new in self.conn.execute(
            "SELECT d.source_id, a.body, d.body FROM desired_exams d JOIN acked_exams a ON a.tenant = d.tenant "
            "AND a.source_id = d.source_id WHERE d.tenant = ? AND d.change = 'update' ORDER BY d.source_id",
            (self.name,))]

    def was_held(self, run_id: str | None, entity: Entity, kind: str, key: tuple[str, ...]) -> bool:
        return run_id is not None and self.conn.execute(
            "SELECT 1 FROM held WHERE run_id = ? AND entity = ? AND kind = ? AND key = ?",
            (run_id, entity, kind, key_json(key))).fetchone() is not None

    def hold_exam_update(self, run_id: str, source_id: str) -> None:
        """The window guard: this exam keeps its acknowledged body this run."""
        with self._write():
            self.conn.execute("INSERT INTO held (tenant, run_id, entity, kind, key) "
                              "VALUES (?, ?, 'exam', 'update', ?) ON CONFLICT DO NOTHING",
                              (self.name, run_id, key_json((source_id,))))
            self.conn.execute(
                "UPDATE desired_exams AS d SET change = 'held', body = a.body, hash = a.hash FROM acked_exams a "
                "WHERE a.tenant = d.tenant AND a.source_id = d.source_id AND d.tenant = ? AND d.source_id = ?",
                (self.name, source_id))

    def escrow(self, run_id: str, entity: Entity, key: tuple[str, ...], http_status: int | None,
               message: str) -> tuple[int, str]:
        """One more run in which the target rejected this record: its attempts and when it may be
        tried again. Several rejected calls of one run count once."""
        now = datetime.now(UTC)
        encoded = key_json(key)
        with self._write():
            row = self.conn.execute("SELECT attempts, next_retry_at, run_id FROM escrow WHERE tenant = ? "
                                    "AND entity = ? AND key = ?", (self.name, entity, encoded)).fetchone()
            if row and row[2] == run_id:
                return row[0], row[1]
            attempts = (row[0] if row else 0) + 1
            delay = ESCROW_DELAYS_H[min(attempts, len(ESCROW_DELAYS_H)) - 1]
            retry = (now + timedelta(hours=delay)).isoformat(timespec="seconds").replace("+00:00", "Z")
            self.conn.execute(
                "INSERT INTO escrow (tenant, entity, key, attempts, next_retry_at, http_status, message, first_seen, "
                "run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, entity, key) DO UPDATE SET "
                "attempts = excluded.attempts, next_retry_at = excluded.next_retry_at, "
                "http_status = excluded.http_status, message = excluded.message, run_id = excluded.run_id",
                (self.name, entity, encoded, attempts, retry, http_status, message, utcnow(), run_id))
        return attempts, retry

    def defer_escrowed(self) -> list[dict[str, Any]]:
        """Changes whose record waits in escrow are not planned this run; returns those records."""
        now = utcnow()
        # A retry time further ahead than the longest delay was set by a clock that was ahead: due now.
        horizon = limits.iso_after(max(ESCROW_DELAYS_H) * 3600.0)
        deferred: list[dict[str, Any]] = []
        # Most runs have nothing in escrow: one look saves a pass over every desired table.
        if self.conn.execute("SELECT 1 FROM escrow WHERE tenant = ? LIMIT 1", (self.name,)).fetchone() is None:
            return deferred
        with self._write():
            for entity in ENTITIES:
                plural = PLURAL[entity]
                waiting = (f"FROM desired_{plural} d JOIN escrow x ON x.tenant = d.tenant AND x.entity = ? "
                           f"AND x.key = {key_sql('d', entity, self.dialect)} WHERE d.tenant = ? "
                           "AND d.change IN ('create', 'update') AND x.next_retry_at > ? AND x.next_retry_at <= ?")
                rows = self.conn.execute(
                    f"SELECT x.key, x.attempts, x.next_retry_at, x.http_status, x.message, x.first_seen, d.source_id, "
                    f"d.body {waiting}",
                    (entity, self.name, now, horizon)).fetchall()
                self.conn.execute(
                    f"UPDATE desired_{plural} SET change = 'deferred' WHERE tenant = ? "
                    f"AND change IN ('create', 'update') AND ({', '.join(KEYS[entity])}) "
                    f"IN (SELECT {', '.join('d.' + k for k in KEYS[entity])} {waiting})",
                    (self.name, entity, self.name, now, horizon))
                deferred += [{"entity": entity, "key": tuple(json.loads(r[0])), "attempts": r[1], "next_retry_at": r[2],
                              "http_status": r[3], "message": r[4], "first_seen": r[5], "source_id": r[6],
                              "body": json.loads(r[7])} for r in rows]
        return deferred


class Approvals(Connected):
    """The admin's side of a hold: `syncd approve` names the held run it releases."""

    def approve(self, tenant: str, run_id: str | None) -> tuple[str, dict[str, dict[str, int]]]:
        """Approve a held run (the tenant's last held run by default); returns it and what it held."""
        with self._write():
            if run_id is None:
                row = self.conn.execute("SELECT run_id FROM runs WHERE tenant = ? AND status = 'held' "
                                        "ORDER BY started_at DESC LIMIT 1", (tenant,)).fetchone()
                if row is None:
                    raise LookupError(f"tenant {tenant} has no held run to approve")
                run_id = row[0]
            row = self.conn.execute("SELECT tenant, status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None or row[0] != tenant:
                raise LookupError(f"no run {run_id} for tenant {tenant}")
            if row[1] != "held":
                raise LookupError(f"run {run_id} is {row[1]}, not held: there is nothing to approve")
            self.conn.execute("INSERT INTO approvals (run_id, tenant, approved_at) VALUES (?, ?, ?) "
                              "ON CONFLICT (run_id) DO UPDATE SET approved_at = excluded.approved_at, spent_by = NULL",
                              (run_id, tenant, utcnow()))
        return run_id, self.tenant(tenant).held_counts(run_id)

    def tenant(self, name: str) -> Holds:  # Store gives the TenantStore
        raise NotImplementedError


def _among(entity: Entity, among: Remapped | None, each: str, pair: str) -> tuple[str, tuple[str, ...]]:
    """The condition (on alias ``a``) and its parameters that keep the acknowledged rows whose
    desired rows were mapped again (Remapped); no condition without ``among``."""
    if among is None:
        return "", ()
    if entity == "enrollment":
        return (f"AND (a.course_id IN ({each}) OR a.user_id IN ({each}) OR (a.course_id, a.user_id) IN ({pair})) ",
                (json.dumps(sorted(among.classes)), json.dumps(sorted(among.users)), among.pairs_json()))
    if entity not in ("course", "user"):
        return "", ()  # exams: a tenant with exams never begins settled
    ids = among.courses if entity == "course" else among.people
    return f"AND a.source_id IN ({each}) ", (json.dumps(sorted(ids)),)
