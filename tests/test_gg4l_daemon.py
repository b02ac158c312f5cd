"""GG4L in the real `syncd run`, against the fake GG4L and the fake provision API over loopback.

Signed webhook -> discovery -> district active -> first sync equal to the expected mapping -> a
resync sending nothing; hostile webhooks; `mode = test`; expiry; missing -> revoked -> purged ->
restored with its old sids (time moved in the store, never slept); a rotated secret; static and
district tenants side by side; `syncd sync gg4l-…` and `syncd status`; no secret anywhere.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import state as state_store
from conftest import syncd
from test_alerts import hook, with_alerts  # noqa: F401 - hook is a fixture
from test_daemon import Daemon
from test_web import free_port, get

from syncd.gg4l import tenant_name
from syncd.sandbox import Roster, expected_mapping
from syncd.sandbox.gg4l import WEBHOOK_KEY, Gg4lSandbox, send_webhook

ROLES = {"student": "learner", "teacher": "instructor"}
G1 = "6F9619FF-8B86-D011-B42D-00C04FC964FF"
G2 = "0b5e9a2c-1111-4222-8333-944455556666"
T1, T2 = tenant_name(G1), tenant_name(G2)


def wait(predicate: Callable[[], bool], timeout: float = 30, what: str = "", daemon: Daemon | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if daemon is not None:
            assert daemon.process.poll() is None, f"daemon exited: {daemon.log_path.read_text()[-3000:]}"
        time.sleep(0.05)
    tail = daemon.log_path.read_text()[-4000:] if daemon else ""
    raise AssertionError(f"timed out waiting for {what}: {tail}")


def query(state: Path, sql: str, *args: object) -> list[tuple]:
    """A query on the state store (districts included: they live in the shared store too)."""
    if state_store.url_of(state):
        import psycopg

        try:
            return state_store.execute(state, sql, args)
        except psycopg.errors.UndefinedTable:  # not created yet
            return []
    db = state / "syncd.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # a table not created yet
        return []


def finished_runs(state: Path, tenant: str) -> list[dict]:
    rows = query(state, "SELECT run_id, status, dry_run, calls, summary FROM runs WHERE tenant = ? "
                 "AND finished_at IS NOT NULL ORDER BY started_at", tenant)
    return [{"run_id": r[0], "status": r[1], "dry_run": r[2], "calls": r[3],
             "summary": json.loads(r[4]) if r[4] else {}} for r in rows]


def district_state(state: Path, tenant: str) -> str | None:
    rows = query(state, "SELECT state FROM districts WHERE tenant = ?", tenant)
    return rows[0][0] if rows else None


def sids(state: Path, tenant: str) -> dict[str, str]:
    out = {}
    for table in ("acked_courses", "acked_users"):
        for source_id, sid in query(state, f"SELECT source_id, sid FROM {table} WHERE tenant = ?", tenant):
            out[f"{table}:{source_id}"] = sid
    for course, user, sid in query(state, "SELECT course_id, user_id, sid FROM acked_enrollments WHERE tenant = ?",
                                   tenant):
        out[f"enrollment:{course}:{user}"] = sid
    return out


class Setup:
    def __init__(self, box: Gg4lSandbox, tmp_path: Path, port: int, config: Path):
        self.box, self.tmp_path, self.port, self.config = box, tmp_path, port, config
        self.state = tmp_path / "state"
        self.url = f"http://127.0.0.1:{port}/webhooks/gg4l"
        self.daemons: list[Daemon] = []

    def start(self) -> Daemon:
        daemon = Daemon(self.config, self.tmp_path)
        self.daemons.append(daemon)
        wait(lambda: _healthy(self.port), what="the listener", daemon=daemon)
        return daemon

    def hook(self, guid: str, mode: str = "standard", **options: object) -> int:
        return send_webhook(self.url, guid, mode, **options).status  # type: ignore[arg-type]

    def run_now(self, daemon: Daemon, tenant: str, before: int) -> dict:
        """SIGUSR1, then the next finished run of ``tenant``."""
        daemon.process.send_signal(signal.SIGUSR1)
        wait(lambda: len(finished_runs(self.state, tenant)) > before, what=f"run {before + 1} of {tenant}",
             daemon=daemon)
        return finished_runs(self.state, tenant)[-1]


def done(daemon: Daemon) -> int:
    return sum(e["event"] == "daemon.run_done" for e in daemon.events())


def _healthy(port: int) -> bool:
    try:
        return get(port, "/healthz")[0] == 200
    except OSError:
        return False


def write_config(box: Gg4lSandbox, tmp_path: Path, port: int, static: str = "", **options: object) -> Path:
    config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state", **options)  # type: ignore[arg-type]
    config.write_text(config.read_text() + f'\n[daemon.http]\nlisten = "127.0.0.1:{port}"\n' + static)
    return config


@pytest.fixture
def gg4l(tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    boxes: list[Gg4lSandbox] = []
    setups: list[Setup] = []

    def make(static: str = "", **options: object) -> Setup:
        box = Gg4lSandbox()
        boxes.append(box)
        port = free_port()
        setup = Setup(box, tmp_path, port, write_config(box, tmp_path, port, static, **options))
        setups.append(setup)
        return setup

    yield make
    for setup in setups:
        for daemon in setup.daemons:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait()
            daemon.log_file.close()
    for box in boxes:
        box.stop()


def roster(seed: int) -> Roster:
    return Roster.generate(seed=seed, users=40, classes=4, enrollments=120)


# --- the main flow ---------------------------------------------------------------------------


def test_webhook_discovery_first_sync_then_a_resync_sending_nothing(gg4l):
    setup = gg4l()
    box = setup.box
    district = box.gg4l.add_district(G1, roster(11))
    daemon = setup.start()
    assert setup.hook(G1) == 200
    wait(lambda: finished_runs(setup.state, T1), what="the district's first sync", daemon=daemon)
    first = finished_runs(setup.state, T1)[0]
    assert first["status"] == "completed", first
    assert not first["dry_run"]
    assert district_state(setup.state, T1) == "active"
    assert box.provision.snapshot() == expected_mapping(district.roster, ROLES)
    assert box.provision.duplicates() == 0

    # GG4L finishes another import (nothing changed in it): the next run sends nothing.
    district.data_ts = datetime.now(UTC)
    assert setup.hook(G1) == 200  # a replay: triggers a discovery, changes nothing else
    wait(lambda: any(e["event"] == "gg4l.data_ready" for e in daemon.events()), what="the new data", daemon=daemon)
    second = setup.run_now(daemon, T1, 1)
    assert second["status"] == "completed" and second["calls"] == 0, second
    # Without a new import, a scheduled run is skipped (no source request at all).
    wait(lambda: done(daemon) == 2, what="the second run's end", daemon=daemon)
    requests_before = district.requests
    daemon.process.send_signal(signal.SIGUSR1)
    wait(lambda: any(e["event"] == "gg4l.run_skipped" for e in daemon.events()), what="a skipped run", daemon=daemon)
    assert district.requests == requests_before
    assert len(finished_runs(setup.state, T1)) == 2
    assert daemon.stop() == 0
    assert query(setup.state, "SELECT count(*) FROM districts") == [(1,)]


def discoveries(daemon: Daemon) -> int:
    return sum(e["event"] == "gg4l.discovered" for e in daemon.events())


def discover(setup: Setup, daemon: Daemon, guid: str = G1) -> None:
    """A webhook, then the end of a discovery that asked the Partner API after the webhook (so it
    saw every change made to the fake before this call; the trigger keeps discoveries 2 s apart)."""
    before = setup.box.gg4l.partner_requests
    assert setup.hook(guid) == 200
    wait(lambda: setup.box.gg4l.partner_requests > before, what="a Partner API list call", daemon=daemon)
    asked = setup.box.gg4l.partner_requests
    wait(lambda: discoveries(daemon) >= asked, what="that discovery's end", daemon=daemon)


# --- hostile and repeated webhooks ------------------------------------------------------------


def test_bad_webhooks_are_refused_and_duplicates_create_nothing_twice(gg4l):
    setup = gg4l()
    box = setup.box
    box.gg4l.add_district(G1, roster(12))
    daemon = setup.start()
    assert setup.hook(G1, headers={"X-Syncd-Key": "wrong-key-0000000000000"}) == 401
    assert setup.hook(G1, headers={}) == 401
    bad = send_webhook(setup.url, G1, body=b"{not json", headers={"X-Syncd-Key": WEBHOOK_KEY,
                                                                   "Content-Type": "application/json"})
    assert bad.status == 400
    assert setup.hook("not a guid!") == 400
    assert send_webhook(setup.url, G1, body=b"x" * (17 * 1024)).status == 413
    assert requests.get(setup.url, timeout=5).status_code == 405
    assert setup.hook("aaaaaaaa-0000-0000-0000-000000000000") == 200  # never listed: recorded, no tenant
    assert setup.hook(G2, mode="test") == 200  # test mode: a connectivity check, no tenant, no target call
    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(lambda _: setup.hook(G1), range(50)))
    assert statuses == [200] * 50
    wait(lambda: finished_runs(setup.state, T1), what="the first sync", daemon=daemon)
    box.gg4l.add_district(G2, roster(13))  # GG4L lists the test-mode district only after its webhook
    discover(setup, daemon)  # after the burst, one more discovery: still one of each
    assert query(setup.state, "SELECT tenant, count(*) FROM districts GROUP BY tenant ORDER BY tenant") == \
        sorted([(T2, 1), (T1, 1)])
    assert district_state(setup.state, T2) == "recorded"
    assert finished_runs(setup.state, T2) == []
    outcomes = dict(query(setup.state, "SELECT guid_key, outcome FROM district_webhooks WHERE mode = 'standard'"))
    assert outcomes["aaaaaaaa-0000-0000-0000-000000000000"] == "not_listed"
    assert query(setup.state, "SELECT deliveries FROM district_webhooks WHERE guid_key = ? AND mode = 'standard'",
                 G1.lower())[0][0] >= 51
    assert len(finished_runs(setup.state, T1)) == 1
    assert box.provision.duplicates() == 0
    assert box.provision.snapshot() == expected_mapping(box.gg4l.districts[G1].roster, ROLES)
    assert daemon.stop() == 0


# --- a district's life: rotation, expiry, revocation, purge, restore ------------------------


def test_rotation_expiry_revocation_purge_and_restore_with_the_old_sids(gg4l):
    setup = gg4l()
    box, state = setup.box, setup.state
    district = box.gg4l.add_district(G1, roster(14))
    daemon = setup.start()
    wait(lambda: finished_runs(state, T1), what="the first sync", daemon=daemon)  # discovery at start
    before = sids(state, T1)
    assert before and all(before.values())
    expected = expected_mapping(district.roster, ROLES)
    assert box.provision.snapshot() == expected

    # A rotated secret: the old one no longer gets a token; the next run uses the new one.
    district.rotate_secret()
    district.data_ts = datetime.now(UTC)
    discover(setup, daemon)
    assert setup.run_now(daemon, T1, 1)["status"] == "completed"

    # Expired: not synced, nothing removed.
    wait(lambda: done(daemon) == 2, what="the second run's end", daemon=daemon)
    district.expiry = datetime.now(UTC) - timedelta(seconds=1)
    district.data_ts = datetime.now(UTC)
    discover(setup, daemon)
    assert district_state(state, T1) == "expired"
    daemon.process.send_signal(signal.SIGUSR1)  # no district job left to run
    time.sleep(1.0)
    assert len(finished_runs(state, T1)) == 2
    assert box.provision.snapshot() == expected
    assert query(state, "SELECT count(*) FROM acked_users WHERE tenant = ? AND removed_at IS NOT NULL", T1) == [(0,)]

    # Extended, then gone from the list: missing for 3 polls and 3 hours (time moved in the store).
    district.expiry = datetime.now(UTC) + timedelta(days=365)
    discover(setup, daemon)
    assert district_state(state, T1) == "active"
    district.listed = False
    discover(setup, daemon)
    assert district_state(state, T1) == "missing"
    move(state, "first_missing_at", hours=4)
    discover(setup, daemon)
    discover(setup, daemon)
    assert district_state(state, T1) == "revoked"
    assert any(e["event"] == "gg4l.district_revoked" for e in daemon.events())
    assert box.provision.snapshot() == expected  # nothing removed in the target

    # purge_after_days after revocation: the local roster goes, keys and sids stay.
    move(state, "revoked_at", days=31)
    discover(setup, daemon)
    assert district_state(state, T1) == "purged"
    for table in ("stage_users", "desired_users", "desired_enrollments", "stage_enrollments", "call_log"):
        assert query(state, f"SELECT count(*) FROM {table} WHERE tenant = ?", T1) == [(0,)], table
    assert query(state, "SELECT count(*) FROM acked_users WHERE tenant = ? AND body != '{}'", T1) == [(0,)]
    assert sids(state, T1) == before
    assert query(state, "SELECT count(*) FROM runs WHERE tenant = ?", T1) == [(2,)]  # the audit stays

    # Listed again: restored, and its first sync keeps every old sid (no duplicate in the target).
    district.listed = True
    district.data_ts = datetime.now(UTC)
    discover(setup, daemon)
    assert district_state(state, T1) == "active"
    restored = setup.run_now(daemon, T1, 2)
    assert restored["status"] == "completed", restored
    assert sids(state, T1) == before
    assert box.provision.duplicates() == 0
    assert box.provision.snapshot() == expected
    assert query(state, "SELECT count(*) FROM acked_users WHERE tenant = ? AND removed_at IS NOT NULL", T1) == [(0,)]
    assert daemon.stop() == 0
    assert_no_secret(setup, [district.client_secret])


def move(state: Path, column: str, **back: float) -> None:
    """Move a district's timestamp into the past, as if that much time had gone by."""
    stamp = (datetime.now(UTC) - timedelta(**back)).isoformat()
    query(state, f"UPDATE districts SET {column} = ?", stamp)


