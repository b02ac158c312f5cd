"""Guard rails against the classic disasters: the breaker, approvals, the completeness guard,
deprovisioning, the retry escrow, freezes, on-demand sync of one object, readable plans."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import state
from conftest import log_events, summary, syncd
from test_sync_end_to_end import expected, travel_past_escrow

from syncd.sandbox import Fault


def _drop_users(roster, share: float) -> list[str]:
    users = [u for u in roster.users.values() if u["status"] == "active"]
    dropped = users[: int(len(users) * share)]
    for user in dropped:
        user["status"] = "tobedeleted"
    return [u["sourcedId"] for u in dropped]


def _acked(config, table: str, where: str = "removed_at IS NULL") -> int:
    return state.query(config, f"SELECT count(*) FROM acked_{table} WHERE {where}")[0][0]


def test_a_source_that_drops_60_percent_of_users_is_held_until_approved_once(sandbox, config, roster):
    assert syncd(config, "sync", "lincoln").returncode == 0
    users_before = _acked(config, "users")
    _drop_users(roster, 0.6)
    roster.mutate(seed=5, fraction=0.01)  # a few renames and new enrollments go through regardless
    held = syncd(config, "sync", "lincoln", "--json")
    assert held.returncode == 3, held.stderr[-2000:]
    outcome = summary(held)
    assert outcome["status"] == "held"
    assert all(c["removed"] == 0 for c in outcome["counts"].values())
    assert outcome["counts"]["users"]["held"] >= int(users_before * 0.5)
    assert outcome["counts"]["users"]["updated"] > 0 or outcome["counts"]["enrollments"]["created"] > 0
    assert _acked(config, "users") == users_before  # nothing tombstoned
    assert any(e["event"] == "sync.held" and "approve" in e for e in log_events(held))
    status = json.loads(syncd(config, "status", "lincoln", "--json").stdout)
    assert status["runs"][0]["status"] == "held" and "removals held" in status["runs"][0]["message"]

    approved = syncd(config, "approve", "lincoln")
    assert approved.returncode == 0 and outcome["run_id"] in approved.stdout
    released = syncd(config, "sync", "lincoln", "--json")
    assert released.returncode == 0, released.stderr[-2000:]
    assert summary(released)["counts"]["users"]["removed"] >= int(users_before * 0.5)
    assert summary(released)["counts"]["users"]["held"] == 0
    # The approval is spent: the thresholds still stand for the next mass removal.
    _drop_users(roster, 0.9)
    again = syncd(config, "sync", "lincoln", "--json")
    assert again.returncode == 3 and summary(again)["status"] == "held"


def test_approve_refuses_a_run_that_held_nothing(sandbox, config):
    assert syncd(config, "sync", "lincoln").returncode == 0
    result = syncd(config, "approve", "lincoln")
    assert result.returncode == 1 and "no held run" in result.stderr


def test_a_source_that_returns_an_empty_enrollment_list_removes_nothing(sandbox, config, roster):
    assert syncd(config, "sync", "lincoln").returncode == 0
    enrollments = _acked(config, "enrollments")
    roster.enrollments.clear()
    result = syncd(config, "sync", "lincoln", "--json")
    assert all(c["removed"] == 0 for c in summary(result)["counts"].values())
    assert _acked(config, "enrollments") == enrollments
    assert any(e["event"] == "sync.extract_suspect" and e["entity"] == "enrollment" for e in log_events(result))


def test_a_departed_user_is_disabled_and_enabled_again_when_back(sandbox, roster, tmp_path):
    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state", extra='deprovision = "disable"')
    assert syncd(config, "sync", "lincoln").returncode == 0
    leaver = next(u for u in roster.users.values() if u["status"] == "active" and u["role"] == "student")
    sid = next(s for s, u in sandbox.provision.users.items() if u["ids"].get("external") == leaver["sourcedId"])
    leaver["status"] = "tobedeleted"
    gone = syncd(config, "sync", "lincoln", "--json")
    assert gone.returncode == 0, gone.stderr[-2000:]
    assert summary(gone)["counts"]["users"]["removed"] == 1
    assert sandbox.provision.disabled == {sid}

    leaver["status"] = "active"
    back = syncd(config, "sync", "lincoln", "--json")
    assert back.returncode == 0
    assert sandbox.provision.disabled == set()
    assert sandbox.provision.duplicates() == 0
    assert [s for s, u in sandbox.provision.users.items() if u["ids"].get("external") == leaver["sourcedId"]] == [sid]
    assert sandbox.provision.snapshot()["users"][leaver["sourcedId"]] == expected(roster)["users"][leaver["sourcedId"]]


def _retry_in_hours(config) -> float:
    errors = json.loads(syncd(config, "errors", "--json").stdout)
    row = next(e for e in errors if e["entity"] == "enrollment")
    due = datetime.fromisoformat(row["next_retry_at"].replace("Z", "+00:00"))
    return (due - datetime.now(UTC)).total_seconds() / 3600


def test_a_record_rejected_run_after_run_is_retried_on_the_escrow_schedule(sandbox, config, roster):
    refused = next(u["sourcedId"] for u in roster.users.values() if u["role"] == "student")
    sent = []

    def reject(body):
        if body.get("user", {}).get("ids", {}).get("external") == refused:
            sent.append(body)
            return 422, "email already taken"
        return None

    sandbox.provision.reject = reject
    delays = []
    for attempt in range(1, 4):
        before = len(sent)
        result = syncd(config, "sync", "lincoln", "--json")
        assert result.returncode == 1 and len(sent) > before, f"attempt {attempt} was not sent"
        errors = json.loads(syncd(config, "errors", "--json").stdout)
        assert {e["attempts"] for e in errors if e["entity"] == "enrollment"} == {attempt}
        delays.append(_retry_in_hours(config))
        # Before it is due, runs leave it alone (and say so), however often they come.
        rejected_so_far = len(sent)
        quiet = syncd(config, "sync", "lincoln", "--json")
        assert len(sent) == rejected_so_far and summary(quiet)["calls"] == 0
        assert quiet.returncode == 1
        waiting = json.loads(syncd(config, "errors", "--json").stdout)
        assert any(e["entity"] == "user" and e["source_id"] == refused and e["name"] for e in waiting)
        travel_past_escrow(config)
    assert [round(d) for d in delays] == [1, 6, 24]


def test_only_user_pushes_only_that_users_calls(sandbox, config, roster):
    assert syncd(config, "sync", "lincoln").returncode == 0
    roster.mutate(seed=21, fraction=0.05)
    target = next(u for u in roster.users.values() if "-" in u["givenName"] and u["status"] == "active")
    calls = sandbox.provision.calls
    only = syncd(config, "sync", "lincoln", "--only", f"user:{target['sourcedId']}")
    assert only.returncode == 0, only.stderr[-2000:]
    assert sandbox.provision.calls - calls == 1  # the rename rides on one enrollment call
    assert f"user {target['sourcedId']} is in scope (changed)" in only.stdout
    assert "acknowledged" in only.stdout
    assert sandbox.provision.snapshot()["users"][target["sourcedId"]]["firstName"] == target["givenName"]
    rest = syncd(config, "sync", "lincoln", "--json")
    assert summary(rest)["calls"] > 0  # everyone else was left for the next run


def test_only_names_an_object_the_source_does_not_have(sandbox, config):
    result = syncd(config, "sync", "lincoln", "--only", "user:nobody")
    assert "the source has no user nobody" in result.stdout
    assert sandbox.provision.calls == 0


def test_a_freeze_window_holds_removals(sandbox, roster, tmp_path):
    today = date.today()  # noqa: DTZ011 - the sandbox tenant has no time_zone: local time
    window = f'[["{today - timedelta(days=1)}", "{today + timedelta(days=1)}"]]'
    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    assert syncd(config, "sync", "lincoln").returncode == 0
    config.write_text(config.read_text() + f"\n[tenants.lincoln.safety]\nfreeze = {window}\n")
    dropped = next(e for e in roster.enrollments.values() if e["status"] == "active" and e["role"] == "student")
    dropped["status"] = "tobedeleted"
    result = syncd(config, "sync", "lincoln", "--json")
    assert summary(result)["counts"]["enrollments"]["removed"] == 0
    assert summary(result)["counts"]["enrollments"]["held"] == 1
    assert any(e["event"] == "sync.removals_frozen" for e in log_events(result))


def test_the_update_breaker_holds_a_mass_rename_until_approved(sandbox, config, roster):
    assert syncd(config, "sync", "lincoln").returncode == 0
    for user in roster.users.values():
        user["familyName"] = user["familyName"].upper()
    calls = sandbox.provision.calls
    held = syncd(config, "sync", "lincoln", "--json")
    assert held.returncode == 3 and summary(held)["counts"]["users"]["held"] > 0
    assert sandbox.provision.calls == calls  # nothing renamed
    assert syncd(config, "approve", "lincoln").returncode == 0
    released = syncd(config, "sync", "lincoln", "--json")
    assert released.returncode == 0 and summary(released)["counts"]["users"]["updated"] > 0


def test_a_dry_run_lists_what_it_would_remove_and_hold_as_data(sandbox, config, roster):
    assert syncd(config, "sync", "lincoln").returncode == 0
    _drop_users(roster, 0.6)
    plan = summary(syncd(config, "sync", "lincoln", "--dry-run", "--json"))
    assert plan["dry_run"] is True and plan["status"] == "held"
    assert isinstance(plan["plan"], list)
    assert plan["held_objects"] and all(h["kind"] == "remove" for h in plan["held_objects"])
    text = syncd(config, "sync", "lincoln", "--dry-run").stdout
    assert "HOLD remove of user" in text
    assert _acked(config, "users", "removed_at IS NOT NULL") == 0


def test_a_tenant_failing_run_after_run_is_degraded_and_said_once(roster, tmp_path):
    from syncd.sandbox import Sandbox

    with Sandbox(roster) as box:
        box.oneroster.faults.append(Fault(status=500, collection="classes"))
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state")
        said = []
        for _ in range(4):
            result = syncd(config, "sync", "lincoln")
            said.append(sum(e["event"] == "tenant.degraded" for e in log_events(result)))
        assert said == [0, 0, 1, 0]
        status = syncd(config, "status", "lincoln")
        assert "DEGRADED" in status.stdout


def test_safety_keys_are_checked_with_their_key_paths(sandbox, tmp_path):
    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state", extra='deprovision = "delete"')
    config.write_text(config.read_text() + '\n[safety]\nmax_removals = -1\n\n[tenants.lincoln.safety]\n'
                      'freeze = [["2027-08-20", "2027-06-10"]]\nmax_updates_percent = "lots"\n')
    result = syncd(config, "config", "validate")
    assert result.returncode == 2
    for key in ("tenants.lincoln.deprovision", "safety.max_removals", "tenants.lincoln.safety.freeze[0]",
                "tenants.lincoln.safety.max_updates_percent"):
        assert f"{key}:" in result.stderr
