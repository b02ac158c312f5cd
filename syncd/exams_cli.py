"""`syncd exams TENANT [--json]` (SPEC §7): the exams in scope with their window, duration, attempts,
state and sid, and the students with an override the admin must mirror as accommodations."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def register(commands: Any) -> None:
    exams = commands.add_parser("exams", help="a tenant's exams: window, duration, attempts, state, sid, overrides")
    exams.add_argument("tenant", metavar="TENANT")
    exams.add_argument("--json", action="store_true", help="print one JSON array")
    exams.set_defaults(handler=cmd_exams)


def cmd_exams(args: argparse.Namespace) -> int:
    from syncd.cli import EXIT_OK, UsageError, _load
    from syncd.store import Store
    from syncd.store.exams import exam_rows

    config = _load(args)
    tenant = config.tenants.get(args.tenant)
    if tenant is None:
        raise UsageError(f"unknown tenant: {args.tenant}")
    if tenant.exams is None:
        raise UsageError(f"{args.tenant} provisions no exams (add a [tenants.{args.tenant}.exams] table)")
    store = Store.open(config.daemon.state_dir, config.state_url)
    try:
        rows = exam_rows(store.conn, args.tenant, store.last_run_id(args.tenant))
    finally:
        store.close()
    if args.json:
        _out(json.dumps(rows))
        return EXIT_OK
    if not rows:
        _out(f"{args.tenant}: no exam yet (run `syncd sync {args.tenant}`)")
        return EXIT_OK
    _out(f"{'exam':<22} {'title':<28} {'course':<12} {'opens':<20} {'closes':<20} {'min':>5} {'tries':>5} "
          f"{'state':<8} {'overrides':>9}  sid")
    for row in rows:
        _out(f"{row['source_id'][:22]:<22} {(row['title'] or '-')[:28]:<28} {(row['course'] or '-')[:12]:<12} "
              f"{row['open'] or '-':<20} {row['close'] or '-':<20} {row['duration_min'] or '-'!s:>5} "
              f"{row['attempts'] or '-'!s:>5} {row['state']:<8} {row['overrides']:>9}  {row['sid'] or '-'}")
    states = {s: sum(r["state"] == s for r in rows) for s in ("synced", "pending", "held", "failed", "removed")}
    _out(f"{len(rows)} exam(s): " + ", ".join(f"{n} {s}" for s, n in states.items() if n))
    if any(r["overrides"] for r in rows):
        _out("overrides: students with their own window or extra time; mirror them as accommodations")
    return EXIT_OK
