"""A clock that is not to be trusted (issue 11, class 6): a run with the clock years ahead must
neither park a record in escrow for years nor prune the real history; durations and deadlines
use the monotonic clock."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import state
from conftest import summary, syncd

from syncd.sandbox import Roster, Sandbox
from syncd.store import Store
from syncd.store import runs as store_module

CLOCK = str(Path(__file__).parent / "clock")
TWO_YEARS_S = 2 * 365 * 86_400


def _skewed(seconds: float) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [CLOCK, os.environ.get("PYTHONPATH")])),
            "SYNCD_TEST_CLOCK_OFFSET_S": str(seconds)}


def test_a_record_escrowed_under_a_clock_years_ahead_is_retried_once_the_clock_is_right(tmp_path):
    with Sandbox(Roster.generate(seed=31, users=30, classes=3, enrollments=90)) as box:
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state")
        victim = next(iter(box.roster.users))
        box.provision.reject = lambda body: ((422, "refused") if body.get("user", {}).get("ids", {}).get("external")
                                             == victim else None)
        ahead = syncd(config, "sync", "lincoln", "--json", env=_skewed(TWO_YEARS_S))
        assert ahead.returncode == 1, ahead.stderr[-2000:]
        [(retry,)] = state.query(config, "SELECT max(next_retry_at) FROM escrow")
        assert retry > (datetime.now(UTC) + timedelta(days=365)).isoformat()  # the skewed clock wrote it
        box.provision.reject = None
        result = syncd(config, "sync", "lincoln", "--json")
        assert result.returncode == 0, result.stderr[-2000:]
        assert summary(result)["counts"]["users"]["created"] >= 1
        assert box.provision.duplicates() == 0


def test_a_clock_stepped_back_mid_run_does_not_turn_acknowledgements_into_failures(tmp_path):
    with Sandbox(Roster.generate(seed=37, users=30, classes=3, enrollments=90)) as box:
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state", target_extra="concurrency = 1\n")
        assert syncd(config, "sync", "lincoln").returncode == 0
        for user in list(box.roster.users.values())[:6]:
            user["givenName"] += " Jr"
        box.provision.latency_s = 0.4
        # The run starts with the clock an hour ahead; 1.5 s in (mid-push) it is stepped back.
        result = syncd(config, "sync", "lincoln", "--json",
                       env={**_skewed(3600), "SYNCD_TEST_CLOCK_STEP_AT_S": "1.5"})
        outcome = summary(result)
        assert result.returncode == 0, result.stderr[-2000:]
        assert outcome["counts"]["users"]["updated"] == 6
        assert all(c["failed"] == 0 for c in outcome["counts"].values())


def test_pruning_under_a_clock_years_ahead_keeps_the_real_history(tmp_path, monkeypatch):
    from syncd import limits

    store = Store.open(tmp_path / "state", state.url_of(tmp_path / "state"))
    try:
        tenant = store.tenant("lincoln")
        for n in range(5):
            tenant.start_run(f"run-{n}", dry_run=False, force=False)
            tenant.finish_run(f"run-{n}", "completed", {"calls": 0, "duration_s": 0.1}, None, True)
        assert store.prune(30) == 0  # the clock is right: nothing is old yet

        class Ahead(datetime):
            @classmethod
            def now(cls, tz=None):
                return super().now(tz) + timedelta(seconds=TWO_YEARS_S)

        monkeypatch.setattr(store_module, "datetime", Ahead)
        monkeypatch.setattr(limits, "datetime", Ahead)
        assert store.prune(30) == 0  # the clock jumped two years in a second: not trusted
        assert len(store.runs("lincoln", limit=100)) == 5
    finally:
        store.close()
