"""Settled marks (issue 15): a run whose inputs are exactly those of a run that found nothing to do
finds nothing to do either, so it may skip the diff.

A complete run (full or delta) that planned no call, removed, held and escrowed nothing and met no error leaves a
``settled_marks`` row: the fingerprint of the tenant's settings and the code (from the engine) and the
unchanged count of each entity. Who may delete it, in the transaction of their write:

- the rows a run reads into the diff that change only in a run, ``stage_*`` and ``desired_*``: any
  staging change (with ``desired_marks``, ``Scoped._forget_desired``), any mapping by
  ``build_desired``, and every diff (``Diff.classify``) drop it, so a run that stops anywhere after
  changing them leaves no mark (bulk tables: code, not per-row triggers);
- the rows anything else may write, ``acked_*``, ``pending_removals``, ``held``, ``approvals`` and
  ``escrow`` (a run, `syncd approve`, a purge, a state copy): triggers delete the mark with any row
  written, whoever writes it.

The run that may settle writes a "watching" row in its diff's transaction and turns it into the mark
at its end only if no write deleted it in between. Time alone changes nothing a settled run depends
on: it has no escrow to become due, no held change, no removal for a freeze to hold, and pages are
fingerprinted with the day. On PostgreSQL the triggers are per statement (transition tables) and the
table is ``UNLOGGED`` like the stage and desired tables it vouches for, so a server crash that empties
those empties it too.
"""

from __future__ import annotations

import json

from syncd.entities import ENTITIES, Entity
from syncd.store.base import Scoped

# The inputs of the diff that are not rebuilt by runs only: a write to any of them drops the mark.
WATCHED = ("acked_courses", "acked_users", "acked_enrollments", "acked_exams", "pending_removals", "held",
           "approvals", "escrow")

_TABLE = "CREATE TABLE settled_marks (tenant TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, counts TEXT NOT NULL)"


def _sqlite_triggers(table: str) -> str:
    rows = {"insert": "NEW.tenant", "delete": "OLD.tenant", "update": "OLD.tenant, NEW.tenant"}
    return "".join(f"CREATE TRIGGER {table}_unsettles_{op} AFTER {op.upper()} ON {table} BEGIN "
                   f"DELETE FROM settled_marks WHERE tenant IN ({tenants}); END;\n" for op, tenants in rows.items())


def _pg_triggers(table: str) -> str:
    rows = {"insert": "NEW", "update": "NEW", "delete": "OLD"}
    return "".join(f"CREATE TRIGGER {table}_unsettles_{op} AFTER {op.upper()} ON {table} REFERENCING {which} TABLE "
                   "AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION syncd_unsettle();\n"
                   for op, which in rows.items())


SQLITE_SCHEMA = f"{_TABLE} WITHOUT ROWID;\n" + "".join(_sqlite_triggers(t) for t in WATCHED)

PG_SCHEMA = f"""
{_TABLE.replace("CREATE TABLE", "CREATE UNLOGGED TABLE")};
CREATE FUNCTION syncd_unsettle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM settled_marks WHERE tenant IN (SELECT DISTINCT tenant FROM changed_rows);
    RETURN NULL;
END $$;
""" + "".join(_pg_triggers(t) for t in WATCHED)


class Settled(Scoped):
    def settled_counts(self, fingerprint: str) -> dict[Entity, int] | None:
        """The unchanged count of each entity when nothing the diff reads has changed since a run
        with this fingerprint found nothing to do; else None."""
        row = self.conn.execute("SELECT fingerprint, counts FROM settled_marks WHERE tenant = ?",
                                (self.name,)).fetchone()
        if row is None or row[0] != fingerprint:
            return None
        counts = json.loads(row[1])
        return {entity: int(counts.get(entity, 0)) for entity in ENTITIES}

    def watch(self, run_id: str) -> None:
        """Start watching the inputs for this run (in the transaction of the diff, Diff.classify,
        so that no write falls between what the diff read and the watch): any write to a watched
        table from now on, this run's own or another process's (`syncd approve`), deletes the row,
        so ``settle`` cannot vouch for inputs that changed after the diff read them."""
        self.conn.execute("DELETE FROM settled_marks WHERE tenant = ?", (self.name,))
        self.conn.execute("INSERT INTO settled_marks (tenant, fingerprint, counts) VALUES (?, ?, '{}')",
                          (self.name, _watching(run_id)))

    def settle(self, run_id: str, fingerprint: str, unchanged: dict[Entity, int]) -> bool:
        """This run found nothing to do: the next one with the same inputs may skip the diff. False
        when an input changed since ``watch``."""
        with self._write():
            cursor = self.conn.execute(
                "UPDATE settled_marks SET fingerprint = ?, counts = ? WHERE tenant = ? AND fingerprint = ?",
                (fingerprint, json.dumps(unchanged, sort_keys=True), self.name, _watching(run_id)))
        return cursor.rowcount == 1


def _watching(run_id: str) -> str:
    return f"watching:{run_id}"
