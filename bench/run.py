"""Benchmark: the real `syncd` command against the sandbox servers on loopback.

    .venv/bin/python bench/run.py            # full run (~10 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick    # a small smoke version
    .venv/bin/python bench/run.py --state-url throwaway   # SQLite beside PostgreSQL (SPEC §11)

Reports, for a roster of 20k users / 2k classes / 100k enrollments: initial sync, no-change and
1 %-change resync wall time, provision calls against the SPEC §4 minimum, source requests and
peak RSS of the syncd process; a naive baseline that pushes every record every run (`--force`);
peak RSS as the roster grows; and push throughput with 20 ms of latency per provision call.
Results are printed as Markdown and written to bench/results.md.

``--state-url URL`` (an empty PostgreSQL database it may fill, or ``throwaway`` for a server that
tests/pg.py starts and removes) runs only the store comparison: the same roster synced on the SQLite
file and on PostgreSQL (initial, no-change and 1 %-change resync), with the ratio, written to
bench/postgres-results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import publish, wait_with_peak_rss
from test_sync_end_to_end import initial_calls, minimal_calls

from syncd.sandbox import Roster, Sandbox, expected_mapping

SYNCD = str(Path(sys.executable).with_name("syncd"))
ROLES = {"student": "learner", "teacher": "instructor"}


def run_syncd(config: Path, *args: str) -> dict:
    """Run `syncd sync` and return its summary, wall time, peak RSS and phase times."""
    started = time.perf_counter()
    process = subprocess.Popen([SYNCD, "--config", str(config), "sync", "lincoln", "--json", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode not in (0,):
        raise SystemExit(f"syncd failed ({process.returncode}): {stderr[-2000:]}")
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    stamps = {e["event"]: datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in events}
    push_s = (stamps["sync.finished"] - stamps["sync.extracted"]).total_seconds()
    extracted = next(e for e in events if e["event"] == "sync.extracted")
    return {"summary": json.loads(stdout), "wall_s": wall, "push_s": push_s,
            "source_requests": extracted["source_requests"]}


def peak_rss_mb(config: Path, *args: str) -> tuple[dict, float]:
    """One run, with the peak RSS of the syncd process itself (its summary is one short line, so
    the pipe cannot fill while we poll)."""
    started = time.perf_counter()
    process = subprocess.Popen([SYNCD, "--config", str(config), "sync", "lincoln", "--json", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak_mb = wait_with_peak_rss(process)
    assert process.stdout is not None
    stdout = process.stdout.read()
    if process.returncode != 0:
        raise SystemExit(f"syncd failed ({process.returncode})")
    return {"summary": json.loads(stdout), "wall_s": time.perf_counter() - started}, peak_mb


def scale(users: int, classes: int, enrollments: int, workdir: Path, **target: str) -> tuple[Roster, Sandbox, Path]:
    roster = Roster.generate(seed=42, users=users, classes=classes, enrollments=enrollments)
    box = Sandbox(roster)
    extra = "\n".join(f"{k} = {v}" for k, v in target.items())
    config = box.write_config(workdir / "syncd.toml", workdir / "state", log_level="info",
                              source_extra="page_size = 1000", target_extra=extra)
    return roster, box, config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--state-url", help="compare SQLite with PostgreSQL at this URL (or 'throwaway')")
    args = parser.parse_args()
    factor = 10 if args.quick else 1
    users, classes, enrollments = 20_000 // factor, 2_000 // factor, 100_000 // factor
    if args.state_url:
        publish(compare_stores(args.state_url, users, classes, enrollments), "postgres-results.md", args.quick)
        return
    lines = [f"# syncd benchmark ({datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {os.cpu_count()} cores, "
             f"Python {sys.version.split()[0]})", ""]

    with tempfile.TemporaryDirectory() as tmp:
        roster, box, config = scale(users, classes, enrollments, Path(tmp), concurrency="8")
        with box:
            mapping = expected_mapping(roster, ROLES)
            first, rss_first = peak_rss_mb(config)
            nochange, rss_nochange = peak_rss_mb(config)
            nochange_detail = run_syncd(config)
            before = expected_mapping(roster, ROLES)
            roster.mutate(seed=1, fraction=0.01)
            after = expected_mapping(roster, ROLES)
            change = run_syncd(config)
            naive = run_syncd(config, "--force")
            target = box.provision.snapshot()
            # The target keeps what was removed (the API has no delete): compare what is in scope.
            target_ok = all(target[k].get(key) == v for k in after for key, v in after[k].items())
        lines += [
            f"## {users:,} users / {classes:,} classes / {enrollments:,} enrollments, no latency, concurrency 8",
            "",
            "| run | wall time | provision calls | minimum | source requests | peak RSS |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            f"| initial sync | {first['wall_s']:.1f} s | {first['summary']['calls']:,} | "
            f"{initial_calls(mapping):,} | - | {rss_first:.0f} MB |",
            f"| no-change resync | {nochange['wall_s']:.2f} s | {nochange['summary']['calls']} | 0 | "
            f"{nochange_detail['source_requests']} | {rss_nochange:.0f} MB |",
            f"| 1 % change resync | {change['wall_s']:.2f} s | {change['summary']['calls']:,} | "
            f"{minimal_calls(before, after):,} | {change['source_requests']} | - |",
            f"| naive baseline (every record, every run) | {naive['wall_s']:.1f} s | "
            f"{naive['summary']['calls']:,} | - | {naive['source_requests']} | - |",
            "",
            f"Target equal to the expected mapping after the runs: {target_ok}.",
            "",
        ]

    lines += ["## Peak RSS as the roster grows (initial sync)", "", "| enrollments | users | peak RSS |",
              "| ---: | ---: | ---: |"]
    for size in ((10_000, 2_000, 200), (50_000, 10_000, 1_000), (100_000, 20_000, 2_000)):
        n_enrollments, n_users, n_classes = (s // factor for s in size)
        with tempfile.TemporaryDirectory() as tmp:
            _, box, config = scale(n_users, n_classes, n_enrollments, Path(tmp), concurrency="8")
            with box:
                _, rss = peak_rss_mb(config)
        lines.append(f"| {n_enrollments:,} | {n_users:,} | {rss:.0f} MB |")
    lines.append("")

    with tempfile.TemporaryDirectory() as tmp:
        _, box, config = scale(2_000 // factor, 200 // factor, 10_000 // factor, Path(tmp), concurrency="8")
        box.provision.latency_s = 0.020
        with box:
            latency = run_syncd(config)
        calls = latency["summary"]["calls"]
        rate = calls / latency["push_s"]
        lines += ["## Push throughput, 20 ms latency per provision call, concurrency 8", "",
                  f"{calls:,} calls pushed in {latency['push_s']:.1f} s: **{rate:.0f} calls/s**, "
                  f"{rate / 400:.0%} of the 400 calls/s that 8 x 20 ms allows.", ""]

    report = "\n".join(lines)
    publish(report, "results.md", args.quick)


def store_runs(url: str, users: int, classes: int, enrollments: int) -> dict[str, dict]:
    """Initial, no-change and 1 %-change runs of one roster on one store ("" for SQLite)."""
    with tempfile.TemporaryDirectory() as tmp:
        roster, box, config = scale(users, classes, enrollments, Path(tmp), concurrency="8")
        if url:
            config.write_text(config.read_text(encoding="utf-8") + f'\n[state]\nurl = "{url}"\n', encoding="utf-8")
        with box:
            first = run_syncd(config)
            nochange = run_syncd(config)
            before = expected_mapping(roster, ROLES)
            roster.mutate(seed=1, fraction=0.01)
            change = run_syncd(config)
            change["minimum"] = minimal_calls(before, expected_mapping(roster, ROLES))
    return {"initial sync": first, "no-change resync": nochange, "1 % change resync": change}


def compare_stores(url: str, users: int, classes: int, enrollments: int) -> str:
    import pg  # tests/pg.py
    import psycopg

    with contextlib.ExitStack() as stack:
        if url == "throwaway":
            url = stack.enter_context(pg.running()).create_database("bench")
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            busy = conn.execute("SELECT to_regclass('runs') IS NOT NULL").fetchone()[0]
        if busy:
            raise SystemExit("--state-url: the database already holds a syncd store; give an empty one")
        sqlite = store_runs("", users, classes, enrollments)
        postgres = store_runs(url, users, classes, enrollments)
    lines = [f"# SQLite and PostgreSQL state stores ({datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, "
             f"{os.cpu_count()} cores, Python {sys.version.split()[0]})", "",
             f"{users:,} users / {classes:,} classes / {enrollments:,} enrollments, no latency, concurrency 8; "
             "wall time of the whole `syncd sync` process (PostgreSQL on loopback).", "",
             "| run | SQLite | PostgreSQL | ratio | calls (SQLite / PostgreSQL) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, on_sqlite in sqlite.items():
        on_pg = postgres[name]
        lines.append(f"| {name} | {on_sqlite['wall_s']:.2f} s | {on_pg['wall_s']:.2f} s | "
                     f"{on_pg['wall_s'] / on_sqlite['wall_s']:.2f}x | "
                     f"{on_sqlite['summary']['calls']:,} / {on_pg['summary']['calls']:,} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
