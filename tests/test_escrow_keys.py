"""Escrow keys in one encoding: a record whose id is not ASCII waits out its escrow delay.

The escrow used to be written with ``json.dumps`` (ASCII escapes: ``"usr-Zo\\u00eb"``) and
looked up with SQLite's ``json_array`` (``"usr-Zoë"``): such a record was never found waiting, so
every run sent it again, and `syncd explain` had to ask in both encodings.
"""

from __future__ import annotations

import json
import sqlite3

import sqlite_utils
import state
from conftest import summary, syncd
from test_sync_end_to_end import travel_past_escrow

from syncd.sandbox.roster import STAMP, ref
from syncd.store import Store
from syncd.store.schema import migrations

ZOE = "usr-Zoë-ü"


def _add_student(roster, user_id: str) -> None:
    roster.users[user_id] = {
        "sourcedId": user_id, "status": "active", "dateLastModified": STAMP, "enabledUser": True,
        "username": "zoe", "givenName": "Zoë", "familyName": "Müller", "middleName": "", "role": "student",
        "email": "zoe@example.edu", "orgs": [ref("org", "sch-1")], "identifier": "999999"}
    klass = next(c for c in roster.classes.values() if c["status"] == "active")["sourcedId"]
    roster.enrollments["enr-zoe"] = {
        "sourcedId": "enr-zoe", "status": "active", "dateLastModified": STAMP, "user": ref("user", user_id),
        "class": ref("class", klass), "school": ref("org", "sch-1"), "role": "student", "primary": False,
        "beginDate": "2026-08-20"}


def test_a_refused_record_with_a_non_ascii_id_waits_out_its_escrow_delay(sandbox, config, roster):
    _add_student(roster, ZOE)
    sent: list[dict] = []

    def reject(body):
        if body.get("user", {}).get("ids", {}).get("external") == ZOE:
            sent.append(body)
            return 422, "email already taken"
        return None

    sandbox.provision.reject = reject
    first = syncd(config, "sync", "lincoln", "--json")
    assert first.returncode == 1 and len(sent) == 1, first.stderr[-2000:]

    # Not due yet: the next run leaves it alone (before the fix it was sent again, run after run).
    second = syncd(config, "sync", "lincoln", "--json")
    assert second.returncode == 1 and len(sent) == 1 and summary(second)["calls"] == 0
    keys = [k for (k,) in state.query(config, "SELECT key FROM escrow")]
    assert keys and all("\\u" not in k for k in keys) and any("Zoë" in k for k in keys)

    explained = json.loads(syncd(config, "explain", "lincoln", f"user:{ZOE}", "--json").stdout)
    assert explained["state"] == "escrow" and explained["escrow"]["attempts"] == 1

    # Due: sent again; acknowledged, it leaves the escrow.
    travel_past_escrow(config)
    sandbox.provision.reject = None
    third = syncd(config, "sync", "lincoln", "--json")
    assert third.returncode == 0 and summary(third)["calls"] >= 1, third.stderr[-2000:]
    assert sandbox.provision.snapshot()["users"][ZOE]["firstName"] == "Zoë"
    assert state.query(config, "SELECT count(*) FROM escrow")[0][0] == 0
    after = json.loads(syncd(config, "explain", "lincoln", f"user:{ZOE}", "--json").stdout)
    assert after["state"] == "synced" and after["escrow"] is None


def test_the_upgrade_rewrites_escrow_keys_written_with_ascii_escapes(tmp_path):
    path = tmp_path / "syncd.db"
    db = sqlite_utils.Database(sqlite3.connect(path))
    migrations.apply(db, stop_before="m006_explain")
    old = [("lincoln", "user", json.dumps([ZOE], separators=(",", ":"))),
           ("lincoln", "enrollment", json.dumps(["cls-1", ZOE], separators=(",", ":"))),
           ("lincoln", "course", '["cls-2"]')]
    db.conn.executemany("INSERT INTO escrow (tenant, entity, key, attempts, next_retry_at, first_seen) "
                        "VALUES (?, ?, ?, 2, '2999-01-01T00:00:00Z', '2026-01-01T00:00:00Z')", old)
    db.conn.commit()
    db.conn.close()

    store = Store(path)  # applies the rest: m006 re-writes the keys
    try:
        keys = dict(store.conn.execute("SELECT entity, key FROM escrow").fetchall())
        assert keys == {"user": f'["{ZOE}"]', "enrollment": f'["cls-1","{ZOE}"]', "course": '["cls-2"]'}
        assert store.tenant("lincoln").escrow_entry("user", (ZOE,))["attempts"] == 2
    finally:
        store.close()
