"""Fault-injection soak: a seeded random schedule of source changes, faults and kill -9, with the
invariants checked after every step.

    .venv/bin/python bench/soak.py                     # 500 steps (~10 minutes on 2 cores)
    .venv/bin/python bench/soak.py --steps 40 --seed 7 # the short form CI runs (tests/test_soak.py)
    .venv/bin/python bench/soak.py --state-url throwaway   # the same schedule on PostgreSQL (SPEC §11)

Faults, drawn per step: provision 5xx, 429 with and without Retry-After, responses lost after
the write was applied, slow answers (a wider window for a kill in mid-push), source pages failing
(for a while or for the whole run), connection resets on the source, OAuth 2 tokens revoked
mid-run, hostile target answers (through a proxy: a redirect to another origin, a body that drips
one byte every half second, a refusal that echoes the token back), and
``kill -9`` of the sync process at a random moment (during the extract, during the push, between
push and acknowledge). Invariants after every step:

1. the SQLite file passes ``PRAGMA integrity_check`` (on PostgreSQL: ``amcheck`` finds every
   B-tree index of the state consistent with its table);
2. no duplicate object in the target;
3. every acknowledged record exists in the target (the target may be ahead of the state, after a
   kill between a call and its acknowledgement, never behind it);
4. no run whose extract was incomplete inferred a removal;
5. every few steps, and at the end, once the faults stop, one clean run makes the target hold
   exactly the expected mapping, and the run after it sends nothing;
6. nothing ever reached the other origin a redirect pointed to, and no secret (the target token,
   the OAuth client secret) is in any output or in the state file (on PostgreSQL: in any row of any
   table);
7. every run ends within its bound (a drip is cut by the request deadline).

``--state-url URL`` (an empty database, or ``throwaway``: a server tests/pg.py starts and removes)
runs the same seeded schedule with the state in PostgreSQL (``[state] url``): a kill -9 then ends
the run's lease session too, and the invariants read the same tables there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncd.sandbox import Fault, Roster, Sandbox, Scripted, expected_mapping
from syncd.sandbox.hostile import Action, Hostile, Req, drip, echo_credentials, redirect
from syncd.sandbox.hostile import Fault as HostileFault

# A run of this small roster takes a few seconds; with a drip (8 s per attempt at timeout_s = 2)
# and retries, well under a minute. More than this means a request or a run is not bounded.
RUN_BOUND_S = 90.0

SYNCD = str(Path(sys.executable).with_name("syncd"))
ROLES = {"student": "learner", "teacher": "instructor"}
COLLECTIONS = ("courses", "classes", "users", "enrollments")


@dataclass
class Report:
    steps: int = 0
    runs: int = 0
    kills: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks[name] += 1
        if not ok:
            self.failures.append(f"step {self.steps}: {name} failed {detail}".strip())

    def markdown(self) -> str:
        lines = [f"steps: {self.steps} · sync runs: {self.runs} · kill -9: {self.kills}",
                 "faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())),
                 "invariant checks: " + ", ".join(f"{k} {v}" for k, v in sorted(self.checks.items())),
                 f"failures: {len(self.failures)}"]
        return "\n".join(lines + [f"  - {f}" for f in self.failures[:20]])


@dataclass
class Hostiles:
    """A proxy in front of the provision API, and the other origin a redirect points to."""

    front: Hostile
    elsewhere: Hostile


def _limited(fault: HostileFault, times: int) -> HostileFault:
    """``fault`` for the next ``times`` provision calls, then the real API again."""
    left = [times]

    def apply(request: Req) -> Action | None:
        if request.method != "POST" or left[0] <= 0:
            return None
        left[0] -= 1
        return fault(request)
    return apply


def _inject(rng: random.Random, box: Sandbox, report: Report, hostiles: Hostiles | None = None) -> None:
    """Arm this step's faults on the sandbox servers."""
    if hostiles:
        hostiles.front.fault = None
        if rng.random() < 0.15:
            kind = rng.choice(["redirect elsewhere", "drip", "echoed token"])
            fault = {"redirect elsewhere": lambda: redirect(hostiles.elsewhere.url, rng.choice([301, 302, 307, 308])),
                     "drip": lambda: drip(seconds=30),
                     "echoed token": lambda: echo_credentials(503)}[kind]()
            # An echo answers every retry of a call (so that it is what the run reports); a drip
            # one attempt (the retry goes through); a redirect a few calls.
            hostiles.front.fault = _limited(fault, {"redirect elsewhere": rng.randint(1, 3), "drip": 1,
                                                    "echoed token": 5}[kind])
            report.faults[f"provision {kind}"] += 1
    provision, source = box.provision, box.oneroster
    provision.script.clear()
    provision.latency_s = 0.0
    source.faults.clear()
    source.expire_tokens_at_request = None
    for _ in range(rng.randint(0, 4)):
        kind = rng.choice(["5xx", "429", "429+retry-after", "lost-after-apply"])
        status: int | str = {"5xx": rng.choice([500, 502, 503]), "429": 429, "429+retry-after": 429,
                             "lost-after-apply": "drop_after_apply"}[kind]
        provision.script.append(Scripted(status, times=rng.randint(1, 3),
                                         retry_after="0" if kind == "429+retry-after" else None))
        report.faults[f"provision {kind}"] += 1
    if rng.random() < 0.1:
        provision.latency_s = 0.003  # slow, not failing: widens the window for a kill in mid-push
        report.faults["provision slow"] += 1
    if rng.random() < 0.25:
        collection = rng.choice(COLLECTIONS)
        forever = rng.random() < 0.4
        source.faults.append(Fault(status=rng.choice([500, 503]), times=None if forever else rng.randint(1, 2),
                                   collection=collection))
        report.faults["source page failing for the run" if forever else "source page failing briefly"] += 1
    if rng.random() < 0.1:
        source.faults.append(Fault(status=0, drop=True, times=1, collection=rng.choice(COLLECTIONS)))
        report.faults["source connection reset"] += 1
    if rng.random() < 0.2:
        source.expire_tokens_at_request = source.requests + rng.randint(1, 6)
        report.faults["oauth token revoked mid-run"] += 1


