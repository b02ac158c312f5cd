"""Settled marks (issue 15, syncd.store.settled): a run whose inputs have not changed since a run
that found nothing to do takes no diff and reports what that run reported; any write to an input,
by a run or by anything else, and any change of the tenant's settings make the next run diff again,
and what changed is pushed."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SYNCD

from syncd import config as configuration
from syncd import engine
from syncd.sandbox import Roster, Sandbox, expected_mapping
from syncd.store import Store
from syncd.store.diff import Diff
from syncd.store.settled import WATCHED

SAFE = "safety = { max_updates_percent = 100, max_removals_percent = 100 }"
ROLES = {"student": "learner", "teacher": "instructor"}  # the sandbox config's


@pytest.fixture
def roster() -> Roster:
    return Roster.generate(seed=5, users=40, classes=4, enrollments=120)


@pytest.fixture
def diffs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tenants whose diff (classify) each run took, in order."""
    taken: list[str] = []
    original = Diff.classify

    def counting(self: Diff, force: bool, watch: str | None = None, only_new: bool = False) -> None:
        taken.append(self.name)
        original(self, force, watch, only_new)

    monkeypatch.setattr(Diff, "classify", counting)
    return taken


def _tenant(box: Sandbox, tmp: Path, **fields: Any) -> configuration.TenantConfig:
    config = box.write_config(tmp / "syncd.toml", tmp / "state", source_extra="page_size = 20",
                              extra=SAFE)
    return dataclasses.replace(configuration.load(config).tenants["lincoln"], **fields)


def _settled(box: Sandbox, tmp: Path, store: Store, diffs: list[str], **fields: Any) -> configuration.TenantConfig:
    """A tenant synced, then synced again with nothing to do: its settled mark is left."""
    tenant = _tenant(box, tmp, **fields)
    assert engine.run(tenant, store)["calls"] > 0
    nothing = engine.run(tenant, store)
    assert nothing["status"] == "completed" and nothing["calls"] == 0
    assert diffs == ["lincoln", "lincoln"]
    diffs.clear()
    return tenant


@pytest.fixture
def settled(tmp_path: Path, roster: Roster, diffs: list[str],
            make_store: Any) -> Iterator[tuple[Sandbox, Store, configuration.TenantConfig]]:
    """The sandbox, the store, and the tenant synced, then synced again with nothing to do: its
    settled mark is left (the store is closed after the test)."""
    with Sandbox(roster) as box:
        store = make_store(tmp_path / "state")
        try:
            yield box, store, _settled(box, tmp_path, store, diffs)
        finally:
            store.close()


def _marks(store: Store) -> list[tuple[Any, ...]]:
    return store.tenant("lincoln").conn.execute("SELECT tenant, fingerprint FROM settled_marks").fetchall()


def _commit(conn: Any) -> None:
    """Statements run outside syncd's transactions: SQLite's module opened one, PostgreSQL's
    connection commits each statement itself."""
    getattr(conn, "commit", lambda: None)()


def _target_ok(box: Sandbox, roster: Roster) -> bool:
    target, expected = box.provision.snapshot(), expected_mapping(roster, ROLES)
    return all(target[k].get(key) == v for k in expected for key, v in expected[k].items())


def test_a_run_after_one_that_found_nothing_takes_no_diff_and_reports_the_same(settled, roster, diffs):
    _box, store, tenant = settled
    before = engine.run(tenant, store)
    again = engine.run(tenant, store)
    assert diffs == []
    for result in (before, again):
        assert result["status"] == "completed" and result["calls"] == 0
    assert again["counts"] == before["counts"]
    assert again["counts"]["enrollments"]["unchanged"] == len(expected_mapping(roster, ROLES)["enrollments"])


def test_a_source_change_after_a_settled_run_is_diffed_and_pushed(settled, roster, diffs):
    box, store, tenant = settled
    roster.mutate(seed=3, fraction=0.05)
    changed = engine.run(tenant, store)
    assert diffs == ["lincoln"] and changed["calls"] > 0
    assert _target_ok(box, roster)
    assert _marks(store) == []  # the run had something to do: no mark for the next
    assert engine.run(tenant, store)["calls"] == 0 and diffs == ["lincoln", "lincoln"]


