"""One run per tenant at a time, whoever starts it (daemon or CLI).

An advisory ``flock`` on ``state_dir/locks/TENANT.lock``: the kernel drops it when the holder
exits, however it exits, so a lock left by a killed process is taken over without any check.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


class Busy(Exception):
    """Another process holds the tenant."""


@contextlib.contextmanager
def tenant_lock(state_dir: Path, tenant: str, *, wait: bool = True,
                on_wait: Callable[[str], None] | None = None, stop: threading.Event | None = None) -> Iterator[None]:
    """Hold the tenant for the duration of the block. ``stop`` ends a wait early (raises Busy)."""
    directory = state_dir / "locks"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    # O_NOFOLLOW: a symlink planted in locks/ must not make us truncate and write another file.
    fd = os.open(directory / f"{tenant}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise Busy(f"tenant {tenant} is being synced by another process{holder}") from None
            if on_wait:
                on_wait(f"tenant {tenant} is being synced by another process{holder}; waiting for it")
            _wait(fd, tenant, stop)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _wait(fd: int, tenant: str, stop: threading.Event | None) -> None:
    if stop is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    while not stop.wait(0.2):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            continue
    raise Busy(f"stopped while waiting for tenant {tenant}")


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
