"""Tenant leases on a real PostgreSQL (tests/pg.py): exclusion, kill -9, SIGSTOP fencing, restarts.

Holders are real processes (``HOLDER`` below) that take a lease and then write a row every 50 ms
on the lease's connection, stamped by the server's clock; the rows are the evidence of who could
write when.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict

import pg
import psycopg
import pytest

from syncd import lease, lock

pytestmark = pytest.mark.timeout(240)

# Short timeouts for the SIGSTOP test: the same mechanism as the defaults, in seconds not tens of seconds.
FAST = lease.Timeouts(heartbeat=0.5, idle_session=2, idle_in_transaction=2, statement=3, keepalive_idle=1,
                      keepalive_interval=1, keepalive_count=2, tcp_user_timeout=3, connect=5, poll=0.1)

HOLDER = """
import json, sys, time
import psycopg
from syncd import lease
url, tenant, hold, timeouts = sys.argv[1], sys.argv[2], float(sys.argv[3]), lease.Timeouts(**json.loads(sys.argv[4]))
node = lease.Node.here()
held = lease.acquire(url, tenant, node=node, wait=True, timeouts=timeouts)
print("ACQUIRED", node, flush=True)
started, n = time.monotonic(), 0
while hold < 0 or time.monotonic() - started < hold:
    try:
        with held.connection.transaction():
            held.connection.execute("INSERT INTO writes (tenant, node, n) VALUES (%s, %s, %s)", (tenant, str(node), n))
    except (lease.LeaseLost, psycopg.Error) as exc:
        print("FENCED", type(exc).__name__, str(exc).splitlines()[0], flush=True)
        sys.exit(3)
    n += 1
    time.sleep(0.05)
held.release()
print("RELEASED", flush=True)
"""


def _writes_table(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS writes (tenant TEXT, node TEXT, n INTEGER, "
                     "at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())")


def _holder(url: str, tenant: str, hold: float = -1, timeouts: lease.Timeouts = FAST) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", HOLDER, url, tenant, str(hold), json.dumps(asdict(timeouts))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def _wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 30) -> str:
    """The holder's next stdout line, which must start with prefix (read on a thread: bounded in time)."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    line = box[0] if box else ""
    assert line.startswith(prefix), f"expected {prefix}, got {line!r}; stderr: {_stderr(proc)}"
    return line


