"""`syncd demo`: a real sync against the built-in sandbox, explained to a new admin."""

from __future__ import annotations

import json
from pathlib import Path

from syncd import cli, engine, logs
from syncd import config as configuration
from syncd.sandbox import Roster, Sandbox, expected_mapping
from syncd.store import Store


def main(directory: str) -> int:
    base = Path(directory).resolve()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    logs.configure("error", "console")
    roster = Roster.generate(seed=7, users=120, classes=12, enrollments=500)
    with Sandbox(roster) as sandbox:
        # One student whose e-mail the target refuses, so that `syncd errors` has something to show.
        blocked = next(u for u in roster.users.values() if u["role"] == "student" and u["email"])
        sandbox.provision.reject = lambda body: (
            (422, "user.email is already used by another account")
            if body.get("user", {}).get("ids", {}).get("external") == blocked["sourcedId"] else None)
        path = sandbox.write_config(base / "syncd.toml", base / "state")
        config = configuration.load(path)
        tenant = config.tenants["lincoln"]
        store = Store.open(config.daemon.state_dir)
        try:
            print(f"sandbox: OneRoster 1.1 at {sandbox.source_url}\n"
                  f"         provision API at {sandbox.target_url}\n"
                  f"roster:  {len(roster.classes)} classes, {len(roster.users)} users, "
                  f"{len(roster.enrollments)} enrollments (with inactive, ended and unmapped records)\n")
            print("1. first sync: everything in scope is created")
            first = engine.run(tenant, store)
            print(cli.render_summary(first), "\n")
            made = roster.mutate(seed=8, fraction=0.02)
            roster.touch_unmapped(seed=9)
            print(f"2. the SIS changes: {made['renamed']} users renamed, {made['new_enrollments']} new and "
                  f"{made['dropped']} dropped enrollments, {made['retitled']} classes retitled, and 10 users "
                  "changed only in fields syncd does not map")
            calls_before = sandbox.provision.calls
            second = engine.run(tenant, store)
            print(cli.render_summary(second))
            print(f"   only the changes were sent: {sandbox.provision.calls - calls_before} provision calls\n")
            print("3. nothing changes: a resync sends nothing but the retry of the refused record")
            third = engine.run(tenant, store)
            print(cli.render_summary(third), "\n")
            expected = expected_mapping(roster, tenant.roles)
            refused = blocked["sourcedId"]
            expected["users"].pop(refused, None)
            expected["enrollments"] = {k: v for k, v in expected["enrollments"].items() if k[1] != refused}
            target = sandbox.provision.snapshot()
            matches = all(target[kind].get(key) == body for kind in expected
                          for key, body in expected[kind].items())
            kept = sum(len(target[kind]) - len(expected[kind]) for kind in expected)
            print(f"target now holds {len(target['courses'])} courses, {len(target['users'])} users and "
                  f"{len(target['enrollments'])} enrollments: "
                  f"{'every in-scope record as the source says it' if matches else 'NOT as expected'} "
                  f"(but the student refused on purpose), plus {kept} removed record(s) that the "
                  "provision API cannot delete, kept as tombstones in syncd's state\n")
            errors = store.errors([third["run_id"]])
            if errors:
                print("the record the target refused (retried on every run until fixed):")
                print("  " + json.dumps({k: errors[0][k] for k in ("entity", "source_id", "http_status",
                                                                   "message", "attempts")}))
        finally:
            store.close()
    print(f"\nwhere to look next (the config and state stay in {base}):\n"
          f"  syncd --config {path} status          last runs, counts, errors per run\n"
          f"  syncd --config {path} errors          what failed, and why\n"
          f"  syncd --config {path} errors --csv    the same for a spreadsheet\n"
          f"  syncd config example                 an annotated config for your own institution")
    return 0 if engine.FAILED not in (first["status"], second["status"], third["status"]) else 1