def test_an_acknowledged_row_lost_out_of_band_is_pushed_again(settled, diffs):
    """Say an admin restored an older state file's acknowledgements: the mark must not survive it."""
    _box, store, tenant = settled
    conn = store.tenant("lincoln").conn
    user = conn.execute("SELECT source_id FROM acked_users ORDER BY source_id").fetchone()[0]
    conn.execute("DELETE FROM acked_enrollments WHERE user_id = ?", (user,))
    conn.execute("DELETE FROM acked_users WHERE source_id = ?", (user,))
    _commit(conn)
    result = engine.run(tenant, store)
    assert diffs == ["lincoln"]
    assert result["counts"]["users"]["created"] == 1 and result["counts"]["enrollments"]["created"] >= 1


@pytest.mark.parametrize("change", ["roles", "time_zone", "deprovision", "safety"])
def test_a_settings_change_takes_the_diff_again(settled, diffs, change):
    _box, store, tenant = settled
    changed = {"roles": {"student": "learner"}, "time_zone": "Europe/Paris", "deprovision": "disable",
               "safety": dataclasses.replace(tenant.safety, max_removals=7)}[change]
    engine.run(dataclasses.replace(tenant, **{change: changed}), store)
    assert diffs == ["lincoln"]


def test_options_that_must_see_the_plan_always_take_the_diff(settled, roster, diffs):
    _box, store, tenant = settled
    user = sorted(roster.users)[0]
    dry = engine.run(tenant, store, engine.Options(dry_run=True))
    assert dry["plan"] == [] and diffs == ["lincoln"]
    forced = engine.run(tenant, store, engine.Options(force=True))
    assert forced["calls"] > 0 and diffs == ["lincoln"] * 2
    engine.run(tenant, store, engine.Options(only=("user", user)))
    assert diffs == ["lincoln"] * 3


