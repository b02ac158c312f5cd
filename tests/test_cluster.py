"""Three `syncd run` nodes against one PostgreSQL (SPEC §11): every tenant runs on one node at a
time, a node killed mid-push hands its tenants over, and every tenant converges with no duplicate.

The short form runs in CI (4 tenants); the long one (12 tenants) is marked slow."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from conftest import SYNCD
from test_sync_end_to_end import expected

from syncd.sandbox import Roster, Sandbox

pytestmark = pytest.mark.postgresql


class Node:
    """One `syncd run` process with its own state_dir and log, sharing the PostgreSQL store."""

    def __init__(self, index: int, tenants_toml: str, url: str, tmp_path: Path) -> None:
        self.config = tmp_path / f"node{index}.toml"
        self.config.write_text(f'[daemon]\nstate_dir = "{tmp_path / f"node{index}"}"\nlog_format = "json"\n\n'
                               f'[state]\nurl = "{url}"\n\n{tenants_toml}', encoding="utf-8")
        self.config.chmod(0o600)
        self.log = (tmp_path / f"node{index}.log").open("w")
        self.process = subprocess.Popen([SYNCD, "--config", str(self.config), "run"], stdout=subprocess.DEVNULL,
                                        stderr=self.log, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _runs(url: str) -> list[tuple]:
    with psycopg.connect(url, connect_timeout=10) as conn:
        return conn.execute("SELECT tenant, run_id, started_at, finished_at, status, pid FROM runs "
                            "WHERE dry_run = 0 ORDER BY tenant, started_at").fetchall()


def _holders(url: str) -> dict[str, int]:
    """Tenant -> pid of the node that holds its lease now."""
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            return dict(conn.execute("SELECT name, pid FROM leases WHERE kind = 'tenant'").fetchall())
    except psycopg.errors.UndefinedTable:
        return {}  # the nodes are still creating the schema


def _cluster(tmp_path: Path, url: str, tenants: int) -> None:
    boxes: dict[str, Sandbox] = {}
    with contextlib.ExitStack() as stack:
        for i in range(tenants):
            box = stack.enter_context(Sandbox(Roster.generate(seed=100 + i, users=120, classes=12, enrollments=400)))
            box.provision.latency_s = 0.01
            boxes[f"t{i:02d}"] = box
        toml = "".join(box.tenant_toml(name) for name, box in boxes.items())
        nodes = [Node(i, toml, url, tmp_path) for i in range(3)]
        try:
            # Kill -9 the node that holds a tenant whose push has started (calls reached its target).
            deadline = time.monotonic() + 60
            victim = None
            while victim is None and time.monotonic() < deadline:
                holders = _holders(url)
                for name, pid in holders.items():
                    if boxes[name].provision.calls > 5 and len(boxes[name].provision.enrollments) < 350:
                        victim = next((n for n in nodes if n.process.pid == pid), None)
                        killed_tenant = name
                        break
                time.sleep(0.05)
            assert victim is not None, "no push in progress to interrupt"
            os.kill(victim.process.pid, signal.SIGKILL)
            victim.process.wait()
            killed_at = time.monotonic()
            # Every tenant converges, the killed node's tenant on a surviving node.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if all(box.provision.snapshot() == expected(box.roster) for box in boxes.values()):
                    break
                time.sleep(0.2)
            took_over = time.monotonic() - killed_at
            for name, box in boxes.items():
                assert box.provision.snapshot() == expected(box.roster), f"{name} did not converge"
                assert box.provision.duplicates() == 0, name
            assert took_over < 60, "the dead node's tenant ran again within 60 s"
        finally:
            for node in nodes:
                node.stop()
    runs = _runs(url)
    by_tenant: dict[str, list[tuple]] = {}
    for run in runs:
        by_tenant.setdefault(run[0], []).append(run)
    assert set(by_tenant) == set(boxes)
    for name, history in by_tenant.items():
        for earlier, later in itertools.pairwise(history):
            # A run never finished (its node was killed) ended when its node died; its pid tells it apart.
            assert earlier[3] is not None or earlier[5] == victim.process.pid, f"{name}: {earlier} never finished"
            if earlier[3] is not None:
                assert earlier[3] <= later[2], f"{name}: two runs at once: {earlier} and {later}"
    interrupted = [run for run in by_tenant[killed_tenant] if run[3] is None]
    assert interrupted and interrupted[0][5] == victim.process.pid, "the killed run is in the history, unfinished"
    assert any(run[4] == "completed" and run[5] != victim.process.pid for run in by_tenant[killed_tenant])


def test_three_nodes_share_the_tenants_and_a_node_killed_mid_push_hands_them_over(tmp_path, pg_database):
    _cluster(tmp_path, pg_database, tenants=4)


@pytest.mark.slow
def test_three_nodes_with_twelve_tenants(tmp_path, pg_database):
    _cluster(tmp_path, pg_database, tenants=12)
