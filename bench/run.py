"""Benchmark: the real `syncd` command against the sandbox servers on loopback.

    .venv/bin/python bench/run.py            # full run (~10 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick    # a small smoke version
    .venv/bin/python bench/run.py --state-url throwaway   # SQLite beside PostgreSQL (SPEC §11)

Reports, for a roster of 20k users / 2k classes / 100k enrollments: initial sync, no-change and
1 %-change resync wall time, provision calls against the SPEC §4 minimum, source requests and
peak RSS of the syncd process; a naive baseline that pushes every record every run (`--force`);
syncd side by side with the script a district would write (bench/naive.py), on the same fake
server in the same run, without latency and with 100 ms per source page (medians of interleaved
rounds; wall time, CPU time and peak RSS, with ratios); peak RSS as the roster grows; and push
throughput with 20 ms of latency per provision call at concurrency 8, 16 and 32.
Results are printed as Markdown and written to bench/results.md.

    --skip-slow   leave out the `--force` baseline and the RSS growth table (about half the time)
    --push-only   only the push throughput table (``--rounds`` of each concurrency, medians), printed,
                  bench/results.md left as it is

``--state-url URL`` (an empty PostgreSQL database it may fill, or ``throwaway`` for a server that
tests/pg.py starts and removes, durable: fsync and synchronous_commit on) runs only the store
comparison: the same roster synced on the SQLite file and on PostgreSQL (initial sync, then ``--rounds``
interleaved no-change and 1 %-change resyncs; medians, wall and CPU time, the server's CPU too), with
the ratios, written to bench/postgres-results.md.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import publish, wait_with_peak_rss
from test_sync_end_to_end import initial_calls, minimal_calls

from syncd.sandbox import Roster, Sandbox, expected_mapping

SYNCD = str(Path(sys.executable).with_name("syncd"))
NAIVE = str(Path(__file__).with_name("naive.py"))
ROLES = {"student": "learner", "teacher": "instructor"}
PAGE_LATENCY_S = 0.100
PUSH_LATENCY_S = 0.020  # per provision call, counted from the request's arrival (syncd/sandbox/server.py)


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
    # The push itself: from the plan's end (the first call) to the run's end, not the classify before it.
    push_s = (stamps["sync.finished"] - stamps.get("sync.planned", stamps["sync.extracted"])).total_seconds()
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


def measured(argv: list[str]) -> dict:
    """Wall time, CPU time (user + system, from the kernel's accounting of reaped children) and
    peak RSS of one command; stdout is kept for the caller."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak_mb = wait_with_peak_rss(process)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert process.stdout is not None
    stdout = process.stdout.read()
    if process.returncode != 0:
        raise SystemExit(f"{argv[:2]} failed ({process.returncode})")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "rss_mb": peak_mb, "stdout": stdout}


def side_by_side(config: Path, state: Path, rounds: int) -> dict[str, dict[str, float]]:
    """Medians of interleaved no-change runs of syncd and the naive peer (interleaved, so that a
    noisy neighbour slows both alike)."""
    runs: dict[str, list[dict]] = {"syncd": [], "naive": []}
    for _ in range(rounds):
        runs["naive"].append(measured([sys.executable, NAIVE, str(config), str(state)]))
        runs["syncd"].append(measured([SYNCD, "--config", str(config), "sync", "lincoln", "--json"]))
        assert json.loads(runs["naive"][-1]["stdout"])["calls"] == 0
        assert json.loads(runs["syncd"][-1]["stdout"])["calls"] == 0
    return {who: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s", "rss_mb")}
            for who, rs in runs.items()}


def peer_rows(label: str, figures: dict[str, dict[str, float]], target: str) -> list[str]:
    s, n = figures["syncd"], figures["naive"]
    return [f"| {label}: wall time | {s['wall_s']:.2f} s | {n['wall_s']:.2f} s | "
            f"**{s['wall_s'] / n['wall_s']:.3f}** | {target} |",
            f"| {label}: CPU time | {s['cpu_s']:.2f} s | {n['cpu_s']:.2f} s | "
            f"**{s['cpu_s'] / n['cpu_s']:.3f}** | ≤ 0.8 |",
            f"| {label}: peak RSS | {s['rss_mb']:.0f} MB | {n['rss_mb']:.0f} MB | "
            f"{s['rss_mb'] / n['rss_mb']:.2f} | ≤ 100 MB |"]


