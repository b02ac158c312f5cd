"""`syncd demo`: a real sync against the built-in sandbox, explained to a new admin."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from syncd import cli, engine, logs, render
from syncd import config as configuration
from syncd.exams import parse_utc, utc
from syncd.sandbox import (
    CanvasRoster,
    CanvasSandbox,
    ProvisionApp,
    Roster,
    Sandbox,
    Serving,
    canvas_roster,
    expected_mapping,
    route_installs,
)
from syncd.sandbox import oneroster_lineitems as lineitems
from syncd.sandbox.gg4l import WEBHOOK_KEY, Gg4lApp
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
    now = datetime.now(UTC)
    later, opened = exam_picks(sandbox.oneroster.line_items, exam_snapshot(sandbox.provision), now)
    later["title"] += " (retitled)"
    opened["dueDate"] = (now + timedelta(days=45)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"lineitem:{later['sourcedId']}", f"lineitem:{opened['sourcedId']}"


def exam_picks(items: dict[str, dict[str, Any]], synced: Collection[str],
               now: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the synced exam that opens last, the one that opened first): one still to open and one
    already open at any hour, as the sandbox dates its items from 4 days ago to 3 weeks ahead.

    Dates are compared as instants: the sandbox writes them with ``Z``, fractions and offsets."""
    dated = sorted(((parse_utc(utc(i["assignDate"]) or ""), i["sourcedId"]), i) for i in items.values()
                   if f"lineitem:{i['sourcedId']}" in synced and i["assignDate"] and i["dueDate"])
    (first, _), opened = dated[0]
    (last, _), later = dated[-1]
    if not first < now < last:
        raise RuntimeError(f"the sandbox's exams open between {first} and {last}, not around {now}")
    return later, opened


def _student_to_refuse(mapping: dict[str, Any]) -> str:
    """A user with an e-mail and a single enrollment: the demo's target refuses them."""
    enrolled: dict[str, int] = {}
    for _, user in mapping["enrollments"]:
        enrolled[user] = enrolled.get(user, 0) + 1
    return min(u for u, body in mapping["users"].items() if body.get("email") and enrolled.get(u) == 1)


def main(directory: str, source: str = "oneroster", quiet: bool = False) -> int:
    if source == "gg4l":
        from syncd.gg4l import demo as gg4l_demo  # its own story: webhook, discovery, districts

        return gg4l_demo.main(directory)
    base = Path(directory).resolve()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    logs.configure("error", "console")
    sandbox, roster, expect, about = _sandbox(source)
    progress = _progress(sandbox.default_tenant, quiet)
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
            first = engine.run(tenant, store, progress=progress())
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
            second = engine.run(tenant, store, progress=progress())
            print(render.render_summary(second))
            print(f"   only the changes were sent: {sandbox.provision.calls - calls_before} provision calls")
            for reason in second.get("held_because", []):
                print(f"   held for an admin: {reason} -> `syncd approve lincoln` releases it")
            print()
            print("3. nothing changes: a resync sends nothing (the refused record waits in escrow, see below)")
            third = engine.run(tenant, store, progress=progress())
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
          f"  syncd --config {path} explain {sandbox.default_tenant} user:{refused}    why the refused student "
          "is not in the target\n"
          f"  syncd demo --serve                   keep a sandbox up to try `syncd run` and the rest on it\n"
          f"  syncd config example                 an annotated config for your own institution")
    return 0 if engine.FAILED not in (first["status"], second["status"], third["status"]) else 1


def _progress(tenant: str, quiet: bool) -> Callable[[], engine.Progress | None]:
    """A fresh progress bar per run on a terminal (none with --quiet, none into a pipe)."""
    def bar() -> engine.Progress | None:
        if quiet or not sys.stderr.isatty():
            return None
        drawn = cli.ProgressBar(tenant)

        def update(phase: str, done: int, total: int | None) -> None:
            drawn.update(phase, done, total)
            if phase == "removals":
                drawn.close()  # the last phase: its line ends before the summary is printed
        return update
    return bar


# --- demo --serve: a sandbox that stays up -----------------------------------------------------

# Offsets from --port-base. GG4L School Passport (its Partner API and the districts' Data APIs)
# joins the sandbox on the fourth port when it exists: serve() reserves it and says so.
PORTS = {"oneroster": 0, "canvas": 1, "provision": 2, "gg4l": 3, "listener": 4}  # the last: `syncd run`'s own


SERVE_DISTRICT = "7f3c2a10-5b4e-4c8d-9a61-0e2f4b6d8c1a"