def _clear(box: Sandbox) -> None:
    box.provision.script.clear()
    box.provision.latency_s = 0.0
    box.oneroster.faults.clear()
    box.oneroster.expire_tokens_at_request = None


def _sync(config: Path, report: Report, kill_after: float | None = None, secrets: tuple[str, ...] = ()) -> dict | None:
    report.runs += 1
    started = time.monotonic()
    process = subprocess.Popen([SYNCD, "--config", str(config), "sync", "lincoln", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        try:
            process.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            report.kills += 1
    stdout, stderr = process.communicate(timeout=300)
    report.check("the run ends within its bound", time.monotonic() - started < RUN_BOUND_S,
                 f"({time.monotonic() - started:.0f} s)")
    leaked = [s for s in secrets if s in stdout or s in stderr]
    report.check("no secret in any output", not leaked, f"({len(leaked)} found)")
    report.check("no traceback", "Traceback" not in stderr)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[0]) if lines else None


def _invariants(box: Sandbox, db: Path, report: Report, hostiles: Hostiles | None = None, url: str = "") -> None:
    if hostiles:
        report.check("nothing reached the origin a redirect pointed to", hostiles.elsewhere.seen == [])
    if url:
        _pg_invariants(box, url, report)
        return
    if db.exists():
        state = b"".join(p.read_bytes() for p in db.parent.glob("syncd.db*"))
        report.check("no secret in the state file", box.provision.token.encode() not in state
                     and box.oneroster.client_secret.encode() not in state)
    if not db.exists():  # killed before the state existed
        report.check("no duplicate in the target", box.provision.duplicates() == 0)
        return
    # Read-only and closed before the next run: the harness must never be a writer (nor the last
    # connection that checkpoints) of the file it judges.
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        _check_state(box, conn, report)
    except sqlite3.DatabaseError as exc:
        # Keep the evidence: a copy of the state as the check found it, named in the failure.
        kept = db.parent.with_name(f"damaged-step-{report.steps}")
        shutil.copytree(db.parent, kept, dirs_exist_ok=True)
        report.check("integrity_check", False, f"({exc}; the state is kept in {kept})")
    finally:
        conn.close()


def _check_state(box: Sandbox, conn: sqlite3.Connection, report: Report) -> None:
    report.check("integrity_check", conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")
    _record_invariants(box, conn, report)


def _record_invariants(box: Sandbox, conn: Any, report: Report) -> None:
    """The target against the acknowledged state, and no removal from an incomplete extract, on a
    sqlite3 or psycopg connection to the store."""
    report.check("no duplicate in the target", box.provision.duplicates() == 0)
    target = box.provision
    enrollment_sids = {e["sid"] for e in target.enrollments.values()}
    missing = sum(sid not in target.courses for (sid,) in conn.execute("SELECT sid FROM acked_courses").fetchall())
    missing += sum(sid not in target.users for (sid,) in conn.execute("SELECT sid FROM acked_users").fetchall())
    missing += sum(sid not in enrollment_sids
                   for (sid,) in conn.execute("SELECT sid FROM acked_enrollments").fetchall())
    report.check("every acknowledged record is in the target", missing == 0, f"({missing} not)")
    bad = 0
    for summary, complete in conn.execute(
            "SELECT summary, extract_complete FROM runs WHERE finished_at IS NOT NULL").fetchall():
        if summary and not complete:
            bad += any(c.get("removed") for c in json.loads(summary)["counts"].values())
    report.check("no removal from an incomplete extract", bad == 0, f"({bad} runs)")


def _pg_invariants(box: Sandbox, url: str, report: Report) -> None:
    """The invariants of :func:`_invariants`, on the PostgreSQL store."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        if conn.execute("SELECT to_regclass('runs') IS NULL").fetchone()[0]:  # killed before the state existed
            report.check("no duplicate in the target", box.provision.duplicates() == 0)
            return
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        secrets = (box.provision.token, box.oneroster.client_secret)
        leaked = sum(conn.execute(f'SELECT count(*) FROM "{t}" x WHERE strpos(x::text, %s) > 0 '
                                  f'OR strpos(x::text, %s) > 0', secrets).fetchone()[0] for t in tables)
        report.check("no secret in the state file", leaked == 0, f"({leaked} rows)")
        indexes = [r[0] for r in conn.execute(
            "SELECT c.oid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE a.amname = 'btree' AND n.nspname = 'public'")]
        try:
            for oid in indexes:
                conn.execute("SELECT bt_index_check(%s::regclass, true)", (oid,))
            report.check("integrity_check", True)
        except psycopg.Error as exc:
            report.check("integrity_check", False, f"({str(exc).splitlines()[0]})")
        _record_invariants(box, conn, report)


def _converges(box: Sandbox, config: Path, report: Report, hostiles: Hostiles | None = None) -> None:
    _clear(box)
    if hostiles:
        hostiles.front.fault = None
    first = _sync(config, report)
    after = expected_mapping(box.roster, ROLES)
    target = box.provision.snapshot()
    equal = all(target[k].get(key) == body for k in after for key, body in after[k].items())
    report.check("one clean run makes the target equal the expected mapping",
                 bool(first) and equal, f"(status {first and first['status']})")
    second = _sync(config, report)
    report.check("the run after it sends nothing", bool(second) and second["calls"] == 0,
                 f"(calls {second and second['calls']})")


def soak(steps: int, seed: int, workdir: Path, check_every: int = 10, state_url: str = "") -> Report:
    """The seeded schedule; with ``state_url`` (an empty PostgreSQL database) on the PostgreSQL store."""
    if state_url:
        import psycopg

        with psycopg.connect(state_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")  # bt_index_check, the integrity check
    rng = random.Random(seed)
    report = Report()
    roster = Roster.generate(seed=seed, users=120, classes=12, enrollments=480)
    with Sandbox(roster, version="1.2", token_ttl=3600) as box, Hostile(box.target_url) as front, \
            Hostile() as elsewhere:
        hostiles = Hostiles(front, elsewhere)
        config = box.write_config(workdir / "syncd.toml", workdir / "state",
                                  target_extra="concurrency = 4\ntimeout_s = 2")
        config.write_text(config.read_text().replace(box.target_url, front.url)
                          + (f'\n[state]\nurl = "{state_url}"\n' if state_url else ""))
        secrets = (box.provision.token, box.oneroster.client_secret)
        db = workdir / "state" / "syncd.db"
        for step in range(1, steps + 1):
            report.steps = step
            if rng.random() < 0.5:
                roster.mutate(seed=rng.randrange(1 << 30), fraction=rng.choice([0.005, 0.01, 0.02]))
                report.faults["source change"] += 1
            elif rng.random() < 0.2:
                roster.touch_unmapped(seed=rng.randrange(1 << 30), count=5)
                report.faults["source change to unmapped fields"] += 1
            _inject(rng, box, report, hostiles)
            kill_after = rng.uniform(0.05, 0.6) if rng.random() < 0.3 else None
            _sync(config, report, kill_after, secrets)
            _invariants(box, db, report, hostiles, state_url)
            if step % check_every == 0 or step == steps:
                _converges(box, config, report, hostiles)
                _invariants(box, db, report, hostiles, state_url)
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--state-url", default="", help="an empty PostgreSQL database, or 'throwaway'")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        url = args.state_url
        if url == "throwaway":
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            import pg  # tests/pg.py

            url = stack.enter_context(pg.running()).create_database("soak")
        report = soak(args.steps, args.seed, Path(tmp), state_url=url)
    print(report.markdown())
    print(f"seed {args.seed} · {'PostgreSQL' if args.state_url else 'SQLite'} · {time.monotonic() - started:.0f} s")
    raise SystemExit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
