"""The PostgreSQL state store end to end (SPEC §11): `[state] url`, a copy that sends nothing
afterwards, the tenant's lease across processes, and a run that lost its lease writing nothing."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psycopg
import pytest
from conftest import summary, syncd

from syncd import lease
from syncd.lock import Busy
from syncd.store import Store

pytestmark = pytest.mark.postgresql


def with_url(config: Path, url: str) -> Path:
    config.write_text(config.read_text(encoding="utf-8") + f'\n[state]\nurl = "{url}"\n', encoding="utf-8")
    return config


def test_a_copied_store_then_a_run_on_postgresql_sends_nothing(sandbox, tmp_path: Path, pg_database: str) -> None:
    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state", state_url="")
    first = summary(syncd(config, "sync", "lincoln", "--json"))
    assert first["calls"] > 0
    copied = syncd(config, "state", "copy", "--to", pg_database)
    assert copied.returncode == 0, copied.stderr[-2000:]
    calls = sandbox.provision.calls
    result = syncd(with_url(config, pg_database), "sync", "lincoln", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    run = summary(result)
    assert run["calls"] == 0 and sandbox.provision.calls == calls, "the same canonical text, the same hashes"
    assert run["counts"]["enrollments"]["unchanged"] == first["counts"]["enrollments"]["created"]
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT count(*) FROM runs WHERE tenant = 'lincoln'").fetchone()[0] == 2


def test_sync_meets_a_run_of_another_node_waits_or_exits_4_and_status_names_the_node(
        sandbox, tmp_path: Path, pg_database: str) -> None:
    config = with_url(sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state", state_url=""), pg_database)
    node = lease.Node("node-b.example", 4242, "cafe0001")
    held = lease.acquire(pg_database, "lincoln", node=node)
    try:
        busy = syncd(config, "sync", "lincoln", "--no-wait")
        assert busy.returncode == 4, busy.stderr[-2000:]
        assert "being synced by node node-b.example:4242:cafe0001" in busy.stderr
        report = json.loads(syncd(config, "status", "lincoln", "--json").stdout)
        assert report["running"] is True and report["running_on"]["node"] == str(node)
        assert report["running_on"]["since"].endswith("Z")
        text = syncd(config, "status", "lincoln").stdout
        assert f"RUNNING now on {node} since" in text
        threading.Timer(1.5, held.release).start()  # the other node finishes; a waiting sync then runs
        waited = syncd(config, "sync", "lincoln", "--json")
        assert waited.returncode == 0, waited.stderr[-2000:]
        assert "waiting for it" in waited.stderr and summary(waited)["calls"] > 0
    finally:
        held.release()
    report = json.loads(syncd(config, "status", "lincoln", "--json").stdout)
    assert report["running"] is False and report["running_on"] is None


def test_the_lease_of_a_dead_session_is_free_and_its_run_stays_unfinished(tmp_path: Path, pg_database: str) -> None:
    store = Store.open(tmp_path, pg_database)
    other = Store.open(tmp_path, pg_database)
    try:
        with store.hold("t"):
            tenant = store.tenant("t")
            tenant.start_run("r1", dry_run=False, force=False)
            backend = tenant.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            with pytest.raises(Busy), other.hold("t", wait=False):
                pass
            store.conn.execute("SELECT pg_terminate_backend(?)", (backend,))
            with pytest.raises((lease.LeaseLost, psycopg.OperationalError)):
                tenant.finish_run("r1", "completed", {"calls": 0, "duration_s": 0.1}, None, True)
            with pytest.raises(lease.LeaseLost):
                tenant.reset_stage()
            with other.hold("t", wait=False):  # taken over at once, while the old run still "holds" it
                assert other.runs("t")[0]["status"] == "running", "nothing was written after the lease was lost"
    finally:
        store.close()
        other.close()


TRICKY = ['say "hi"', "back\\slash", "tab\there\nnew line", "\x01\x1f\x7f", "é ü ß 中文", "emoji 😀", "/ & < > '",
          "\u2028\u2029", "ends with \\"]


def test_both_stores_build_the_same_canonical_text_of_tricky_text(tmp_path: Path, pg_database: str) -> None:
    """The quick form of test_plan's property (slow on PostgreSQL): the two stores' desired bodies
    are byte-identical canonical JSON, each hashed its own way over that text."""
    from syncd import pg_schema
    from syncd.model import Course, Enrollment, User, body_hash, canonical_json

    roles = {"student": "learner"}
    records = [rec for i, text in enumerate(TRICKY) for rec in (
        Course(f"c{i}", text, True, code=text, external_id=f"c{i}"),
        User(f"u{i}", text, text, True, email=text, external_id=f"u{i}", lms_id="7"),
        Enrollment(f"e{i}", f"c{i}", f"u{i}", "student", True))]
    bodies: dict[str, dict[str, str]] = {}
    for url in ("", pg_database):
        store = Store.open(tmp_path / "state", url)
        try:
            tenant = store.tenant("t")
            tenant.reset_stage()
            tenant.stage(records)
            tenant.build_desired(roles, "Europe/Paris")
            tenant.classify(False)  # the hashes are filled in when the rows are classified
            found = {}
            for table in ("desired_courses", "desired_users", "desired_enrollments"):
                for source_id, body, digest in tenant.conn.execute(f"SELECT source_id, body, hash FROM {table}"):
                    assert body == canonical_json(json.loads(body))
                    assert digest == (pg_schema.text_hash(body) if url else body_hash(json.loads(body)))
                    found[f"{table}/{source_id}"] = body
            bodies[url or "sqlite"] = found
        finally:
            store.close()
    assert len(bodies["sqlite"]) == 3 * len(TRICKY)
    assert bodies["sqlite"] == bodies[pg_database]


def test_a_state_url_that_is_not_postgresql_is_a_config_error_with_its_key_path(sandbox, tmp_path: Path) -> None:
    config = with_url(sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state", state_url=""), "mysql://db/syncd")
    result = syncd(config, "status")
    assert result.returncode == 2 and "state.url: must be a postgresql://" in result.stderr


def test_an_unreachable_state_database_is_a_clear_error_without_its_password(sandbox, tmp_path: Path) -> None:
    import pg

    url = f"postgresql://syncd:hunter2-secret@127.0.0.1:{pg.free_port()}/syncd"
    config = with_url(sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state", state_url=""), url)
    result = syncd(config, "sync", "lincoln")
    assert result.returncode == 1 and "cannot reach the state database" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