def serve(directory: str, port_base: int) -> int:
    """Keep the sandbox up on fixed loopback ports with a config pointing at it, until SIGINT/SIGTERM."""
    base = Path(directory).resolve()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    logs.configure("error", "console")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    roster = Roster.generate(seed=7, users=120, classes=12, enrollments=500)
    installs = [ProvisionApp(install_sid="AI" + "0" * 31 + n) for n in "123"]  # lincoln, stateu, GG4L districts
    servers: list[Any] = []
    try:
        target = Serving(route_installs(installs), port_base + PORTS["provision"])
        servers.append(target)
        lincoln = Sandbox(roster, port=port_base + PORTS["oneroster"], target=(installs[0], target.url))
        servers.append(lincoln)
        stateu = CanvasSandbox(CanvasRoster.generate(seed=7, users=120, courses=12, enrollments=500),
                               port=port_base + PORTS["canvas"], target=(installs[1], target.url))
        servers.append(stateu)
        gg4l = Gg4lApp()
        partner = Serving(gg4l, port_base + PORTS["gg4l"])
        gg4l.base_url = partner.url
        servers.append(partner)
        # One district that has activated the application: `syncd run` discovers it and syncs it.
        gg4l.add_district(SERVE_DISTRICT, Roster.generate(seed=21, users=60, classes=6, enrollments=200),
                          name="Riverside Unified", privacy_shield=True)
    except OSError as exc:
        for server in servers:
            server.stop()
        print(f"syncd: cannot listen on 127.0.0.1 ports {port_base}-{port_base + len(PORTS) - 1}: {exc.strerror}; "
              "choose others with --port-base", file=sys.stderr)
        return 1
    try:
        path = _write_serve_config(base, lincoln, stateu, _gg4l_toml(gg4l, partner.url, installs[2], target.url),
                                   port_base + PORTS["listener"])
        refused = _student_to_refuse(expected_mapping(roster, configuration.load(path).tenants["lincoln"].roles))
        installs[0].reject = lambda body: (
            (422, "user.email is already used by another account")
            if body.get("user", {}).get("ids", {}).get("external") == refused else None)
        _say_what_to_try(path, port_base, lincoln, stateu, refused, roster, partner.url)
        while not stop.wait(0.5):
            pass
    finally:
        for server in reversed(servers):
            server.stop()
    print("sandbox stopped", flush=True)
    return 0


def _write_serve_config(base: Path, lincoln: Sandbox, stateu: CanvasSandbox, gg4l: str, listen: int) -> Path:
    path = base / "syncd.toml"
    path.write_text(
        f'# Written by `syncd demo --serve`: it points at the sandbox while that runs.\n'
        f'[daemon]\nstate_dir = "{base / "state"}"\nlog_level = "info"\nlog_format = "auto"\n\n'
        f'[daemon.http]\nlisten = "127.0.0.1:{listen}"\n\n'
        + lincoln.tenant_toml() + "\n" + stateu.tenant_toml() + "\n" + gg4l, encoding="utf-8")
    path.chmod(0o600)
    return path


def _gg4l_toml(gg4l: Gg4lApp, partner_url: str, install: ProvisionApp, target_url: str) -> str:
    """The [gg4l] table: the fake Partner API, the webhook key, and districts synced into their own install."""
    return (f'[gg4l]\npartner_url = "{partner_url}"\nclient_id = "{gg4l.client_id}"\n'
            f'client_secret = "{gg4l.client_secret}"\nwebhook_headers = {{ "X-Syncd-Key" = "{WEBHOOK_KEY}" }}\n'
            'modes = ["standard"]\non_new_district = "sync"\ndiscovery_interval = "15m"\n\n'
            '[gg4l.tenant]\nschedule = "every 15m"\nroles = { student = "learner", teacher = "instructor" }\n'
            f'[gg4l.tenant.target]\nbase_url = "{target_url}"\ninstall_sid = "{install.install_sid}"\n'
            f'token = "{install.token}"\n')


def _say_what_to_try(path: Path, port_base: int, lincoln: Sandbox, stateu: CanvasSandbox, refused: str,
                     roster: Roster, partner_url: str) -> None:
    inactive = next((u for u, v in roster.users.items() if v["status"] != "active"), None)
    ended = next((e for e in roster.enrollments.values() if e.get("endDate")), None)
    tries = [
        ("syncd sync lincoln", "one sync now (the target refuses one student on purpose)"),
        ("syncd run", "the daemon: every tenant every 15 minutes, until Ctrl-C"),
        ("syncd status", "last runs and counts"),
        ("syncd errors lincoln", "what failed, and why"),
        (f"syncd explain lincoln user:{refused}", "why that student is not in the target (after a sync)"),
    ]
    if inactive:
        tries.append((f"syncd explain lincoln user:{inactive}", "a student the SIS marks inactive"))
    if ended:
        pair = f"{ended['class']['sourcedId']}/{ended['user']['sourcedId']}"
        tries.append((f"syncd explain lincoln enrollment:{pair}", "an enrollment that ended"))
    listener = f"http://127.0.0.1:{port_base + PORTS['listener']}"
    tries += [(f"curl {listener}/metrics", "while `syncd run` runs: its Prometheus metrics"),
              (f"curl {listener}/healthz", "its health"),
              ("syncd tenants", "every tenant, with the GG4L district `syncd run` discovered"),
              (f"curl -X POST -H 'X-Syncd-Key: {WEBHOOK_KEY}' -d districtGUID={SERVE_DISTRICT} "
               f"{listener}/webhooks/gg4l", "GG4L's webhook: a discovery now")]
    width = max(len(command) for command, _ in tries) + 3
    servers = [("OneRoster 1.1", f"{lincoln.source_url}  (tenant lincoln)"),
               ("Canvas", f"{stateu.source_url}  (tenant stateu)"),
               ("provision API", lincoln.target_url),
               ("GG4L Partner API", f"{partner_url}  (one district, {SERVE_DISTRICT})")]
    lines = ["sandbox running on loopback (Ctrl-C to stop):"]
    lines += [f"  {name:<15} {where}" for name, where in servers]
    lines += [f"config: {path} (state in {path.parent / 'state'})", "", "try, in another terminal:",
              f"  export SYNCD_CONFIG={path}"]
    lines += [f"  {command:<{width}}{what}" for command, what in tries]
    print("\n".join(lines), flush=True)


def _many(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
