"""Exams (SPEC §7) through the real `syncd` command against the sandbox: the target ends with the
expected exams, a resync sends nothing, one change is one call, the window guard holds, the
password is nowhere, and a kill mid-push converges without a duplicate exam."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import SYNCD, log_events, summary, syncd

from syncd.sandbox import CanvasRoster, CanvasSandbox, Roster, Sandbox, state_toml
from syncd.sandbox import oneroster_lineitems as lineitems
from syncd.sandbox.canvas_quizzes import CanvasQuizzes
from syncd.sandbox.canvas_quizzes import expected_exams as canvas_expected
from syncd.sandbox.provision_exams import snapshot

TS = "TS4b894875a1b24f4e9b2e1c9d0f8a7b6c"
TEMPLATE = "https://lms.example.edu/classes/{class_id}/items/{id}"
PASSWORD = "Or-Exam-Pw-7741"
EXAMS = (f'[tenants.lincoln.exams]\nselect = "title"\ntitle_pattern = "^Unit Exam"\n'
         f'proctor_types = {{ "{TS}" = {{}} }}\ndefault_duration_min = 45\n'
         f'default_password = "{PASSWORD}"\nurl_template = "{TEMPLATE}"\n')


def write_config(box: Sandbox | CanvasSandbox, tmp_path: Path, exams: str = EXAMS, **tenant: Any) -> Path:
    path = tmp_path / "syncd.toml"
    path.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\nlog_format = "json"\n\n'
                    + state_toml(tmp_path / "state") + box.tenant_toml(**tenant) + exams, encoding="utf-8")
    path.chmod(0o600)
    return path


def expected(box: Sandbox, roster: Roster) -> tuple[dict[str, dict[str, Any]], set[str]]:
    return lineitems.expected_exams(box.oneroster.line_items, roster, url_template=TEMPLATE, duration=45,
                                    password=PASSWORD, proctor_types={TS: {}}, title_pattern="^Unit Exam")


def in_target(box: Sandbox) -> dict[str, dict[str, Any]]:
    return {k: {f: v for f, v in body.items() if f != "course"} for k, body in snapshot(box.provision).items()}


def run(config: Path, *args: str) -> dict[str, Any]:
    result = syncd(config, "sync", "lincoln", "--json", *args)
    assert result.returncode in (0, 1, 3), result.stderr[-3000:]
    return summary(result)


@pytest.fixture
def roster() -> Roster:
    return Roster.generate(seed=7, users=60, classes=10, enrollments=200)


@pytest.fixture
def box(roster: Roster):
    with Sandbox(roster) as sandbox:
        sandbox.oneroster.line_items = lineitems.generate(roster, per_class=3)
        yield sandbox


def _first_exam(box: Sandbox, roster: Roster, opened: bool) -> dict[str, Any]:
    """A synced lineItem whose window has (or has not) opened."""
    exams, _ = expected(box, roster)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for external, body in sorted(exams.items()):
        if (body["configuration"]["access"]["open"] <= now) == opened:
            return box.oneroster.line_items[external.removeprefix("lineitem:")]
    raise AssertionError("the seed has no such exam")


def test_oneroster_exams_equal_the_expected_mapping_then_a_resync_sends_nothing(box, roster, tmp_path, state_backend):
    config = write_config(box, tmp_path)
    first = run(config)
    exams, failed = expected(box, roster)
    assert exams and failed, "the seed must have exams and unmappable ones"
    assert in_target(box) == exams
    assert box.provision.exam_book.duplicates() == 0
    assert first["status"] == "completed_with_errors"
    assert first["counts"]["exams"]["created"] == len(exams)
    assert first["counts"]["exams"]["failed"] == len(failed)
    # Exams ride on the calls their courses needed anyway: never more calls than objects need.
    courses = len(box.provision.courses)
    assert first["calls"] < courses + len(exams) + first["counts"]["enrollments"]["created"]
    errors = json.loads(syncd(config, "errors", "lincoln", "--json").stdout)
    exam_errors = {e["source_id"] for e in errors if e["entity"] == "exam"}
    assert exam_errors == failed, "a lineItem without a window is a record error on that exam alone"
    second = run(config)
    assert second["calls"] == 0 and second["counts"]["exams"]["unchanged"] == len(exams)


def test_a_tenant_without_exams_reads_and_counts_none(box, roster, tmp_path):
    box.oneroster.gradebook = False  # were lineItems asked for, the run would report it
    config = write_config(box, tmp_path, exams="")
    first = run(config)
    assert first["status"] == "completed"
    assert set(first["counts"]) == {"courses", "users", "enrollments"}
    assert not snapshot(box.provision)


def test_one_changed_exam_is_one_call_riding_on_its_course_call(box, roster, tmp_path):
    config = write_config(box, tmp_path)
    run(config)
    item = _first_exam(box, roster, opened=False)
    item["title"] = "Unit Exam renamed"
    result = run(config)
    assert result["calls"] == 1 and result["counts"]["exams"]["updated"] == 1
    assert in_target(box) == expected(box, roster)[0]
    # The course changes too: still one call, the exam rides on the course's.
    class_id = item["class"]["sourcedId"]
    roster.classes[class_id]["title"] = "Renamed class"
    item["description"] = "new chapters"
    result = run(config)
    assert result["calls"] == 1
    assert result["counts"]["courses"]["updated"] == 1 and result["counts"]["exams"]["updated"] == 1
    assert in_target(box) == expected(box, roster)[0]
    # --only exam:ID sends that exam's call alone.
    item["title"] = "Unit Exam only"
    other = _first_exam(box, roster, opened=True)
    other["description"] = "not now"
    only = syncd(config, "sync", "lincoln", "--only", f"exam:lineitem:{item['sourcedId']}")
    assert only.returncode == 1, only.stderr[-2000:]  # the unmappable lineItems are record errors
    assert f"exam lineitem:{item['sourcedId']} is in scope (changed)" in only.stdout
    assert run(config)["calls"] == 1  # the other exam, left for the next run


def test_a_moved_window_after_opening_is_held_until_approved(box, roster, tmp_path):
    config = write_config(box, tmp_path)
    run(config)
    item = _first_exam(box, roster, opened=True)
    external = f"lineitem:{item['sourcedId']}"
    moved = datetime.now(UTC) + timedelta(days=40)
    item["dueDate"] = moved.strftime("%Y-%m-%dT%H:%M:%SZ")
    dry = syncd(config, "sync", "lincoln", "--dry-run")
    assert dry.returncode == 3 and f"exam {external} held" in dry.stdout
    held = syncd(config, "sync", "lincoln", "--json")
    assert held.returncode == 3, held.stderr[-2000:]
    assert summary(held)["status"] == "held" and summary(held)["counts"]["exams"]["held"] == 1
    lines = [e for e in log_events(held) if e.get("event") == "sync.exam_held"]
    assert len(lines) == 1 and lines[0]["source_id"] == external and any("close" in c for c in lines[0]["changes"])
    assert box.provision.exam_book.late_changes == []
    assert in_target(box)[external]["configuration"]["access"]["close"] != moved.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert syncd(config, "approve", "lincoln").returncode == 0
    released = run(config)
    assert released["status"] in ("completed", "completed_with_errors") and released["calls"] == 1
    assert box.provision.exam_book.late_changes == [external]
    assert in_target(box) == expected(box, roster)[0]
    assert run(config)["calls"] == 0


def test_a_dry_run_shows_exam_fields_and_only_says_the_password_changed(box, roster, tmp_path):
    config = write_config(box, tmp_path)
    dry = syncd(config, "sync", "lincoln", "--dry-run")
    assert "create exam lineitem:" in dry.stdout and "configuration.password='(secret)'" in dry.stdout
    run(config)
    # Every exam changes: above the update breaker's default, which would hold them all.
    config = write_config(box, tmp_path, exams=EXAMS.replace(PASSWORD, "Another-Pw-9932")
                          + "[tenants.lincoln.safety]\nmax_updates_percent = 100\n")
    dry = syncd(config, "sync", "lincoln", "--dry-run")
    assert "configuration.password: changed" in dry.stdout
    assert "hmac-sha256" not in dry.stdout and "Another-Pw-9932" not in dry.stdout
    plan = summary(syncd(config, "sync", "lincoln", "--dry-run", "--json"))["plan"]
    exams = [o for call in plan for o in call["objects"] if o["entity"] == "exam"]
    assert exams and all(o["changes"] == {"configuration.password": "changed"} for o in exams)


def test_the_password_is_nowhere_but_in_the_target(box, roster, tmp_path):
    config = write_config(box, tmp_path, log_level="debug")
    outputs = [syncd(config, "sync", "lincoln", "--json"), syncd(config, "sync", "lincoln", "--dry-run", "--force"),
               syncd(config, "status", "--json"), syncd(config, "errors", "lincoln", "--json")]
    assert any(e["configuration"]["password"] == PASSWORD for e in snapshot(box.provision).values())
    for result in outputs:
        assert PASSWORD not in result.stdout and PASSWORD not in result.stderr
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_a_gradebook_the_provider_does_not_serve_keeps_the_roster_going(box, roster, tmp_path):
    config = write_config(box, tmp_path)
    run(config)
    box.oneroster.gradebook = False
    result = run(config)
    assert result["status"] == "completed_with_errors" and result["counts"]["exams"]["removed"] == 0
    assert in_target(box) == expected(box, roster)[0], "no exam is removed when the exams were not read"
    box.oneroster.gradebook = True
    gone = sorted(expected(box, roster)[0])[0]
    del box.oneroster.line_items[gone.removeprefix("lineitem:")]
    result = run(config)
    assert result["counts"]["exams"]["removed"] == 1 and gone in in_target(box)  # on_removed = "report"


def test_removed_exams_are_deleted_in_the_target_when_asked(box, roster, tmp_path):
    config = write_config(box, tmp_path, exams=EXAMS + 'on_removed = "delete"\n')
    run(config)
    gone = sorted(expected(box, roster)[0])[0]
    item = box.oneroster.line_items.pop(gone.removeprefix("lineitem:"))
    result = run(config)
    assert result["counts"]["exams"]["removed"] == 1 and gone not in in_target(box)
    assert box.provision.exam_book.puts == 1
    box.oneroster.line_items[item["sourcedId"]] = item  # back: the same exam, reactivated
    result = run(config)
    assert result["calls"] == 1 and in_target(box) == expected(box, roster)[0]
    assert box.provision.exam_book.duplicates() == 0


def test_kill_during_push_then_rerun_converges_with_no_duplicate_exam(tmp_path):
    roster = Roster.generate(seed=4, users=120, classes=40, enrollments=400)
    with Sandbox(roster) as box:
        box.oneroster.line_items = lineitems.generate(roster, per_class=6)
        box.provision.latency_s = 0.01
        config = write_config(box, tmp_path, target_extra="concurrency = 2")
        process = subprocess.Popen([SYNCD, "--config", str(config), "sync", "lincoln"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(box.provision.exam_book.exams) < 20 and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        exams, _ = expected(box, roster)
        assert 20 <= len(box.provision.exam_book.exams) < len(exams), "the kill came mid-push"
        assert run(tmp_path / "syncd.toml")["status"] == "completed_with_errors"
        assert in_target(box) == exams
        assert box.provision.exam_book.duplicates() == 0
        assert run(config)["calls"] == 0


# --- Canvas: classic and New Quizzes, crawl and report paths --------------------------------


@pytest.fixture
def canvas_roster() -> CanvasRoster:
    return CanvasRoster.generate(seed=5, users=60, courses=12, enrollments=200)


def canvas_config(box: CanvasSandbox, tmp_path: Path, mode: str, exams: str = "") -> Path:
    table = f'[tenants.stateu.exams]\nproctor_types = {{ "{TS}" = {{}} }}\n{exams}'
    return write_config(box, tmp_path, exams=table, source_extra=f'mode = "{mode}"\n')


def canvas_target(box: CanvasSandbox) -> dict[str, dict[str, Any]]:
    return {k: {f: v for f, v in body.items() if f != "course"} for k, body in snapshot(box.provision).items()}


def canvas_run(config: Path) -> dict[str, Any]:
    result = syncd(config, "sync", "stateu", "--json")
    assert result.returncode in (0, 1, 3), result.stderr[-3000:]
    return summary(result)


@pytest.mark.parametrize("mode", ["api", "report"])
def test_canvas_exams_equal_the_expected_mapping_on_both_paths(canvas_roster, tmp_path, mode):
    book = CanvasQuizzes.generate(canvas_roster.courses, seed=5, per_course=5)
    with CanvasSandbox(canvas_roster, quizzes=book) as box:
        config = canvas_config(box, tmp_path, mode)
        first = canvas_run(config)
        exams, failed = canvas_expected(book, canvas_roster.courses, box.source_url, proctor_types={TS: {}})
        assert len(exams) > 10 and failed
        assert canvas_target(box) == exams
        assert first["counts"]["exams"]["created"] == len(exams)
        errors = json.loads(syncd(config, "errors", "stateu", "--json").stdout)
        assert {e["source_id"] for e in errors if e["entity"] == "exam"} == failed
        assert canvas_run(config)["calls"] == 0
        # One change, one call (a rename is not a window change: never held).
        quiz = next(q for q in book.published_classic() if f"quiz:{q}" in exams)
        book.rename(quiz)
        result = canvas_run(config)
        assert result["calls"] == 1 and result["counts"]["exams"]["updated"] == 1
        assert canvas_target(box) == canvas_expected(book, canvas_roster.courses, box.source_url,
                                                     proctor_types={TS: {}})[0]
        # Every access code the source holds is in the target, and nowhere on this machine.
        codes = {q["access_code"] for q in book.quizzes.values() if q.get("access_code")}
        codes |= {n["student_access_code"] for n in book.new_quizzes.values() if n.get("student_access_code")}
        assert any(e["configuration"]["password"] in codes for e in exams.values())
        outputs = [syncd(config, "sync", "stateu", "--json", "--force"), syncd(config, "sync", "stateu", "--dry-run"),
                   syncd(config, "errors", "stateu", "--json"), syncd(config, "status", "--json")]
        text = "".join(r.stdout + r.stderr for r in outputs)
        data = b"".join(p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file())
        for code in codes:
            assert code not in text and code.encode() not in data, code


def test_a_quiz_without_a_time_limit_and_no_default_fails_alone(canvas_roster, tmp_path):
    book = CanvasQuizzes.generate(canvas_roster.courses, seed=5, per_course=5)
    with CanvasSandbox(canvas_roster, quizzes=book) as box:
        config = canvas_config(box, tmp_path, "api")
        canvas_run(config)
        quiz = next(q for q in book.published_classic() if book.quizzes[q].get("access_code"))
        book.quizzes[quiz]["time_limit"] = None
        result = canvas_run(config)
        assert result["status"] == "completed_with_errors" and result["calls"] == 0
        assert result["counts"]["exams"]["failed"] >= 1 and result["counts"]["exams"]["removed"] == 0
        errors = json.loads(syncd(config, "errors", "stateu", "--json").stdout)
        [error] = [e for e in errors if e["source_id"] == f"quiz:{quiz}"]
        assert "time limit" in error["message"]
        assert f"quiz:{quiz}" in canvas_target(box), "an exam that fails to map is not removed"


def test_syncd_auth_asks_for_the_exam_scopes_only_when_exams_are_on(canvas_roster, tmp_path):
    from syncd.sources.canvas_auth import SCOPES
    from syncd.sources.canvas_exams import scopes

    with CanvasSandbox(canvas_roster) as box:
        redirect = 'redirect_uri = "https://proctoring.example.edu/oauth/callback"\n'
        printed = {}
        for name, table in (("off", ""), ("on", f'[tenants.stateu.exams]\nproctor_types = {{ "{TS}" = {{}} }}\n')):
            (tmp_path / name).mkdir()
            config = write_config(box, tmp_path / name, exams=table, auth="none", source_extra=redirect)
            result = syncd(config, "auth", "stateu", "--timeout", "0.5")
            printed[name] = {line.strip() for line in result.stdout.splitlines() if line.startswith("  url:")}
        extra = set(scopes(write_exams_config()))
        assert extra and printed["off"] == set(SCOPES)
        assert printed["on"] == set(SCOPES) | extra


def write_exams_config() -> Any:
    from syncd.exams_config import ExamsConfig

    return ExamsConfig(proctor_types={TS: {}})


def test_syncd_exams_lists_each_exam_with_its_state(box, roster, tmp_path):
    config = write_config(box, tmp_path)
    run(config)
    exams, failed = expected(box, roster)
    item = _first_exam(box, roster, opened=True)
    item["dueDate"] = (datetime.now(UTC) + timedelta(days=50)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert syncd(config, "sync", "lincoln").returncode == 3
    rows = {r["source_id"]: r for r in json.loads(syncd(config, "exams", "lincoln", "--json").stdout)}
    assert set(rows) == set(exams) | failed
    held = f"lineitem:{item['sourcedId']}"
    assert rows[held]["state"] == "held"
    assert {r["state"] for k, r in rows.items() if k in failed} == {"failed"}
    synced = [r for k, r in rows.items() if k in exams and k != held]
    assert synced and all(r["state"] == "synced" and r["sid"].startswith("EX") for r in synced)
    one = synced[0]
    body = exams[one["source_id"]]["configuration"]
    assert (one["open"], one["close"], one["duration_min"], one["attempts"]) == (
        body["access"]["open"], body["access"]["close"], 45, 1)
    table = syncd(config, "exams", "lincoln")
    assert table.returncode == 0 and "1 held" in table.stdout and PASSWORD not in table.stdout
    assert syncd(config, "exams", "nobody").returncode == 2


def test_an_exam_moved_to_another_course_is_sent_again_with_it(box, roster, tmp_path):
    # A URL without the class: nothing in the exam's own body changes, only its course.
    config = write_config(box, tmp_path, exams=EXAMS.replace(TEMPLATE, "https://lms.example.edu/items/{id}"))
    run(config)
    item = _first_exam(box, roster, opened=False)
    external = f"lineitem:{item['sourcedId']}"
    before = snapshot(box.provision)[external]["course"]
    other = next(c for c, v in sorted(roster.classes.items())
                 if c != item["class"]["sourcedId"] and v["status"] == "active")
    item["class"] = {**item["class"], "sourcedId": other}
    result = run(config)
    assert result["calls"] == 1 and result["counts"]["exams"]["updated"] == 1
    after = snapshot(box.provision)[external]["course"]
    assert after != before and after is not None
    assert box.provision.exam_book.duplicates() == 0
    assert run(config)["calls"] == 0


def test_override_counts_are_read_when_asked_and_listed_by_syncd_exams(canvas_roster, tmp_path):
    from syncd.sandbox.canvas_quizzes import expected_override_counts

    book = CanvasQuizzes.generate(canvas_roster.courses, seed=5, per_course=5)
    with CanvasSandbox(canvas_roster, quizzes=book) as box:
        config = canvas_config(box, tmp_path, "api", exams="count_overrides = true\n")
        canvas_run(config)
        rows = {r["source_id"]: r for r in json.loads(syncd(config, "exams", "stateu", "--json").stdout)}
        counts = expected_override_counts(book)
        synced = [k for k, r in rows.items() if r["state"] == "synced"]
        assert synced and {k: rows[k]["overrides"] for k in synced} == {k: counts[k] for k in synced}
        assert any(rows[k]["overrides"] for k in synced)
        assert "accommodations" in syncd(config, "exams", "stateu").stdout


def test_oneroster_1_2_exams_come_from_the_gradebook_service(tmp_path):
    roster = Roster.generate(seed=7, users=40, classes=8, enrollments=120)
    with Sandbox(roster, version="1.2") as box:
        box.oneroster.line_items = lineitems.generate(roster, per_class=3)
        config = write_config(box, tmp_path)
        first = run(config)
        exams, failed = expected(box, roster)
        assert exams and in_target(box) == exams
        assert first["counts"]["exams"]["failed"] == len(failed)
        assert run(config)["calls"] == 0