def delta_runs(box: Sandbox, roster: Roster, workdir: Path, rounds: int) -> dict[str, Any]:
    """On the synced state: one full run that writes the delta marks, then no-change deltas, then a
    1 % change read by a delta."""
    config = box.write_config(workdir / "delta.toml", workdir / "state", log_level="info",
                              source_extra='page_size = 1000\ndelta = "auto"', target_extra="concurrency = 8")
    run_syncd(config, "--full")
    argv = [SYNCD, "--config", str(config), "sync", "lincoln", "--json"]

    def one() -> dict[str, Any]:
        before = box.oneroster.requests
        result = measured(argv)
        return result | {"requests": box.oneroster.requests - before,
                         "calls": json.loads(result["stdout"])["calls"]}

    runs = [one() for _ in range(rounds)]
    assert all(r["calls"] == 0 for r in runs)
    nochange = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "cpu_s", "requests")}
    roster.mutate(seed=2, fraction=0.01)
    change = one()
    after_change = one()  # reads the change again (the margin) and takes the diff: no settled mark yet
    assert after_change["calls"] == 0
    assert box.oneroster.filtered_requests > 0
    target, expected = box.provision.snapshot(), expected_mapping(roster, ROLES)
    ok = all(target[k].get(key) == v for k in expected for key, v in expected[k].items())
    return {"nochange": nochange | {"requests": int(nochange["requests"])}, "change": change,
            "after_change": after_change, "target_ok": ok}


def scale(users: int, classes: int, enrollments: int, workdir: Path, **target: str) -> tuple[Roster, Sandbox, Path]:
    roster = Roster.generate(seed=42, users=users, classes=classes, enrollments=enrollments)
    box = Sandbox(roster, cache_pages=True)
    extra = "\n".join(f"{k} = {v}" for k, v in target.items())
    config = box.write_config(workdir / "syncd.toml", workdir / "state", log_level="info",
                              source_extra="page_size = 1000", target_extra=extra)
    return roster, box, config


