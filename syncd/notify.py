"""The systemd notify protocol: one datagram per message to ``$NOTIFY_SOCKET``.

``READY=1`` once the daemon has scheduled its tenants, ``STATUS=…`` whenever what it does
changes, ``WATCHDOG=1`` keep-alives at half of ``$WATCHDOG_USEC``, ``STOPPING=1`` on the way out.
Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger("syncd.notify")


def notify(*lines: str) -> bool:
    """Send ``lines`` as one message; True when a notify socket took it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode("utf-8"))
    except OSError as exc:
        log.warning("notify.failed", error=exc.strerror)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """How often to send WATCHDOG=1: half the watchdog timeout, if systemd set one for us."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000
