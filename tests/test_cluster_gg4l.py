"""GG4L, alerts, metrics and /healthz in a cluster (SPEC §11): on PostgreSQL they share the store
with the runs, and what must happen once (a discovery's reconcile, an alert, the daily digest)
happens once between the nodes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from syncd import config as configuration
from syncd import http, lease
from syncd.alerts import Alerts, Message, digest, digest_once
from syncd.config import AlertsConfig
from syncd.gg4l.daemon_wiring import ClusterService, period_start
from syncd.gg4l.lifecycle import District, Event
from syncd.gg4l.partner import PartnerClient
from syncd.gg4l.webhook import Delivery
from syncd.gg4l_store import DistrictStore
from syncd.metrics import StateCollector
from syncd.sandbox.gg4l import WEBHOOK_KEY, Gg4lSandbox
from syncd.store import Store
from syncd.web import shared_write_check

pytestmark = pytest.mark.postgresql

G1 = "6f9619ff-8b86-d011-b42d-00c04fc964ff"
T1 = "gg4l-6f9619ff8b86d011b42d00c04fc964ff"


@pytest.fixture
def box() -> Iterator[Gg4lSandbox]:
    with Gg4lSandbox() as sandbox:
        yield sandbox


def test_the_districts_are_one_table_every_node_reads_and_a_purge_strips_the_shared_roster(pg_database, tmp_path):
    a = DistrictStore.for_state(tmp_path / "a", pg_database)
    b = DistrictStore.for_state(tmp_path / "b", pg_database)
    try:
        assert a.shared and b.shared
        now = datetime.now(UTC).replace(microsecond=0)
        a.save([District(G1, T1, "active", expiry=now + timedelta(days=3), install_sid="AI1")],
               [Event(G1, "gg4l.district_discovered", {"tenant": T1})], now)
        seen = b.district(T1)
        assert seen is not None
        assert (seen.state, seen.install_sid, seen.expiry) == ("active", "AI1", now + timedelta(days=3))
        assert [e["event"] for e in b.events(G1)] == ["gg4l.district_discovered"]
        # A webhook delivered to one node and replayed to another is recorded once.
        assert a.record_webhook(Delivery(G1, "standard", "abc")) is True
        assert b.record_webhook(Delivery(G1.upper(), "standard", "abc")) is False
        assert b.webhooks()[0]["deliveries"] == 2
        b.set_webhook_outcomes({G1})
        assert a.webhooks()[0]["outcome"] == "listed"
        b.mark_synced(G1, now)
        assert a.district(G1).synced_data_ts == now
        # A purge (GG4L revoked the district long ago) strips its acknowledged rows to key + sid.
        store = Store.open(tmp_path / "a", pg_database)
        store.conn.execute("INSERT INTO acked_users (tenant, source_id, sid, hash, body, acked_at) "
                           "VALUES (?, 'u1', 'S1', 'h', '{\"name\":\"Ann\"}', 'x'), "
                           "('other', 'u1', 'S2', 'h', '{}', 'x')", (T1,))
        store.conn.execute("INSERT INTO stage_users (tenant, source_id, first_name) VALUES (?, 'u1', 'Ann')", (T1,))
        touched = b.purge_roster(T1)
        assert touched == {"acked_users": 1, "stage_users": 1}
        rows = store.conn.execute("SELECT tenant, sid, body, removed_at IS NOT NULL FROM acked_users "
                                  "ORDER BY tenant").fetchall()
        assert rows == [("gg4l-6f9619ff8b86d011b42d00c04fc964ff", "S1", "{}", True), ("other", "S2", "{}", False)]
        store.close()
    finally:
        a.close()
        b.close()


def cluster_service(box: Gg4lSandbox, tmp_path: Path, url: str, name: str) -> tuple[ClusterService, list[int]]:
    """One node's GG4L service on the shared store, and a counter of its reconciles."""
    config = configuration.load(box.write_config(tmp_path / f"{name}.toml", tmp_path / name))
    client = PartnerClient(box.partner_url, config.gg4l.client_id, config.gg4l.client_secret, timeout_s=5,
                           policy=http.RetryPolicy(attempts=2, base_s=0.01))
    service = ClusterService(config.gg4l, DistrictStore.for_state(tmp_path / name, url), url, threading.Event(),
                             client=client, min_gap_s=0.1)
    reconciles = [0]
    real = service.discovery.run

    def counted():
        reconciles[0] += 1
        return real()

    service.discovery.run = counted  # type: ignore[method-assign]
    return service, reconciles


