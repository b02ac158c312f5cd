"""Progress on a terminal for every manual sync (plain, --dry-run, --only), and --quiet.

The `syncd` command runs on a real pseudo-terminal, as an admin would see it.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time

from conftest import SYNCD


def on_terminal(config, *args: str, stdout_too: bool = False, timeout: float = 120) -> tuple[int, str, str]:
    """Run `syncd` with stderr (and optionally stdout) on a pty; returns (exit, terminal, stdout)."""
    master, slave = pty.openpty()
    seen, out = bytearray(), bytearray()
    process = subprocess.Popen([SYNCD, "--config", str(config), *args], stdin=subprocess.DEVNULL,
                               stdout=slave if stdout_too else subprocess.PIPE, stderr=slave)
    os.close(slave)
    # Read the terminal and stdout together: a dry run's plan is bigger than a pipe's buffer.
    streams = {master: bytearray(), **({} if stdout_too else {process.stdout.fileno(): bytearray()})}
    deadline = time.monotonic() + timeout
    while streams and time.monotonic() < deadline:
        ready, _, _ = select.select(list(streams), [], [], 0.2)
        for fd in ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if chunk:
                streams[fd] += chunk
            else:
                (seen if fd == master else out).extend(streams.pop(fd))
        if not ready and process.poll() is not None and not select.select(list(streams), [], [], 0.2)[0]:
            break
    for fd, data in streams.items():
        (seen if fd == master else out).extend(data)
    os.close(master)
    stdout = bytes(out)
    code = process.wait(timeout=10)
    return code, bytes(seen).decode(errors="replace"), stdout.decode()


def phases(terminal: str) -> list[str]:
    """The phases the bar drew, in order (each redraw starts with a carriage return)."""
    drawn = []
    for piece in terminal.replace("\r\n", "\n").split("\r"):
        words = piece.split()
        if len(words) > 1 and words[0] == "lincoln" and (not drawn or drawn[-1] != words[1]):
            drawn.append(words[1])
    return drawn


def test_a_sync_on_a_terminal_shows_every_phase(sandbox, config):
    code, terminal, stdout = on_terminal(config, "sync", "lincoln")
    assert code == 0, terminal[-2000:]
    assert phases(terminal) == ["extract", "scope", "plan", "push", "removals"]
    assert "lincoln: completed" in stdout


def test_a_dry_run_shows_progress_and_its_plan_on_lines_of_their_own(sandbox, config):
    code, terminal, _ = on_terminal(config, "sync", "lincoln", "--dry-run", stdout_too=True)
    assert code == 0, terminal[-2000:]
    assert phases(terminal)[:3] == ["extract", "scope", "plan"]
    lines = terminal.replace("\r\n", "\n").split("\n")
    plan = next(line for line in lines if "plan for lincoln:" in line)
    assert plan.startswith("plan for lincoln:"), plan  # the bar's line ended before the plan began
    assert "(dry run)" in terminal


def test_only_shows_progress_too(sandbox, config, roster):
    user = next(u for u, v in roster.users.items() if v["status"] == "active" and v["role"] == "student")
    code, terminal, stdout = on_terminal(config, "sync", "lincoln", "--only", f"user:{user}")
    assert code == 0, terminal[-2000:]
    assert phases(terminal)[:4] == ["extract", "scope", "plan", "push"]
    assert f"syncing only user {user}" in stdout and "acknowledged" in stdout


def test_quiet_leaves_only_the_result(sandbox, config, roster):
    user = next(u for u, v in roster.users.items() if v["status"] == "active" and v["role"] == "student")
    for args in (("--quiet", "sync", "lincoln"), ("sync", "lincoln", "-q", "--only", f"user:{user}"),
                 ("sync", "lincoln", "--quiet")):
        code, terminal, stdout = on_terminal(config, *args)
        assert code == 0, terminal[-2000:]
        assert terminal == "", terminal[-2000:]  # no progress, no log lines: nothing went wrong
        assert stdout.startswith("lincoln: completed") and len(stdout.splitlines()) == 5, stdout
    # Errors still reach the terminal under --quiet.
    sandbox.provision.reject = lambda body: (422, "refused") if body.get("user") else None
    sandbox.roster.users[user]["givenName"] = "Renamed"
    code, terminal, stdout = on_terminal(config, "sync", "lincoln", "--quiet")
    assert code == 1 and "sync.record_failed" in terminal and "refused" in terminal
    assert "extract" not in phases(terminal)


def test_quiet_keeps_a_dry_runs_plan(sandbox, config):
    code, terminal, stdout = on_terminal(config, "sync", "lincoln", "--dry-run", "--quiet")
    assert code == 0 and terminal == ""
    assert stdout.startswith("plan for lincoln:") and "(dry run)" in stdout
