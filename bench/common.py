"""What the benchmarks share: the peak memory of a child process, and where results go."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def wait_with_peak_rss(process: subprocess.Popen, interval: float = 0.02) -> float:
    """Wait for ``process`` and return its peak RSS in MB.

    Read from /proc/PID/status (VmHWM, the high-water mark of the process after exec) while it
    runs: getrusage/wait4 would report at least the parent's own RSS at fork time.
    """
    peak_kb = 0
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(interval)
    return peak_kb / 1024


def publish(text: str, name: str, quick: bool) -> None:
    """Print a results table; a full run (not ``--quick``) also keeps it in ``bench/NAME``."""
    print(text)
    if not quick:
        (Path(__file__).parent / name).write_text(text + "\n", encoding="utf-8")
