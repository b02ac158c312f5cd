"""Load: how time and peak memory of a syncd run grow with the roster, up to 1M enrollments.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/load.py             # 10k .. 1M enrollments (~25 minutes on 2 cores)
    .venv/bin/python bench/load.py --quick     # 10k .. 100k
    .venv/bin/python bench/load.py --push 1000000   # one real first sync, pushed (~35 minutes)

Each size is a fresh OneRoster sandbox (users = enrollments / 5, classes = enrollments / 50).
The run is a first sync in ``--dry-run`` mode: the whole extract is staged in SQLite, diffed
and planned (one planned call per enrollment), and nothing is pushed, so the figures measure
what grows with the roster without 30 minutes of provision calls at 1M. (The push's own memory
is bounded by its window of 2 x concurrency calls: bench/run.py measures it up to 100k.)
Peak RSS is the syncd process's VmHWM. Writes bench/load-results.md and bench/load.png.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import publish, wait_with_peak_rss

from syncd.sandbox import Roster, Sandbox

SYNCD = str(Path(sys.executable).with_name("syncd"))
HERE = Path(__file__).parent


def measure(enrollments: int, push: bool = False) -> dict:
    roster = Roster.generate(seed=5, users=enrollments // 5, classes=max(10, enrollments // 50),
                             enrollments=enrollments)
    with tempfile.TemporaryDirectory() as tmp, Sandbox(roster) as box:
        config = box.write_config(Path(tmp) / "syncd.toml", Path(tmp) / "state", log_level="warning",
                                  source_extra="page_size = 1000")
        started = time.perf_counter()
        # The text plan streams one line per object to a file; --json would build the plan in memory.
        out = (Path(tmp) / "plan.txt").open("w")
        args = [] if push else ["--dry-run"]
        process = subprocess.Popen([SYNCD, "--config", str(config), "sync", "lincoln", *args],
                                   stdout=out, stderr=subprocess.DEVNULL, text=True)
        peak_mb = wait_with_peak_rss(process, interval=0.05)
        out.close()
        seconds = time.perf_counter() - started
        tail = (Path(tmp) / "plan.txt").read_text().splitlines()[-6:]
        pattern = r"(\d+) call\(s\) sent" if push else r"(\d+) planned"
        planned = next(int(m.group(1)) for line in tail if (m := re.search(pattern, line)))
        return {"enrollments": enrollments, "users": len(roster.users), "seconds": seconds,
                "rss_mb": peak_mb, "planned": planned}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["enrollments"] for r in rows]
    fig, left = plt.subplots(figsize=(7, 4))
    left.plot(sizes, [r["rss_mb"] for r in rows], "o-", color="tab:blue", label="peak RSS (MB)")
    left.set_xscale("log")
    left.set_xlabel("enrollments")
    left.set_ylabel("peak RSS of syncd (MB)", color="tab:blue")
    left.set_ylim(0, max(200, max(r["rss_mb"] for r in rows) * 1.2))
    left.axhline(200, color="tab:blue", linestyle=":", linewidth=1)
    right = left.twinx()
    right.plot(sizes, [r["seconds"] for r in rows], "s--", color="tab:orange", label="wall time (s)")
    right.set_yscale("log")
    right.set_ylabel("wall time (s)", color="tab:orange")
    left.set_title("syncd first sync (dry run): memory stays flat as the roster grows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--push", type=int, metavar="ENROLLMENTS",
                        help="instead: one real first sync (pushed) of this size, e.g. 1000000 (~35 minutes)")
    args = parser.parse_args()
    if args.push:
        print(measure(args.push, push=True))
        return
    sizes = (10_000, 30_000, 100_000) if args.quick else (10_000, 100_000, 250_000, 500_000, 1_000_000)
    rows = []
    for size in sizes:
        rows.append(measure(size))
        print(rows[-1], file=sys.stderr, flush=True)
    lines = ["| enrollments | users | wall time | peak RSS | planned calls |", "| ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['enrollments']:,} | {r['users']:,} | {r['seconds']:.1f} s | {r['rss_mb']:.0f} MB | "
              f"{r['planned']:,} |" for r in rows]
    text = "\n".join(lines)
    publish(text, "load-results.md", args.quick)
    if not args.quick:
        plot(rows, HERE / "load.png")


if __name__ == "__main__":
    main()