# Enough of a row for each watched table that a sync of this roster leaves empty.
EMPTY_INPUTS = {
    "acked_exams": ("tenant, source_id", ("lincoln", "x")),
    "pending_removals": ("tenant, entity, key", ("lincoln", "user", '["x"]')),
    "held": ("tenant, run_id, entity, kind, key", ("lincoln", "r", "user", "update", '["x"]')),
    "approvals": ("run_id, tenant, approved_at", ("r", "lincoln", "2026-01-01T00:00:00Z")),
    "escrow": ("tenant, entity, key, attempts, next_retry_at, first_seen",
               ("lincoln", "user", '["x"]', 1, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z")),
}


def test_a_write_of_any_kind_to_any_watched_table_drops_the_mark(settled):
    _box, store, _ = settled
    scoped = store.tenant("lincoln")
    conn = scoped.conn

    def dropped_by(sql: str, params: tuple[Any, ...] = ()) -> bool:
        with scoped._write():
            scoped.watch("r1")
        assert scoped.settle("r1", "f", {}) and len(_marks(store)) == 1
        conn.execute(sql, params)
        _commit(conn)
        return _marks(store) == []

    for table in WATCHED:
        if table in EMPTY_INPUTS:
            columns, row = EMPTY_INPUTS[table]
            marks = ", ".join("?" * len(row))
            assert dropped_by(f"INSERT INTO {table} ({columns}) VALUES ({marks})", row), (table, "insert")
        assert dropped_by(f"UPDATE {table} SET tenant = tenant WHERE tenant = 'lincoln'"), (table, "update")
        assert dropped_by(f"DELETE FROM {table} WHERE tenant = 'lincoln'"), (table, "delete")


class Stop(Exception):
    pass


@pytest.mark.parametrize("stop_in", ["classify", "build", "acknowledge"])
def test_a_run_that_stops_after_reading_a_change_leaves_it_for_the_next(settled, roster, monkeypatch, stop_in):
    """Killed after staging and mapping a change, before its diff, before its plan, or with its first
    acknowledgements: the next run reads nothing new from the source, yet pushes the change."""
    from syncd import plan
    from syncd.store.acks import Acknowledgements

    box, store, tenant = settled
    roster.mutate(seed=6, fraction=0.05)
    target = {"classify": (Diff, "classify"), "build": (plan, "build"),
              "acknowledge": (Acknowledgements, "acknowledge")}[stop_in]
    with monkeypatch.context() as patch:
        patch.setattr(*target, lambda *args, **kwargs: (_ for _ in ()).throw(Stop()))
        with pytest.raises(Stop):
            engine.run(tenant, store)
    result = engine.run(tenant, store)
    assert result["calls"] > 0 and _target_ok(box, roster), result


def test_a_write_between_the_diff_and_the_mark_leaves_no_mark(settled):
    """`syncd approve` (or any other process) writing while a run takes its diff: the run cannot
    vouch for what it did not read."""
    _box, store, _ = settled
    scoped = store.tenant("lincoln")
    with scoped._write():
        scoped.watch("r2")
    scoped.conn.execute("INSERT INTO approvals (run_id, tenant, approved_at) VALUES (?, ?, ?)",
                        ("r0", "lincoln", "2026-01-01T00:00:00Z"))
    _commit(scoped.conn)
    assert not scoped.settle("r2", "f", {})
    assert _marks(store) == []


def test_the_syncd_command_says_when_it_took_no_diff(tmp_path, roster):
    with Sandbox(roster) as box:
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state", source_extra="page_size = 20",
                                  extra=SAFE)

        def sync() -> tuple[dict[str, Any], list[str]]:
            done = subprocess.run([SYNCD, "--config", str(config), "sync", "lincoln", "--json"],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            events = [json.loads(line)["event"] for line in done.stderr.splitlines() if line.startswith("{")]
            return json.loads(done.stdout), events

        first, _ = sync()
        assert first["calls"] > 0
        nothing, events = sync()
        assert "sync.unchanged" not in events and nothing["calls"] == 0
        settled, events = sync()
        assert "sync.unchanged" in events
        assert settled["status"] == "completed" and settled["counts"] == nothing["counts"]
        roster.mutate(seed=4, fraction=0.05)
        changed, events = sync()
        assert "sync.unchanged" not in events and changed["calls"] > 0
        assert _target_ok(box, roster)


@pytest.mark.parametrize("source_extra", ['page_size = 20', 'page_size = 20\ndelta = "auto"'], ids=["full", "delta"])
def test_runs_with_settled_marks_do_what_runs_without_them_do(tmp_path, roster, monkeypatch, source_extra):
    """Twin tenants on twin servers of one roster, one of them never settled: changes and quiet
    runs in turn give both the same summaries and the same target."""
    with Sandbox(roster) as settling, Sandbox(roster) as plain:
        tenants, stores = [], []
        for name, box in (("settling", settling), ("plain", plain)):
            (tmp_path / name).mkdir()
            config = box.write_config(tmp_path / name / "syncd.toml", tmp_path / name / "state",
                                      source_extra=source_extra, extra=SAFE)
            tenants.append(configuration.load(config).tenants["lincoln"])
            stores.append(Store.open(tmp_path / name / "state"))
        try:
            for step in (0, 0, 0, 7, 0, 0, 8, 9, 0, 0, 0):
                if step:
                    roster.mutate(seed=step, fraction=0.05)
                with_marks = engine.run(tenants[0], stores[0])
                with monkeypatch.context() as patch:
                    patch.setattr(engine, "_may_settle", lambda state: False)
                    without = engine.run(tenants[1], stores[1])
                for key in ("status", "counts", "calls", "planned_calls"):
                    assert with_marks[key] == without[key], (step, key)
            assert _target_ok(settling, roster) and _target_ok(plain, roster)
            assert _marks(stores[0]) and not _marks(stores[1])
        finally:
            for store in stores:
                store.close()


def test_a_dangling_enrollment_read_after_a_settled_run_is_reported(settled, roster):
    from syncd.sandbox.roster import modified_now

    _box, store, tenant = settled
    model = next(e for e in roster.enrollments.values() if e["status"] == "active")
    roster.enrollments["enr-dangling"] = {**model, "sourcedId": "enr-dangling",
                                          "dateLastModified": modified_now(),
                                          "class": {**model["class"], "sourcedId": "cls-missing"}}
    result = engine.run(tenant, store)
    assert result["status"] == "completed_with_errors", result
    errors = store.tenant("lincoln").conn.execute(
        "SELECT source_id, message FROM errors WHERE run_id = ?", (result["run_id"],)).fetchall()
    assert [(source_id, "class" in message) for source_id, message in errors] == [("enr-dangling", True)]