def assert_no_secret(setup: Setup, extra: list[str]) -> None:
    """No client secret (Partner or district) in the daemon's log or any state file."""
    secrets = [setup.box.gg4l.client_secret, *extra,
               *(d.client_secret for d in setup.box.gg4l.districts.values())]
    texts = [d.log_path.read_bytes() for d in setup.daemons]
    texts += [p.read_bytes() for p in setup.state.rglob("*") if p.is_file()]
    for secret in secrets:
        assert all(secret.encode() not in text for text in texts), "a client secret leaked"


# --- side by side, the CLI, Privacy Shield ----------------------------------------------------


def test_static_and_district_tenants_side_by_side_sync_status_and_no_secret(gg4l, sandbox):
    setup = gg4l(static="\n" + sandbox.tenant_toml())
    box, state = setup.box, setup.state
    shielded = box.gg4l.add_district(G1, roster(15), privacy_shield=True, email_mode="random_each")
    box.gg4l.add_district(G2, roster(16))
    daemon = setup.start()
    wait(lambda: finished_runs(state, "lincoln") and finished_runs(state, T1) and finished_runs(state, T2),
         what="the static tenant and both districts", daemon=daemon)
    assert all(r["status"] == "completed" for t in ("lincoln", T1, T2) for r in finished_runs(state, t))
    # Privacy Shield: masked names are data, random e-mails are none; a resync sends nothing.
    assert query(state, "SELECT count(*) FROM acked_users WHERE tenant = ? AND body LIKE '%@gg4l.com%'", T1) == [(0,)]
    shielded.data_ts = datetime.now(UTC)
    discover(setup, daemon)
    wait(lambda: done(daemon) >= 3, what="three runs", daemon=daemon)
    resync = setup.run_now(daemon, T1, 1)
    assert resync["status"] == "completed" and resync["calls"] == 0, resync
    # SIGHUP keeps both kinds of tenant.
    daemon.process.send_signal(signal.SIGHUP)
    wait(lambda: any(e["event"] == "daemon.reloaded" for e in daemon.events()), what="the reload", daemon=daemon)
    box.gg4l.districts[G2].data_ts = datetime.now(UTC)
    discover(setup, daemon, G2)
    after_reload = setup.run_now(daemon, T2, len(finished_runs(state, T2)))  # districts still run after SIGHUP
    assert after_reload["status"] == "completed" and after_reload["calls"] == 0, after_reload
    wait(lambda: not query(state, "SELECT 1 FROM runs WHERE finished_at IS NULL"), what="idle", daemon=daemon)
    assert daemon.stop() == 0

    # `syncd sync gg4l-…` like any tenant (its secret from a discovery of its own), --dry-run too.
    box.gg4l.districts[G2].data_ts = datetime.now(UTC)
    result = syncd(setup.config, "sync", T2, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["calls"] == 0
    unknown = syncd(setup.config, "sync", "gg4l-nosuchdistrict")
    assert unknown.returncode == 2 and "unknown tenant" in unknown.stderr
    box.gg4l.districts[G2].expiry = datetime.now(UTC) - timedelta(seconds=1)
    expired = syncd(setup.config, "sync", T2)
    assert expired.returncode == 1 and f"{T2} is expired" in expired.stderr, expired.stderr[-2000:]
    # `syncd status`: both kinds, the districts with their state and expiry.
    status = syncd(setup.config, "status")
    assert status.returncode == 0
    assert "lincoln:" in status.stdout and f"{T1}: GG4L district" in status.stdout and "ACTIVE" in status.stdout
    assert f"{T2}: GG4L district" in status.stdout and "EXPIRED" in status.stdout
    rows = json.loads(syncd(setup.config, "status", "--json").stdout)
    assert {r["tenant"] for r in rows} == {"lincoln", T1, T2}
    assert all(r["expiry"] for r in rows if r.get("origin") == "gg4l")
    outputs = [result.stdout, result.stderr, status.stdout, status.stderr, expired.stderr]
    for secret in [box.gg4l.client_secret, *(d.client_secret for d in box.gg4l.districts.values())]:
        assert all(secret not in text for text in outputs)
    assert_no_secret(setup, [])


# --- dry-run districts and the alerts ---------------------------------------------------------


def test_a_dry_run_district_expiring_soon_is_alerted_once_and_changes_nothing(gg4l, hook):  # noqa: F811
    setup = gg4l(on_new_district="dry_run")
    with_alerts(setup.config, hook.url)
    box, state = setup.box, setup.state
    box.gg4l.add_district(G1, roster(17), expires_in=timedelta(days=10))
    daemon = setup.start()
    wait(lambda: finished_runs(state, T1), what="the dry run", daemon=daemon)
    run = finished_runs(state, T1)[0]
    assert run["dry_run"] and run["status"] == "completed", run
    assert box.provision.snapshot() == {"courses": {}, "users": {}, "enrollments": {}}
    assert district_state(state, T1) == "expiring"
    discover(setup, daemon)
    discover(setup, daemon)
    wait(lambda: hook.received, what="the expiring alert")
    time.sleep(1.0)  # a repeat would have arrived by now
    assert hook.titles() == [f"syncd: {T1}: gg4l expiring soon"]
    assert "Still syncing" in hook.received[0]["message"]
    expiring = [e for e in daemon.events() if e["event"].startswith("gg4l.district_")
                and "expiring" in (e.get("state"), e.get("to"))]
    assert len(expiring) == 1 and expiring[0]["level"] == "warning", expiring  # logged once, as a warning
    assert daemon.stop() == 0


def test_demo_source_gg4l(tmp_path):
    result = syncd(None, "demo", "--source", "gg4l", "--dir", str(tmp_path / "demo"), timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "POST /webhooks/gg4l" in out and "-> 200" in out
    assert f"{T_DEMO} is ACTIVE" in out and "as the district says" in out
    assert "the resync sends 0 calls" in out
    assert "is PENDING_MAPPING" in out and "tenants map gg4l-" in out
    tenants = syncd(tmp_path / "demo" / "syncd.toml", "tenants", "--json")
    assert tenants.returncode == 0, tenants.stderr[-2000:]
    states = {row["tenant"]: row["state"] for row in json.loads(tenants.stdout)}
    assert sorted(states.values()) == ["active", "pending_mapping"]


T_DEMO = tenant_name("6f9619ff-8b86-d011-b42d-00c04fc964ff")


def test_privacy_shield_emails_are_none_and_others_kept():
    from syncd.sources.oneroster import shielded_email

    assert shielded_email("") is None and shielded_email(None) is None
    assert shielded_email("qwhzkeprtbna@gg4l.com") is None and shielded_email("X@GG4L.COM ") is None
    assert shielded_email("ana.lopez@riverside.k12.ca.us") == "ana.lopez@riverside.k12.ca.us"
    assert shielded_email("someone@gg4l.com.evil.example") == "someone@gg4l.com.evil.example"
