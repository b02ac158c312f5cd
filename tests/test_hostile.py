"""Hostile input: every case ends in a clear per-record or per-run error, never a traceback,
never a removal. Source payloads, provision answers and config files."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import state as state_store
from conftest import log_events, summary, syncd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd import config as configuration
from syncd.sandbox import Roster, Sandbox
from syncd.sandbox.server import Response
from syncd.store import Store

# (name, collection, how the page is spoiled) -> what syncd must say
PAGE_CASES: dict[str, tuple[str, Any]] = {
    "truncated JSON": ("users", lambda page: Response(200, raw=json.dumps(page.body).encode()[:200])),
    "an HTML error page with status 200": ("classes", lambda page: Response(
        200, raw=b"<html><body>Maintenance</body></html>", headers={"Content-Type": "text/html"})),
    "a success without its envelope": ("enrollments", lambda page: Response(200, {"status": "ok"})),
    "a list where an object belongs": ("users", lambda page: Response(200, {"users": "everyone"})),
}


def _first_sync(tmp_path: Path) -> tuple[Sandbox, Path, Roster]:
    roster = Roster.generate(seed=17, users=80, classes=8, enrollments=300)
    box = Sandbox(roster)
    config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    assert syncd(config, "sync", "lincoln").returncode == 0
    return box, config, roster


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stderr
    assert all(e.get("exception") is None for e in log_events(result))


@pytest.mark.parametrize("case", sorted(PAGE_CASES))
def test_a_spoiled_page_fails_the_run_cleanly_and_removes_nothing(tmp_path, case):
    box, config, _ = _first_sync(tmp_path)
    with box:
        collection, spoil = PAGE_CASES[case]
        original = box.oneroster._page

        def page(request, name, limit, offset):
            response = original(request, name, limit, offset)
            return spoil(response) if name == collection else response

        box.oneroster._page = page
        result = syncd(config, "sync", "lincoln", "--json")
        _no_traceback(result)
        assert result.returncode == 1
        outcome = summary(result)
        assert outcome["status"] == "failed" and f"/{collection}" in result.stderr
        assert all(c["removed"] == 0 for c in outcome["counts"].values())


RECORD_CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "a number where an object belongs": ("users", {"givenName": {"first": "Ann"}}, "givenName is not a string"),
    "a null required field": ("users", {"familyName": None}, "has no familyName"),
    "a 1 MB name": ("users", {"givenName": "A" * 1_000_000}, "characters long"),
    "an unknown status": ("users", {"status": "archived"}, "unknown status"),
    "an endDate in an odd format": ("enrollments", {"endDate": "31/12/2026"}, "is not a date"),
    "an id that is not a string": ("classes", {"sourcedId": 42}, "sourcedId is not a string"),
    "a class without a title": ("classes", {"title": None}, "class has no title"),
}


@pytest.mark.parametrize("case", sorted(RECORD_CASES))
def test_a_bad_record_fails_alone_with_its_reason(tmp_path, case):
    box, config, roster = _first_sync(tmp_path)
    with box:
        collection, change, reason = RECORD_CASES[case]
        victim = next(r for r in roster.collection(collection).values() if r["status"] == "active")
        victim.update(change)
        roster.revision += 1
        result = syncd(config, "sync", "lincoln", "--json")
        _no_traceback(result)
        assert result.returncode == 1
        assert summary(result)["status"] == "completed_with_errors"
        errors = json.loads(syncd(config, "errors", "--json").stdout)
        assert any(reason in e["message"] and e["stage"] == "extract" for e in errors), errors
        # An unreadable record might be one that only looks removed: nothing is removed.
        assert all(c["removed"] == 0 for c in summary(result)["counts"].values())


def test_duplicate_ids_keep_the_first_record(tmp_path):
    box, config, roster = _first_sync(tmp_path)
    with box:
        first = next(iter(roster.users.values()))
        roster.users["zzz-duplicate"] = {**first, "givenName": "Impostor"}
        result = syncd(config, "sync", "lincoln", "--json")
        errors = json.loads(syncd(config, "errors", "--json").stdout)
        assert any(e["message"].startswith("duplicate id") for e in errors)
        assert box.provision.snapshot()["users"][first["sourcedId"]]["firstName"] != "Impostor"
        _no_traceback(result)


def test_control_characters_and_unicode_forms_are_cleaned_not_sent(tmp_path):
    box, config, roster = _first_sync(tmp_path)
    with box:
        user = next(u for u in roster.users.values() if u["status"] == "active" and u["role"] == "student"
                    and any(e["user"]["sourcedId"] == u["sourcedId"] and e["status"] == "active"
                            and not e.get("endDate") for e in roster.enrollments.values()))
        user["givenName"] = "Jose\u0301\x00\tMaria"  # NFD accent, a NUL and a tab
        result = syncd(config, "sync", "lincoln", "--json")
        assert result.returncode == 0, result.stderr[-2000:]
        assert box.provision.snapshot()["users"][user["sourcedId"]]["firstName"] == "José Maria"
        user["givenName"] = "José Maria"  # the same name, composed: no update
        again = syncd(config, "sync", "lincoln", "--json")
        assert summary(again)["calls"] == 0


@pytest.mark.parametrize("answer", [
    Response(200, raw=b"<html>ok</html>", headers={"Content-Type": "text/html"}),
    Response(200, {"course": {"result": "Created"}}),
    Response(200, {"course": {"sid": "CU1", "result": "Exploded"}}),
    Response(200, ["not", "an", "object"]),
], ids=["not JSON", "no sid", "unknown result", "not an object"])
def test_a_provision_answer_that_acknowledges_nothing_is_reported_not_trusted(tmp_path, answer):
    roster = Roster.generate(seed=17, users=20, classes=2, enrollments=40)
    with Sandbox(roster) as box:
        box.provision.__class__ = type("Odd", (type(box.provision),), {"__call__": lambda self, request: answer})
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state")
        result = syncd(config, "sync", "lincoln", "--json")
        _no_traceback(result)
        assert result.returncode == 1
        outcome = summary(result)
        assert outcome["counts"]["courses"]["created"] == 0 and outcome["counts"]["courses"]["failed"] > 0
        state_file = Store.open(tmp_path / "state", state_store.url_of(tmp_path / "state"))
        try:
            assert state_file.tenant("lincoln").acked_counts()["course"] == 0
        finally:
            state_file.close()


# --- config fuzzing --------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.text(max_size=30),
                    st.floats(allow_nan=False))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)
BASE = tomllib.loads("""
[tenants.lincoln.source]
type = "oneroster"
base_url = "https://sis.example.org/ims"
client_id = "c"
client_secret = "s"
[tenants.lincoln.target]
base_url = "https://api.example.org"
install_sid = "AI1"
token = "t"
""")
PLACES = [(), ("daemon",), ("safety",), ("tenants",), ("tenants", "lincoln"), ("tenants", "lincoln", "source"),
          ("tenants", "lincoln", "target"), ("tenants", "lincoln", "safety")]


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(place=st.sampled_from(PLACES), key=st.sampled_from(
    ["state_dir", "log_level", "schedule", "roles", "time_zone", "base_url", "page_size", "timeout_s", "concurrency",
     "version", "token", "install_sid", "type", "max_removals", "freeze", "deprovision", "mode", "enabled",
     "retention_days", "sub_accounts", "x"]), value=values)
def test_any_config_is_either_valid_or_rejected_with_key_paths(place, key, value):
    raw = json.loads(json.dumps(BASE))
    table = raw
    for name in place:
        table = table.setdefault(name, {}) if isinstance(table, dict) else table
    if not isinstance(table, dict):
        return
    table[key] = value
    try:
        configuration.parse(raw, Path("/nonexistent/syncd.toml"))
    except configuration.ConfigError as exc:
        assert exc.errors and all(": " in line for line in exc.errors)
        # Every line names a key path: bare keys, and odd key names quoted as TOML quotes them.
        assert all(line.split(": ", 1)[0].strip() for line in exc.errors), exc.errors
        assert all(" " not in line.split('"')[0].split(": ", 1)[0] for line in exc.errors), exc.errors


@pytest.mark.parametrize("text", [
    "", "[tenants]\n", "tenants = 3\n", "[tenants.lincoln]\nsource = 'x'\ntarget = []\n",
    "[daemon]\nretention_days = 1e308\n", "[tenants.lincoln.source]\ntype = 'oneroster'\npage_size = 99999999999\n",
    "\x00\x01", "[[tenants]]\n",
])
def test_a_broken_config_file_exits_2_with_a_key_path_and_creates_nothing(tmp_path, text):
    path = tmp_path / "syncd.toml"
    path.write_text(text)
    result = syncd(path, "sync", "--all")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()


def test_a_plain_secret_in_a_config_others_can_read_is_warned_about(sandbox, tmp_path):
    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    config.chmod(0o644)
    result = syncd(config, "status")
    warnings = [e for e in log_events(result) if e["event"] == "config.secret_readable_by_others"]
    assert warnings and "tenants.lincoln.target.token" in warnings[0]["keys"]
    assert sandbox.provision.token not in result.stderr
    config.chmod(0o600)
    assert not any(e["event"] == "config.secret_readable_by_others" for e in log_events(syncd(config, "status")))