def push_table(factor: int, rounds: int = 1) -> list[str]:
    """Initial syncs of 10k enrollments with 20 ms per provision call, at concurrency 8, 16 and 32
    (``rounds`` of each, interleaved, medians): push time from ``sync.planned`` to ``sync.finished``."""
    runs: dict[int, list[dict]] = {8: [], 16: [], 32: []}
    for _ in range(rounds):
        for concurrency, results in runs.items():
            with tempfile.TemporaryDirectory() as tmp:
                _, box, config = scale(2_000 // factor, 200 // factor, 10_000 // factor, Path(tmp),
                                       concurrency=str(concurrency))
                box.provision.latency_s = PUSH_LATENCY_S
                with box:
                    results.append(run_syncd(config))
                assert box.target_timing is not None and box.target_timing.mean_latency_s is not None
                results[-1]["latency_s"] = box.target_timing.mean_latency_s
    shown = "" if rounds == 1 else f", medians of {rounds} interleaved rounds"
    lines = [f"## Push throughput, 20 ms latency per provision call (initial sync of 10k enrollments{shown})", "",
             "| concurrency | calls | push time | calls/s | bound (concurrency / 20 ms) | of the bound "
             "| the sandbox's latency, as measured |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for concurrency, results in runs.items():
        calls = results[0]["summary"]["calls"]
        push_s = statistics.median(r["push_s"] for r in results)
        rate = calls / push_s
        bound = concurrency / PUSH_LATENCY_S
        latency_ms = statistics.median(r["latency_s"] for r in results) * 1000
        lines.append(f"| {concurrency} | {calls:,} | {push_s:.1f} s | **{rate:.0f}** | {bound:.0f} | "
                     f"{rate / bound:.1%} | {latency_ms:.2f} ms |")
    return [*lines, "The last column: the mean time from a call's arrival at the sandbox to its answer written "
                    "(syncd/sandbox/server.py, `Timing`): the bound assumes 20 ms.", ""]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-slow", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--state-url", help="compare SQLite with PostgreSQL at this URL (or 'throwaway')")
    parser.add_argument("--push-only", action="store_true",
                        help="only the push throughput table, --rounds of each, printed (results.md untouched)")
    args = parser.parse_args()
    factor = 10 if args.quick else 1
    # As installed from a wheel (pip byte-compiles it): an editable install run under
    # PYTHONDONTWRITEBYTECODE=1 would compile syncd's modules again at every command (~45 ms each).
    compileall.compile_dir(Path(__file__).resolve().parent.parent / "syncd", quiet=1)
    if args.push_only:
        load = os.getloadavg()
        print("\n".join(push_table(factor, args.rounds)))
        print(f"Load average (1, 5, 15 min) before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: "
              + " ".join(f"{v:.2f}" for v in os.getloadavg()))
        return
    users, classes, enrollments = 20_000 // factor, 2_000 // factor, 100_000 // factor
    if args.state_url:
        publish(compare_stores(args.state_url, users, classes, enrollments, args.rounds), "postgres-results.md",
                args.quick)
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
            # The naive peer starts from what syncd pushed: its state file is written, nothing sent.
            peer_state = Path(tmp) / "naive-state.json"
            measured([sys.executable, NAIVE, str(config), str(peer_state), "--record-only"])
            fast = side_by_side(config, peer_state, args.rounds)
            box.oneroster.latency_s = PAGE_LATENCY_S
            slow = side_by_side(config, peer_state, args.rounds)
            box.oneroster.latency_s = 0.0
            before = expected_mapping(roster, ROLES)
            roster.mutate(seed=1, fraction=0.01)
            after = expected_mapping(roster, ROLES)
            change = run_syncd(config)
            # The first no-change run after a change takes the diff (the change left no settled mark).
            after_change = measured([SYNCD, "--config", str(config), "sync", "lincoln", "--json"])
            assert json.loads(after_change["stdout"])["calls"] == 0
            naive = None if args.skip_slow else run_syncd(config, "--force")
            target = box.provision.snapshot()
            # The target keeps what was removed (the API has no delete): compare what is in scope.
            target_ok = all(target[k].get(key) == v for k in after for key, v in after[k].items())
            delta = delta_runs(box, roster, Path(tmp), args.rounds)
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
            f"| no-change resync right after the change (takes the diff) | {after_change['wall_s']:.2f} s | 0 | 0 | "
            f"{nochange_detail['source_requests']} | {after_change['rss_mb']:.0f} MB |",
            *([] if naive is None else [
                f"| naive baseline (every record, every run) | {naive['wall_s']:.1f} s | "
                f"{naive['summary']['calls']:,} | - | {naive['source_requests']} | - |"]),
            "",
            f"Target equal to the expected mapping after the runs: {target_ok}.",
            "",
            "## syncd against the script a district would write (`bench/naive.py`), same server, same run",
            "",
            f"No-change resync, {users:,} users / {enrollments:,} enrollments, pages of 1,000, source "
            f"`concurrency` at its default (4); medians of {args.rounds} interleaved rounds. The peer reads "
            "sequentially with `requests`, holds the roster in dicts and diffs against a JSON file.",
            "",
            "| measure | syncd | naive peer | ratio | target |",
            "| --- | ---: | ---: | ---: | ---: |",
            *peer_rows("no latency", fast, "≤ 0.5"),
            *peer_rows(f"{PAGE_LATENCY_S * 1000:.0f} ms per source page", slow, "≤ 0.25"),
            "",
            "## Delta runs (`source.delta = \"auto\"`, the server serves `filter=dateLastModified>…`)",
            "",
            f"Same roster and state, no latency; medians of {args.rounds}. A delta reads what changed since "
            "the last extract less a 10-minute margin, so the 1 % row also re-reads the change above.",
            "",
            "| run | wall time | CPU time | source requests | provision calls | target |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            f"| delta no-change resync | {delta['nochange']['wall_s']:.2f} s | {delta['nochange']['cpu_s']:.2f} s | "
            f"{delta['nochange']['requests']} | 0 | ≤ 1 s |",
            f"| delta 1 % change resync | {delta['change']['wall_s']:.2f} s | {delta['change']['cpu_s']:.2f} s | "
            f"{delta['change']['requests']} | {delta['change']['calls']:,} | ≤ 2 s |",
            f"| delta no-change right after the change (takes the diff) | {delta['after_change']['wall_s']:.2f} s | "
            f"{delta['after_change']['cpu_s']:.2f} s | {delta['after_change']['requests']} | 0 | |",
            f"| full no-change resync (for scale) | {fast['syncd']['wall_s']:.2f} s | {fast['syncd']['cpu_s']:.2f} s | "
            f"{nochange_detail['source_requests']} | 0 | |",
            "",
            f"Target equal to the expected mapping after the delta runs: {delta['target_ok']}.",
            "",
        ]

    if not args.skip_slow:
        lines += ["## Peak RSS as the roster grows (initial sync)", "", "| enrollments | users | peak RSS |",
                  "| ---: | ---: | ---: |"]
    for size in () if args.skip_slow else ((10_000, 2_000, 200), (50_000, 10_000, 1_000), (100_000, 20_000, 2_000)):
        n_enrollments, n_users, n_classes = (s // factor for s in size)
        with tempfile.TemporaryDirectory() as tmp:
            _, box, config = scale(n_users, n_classes, n_enrollments, Path(tmp), concurrency="8")
            with box:
                _, rss = peak_rss_mb(config)
        lines.append(f"| {n_enrollments:,} | {n_users:,} | {rss:.0f} MB |")
    if not args.skip_slow:
        lines.append("")

    lines += push_table(factor)
    report = "\n".join(lines)
    publish(report, "results.md", args.quick)


def server_cpu_s(data_dir: Path | None) -> float:
    """CPU seconds of a local PostgreSQL server so far: the postmaster and every backend it has reaped
    (a session's backend exits when syncd disconnects, and its time lands in the postmaster's
    cutime/cstime). 0 for a server this machine cannot see (a remote URL)."""
    if data_dir is None:
        return 0.0
    pid = (data_dir / "postmaster.pid").read_text().split()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class StoreBench:
    """One roster synced on one store ("" for the SQLite file): its sandbox, config and runs."""

    def __init__(self, url: str, users: int, classes: int, enrollments: int, workdir: Path,
                 data_dir: Path | None) -> None:
        self.url, self.data_dir = url, data_dir
        workdir.mkdir()
        self.roster, self.box, self.config = scale(users, classes, enrollments, workdir, concurrency="8")
        if url:
            self.config.write_text(self.config.read_text(encoding="utf-8") + f'\n[state]\nurl = "{url}"\n',
                                   encoding="utf-8")

    def run(self) -> dict[str, Any]:
        """One `syncd sync`: wall, CPU of the syncd process, CPU of the server, calls."""
        server = server_cpu_s(self.data_dir)
        result = measured([SYNCD, "--config", str(self.config), "sync", "lincoln", "--json"])
        result["server_cpu_s"] = server_cpu_s(self.data_dir) - server
        result["calls"] = json.loads(result["stdout"])["calls"]
        return result


def compare_stores(url: str, users: int, classes: int, enrollments: int, rounds: int) -> str:
    """The same roster on SQLite and on PostgreSQL: initial sync once, then ``rounds`` interleaved
    no-change and 1 %-change resyncs (SQLite, then PostgreSQL, each round: a noisy neighbour slows both)."""
    import pg  # tests/pg.py
    import psycopg

    with contextlib.ExitStack() as stack:
        data_dir = None
        if url == "throwaway":
            # Durable, as a production server: fsync on, synchronous_commit on (every ack waits for the WAL).
            server = stack.enter_context(pg.running(durable=True))
            url, data_dir = server.create_database("bench"), server.data
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            busy = conn.execute("SELECT to_regclass('runs') IS NOT NULL").fetchone()[0]
            settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN "
                                         "('fsync', 'synchronous_commit', 'server_version')").fetchall())
        if busy:
            raise SystemExit("--state-url: the database already holds a syncd store; give an empty one")
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stores = {"SQLite": StoreBench("", users, classes, enrollments, tmp / "sqlite", None),
                  "PostgreSQL": StoreBench(url, users, classes, enrollments, tmp / "pg", data_dir)}
        for bench in stores.values():
            stack.enter_context(bench.box)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in stores}
        for name, bench in stores.items():
            runs[name]["initial sync"] = [bench.run()]
        minimum = 0
        for step in range(rounds):
            for name, bench in stores.items():
                runs[name].setdefault("no-change resync", []).append(bench.run())
            before = expected_mapping(stores["SQLite"].roster, ROLES)
            for name, bench in stores.items():
                bench.roster.mutate(seed=100 + step, fraction=0.01)
                runs[name].setdefault("1 % change resync", []).append(bench.run())
            minimum = minimal_calls(before, expected_mapping(stores["SQLite"].roster, ROLES))
        equal = {name: _target_ok(bench) for name, bench in stores.items()}
    med = {name: {run: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s", "server_cpu_s")}
                  | {"calls": rs[-1]["calls"], "n": len(rs)} for run, rs in by_run.items()}
           for name, by_run in runs.items()}
    lines = [f"# SQLite and PostgreSQL state stores ({datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, "
             f"{os.cpu_count()} cores, Python {sys.version.split()[0]})", "",
             f"{users:,} users / {classes:,} classes / {enrollments:,} enrollments, no latency, concurrency 8. "
             f"PostgreSQL {settings.get('server_version', '?')} on loopback, fsync={settings.get('fsync')}, "
             f"synchronous_commit={settings.get('synchronous_commit')} (every acknowledgement waits for its WAL "
             f"flush); SQLite in WAL mode with synchronous=NORMAL, as syncd opens it. Resyncs are medians of "
             f"{rounds} interleaved rounds (SQLite, then PostgreSQL, in each); the initial sync is one run. "
             "Wall and CPU time of the whole `syncd sync` process; the server's CPU is its postmaster's and "
             "reaped backends' (from /proc).", "",
             "| run | SQLite wall | PostgreSQL wall | **wall ratio** | SQLite CPU | PostgreSQL CPU (syncd + server) "
             "| CPU ratio | calls (SQLite / PostgreSQL / minimum) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run, on_sqlite in med["SQLite"].items():
        on_pg = med["PostgreSQL"][run]
        pg_cpu = on_pg["cpu_s"] + on_pg["server_cpu_s"]
        least = f" / {minimum:,}" if run == "1 % change resync" else ""
        lines.append(f"| {run} | {on_sqlite['wall_s']:.2f} s | {on_pg['wall_s']:.2f} s | "
                     f"**{on_pg['wall_s'] / on_sqlite['wall_s']:.2f}x** | {on_sqlite['cpu_s']:.2f} s | "
                     f"{pg_cpu:.2f} s ({on_pg['cpu_s']:.2f} + {on_pg['server_cpu_s']:.2f}) | "
                     f"{pg_cpu / on_sqlite['cpu_s']:.2f}x | {on_sqlite['calls']:,} / {on_pg['calls']:,}{least} |")
    lines += ["", "Targets equal to the expected mapping after the runs: "
              + ", ".join(f"{name} {ok}" for name, ok in equal.items()) + ".", ""]
    return "\n".join(lines)


def _target_ok(bench: StoreBench) -> bool:
    target, expected = bench.box.provision.snapshot(), expected_mapping(bench.roster, ROLES)
    return all(target[k].get(key) == v for k in expected for key, v in expected[k].items())


if __name__ == "__main__":
    main()