def test_a_discovery_reconciles_once_per_period_in_a_cluster_and_at_once_after_a_webhook(box, pg_database, tmp_path):
    fake = box.gg4l.add_district(G1)
    a, a_runs = cluster_service(box, tmp_path, pg_database, "a")
    b, b_runs = cluster_service(box, tmp_path, pg_database, "b")
    try:
        assert a.poll() is not None and a_runs == [1]
        assert a.store.district(T1).state == "active"
        # The other node, in the same period: no second reconcile (no second event, no second alert),
        # but the listing gives it the district's secret, so it can run the district too.
        listed = b.poll()
        assert listed is not None and b_runs == [0]
        assert T1 in {r.tenant for r in listed.districts.values()}
        assert b.discovery.secrets.get(G1).client_secret == fake.client_secret
        events = [e["event"] for e in b.store.events(G1)]
        assert events.count("gg4l.district_new") == 1, events
        # A webhook received by the other node is discovered there and then, period or not.
        status, _ = b.webhook("POST", {"X-Syncd-Key": WEBHOOK_KEY}, "",
                              json.dumps({"districtGUID": G1, "mode": "standard"}).encode(), "application/json")
        assert status == 200
        b.recorder.flush(5.0)
        assert b.poll() is not None and b_runs == [1]
        assert a.store.webhooks()[0]["outcome"] == "listed"
        # A rotated secret reaches a node that only lists.
        fake.rotate_secret()
        a.poll()
        assert a_runs == [1] and a.discovery.secrets.get(G1).client_secret == fake.client_secret
    finally:
        for service in (a, b):
            service.stop()
            service.store.close()


def test_the_discovery_period_is_the_same_on_every_node():
    hour = 3600.0
    start = period_start(datetime(2026, 12, 1, 10, 59, 59, tzinfo=UTC), hour)
    assert start == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert period_start(datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC), hour) == start
    assert period_start(datetime(2026, 12, 1, 11, 0, 1, tzinfo=UTC), hour) == start + timedelta(hours=1)


def test_a_cluster_job_waits_for_the_node_running_it_and_reruns_what_a_dead_node_left(pg_database):
    node = lease.Node.here()
    with lease.cluster_job(pg_database, "job", "2026-12-01T10:00:00.000Z", node=node) as held:
        assert held is not None
    with lease.cluster_job(pg_database, "job", "2026-12-01T10:00:00.000Z", node=node) as held:
        assert held is None, "done this period"
    # A node that dies inside the job never marks it: the next one runs it.
    try:
        with lease.cluster_job(pg_database, "job", "2099-01-01", node=node) as held:
            assert held is not None
            raise RuntimeError("the node died")
    except RuntimeError:
        pass
    with lease.cluster_job(pg_database, "job", "2099-01-01", node=node) as held:
        assert held is not None
    # One holder at a time: a second node waits (here: told to stop waiting: Busy).
    stop = threading.Event()
    with lease.cluster_job(pg_database, "job", "2100-01-01", node=node) as held:
        assert held is not None
        stop.set()
        with pytest.raises(lease.Busy), lease.cluster_job(pg_database, "job", "2100-01-01", node=node, stop=stop):
            pass


