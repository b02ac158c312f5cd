"""`syncd demo`: a real sync against the built-in sandbox, explained to a new admin."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from syncd import config as configuration
from syncd import engine, logs, render
from syncd.sandbox import CanvasRoster, CanvasSandbox, Roster, Sandbox, canvas_roster, expected_mapping
from syncd.sandbox import oneroster_lineitems as lineitems
from syncd.sandbox.provision_exams import snapshot as exam_snapshot
from syncd.store import Store


def _sandbox(source: str) -> tuple[Any, Any, Callable[..., dict[str, Any]], str]:
    """The sandbox, its roster, the independent expected mapping, and how to describe them."""
    if source == "canvas":
        roster = CanvasRoster.generate(seed=7, users=120, courses=12, enrollments=500)
        box: Any = CanvasSandbox(roster)
        about = (f"sandbox: Canvas at {box.source_url} (developer key authorized, throttling on)\n"
                 f"roster:  {len(roster.courses)} courses, {len(roster.users)} users, {len(roster.enrollments)} "
                 "enrollments (with Test Students, observers, invitees, concluded and deleted records)")
        return box, roster, canvas_roster.expected_mapping, about
    roster = Roster.generate(seed=7, users=120, classes=12, enrollments=500)
    box = Sandbox(roster)
    about = (f"sandbox: OneRoster 1.1 at {box.source_url}\n"
             f"roster:  {len(roster.classes)} classes, {len(roster.users)} users, "
             f"{len(roster.enrollments)} enrollments (with inactive, ended and unmapped records)")
    return box, roster, expected_mapping, about


# The demo's exams (SPEC §7): the "Unit Exam" lineItems, with the tenant's defaults.
EXAMS_TABLE = """
[tenants.lincoln.exams]
select = "title"
title_pattern = "^Unit Exam"
proctor_types = { "TS4b894875a1b24f4e9b2e1c9d0f8a7b6c" = {} }
default_duration_min = 60
default_password = "demo-exam-password"
url_template = "https://lms.example.edu/classes/{class_id}/items/{id}"
"""


def _exam_changes(sandbox: Sandbox) -> tuple[str, str]:
    """Rename an exam that has not opened; move the close of one that has (the guard holds it)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    synced = exam_snapshot(sandbox.provision)
    items = [i for i in sandbox.oneroster.line_items.values() if f"lineitem:{i['sourcedId']}" in synced
             and i["assignDate"] and i["dueDate"] and len(i["dueDate"]) > 10]
    later = next(i for i in items if i["assignDate"] > now)
    later["title"] += " (retitled)"
    opened = next(i for i in items if i["assignDate"] < now)
    opened["dueDate"] = (datetime.now(UTC) + timedelta(days=45)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"lineitem:{later['sourcedId']}", f"lineitem:{opened['sourcedId']}"


def _student_to_refuse(mapping: dict[str, Any]) -> str:
    """A user with an e-mail and a single enrollment: the demo's target refuses them."""
    enrolled: dict[str, int] = {}
    for _, user in mapping["enrollments"]:
        enrolled[user] = enrolled.get(user, 0) + 1
    return min(u for u, body in mapping["users"].items() if body.get("email") and enrolled.get(u) == 1)


def main(directory: str, source: str = "oneroster") -> int:
    if source == "gg4l":
        from syncd.gg4l import demo as gg4l_demo  # its own story: webhook, discovery, districts

        return gg4l_demo.main(directory)
    base = Path(directory).resolve()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    logs.configure("error", "console")
    sandbox, roster, expect, about = _sandbox(source)
    with sandbox:
        path = sandbox.write_config(base / "syncd.toml", base / "state")
        exams_on = source == "oneroster"
        if exams_on:
            sandbox.oneroster.line_items = lineitems.generate(roster, per_class=2)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(EXAMS_TABLE)
        config = configuration.load(path)
        tenant = config.tenants[sandbox.default_tenant]
        # One student whose e-mail the target refuses, so that `syncd errors` has something to show.
        refused = _student_to_refuse(expect(roster, tenant.roles))
        sandbox.provision.reject = lambda body: (
            (422, "user.email is already used by another account")
            if refused in (body.get("user", {}).get("ids", {}).get(k) for k in ("external", "lms")) else None)
        store = Store.open(config.daemon.state_dir, config.state_url)
        try:
            print(f"{about}\n         provision API at {sandbox.target_url}\n")
            print("1. first sync: everything in scope is created")
            first = engine.run(tenant, store)
            print(render.render_summary(first), "\n")
            made = roster.mutate(seed=8, fraction=0.02)
            roster.touch_unmapped(seed=9)
            print(f"2. the {'LMS' if source == 'canvas' else 'SIS'} changes: {_many(made['renamed'], 'user')} "
                  f"renamed, {made['new_enrollments']} new and {made['dropped']} dropped enrollments, "
                  f"{_many(made['retitled'], 'course')} retitled, and 10 users changed only in fields "
                  "syncd does not map")
            if exams_on:
                renamed, moved = _exam_changes(sandbox)
                print(f"   and two exams change: {renamed} is retitled, and {moved}, whose window has "
                      "already opened, gets a later close")
            calls_before = sandbox.provision.calls
            second = engine.run(tenant, store)
            print(render.render_summary(second))
            print(f"   only the changes were sent: {sandbox.provision.calls - calls_before} provision calls")
            for reason in second.get("held_because", []):
                print(f"   held for an admin: {reason} -> `syncd approve lincoln` releases it")
            print()
            print("3. nothing changes: a resync sends nothing (the refused record waits in escrow, see below)")
            third = engine.run(tenant, store)
            print(render.render_summary(third), "\n")
            expected = expect(roster, tenant.roles)
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
            if exams_on:
                exams = exam_snapshot(sandbox.provision)
                print(f"the target holds {len(exams)} exams with their window, duration and password "
                      f"(`syncd exams lincoln` lists them); the moved window was not sent: "
                      f"{'students bookings are safe' if not sandbox.provision.exam_book.late_changes else 'NOT held'}"
                      "\n")
            errors = store.errors([third["run_id"]])
            if errors:
                print("the record the target refused (retried after 1 h, 6 h, 24 h, then daily, until it is fixed):")
                shown = next((e for e in errors if e["entity"] == "user"), errors[0])
                print("  " + json.dumps({k: shown[k] for k in ("entity", "source_id", "name", "http_status",
                                                               "message", "attempts", "next_retry_at")}))
        finally:
            store.close()
    print(f"\nwhere to look next (the config and state stay in {base}):\n"
          f"  syncd --config {path} status          last runs, counts, errors per run\n"
          f"  syncd --config {path} errors          what failed, and why\n"
          f"  syncd --config {path} errors --csv    the same for a spreadsheet\n"
          f"  syncd config example                 an annotated config for your own institution")
    return 0 if engine.FAILED not in (first["status"], second["status"], third["status"]) else 1


def _many(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
