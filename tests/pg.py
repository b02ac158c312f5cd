"""A throwaway PostgreSQL server for the tests: Debian's binaries, a temp dir, 127.0.0.1, a free port.

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` user that
Debian's package creates (its data directory is handed to that user); otherwise as ourselves.
The server is trust-authenticated and listens only on loopback, never on the default port, and
``stop()`` removes every file it made. ``fsync`` is off (unless ``durable``, for the benchmarks):
a crash of the test server loses nothing we keep.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SUPERUSER = "syncd_test"

# Watches the test process; if it dies without cleaning up (kill -9, a CI timeout), it stops the
# server and removes its files, so no throwaway server outlives its tests.
JANITOR = """
import os, shutil, subprocess, sys, time
parent, root, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
while True:
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        break
    time.sleep(0.5)
subprocess.run(argv, capture_output=True, timeout=60, check=False)
shutil.rmtree(root, ignore_errors=True)
"""


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with initdb (Debian), else ``initdb`` on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def missing_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    if find_bindir() is None:
        return "no PostgreSQL server binaries (initdb); `apt-get install postgresql` (.ci/run does it)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user for initdb"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgServer:
    """One PostgreSQL cluster in a temp dir. ``start`` → ``url()`` → ``stop``."""

    def __init__(self, bindir: Path | None = None, durable: bool = False) -> None:
        # durable: fsync and synchronous_commit on, as a production server (the benchmarks).
        self.durable = durable
        found = bindir or find_bindir()
        if found is None:
            raise RuntimeError(missing_reason() or "no PostgreSQL binaries")
        self.bindir = found
        self.port = free_port()
        # Not under pytest's tmp dir: that one is root-only, and the server may run as 'postgres'.
        self.root = Path(tempfile.mkdtemp(prefix="syncd-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self._owner:
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)
        stop = [*self._prefix(), str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
        self._janitor = subprocess.Popen([sys.executable, "-c", JANITOR, str(os.getpid()), str(self.root), *stop],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)

    def _prefix(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if self._owner else []

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self._prefix(), str(self.bindir / argv[0]), *argv[1:]], capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=self.root)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr[-2000:]}\n{log}")
        return result

    def start(self) -> PgServer:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                      "--locale=C.UTF-8", "--no-sync", "--no-instructions")
        options = " ".join([
            "-c listen_addresses=127.0.0.1", f"-c port={self.port}", f"-c unix_socket_directories={self.root}",
            "-c max_connections=400",
            *([] if self.durable else ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]),
        ])
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate`` is a crash: every session is cut at once)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
        self._janitor.kill()
        self._janitor.wait(10)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        import psycopg  # the test extra installs it; imported here so that collection never needs it

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def wait_ready(self, timeout: float = 30) -> None:
        """Block until the server accepts connections again (after a restart)."""
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@contextlib.contextmanager
def running(durable: bool = False) -> Iterator[PgServer]:
    """A started server, stopped and removed at the end whatever happens."""
    server = PgServer(durable=durable)
    try:
        yield server.start()
    finally:
        server.remove()
