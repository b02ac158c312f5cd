"""Bugs found in the review of issue 10, each pinned by a test that failed before its fix."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
import state as state_store
from conftest import SYNCD, summary, syncd
from test_sync_end_to_end import expected

from syncd import config as configuration
from syncd import engine, target
from syncd.entities import Call, Part
from syncd.sandbox import CanvasRoster, CanvasSandbox, Roster, Sandbox
from syncd.store import Store


class _ExplodingSource:
    """A source whose extract fails with an error no layer expects (a bug, not an HTTP fault)."""

    complete = False
    requests = 0

    def check(self) -> None:
        return None

    def extract(self):
        raise RuntimeError("the unexpected happened")
        yield  # a generator, as every source's extract is


def test_an_unexpected_error_leaves_the_run_failed_with_its_message(sandbox: Sandbox, config: Path):
    tenant = configuration.load(config).tenants["lincoln"]
    store = Store.open(config.parent / "state", state_store.url_of(config.parent / "state"))
    try:
        with pytest.raises(RuntimeError, match="the unexpected happened"):
            engine.run(tenant, store, source=_ExplodingSource())
        [last] = store.runs("lincoln", limit=1)
        assert last["status"] == "failed"
        assert last["message"] == "RuntimeError: the unexpected happened"
        assert last["finished_at"] is not None
    finally:
        store.close()


def test_a_target_that_already_holds_part_of_the_roster_acknowledges_everything(tmp_path: Path):
    """A real install already knows most people (its own LMS integration made them): it answers
    "Found Existing", which acknowledges, so a first sync ends clean and a second sends nothing."""
    roster = Roster.generate(seed=23, users=60, classes=6, enrollments=240)
    with Sandbox(roster) as box:
        # Another syncd (another state file) provisioned yesterday's roster: this one knows no sid.
        seed_config = box.write_config(tmp_path / "seed.toml", tmp_path / "seed-state")
        assert syncd(seed_config, "sync", "lincoln").returncode == 0
        roster.mutate(seed=5, fraction=0.1)
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state")
        first = syncd(config, "sync", "lincoln", "--json")
        assert first.returncode == 0, first.stderr[-3000:]
        run = summary(first)
        assert run["status"] == "completed"
        assert all(counts["failed"] == 0 for counts in run["counts"].values())
        assert box.provision.snapshot()["users"].items() >= expected(roster)["users"].items()
        assert box.provision.duplicates() == 0
        again = syncd(config, "sync", "lincoln", "--json")
        assert summary(again)["calls"] == 0


def test_found_existing_acknowledges_the_object():
    call = Call(seq=1, parts={"course": Part(("c1",), {"ids": {"external": "c1"}, "title": "Art"}, hash="h")})
    response = requests.Response()
    response.status_code = 200
    response._content = json.dumps({"course": {"sid": "CU1", "result": "Found Existing"}}).encode()
    outcome = target.parse(response, call)
    assert outcome.sids == {"course": "CU1"} and not outcome.problems


@pytest.mark.parametrize("modes", [("api", "report"), ("report", "api")],
                         ids=["crawl then report", "report then crawl"])
def test_switching_canvas_modes_with_untidy_names_sends_nothing(tmp_path: Path, modes: tuple[str, str]):
    """The crawl and the report map text the same way (text_field), so `mode = "auto"` crossing
    `report_min_courses` never turns the same people into updates."""
    roster = CanvasRoster.generate(seed=5, users=60, courses=8, enrollments=240)
    untidy = ["Jose\u0301  Mari\u0301a", "Ann\tMarie  Smith", " Zoe\u00a0Lee "]
    for user, name in zip(list(roster.users.values())[:len(untidy)], untidy, strict=True):
        first, last = name.rsplit(" ", 1)
        user.update(name=name, sortable_name=f"{last},  {first} ", short_name=first)
    with CanvasSandbox(roster) as box:
        first_mode, second_mode = modes
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state", source_extra=f'mode = "{first_mode}"\n')
        first = syncd(config, "sync", "stateu", "--json")
        assert first.returncode == 0, first.stderr[-3000:]
        assert summary(first)["counts"]["users"]["created"] > 0
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state", source_extra=f'mode = "{second_mode}"\n')
        again = syncd(config, "sync", "stateu", "--json")
        assert again.returncode == 0, again.stderr[-3000:]
        assert summary(again)["calls"] == 0


@pytest.mark.parametrize("dry_run", [False, True], ids=["sync", "dry run"])
def test_held_updates_are_counted_once(sandbox: Sandbox, config: Path, roster: Roster, dry_run: bool):
    assert syncd(config, "sync", "lincoln").returncode == 0
    renamed = [u for u in roster.users.values() if u["status"] == "active"]
    for user in renamed:
        user["familyName"] = user["familyName"].upper()
    result = syncd(config, "sync", "lincoln", "--json", *(["--dry-run"] if dry_run else []))
    run = summary(result)
    in_scope = run["counts"]["users"]["held"] + run["counts"]["users"]["unchanged"]
    assert run["status"] == "held"
    assert run["counts"]["users"]["held"] == len(expected(roster)["users"]) == in_scope
    assert run["counts"]["users"]["updated"] == 0 and run["counts"]["users"]["failed"] == 0


def test_a_refused_student_does_not_hold_back_its_course(sandbox: Sandbox, roster: Roster, tmp_path: Path):
    """SPEC §5: a rejection is on that record alone. With one call in flight the order is fixed:
    the refused student's call is the last of its class, after other calls acknowledged the class."""
    mapping = expected(roster)
    learners = sorted(pair for pair, body in mapping["enrollments"].items() if body["role"] == "learner")
    klass, refused = max(learners)  # the last call of the last class: nothing acknowledges the class after it
    assert sum(course == klass for course, _ in learners) > 1

    def reject(body: dict) -> tuple[int, str] | None:
        return (422, "email already taken") if body.get("user", {}).get("ids", {}).get("external") == refused else None

    sandbox.provision.reject = reject
    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state", target_extra="concurrency = 1\n")
    first = syncd(config, "sync", "lincoln", "--json")
    assert first.returncode == 1, first.stderr[-3000:]
    errors = json.loads(syncd(config, "errors", "--json").stdout)
    assert errors and all(e["entity"] != "course" for e in errors)

    roster.classes[klass]["title"] += " (retitled)"
    second = syncd(config, "sync", "lincoln", "--json")
    assert sandbox.provision.snapshot()["courses"][klass]["title"] == roster.classes[klass]["title"]
    assert summary(second)["counts"]["courses"] | {"updated": 1, "failed": 0} == summary(second)["counts"]["courses"]
    errors = json.loads(syncd(config, "errors", "--json").stdout)
    assert all(e["entity"] != "course" for e in errors)


def test_ctrl_c_during_a_sync_says_interrupted_and_records_the_run_as_failed(tmp_path: Path):
    roster = Roster.generate(seed=4, users=100, classes=10, enrollments=400)
    with Sandbox(roster) as box:
        box.provision.latency_s = 0.02
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state", target_extra="concurrency = 1")
        process = subprocess.Popen([SYNCD, "--config", str(config), "sync", "lincoln"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while box.provision.applied < 20 and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stderr and "syncd: interrupted" in stderr
    store = Store.open(tmp_path / "state", state_store.url_of(tmp_path / "state"))
    try:
        [last] = store.runs("lincoln", limit=1)
    finally:
        store.close()
    assert last["status"] == "failed" and last["message"] == "interrupted"
