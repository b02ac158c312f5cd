"""Bounds on one run, whatever a source sends: pages read, pages that only repeat records
already read, and error rows stored.

A server may page forever (new ids on every page) or ignore ``offset`` and send the same
records again in a new order (which defeats a loop detector that compares pages). Both end the
extract with a clear error instead of filling the store; the run then infers no removal.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from syncd.sources import SourceError

# Pages in a row made mostly (half or more) of ids already read this run: a server that ignores
# offset/paging. A sound server repeats a record only when it moved during the listing.
MAX_REPEATED_PAGES = 3
# Error rows stored per run; past it, failures are still counted, and the log says how many
# were not stored (tens of thousands of identical rows help nobody and fill the disk).
MAX_ERROR_ROWS = 5_000
# How far the wall clock may move beyond real (monotonic) time between two checks before it is
# taken to have jumped; NTP slews by far less.
CLOCK_JUMP_S = 3600.0


class ExtractGuard:
    """Counts the pages of one extract; raises :class:`SourceError` when a bound is crossed."""

    def __init__(self, max_pages: int):
        self.max_pages = max_pages
        self.pages = 0
        self.repeated = 0

    def page(self, size: int, duplicates: int) -> None:
        """One page of ``size`` records was staged, ``duplicates`` of them ids already read."""
        self.pages += 1
        if self.pages > self.max_pages:
            raise SourceError(f"the source sent more than {self.max_pages} pages in one run; stopped "
                              "(an endless listing? raise source.max_pages if the roster is that large)")
        self.repeated = self.repeated + 1 if size and 2 * duplicates >= size else 0
        if self.repeated >= MAX_REPEATED_PAGES:
            raise SourceError(f"the source sent {self.repeated} pages in a row mostly of records already read "
                              "(it ignores paging?); stopped")


def store_error_row(errors_so_far: int) -> bool:
    """Whether the run's next error is stored as a row (it is counted either way)."""
    return errors_so_far <= MAX_ERROR_ROWS


# --- time ----------------------------------------------------------------------------------

_clock_lock = threading.Lock()
_last_iso = [""]


def monotonic_iso(now: str) -> str:
    """``now`` (an ISO UTC string), or the latest one already handed out if the clock went back."""
    with _clock_lock:
        if now < _last_iso[0]:
            return _last_iso[0]
        _last_iso[0] = now
        return now


def iso_after(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="seconds").replace("+00:00", "Z")


def clock_trusted(state_dir: Path) -> bool:
    """Whether the wall clock moved like real time since the last check in this boot.

    ``state_dir/clock.json`` keeps a reference (boot id, monotonic and wall time). A wall clock
    that moved more than ``CLOCK_JUMP_S`` beyond the monotonic clock has jumped: the reference is
    kept, and the caller does not act on the time (pruning) until the clock is right again.
    Across a reboot there is nothing to compare with, and the clock is taken as it is.
    """
    path = state_dir / "clock.json"
    now = {"boot": _boot_id(), "mono": time.monotonic(), "wall": datetime.now(UTC).timestamp()}
    try:
        last = json.loads(path.read_text(encoding="utf-8"))
        if last.get("boot") == now["boot"] and now["boot"]:
            jump = (now["wall"] - float(last["wall"])) - (now["mono"] - float(last["mono"]))
            if abs(jump) > CLOCK_JUMP_S:
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    with contextlib.suppress(OSError):
        tmp = path.with_name(f".clock.{os.getpid()}.json")
        tmp.write_text(json.dumps(now), encoding="utf-8")
        os.replace(tmp, path)
    return True


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return ""
