"""`syncd demo --serve`: the sandbox stays up on fixed loopback ports, with a config that points at
it, until Ctrl-C or SIGTERM; real `syncd` commands work against it meanwhile."""

from __future__ import annotations

import json
import queue
import random
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from conftest import SYNCD, syncd


def free_port_base(count: int = 4) -> int:
    """A base port whose next ``count`` ports are free on 127.0.0.1 (fixed ports, so test first)."""
    for _ in range(50):
        base = random.randrange(20000, 60000)
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free port range")


class Served:
    """A running `syncd demo --serve`, its stdout read line by line in a thread."""

    def __init__(self, directory: Path, port_base: int):
        self.process = subprocess.Popen([SYNCD, "demo", "--serve", "--dir", str(directory), "--port-base",
                                         str(port_base)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.output.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        stderr = self.process.stderr.read()[-2000:] if self.process.poll() is not None else "(still running)"
        raise AssertionError(f"no {pattern!r} in {''.join(self.output)!r}; stderr {stderr!r}")

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=20)
        self.output += [line for line in iter(lambda: self.lines.get(timeout=5), None)]
        return code


def test_demo_serve_keeps_the_sandbox_up_for_real_commands_until_ctrl_c(tmp_path):
    base = free_port_base()
    served = Served(tmp_path / "demo", base)
    try:
        config = Path(served.wait_for(r"^config: (\S+)").group(1))
        refused = served.wait_for(r"syncd explain lincoln user:(\S+)").group(1)
        text = "".join(served.output)
        for offset in range(3):  # OneRoster, Canvas, provision on fixed ports
            assert f"127.0.0.1:{base + offset}" in text
        assert f"127.0.0.1:{base + 3}" in text and "GG4L" in text

        lincoln = syncd(config, "sync", "lincoln", "--json")
        outcome = json.loads(lincoln.stdout)
        assert outcome["status"] == "completed_with_errors" and outcome["calls"] > 100, lincoln.stderr[-2000:]
        stateu = syncd(config, "sync", "stateu", "--json")
        assert stateu.returncode == 0 and json.loads(stateu.stdout)["calls"] > 100, stateu.stderr[-2000:]
        why = json.loads(syncd(config, "explain", "lincoln", f"user:{refused}", "--json").stdout)
        assert why["state"] == "escrow"
        again = syncd(config, "sync", "lincoln", "--json")
        assert json.loads(again.stdout)["calls"] == 0  # the same sandbox, still up, still in step
    finally:
        code = served.stop(signal.SIGINT)
    assert code == 0
    assert "sandbox stopped" in "".join(served.output)


def test_demo_serve_says_when_its_ports_are_taken_and_stops_on_sigterm(tmp_path):
    base = free_port_base()
    first = Served(tmp_path / "one", base)
    try:
        first.wait_for(r"^config: ")
        second = subprocess.run([SYNCD, "demo", "--serve", "--dir", str(tmp_path / "two"), "--port-base", str(base)],
                                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert second.returncode == 1 and f"cannot listen on 127.0.0.1 ports {base}-{base + 3}" in second.stderr
        assert "--port-base" in second.stderr
    finally:
        assert first.stop(signal.SIGTERM) == 0
    bad = subprocess.run([SYNCD, "demo", "--serve", "--port-base", "80"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--port-base must be between" in bad.stderr