def _stderr(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        return "(still running)"
    return proc.stderr.read()[-2000:]


def _stop(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(10)


def _take(url: str, tenant: str, within: float, timeouts: lease.Timeouts = FAST) -> lease.Lease:
    """Wait for the tenant's lease as another node would, failing the test after ``within`` seconds."""
    stop = threading.Event()
    timer = threading.Timer(within, stop.set)
    timer.start()
    try:
        return lease.acquire(url, tenant, node=lease.Node.here(), stop=stop, timeouts=timeouts)
    except lock.Busy:
        pytest.fail(f"no other node could take {tenant} within {within} s")
    finally:
        timer.cancel()


def _writes(url: str, tenant: str) -> list[tuple[str, int, object]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT node, n, at FROM writes WHERE tenant = %s ORDER BY at", (tenant,)).fetchall()


def test_a_held_tenant_is_refused_without_waiting_and_taken_after_release(pg_database: str) -> None:
    first = lease.acquire(pg_database, "lincoln", node=lease.Node.here(), timeouts=FAST)
    try:
        with pytest.raises(lock.Busy, match=rf"tenant lincoln is being synced by node {first.node}"):
            lease.acquire(pg_database, "lincoln", node=lease.Node.here(), wait=False, timeouts=FAST)
        # Another tenant is not affected.
        with lease.tenant_lease(pg_database, "adams", wait=False, timeouts=FAST) as other:
            assert other.alive
    finally:
        first.release()
    with lease.tenant_lease(pg_database, "lincoln", wait=False, timeouts=FAST) as second:
        second.verify()
        assert [h.name for h in lease.holders(pg_database)] == ["lincoln"]
    assert lease.holders(pg_database) == []


def test_a_waiting_sync_says_so_and_can_be_stopped(pg_database: str) -> None:
    messages: list[str] = []
    stop = threading.Event()
    with lease.tenant_lease(pg_database, "lincoln", timeouts=FAST):
        threading.Timer(0.5, stop.set).start()
        started = time.monotonic()
        with pytest.raises(lock.Busy, match="stopped while waiting"):
            lease.acquire(pg_database, "lincoln", node=lease.Node.here(), stop=stop, on_wait=messages.append,
                          timeouts=FAST)
        assert time.monotonic() - started < 5
    assert len(messages) == 1 and messages[0].endswith("; waiting for it")


def test_concurrent_nodes_never_hold_the_same_tenant(pg_database: str) -> None:
    _writes_table(pg_database)
    procs = [_holder(pg_database, "lincoln", hold=0.6) for _ in range(4)]
    try:
        for proc in procs:
            proc.wait(60)
            assert proc.returncode == 0, _stderr(proc)
    finally:
        _stop(*procs)
    rows = _writes(pg_database, "lincoln")
    spans: dict[str, list] = {}
    for node, _, at in rows:
        spans.setdefault(node, [at, at])[1] = at
    assert len(spans) == 4, "every node ran once"
    ordered = sorted(spans.values())
    for before, after in itertools.pairwise(ordered):
        assert before[1] < after[0], f"two nodes wrote at once: {before} overlaps {after}"


def test_kill_9_of_the_holder_releases_the_lease_at_once(pg_database: str) -> None:
    _writes_table(pg_database)
    holder = _holder(pg_database, "lincoln")
    try:
        _wait_line(holder, "ACQUIRED")
        with pytest.raises(lock.Busy):
            lease.acquire(pg_database, "lincoln", node=lease.Node.here(), wait=False, timeouts=FAST)
        holder.kill()
        holder.wait(10)
        started = time.monotonic()
        with _take(pg_database, "lincoln", within=10) as taken:
            waited = time.monotonic() - started
            taken.verify()
            assert [(h.node, h.pid) for h in lease.holders(pg_database)] == [(str(taken.node), os.getpid())]
    finally:
        _stop(holder)
    assert waited < 2, f"the lease of a killed holder took {waited:.1f} s to free"


def _frozen_holder_is_fenced(url: str, timeouts: lease.Timeouts) -> float:
    """SIGSTOP the holder; return how long another node waited. The holder, continued, must be fenced."""
    _writes_table(url)
    holder = _holder(url, "lincoln", timeouts=timeouts)
    try:
        _wait_line(holder, "ACQUIRED")
        time.sleep(0.3)  # it writes
        os.kill(holder.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        with _take(url, "lincoln", within=timeouts.takeover_bound() + 10, timeouts=timeouts) as taken:
            waited = time.monotonic() - stopped
            with taken.connection.transaction():
                taken_at = taken.connection.execute("SELECT clock_timestamp()").fetchone()[0]
                taken.connection.execute("INSERT INTO writes (tenant, node, n) VALUES ('lincoln', %s, 0)",
                                         (str(taken.node),))
            os.kill(holder.pid, signal.SIGCONT)
            line = _wait_line(holder, "FENCED", timeout=timeouts.takeover_bound())
            assert holder.wait(10) == 3
            taken.verify()  # the new holder still holds it
    finally:
        _stop(holder)
    late = [(node, at) for node, _, at in _writes(url, "lincoln") if node != str(taken.node) and at >= taken_at]
    assert late == [], f"the frozen holder wrote after it lost its lease ({line.strip()})"
    return waited


def test_a_frozen_holder_loses_its_lease_and_cannot_write_when_it_wakes(pg_database: str) -> None:
    waited = _frozen_holder_is_fenced(pg_database, FAST)
    assert waited <= FAST.takeover_bound(), f"took {waited:.1f} s, bound {FAST.takeover_bound()} s"


def test_with_the_default_timeouts_a_frozen_node_hands_over_within_60_seconds(pg_database: str) -> None:
    defaults = lease.Timeouts()
    assert defaults.takeover_bound() < 60
    waited = _frozen_holder_is_fenced(pg_database, defaults)
    assert waited <= defaults.takeover_bound(), f"took {waited:.1f} s"
    print(f"takeover after SIGSTOP with default timeouts: {waited:.1f} s")


class CuttableProxy:
    """A loopback TCP proxy in front of PostgreSQL whose forwarding can be cut.

    After ``cut()`` every socket stays open and both kernels keep acknowledging, but no byte passes
    either way: a partition as seen by a node behind a TCP-terminating middlebox, the case where the
    node's own TCP timeouts never fire.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._cut, self._closed = threading.Event(), threading.Event()
        self._sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
            self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        while not self._closed.is_set():
            if self._cut.is_set():
                time.sleep(0.05)
                continue
            try:
                if not select.select([source], [], [], 0.05)[0]:
                    continue
                data = source.recv(65536)
                if not data:
                    target.shutdown(socket.SHUT_WR)
                    return
                target.sendall(data)
            except OSError:
                return

    def url(self, url: str) -> str:
        return url.replace(f":{self.upstream_port}/", f":{self.port}/")

    def cut(self) -> None:
        self._cut.set()

    def close(self) -> None:
        self._closed.set()
        for sock in self._sockets:
            sock.close()


def test_a_node_cut_off_from_the_database_loses_its_lease_and_learns_it_by_itself(
        pg_server: pg.PgServer, pg_database: str) -> None:
    _writes_table(pg_database)
    proxy = CuttableProxy(pg_server.port)
    holder = _holder(proxy.url(pg_database), "lincoln")
    try:
        _wait_line(holder, "ACQUIRED")
        time.sleep(0.3)
        proxy.cut()
        cut_at = time.monotonic()
        with _take(pg_database, "lincoln", within=FAST.takeover_bound() + 5) as taken:
            waited = time.monotonic() - cut_at
            with taken.connection.transaction():
                taken_at = taken.connection.execute("SELECT clock_timestamp()").fetchone()[0]
                taken.connection.execute("INSERT INTO writes (tenant, node, n) VALUES ('lincoln', %s, 0)",
                                         (str(taken.node),))
            # Still cut off: the node's blocked write fails by its own watchdog, not by TCP.
            line = _wait_line(holder, "FENCED", timeout=2 * FAST.takeover_bound() + 5)
            learned = time.monotonic() - cut_at
            assert holder.wait(10) == 3
    finally:
        _stop(holder)
        proxy.close()
    assert waited <= FAST.takeover_bound(), f"another node waited {waited:.1f} s"
    assert learned <= FAST.takeover_bound() + 2, f"the cut-off node learned after {learned:.1f} s ({line.strip()})"
    late = [row for row in _writes(pg_database, "lincoln") if row[0] != str(taken.node) and row[2] >= taken_at]
    assert late == []


def test_a_postgresql_restart_drops_every_lease_and_nodes_take_them_again() -> None:
    reason = pg.missing_reason()
    if reason:
        pytest.skip(reason)
    with pg.running() as server:  # a server of its own: the session's server is not restarted
        url = server.create_database("restart")
        held = [lease.acquire(url, name, node=lease.Node.here(), timeouts=FAST) for name in ("a", "b")]
        server.restart("fast")
        server.wait_ready()
        for old in held:
            with pytest.raises(lease.LeaseLost):
                old.verify()
            assert not old.alive
            with pytest.raises(lease.LeaseLost):
                old.connection.execute("SELECT 1")
            old.release()  # harmless on a dead session
        again = [lease.acquire(url, name, node=lease.Node.here(), wait=False, timeouts=FAST) for name in ("a", "b")]
        try:
            assert sorted(h.name for h in lease.holders(url)) == ["a", "b"]
        finally:
            for taken in again:
                taken.release()


def test_holders_hides_the_row_of_a_node_that_died(pg_database: str) -> None:
    _writes_table(pg_database)
    holder = _holder(pg_database, "lincoln")
    try:
        node = _wait_line(holder, "ACQUIRED").split()[1]
        (shown,) = lease.holders(pg_database)
        assert (shown.kind, shown.name, shown.node, shown.pid) == ("tenant", "lincoln", node, holder.pid)
        assert shown.since <= shown.heartbeat
        holder.kill()
        holder.wait(10)
        deadline = time.monotonic() + 5
        while lease.holders(pg_database) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lease.holders(pg_database) == []
    finally:
        _stop(holder)


def test_a_cluster_job_runs_once_per_slot_and_again_if_its_node_failed(pg_database: str) -> None:
    one, two = lease.Node.here(), lease.Node.here()
    with lease.once_per_cluster(pg_database, "digest", "2026-12-01", node=one, timeouts=FAST) as first:
        assert first is not None
        with lease.once_per_cluster(pg_database, "digest", "2026-12-01", node=two, timeouts=FAST) as busy:
            assert busy is None, "another node is running it"
        assert [h.kind for h in lease.holders(pg_database)] == ["cluster"]
    with lease.once_per_cluster(pg_database, "digest", "2026-12-01", node=two, timeouts=FAST) as done:
        assert done is None, "the slot was done"
    with pytest.raises(RuntimeError), \
            lease.once_per_cluster(pg_database, "digest", "2026-12-02", node=one, timeouts=FAST) as failing:
        assert failing is not None
        raise RuntimeError("the node failed mid-job")
    with lease.once_per_cluster(pg_database, "digest", "2026-12-02", node=two, timeouts=FAST) as retry:
        assert retry is not None, "a failed slot is left to another node"


def test_an_unreachable_database_is_a_clear_error_without_the_password() -> None:
    url = f"postgresql://syncd:hunter2-secret@127.0.0.1:{pg.free_port()}/syncd"
    with pytest.raises(lease.LeaseLost) as caught:
        lease.acquire(url, "lincoln", node=lease.Node.here(), timeouts=FAST)
    assert "cannot reach the state database" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_lock_keys_are_stable_and_fit_an_oid() -> None:
    assert lease.lock_key("lincoln") == lease.lock_key("lincoln") != lease.lock_key("adams")
    assert all(0 <= lease.lock_key(f"t{i}") < 2**31 for i in range(1000))
    with pytest.raises(ValueError, match="at most half the idle timeouts"):
        lease.Timeouts(heartbeat=15)
    with pytest.raises(ValueError, match="positive"):
        lease.Timeouts(statement=0)
    assert lease.Timeouts().takeover_bound() == 52
    node = lease.Node.here()
    assert str(node).startswith(f"{node.host}:{os.getpid()}:") and node != lease.Node.here()


def _until_gone(url: str, backend: int, timeout: float = 10.0) -> None:
    """Wait until the server has ended session ``backend`` (and so released its advisory locks)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone()[0]:
            assert time.monotonic() < deadline, f"session {backend} still open after {timeout} s"
            time.sleep(0.05)


def test_every_node_schedules_a_tenant_but_a_slot_runs_once_unless_its_run_died(pg_database: str) -> None:
    slot = "2026-12-01T10:00:00+00:00"
    with lease.tenant_lease(pg_database, "lincoln", wait=False, timeouts=FAST) as first:
        assert not first.slot_done(slot)
        first.mark_done(slot)
    with lease.tenant_lease(pg_database, "lincoln", wait=False, timeouts=FAST) as second:
        assert second.slot_done(slot), "the second node skips the slot the first one ran"
        assert second.slot_done("2026-12-01T09:00:00+00:00")
        assert not second.slot_done("2026-12-01T11:00:00+00:00")
        dying = "2026-12-01T11:00:00+00:00"
    # A node that dies mid-run (its session ends before mark_done) leaves the slot to the next holder.
    killed = lease.acquire(pg_database, "lincoln", node=lease.Node.here(), timeouts=FAST)
    backend = killed.connection.info.backend_pid
    killed.connection.close()
    with pytest.raises(lease.LeaseLost):
        killed.mark_done(dying)
    killed.release()
    _until_gone(pg_database, backend)  # the server ends a closed client's session a moment later
    with lease.tenant_lease(pg_database, "lincoln", wait=False, timeouts=FAST) as third:
        assert not third.slot_done(dying)
        third.mark_done(dying)
        third.mark_done(slot)  # a late node marking an older slot never moves the ledger back
        assert third.slot_done(dying)


def test_a_live_holder_that_writes_nothing_for_a_while_keeps_its_lease(pg_database: str) -> None:
    """The timeouts must end only lost sessions: a run waiting on the target, or inside a transaction,
    for longer than idle_session_timeout keeps its lease thanks to the heartbeat."""
    _writes_table(pg_database)
    with lease.tenant_lease(pg_database, "lincoln", timeouts=FAST) as held:
        (before,) = lease.holders(pg_database)
        time.sleep(3 * FAST.idle_session)  # e.g. a long wait on the provision API
        held.verify()
        (after,) = lease.holders(pg_database)
        assert after.heartbeat > before.heartbeat and after.since == before.since
        with held.connection.transaction():
            held.connection.execute("INSERT INTO writes (tenant, node, n) VALUES ('lincoln', 'x', 1)")
            time.sleep(2 * FAST.idle_in_transaction)
            held.connection.execute("INSERT INTO writes (tenant, node, n) VALUES ('lincoln', 'x', 2)")
        held.verify()
        with pytest.raises(lock.Busy):
            lease.acquire(pg_database, "lincoln", node=lease.Node.here(), wait=False, timeouts=FAST)
    assert [n for _, n, _ in _writes(pg_database, "lincoln")] == [1, 2]
