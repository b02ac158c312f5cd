"""What exams cost on Canvas (issue 12): reading them, and whole `sync` runs with them.

    .venv/bin/python bench/exams.py           # 2,000 courses x 5 quizzes, ~1 minute on 2 cores
    .venv/bin/python bench/exams.py --quick   # 200 courses
    .venv/bin/python bench/exams.py --sync [--quick]   # engine runs: without exams, with, a resync

The fake Canvas answers every request in 30 ms behind its Canvas-like throttle (bench/canvas.py).
In this process, with syncd's own source, token and budget (concurrency 8): the roster crawl
(``CanvasSource.extract``, mode "api"), then every course's exams through
``syncd.sources.canvas_exams.course_exams``, one chain per course on the crawl's ``parallel()``
pool, as the engine runs them; then the same with override counts. Writes bench/exams-results.md.
With ``--sync``: ``engine.run`` of the tenant without exams, with exams (fresh state each), then a
no-change resync with exams, against the fake provision API. Writes bench/exams-sync-results.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
import tomllib
from datetime import datetime
from pathlib import Path

from common import publish

from syncd import config as configuration
from syncd.exams import CourseWindow, Exam
from syncd.sandbox import CanvasRoster, CanvasSandbox
from syncd.sandbox.canvas_quizzes import CanvasQuizzes
from syncd.sources.canvas import CanvasSource, parallel
from syncd.sources.canvas_exams import CanvasReader, course_exams

LATENCY_S = 0.030
TS = "TS4b894875a1b24f4e9b2e1c9d0f8a7b6c"


def tenant(box: CanvasSandbox, state: Path, exams: str) -> configuration.TenantConfig:
    text = f'[daemon]\nstate_dir = "{state}"\n' + box.tenant_toml(source_extra='mode = "api"\n')
    text += f'[tenants.stateu.exams]\nproctor_types = {{ "{TS}" = {{}} }}\n{exams}'
    return configuration.parse(tomllib.loads(text), state / "x.toml").tenants["stateu"]


def measure(box: CanvasSandbox, run) -> dict:
    before_requests, before_throttled = box.canvas.requests, box.canvas.throttled
    started = time.perf_counter()
    produced = run()
    return {"seconds": time.perf_counter() - started, "requests": box.canvas.requests - before_requests,
            "throttled": box.canvas.throttled - before_throttled, "records": produced}


def roster_crawl(config: configuration.TenantConfig, state: Path) -> int:
    source = CanvasSource(config, state)
    return sum(len(page) for page in source.extract())


def exams_read(config: configuration.TenantConfig, state: Path, roster: CanvasRoster, count: bool) -> int:
    source = CanvasSource(config, state)
    reader = CanvasReader.of(source)

    def chain(course_id: int, course: dict):
        window = CourseWindow(course.get("start_at"), course.get("end_at"))
        return lambda: course_exams(reader, str(course_id), window, config.exams, count_overrides=count)

    chains = [chain(c, v) for c, v in roster.courses.items() if v["workflow_state"] in ("available", "unpublished")]
    return sum(1 for page in parallel(chains, config.source.concurrency) for r in page if isinstance(r, Exam))


def sync_runs(roster: CanvasRoster, quizzes: CanvasQuizzes, quick: bool) -> None:
    from syncd import engine, logs
    from syncd.store import Store

    logs.configure("error", "json")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, CanvasSandbox(roster, quizzes=quizzes, latency_s=LATENCY_S) as box:
        for name, exams, state in (("sync without exams", None, "off"), ("sync with exams", "", "on"),
                                   ("no-change resync with exams", "", "on")):
            directory = Path(tmp) / state
            directory.mkdir(exist_ok=True)
            config = tenant(box, directory, 'select = "all"\ndefault_duration_min = 60\ndefault_password = "p"\n')
            if exams is None:
                config = dataclasses.replace(config, exams=None)
            store = Store.open(directory)
            try:
                calls_before = box.provision.calls
                result = measure(box, lambda: engine.run(config, store))  # noqa: B023 (called at once)
            finally:
                store.close()
            summary = result["records"]
            exams_counts = summary["counts"].get("exams", {})
            rows.append((name, result, box.provision.calls - calls_before, exams_counts.get("created", 0),
                         summary["status"]))
    in_scope = sum(1 for c in roster.courses.values() if c["workflow_state"] in ("available", "unpublished"))
    lines = [f"# `sync` with exams on Canvas ({datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, "
             f"Python {sys.version.split()[0]})", "",
             f"{len(roster.courses):,} courses ({in_scope:,} in scope), 5 exams each; 30 ms per Canvas request; "
             "throttle on; concurrency 8; `engine.run` in-process against the fake provision API (no latency).", "",
             "| run | wall time | Canvas requests | throttled | provision calls | exams created | status |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, row, calls, created, status in rows:
        lines.append(f"| {name} | {row['seconds']:.1f} s | {row['requests']:,} | {row['throttled']:,} | {calls:,} "
                     f"| {created:,} | {status} |")
    publish("\n".join(lines), "exams-sync-results.md", quick)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sync", action="store_true", help="whole engine runs instead of reads")
    args = parser.parse_args()
    courses = 200 if args.quick else 2000
    roster = CanvasRoster.generate(seed=42, users=courses * 2, courses=courses, enrollments=courses * 10)
    quizzes = CanvasQuizzes.generate(roster.courses, seed=42, per_course=5)
    if args.sync:
        sync_runs(roster, quizzes, args.quick)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp, CanvasSandbox(roster, quizzes=quizzes, latency_s=LATENCY_S) as box:
        state = Path(tmp)
        config = tenant(box, state, 'select = "all"\ndefault_duration_min = 60\ndefault_password = "p"\n')
        rows.append(("roster crawl (courses, users, enrollments)",
                     measure(box, lambda: roster_crawl(config, state))))
        rows.append(("exams: classic + New Quizzes", measure(box, lambda: exams_read(config, state, roster, False))))
        classic = tenant(box, state, 'select = "all"\nnew_quizzes = false\ndefault_duration_min = 60\n'
                                     'default_password = "p"\n')
        rows.append(("exams: classic only", measure(box, lambda: exams_read(classic, state, roster, False))))
        rows.append(("exams with override counts", measure(box, lambda: exams_read(config, state, roster, True))))
    in_scope = sum(1 for c in roster.courses.values() if c["workflow_state"] in ("available", "unpublished"))
    lines = [f"# Exam extraction cost on Canvas ({datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, "
             f"Python {sys.version.split()[0]})", "",
             f"{courses:,} courses ({in_scope:,} in scope), 5 exams each (3 classic, 2 New Quizzes); 30 ms per "
             "request; Canvas-like throttle on; concurrency 8; in-process (`--sync` measures whole runs).", "",
             "| read | wall time | requests | throttled answers | records |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, row in rows:
        lines.append(f"| {name} | {row['seconds']:.1f} s | {row['requests']:,} | {row['throttled']:,} "
                     f"| {row['records']:,} |")
    publish("\n".join(lines), "exams-results.md", args.quick)


if __name__ == "__main__":
    main()
