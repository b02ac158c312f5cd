"""Acknowledgements: what the target confirmed, written only here, one transaction per batch of
returned calls, before anything is sent again on their behalf; tombstones restored; disabled users."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from syncd.entities import ENTITIES, KEYS, PLURAL, Call, Entity
from syncd.model import canonical_json
from syncd.store.base import Scoped, join, key_json, utcnow


class Acknowledgements(Scoped):

    def acknowledge(self, acks: Iterable[tuple[Call, dict[Entity, str]]]) -> None:
        """Record what the target acknowledged for the calls that just returned, in one
        transaction, before any further call is sent on their behalf."""
        now = utcnow()
        with self._write():
            # Most pushes have nothing in escrow: one look saves a DELETE per acknowledged part.
            escrowed = self.conn.execute("SELECT 1 FROM escrow WHERE tenant = ? LIMIT 1",
                                         (self.name,)).fetchone() is not None
            for call, sids in acks:
                for entity, part in call.parts.items():
                    if entity in sids:
                        self._ack(entity, (self.name, *part.key), sids[entity], part.hash, part.body, now)
                        if escrowed:
                            self.conn.execute("DELETE FROM escrow WHERE tenant = ? AND entity = ? AND key = ?",
                                              (self.name, entity, key_json(part.key)))

    def _ack(self, entity: Entity, key: tuple[str, ...], sid: str, digest: str | None,
             body: dict[str, Any], now: str) -> None:
        plural, columns = PLURAL[entity], ("tenant", *KEYS[entity])
        stored = {k: v for k, v in body.items()}
        if isinstance(stored.get("ids"), dict):
            stored["ids"] = {k: v for k, v in stored["ids"].items() if k != "sid"}
        self.conn.execute(
            f"INSERT INTO acked_{plural} ({', '.join(columns)}, sid, hash, body, acked_at, removed_at) "
            f"VALUES ({','.join('?' * len(columns))}, ?, ?, ?, ?, NULL) "
            f"ON CONFLICT ({', '.join(columns)}) DO UPDATE SET sid = excluded.sid, hash = excluded.hash, "
            "body = excluded.body, acked_at = excluded.acked_at, removed_at = NULL",
            (*key, sid, digest, canonical_json(stored), now))

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