def test_nodes_reporting_the_same_change_at_once_alert_once(pg_database, tmp_path):
    Store.open(tmp_path, pg_database).close()
    config = AlertsConfig(urls=("json://127.0.0.1:9/",))
    nodes = [Alerts(lambda: config, tmp_path / f"n{i}", pg_database) for i in range(3)]
    sent: list[bool] = []
    guard = threading.Lock()

    def report(alerts: Alerts) -> None:
        for _ in range(5):
            queued = alerts.notify_state(T1, "revoked", "absent from GG4L's list", topic="gg4l")
            with guard:
                sent.append(queued)

    threads = [threading.Thread(target=report, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sent.count(True) == 1, sent
    assert sum(n.queue.qsize() for n in nodes) == 1
    assert nodes[1].notify_state(T1, "ok", "listed again", topic="gg4l") is True
    assert nodes[2].notify_state(T1, "ok", "listed again", topic="gg4l") is False
    for n in nodes:
        n.close()


def test_the_daily_digest_is_sent_by_one_node_and_reads_every_nodes_runs(pg_database, tmp_path):
    store = Store.open(tmp_path, pg_database)
    now = datetime.now(UTC)
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    summary = json.dumps({"counts": {"users": {"created": 3, "updated": 1}}})
    store.conn.execute("INSERT INTO runs (run_id, tenant, started_at, finished_at, status, summary, pid) "
                       "VALUES ('r1', 'north', ?, ?, 'completed', ?, 1), ('r2', 'north', ?, ?, 'failed', NULL, 2)",
                       (stamp, stamp, summary, stamp, stamp))
    store.close()
    message = digest(tmp_path, ["north", "south"], now=now, url=pg_database)
    assert "north\n  runs: 1 completed, 1 failed\n  changes pushed: 4" in message.body
    assert "south\n  runs: none" in message.body
    outbox: list[str] = []

    def send(title: str, body: str) -> bool:
        outbox.append(title)
        return True

    def build() -> Message:
        return Message("syncd: daily summary", "…")

    results = []
    threads = [threading.Thread(target=lambda: results.append(digest_once(pg_database, "2026-12-01", build, send)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [False, False, True] and len(outbox) == 1
    assert digest_once(pg_database, "2026-12-02", build, send) is True
    assert digest_once(pg_database, "2026-12-02", build, send) is False


def test_metrics_and_healthz_read_and_write_the_shared_store(pg_database, tmp_path):
    store = Store.open(tmp_path, pg_database)
    store.conn.execute("INSERT INTO runs (run_id, tenant, started_at, finished_at, status, pid) "
                       "VALUES ('r1', 'north', '2026-12-01T10:00:00.000Z', '2026-12-01T10:00:05.000Z', 'completed', 1)")
    store.conn.execute("INSERT INTO acked_users (tenant, source_id, sid, hash, body, acked_at) "
                       "VALUES ('north', 'u1', 'S1', 'h', '{}', 'x'), ('north', 'u2', 'S2', 'h', '{}', 'x')")
    collector = StateCollector(tmp_path / "elsewhere", lambda: {}, lambda: iter(()), pg_database)
    metrics = {m.name: m for m in collector.collect()}
    assert metrics["syncd_store_up"].samples[0].value == 1
    users = [s for s in metrics["syncd_records"].samples
             if s.labels == {"tenant": "north", "entity": "user", "state": "synced"}]
    assert users[0].value == 2
    assert metrics["syncd_last_success_timestamp_seconds"].samples[0].value == \
        datetime(2026, 12, 1, 10, 0, 5, tzinfo=UTC).timestamp()
    assert shared_write_check(pg_database) == ("writable", None)
    assert store.conn.execute("SELECT count(*) FROM heartbeat").fetchone()[0] == 1
    # Another node holding the heartbeat row past the check's bound: busy, not failed.
    with psycopg.connect(pg_database) as other:
        other.execute("UPDATE heartbeat SET at = 'x'")
        assert shared_write_check(pg_database) == ("busy", None)
    store.close()
    collector._pg[1].close()
    # The database gone: the check says so (without the URL's password), and the scrape says down.
    dead = "postgresql://syncd:s3cret-pw@127.0.0.1:9/none"
    state, problem = shared_write_check(dead)
    assert state == "failed" and "cannot be reached" in problem and "s3cret-pw" not in problem
    down = StateCollector(tmp_path, lambda: {}, lambda: iter(()), dead)
    assert {m.name: m for m in down.collect()}["syncd_store_up"].samples[0].value == 0


# --- two `syncd run` nodes with [gg4l] on one store ---------------------------------------------


@pytest.mark.slow
def test_two_gg4l_nodes_reconcile_once_and_the_district_syncs_on_one_of_them(pg_database, tmp_path):
    import itertools
    import time

    from test_daemon import Daemon
    from test_web import free_port, get

    from syncd.sandbox import Roster, expected_mapping
    from syncd.sandbox.gg4l import send_webhook

    def healthy(port: int) -> bool:
        try:
            return get(port, "/healthz")[0] == 200
        except OSError:
            return False

    def wait(predicate, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            assert all(n.process.poll() is None for n in nodes), "a node exited"
            time.sleep(0.1)

    def count(event: str, node: Daemon) -> int:
        return sum(e["event"] == event for e in node.events())

    def runs() -> list[tuple]:
        with psycopg.connect(pg_database) as conn:
            return conn.execute("SELECT started_at, finished_at, status, pid, calls FROM runs WHERE tenant = %s "
                                "ORDER BY started_at", (T1,)).fetchall()

    with Gg4lSandbox() as box:
        district = box.gg4l.add_district(G1, Roster.generate(seed=11, users=40, classes=4, enrollments=120))
        nodes: list[Daemon] = []
        ports = []
        for i in range(2):
            home = tmp_path / f"node{i}"
            home.mkdir()
            ports.append(free_port())
            config = box.write_config(home / "syncd.toml", home / "state", state_url=pg_database)
            config.write_text(config.read_text() + f'\n[daemon.http]\nlisten = "127.0.0.1:{ports[-1]}"\n')
            nodes.append(Daemon(config, home))
        try:
            for port in ports:
                wait(lambda port=port: healthy(port), "the listener")
            wait(lambda: any(r[2] == "completed" for r in runs()), "the district's first sync")
            wait(lambda: sum(count("gg4l.discovered", n) + count("gg4l.listed", n) for n in nodes) == 2,
                 "both nodes' first discovery")
            started = [period_start(datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")), 3600)
                       for n in nodes for e in n.events() if e["event"] in ("gg4l.discovered", "gg4l.listed")]
            if len(set(started)) == 1:  # both in one discovery period (unless an hour turned in between)
                assert sum(count("gg4l.discovered", n) for n in nodes) == 1
            # The node that only listed got the district's secret all the same, and both scheduled it.
            assert all(count("gg4l.scheduled", n) == 1 for n in nodes)
            # A webhook to the node that only listed: it reconciles there and then.
            lister = next((n for n in nodes if count("gg4l.listed", n)), nodes[1])
            before = count("gg4l.discovered", lister)
            assert send_webhook(f"http://127.0.0.1:{ports[nodes.index(lister)]}/webhooks/gg4l", G1,
                                "standard").status == 200
            wait(lambda: count("gg4l.discovered", lister) > before, "the webhook's discovery")
            time.sleep(2)  # let a second node's job for the same district reach its gate
        finally:
            codes = [n.stop() for n in nodes]
        assert codes == [0, 0]
        history = runs()
        assert history and all(r[1] is not None for r in history)
        for earlier, later in itertools.pairwise(history):
            assert earlier[1] <= later[0], f"two runs of the district at once: {earlier} {later}"
        # GG4L had no new import after the first completed sync: the other node skipped the district
        # (the synced data stamp is shared), or its run found the slot done, or sent nothing.
        assert sum(r[4] or 0 for r in history[1:]) == 0
        assert box.provision.snapshot() == expected_mapping(district.roster, {"student": "learner",
                                                                               "teacher": "instructor"})
        assert box.provision.duplicates() == 0
        with psycopg.connect(pg_database) as conn:
            events = [r[0] for r in conn.execute("SELECT event FROM district_events WHERE lower(guid) = %s", (G1,))]
        assert events.count("gg4l.district_new") == 1, events


def test_the_gg4l_commands_read_and_reconcile_the_clusters_districts(box, pg_database, tmp_path):
    from conftest import syncd

    box.gg4l.add_district(G1)
    config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state", state_url=pg_database)
    found = syncd(config, "gg4l", "discover", "--json")
    assert found.returncode == 0, found.stderr[-2000:]
    # The reconcile ran as the cluster's discovery job: a daemon's discovery this period is a listing.
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT count(*) FROM slots WHERE kind = 'cluster' AND name = 'gg4l-discovery'"
                            ).fetchone()[0] == 1
    listed = syncd(config, "tenants", "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert [row["tenant"] for row in json.loads(listed.stdout) if row["origin"] == "gg4l"] == [T1]
    assert not (tmp_path / "state" / "syncd.db").exists(), "nothing in a local SQLite file"
