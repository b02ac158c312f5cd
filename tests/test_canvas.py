"""Canvas as a source: the real `syncd` command against the fake Canvas on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
from conftest import SYNCD, log_events, summary, syncd
from test_sync_end_to_end import contains, initial_calls, minimal_calls

from syncd.sandbox import CanvasFault, CanvasRoster, CanvasSandbox
from syncd.sandbox.canvas_roster import expected_mapping
from syncd.sources import SourceError
from syncd.sources.canvas import split_name

ROLES = {"student": "learner", "teacher": "instructor"}


@pytest.fixture
def roster() -> CanvasRoster:
    return CanvasRoster.generate(seed=5, users=120, courses=24, enrollments=600)


@pytest.fixture
def canvas(roster: CanvasRoster):
    with CanvasSandbox(roster) as box:
        yield box


def write(box: CanvasSandbox, tmp_path: Path, **tenant) -> Path:
    return box.write_config(tmp_path / "syncd.toml", tmp_path / "state", **tenant)


def test_crawl_makes_the_target_equal_the_expected_mapping_and_a_second_run_sends_nothing(canvas, roster, tmp_path):
    config = write(canvas, tmp_path, source_extra='mode = "api"\n')
    first = syncd(config, "sync", "stateu", "--json")
    assert first.returncode == 0, first.stderr[-2000:]
    expected = expected_mapping(roster, ROLES)
    assert canvas.provision.snapshot() == expected
    assert summary(first)["calls"] == initial_calls(expected)
    assert canvas.provision.duplicates() == 0

    second = syncd(config, "sync", "stateu", "--json")
    assert second.returncode == 0
    assert summary(second)["calls"] == 0


def test_report_mode_reaches_the_same_target_and_switching_modes_sends_nothing(canvas, roster, tmp_path):
    config = write(canvas, tmp_path, source_extra='mode = "report"\n')
    first = syncd(config, "sync", "stateu", "--json")
    assert first.returncode == 0, first.stderr[-2000:]
    assert canvas.provision.snapshot() == expected_mapping(roster, ROLES)
    requests_for_report = canvas.canvas.requests
    assert requests_for_report < 15  # a handful, not one per course

    config = write(canvas, tmp_path, source_extra='mode = "api"\n')
    again = syncd(config, "sync", "stateu", "--json")
    assert summary(again)["calls"] == 0


def test_a_one_percent_change_sends_the_minimal_calls_and_unmapped_changes_send_nothing(canvas, roster, tmp_path):
    config = write(canvas, tmp_path)
    assert syncd(config, "sync", "stateu").returncode == 0
    before = expected_mapping(roster, ROLES)
    roster.touch_unmapped(seed=3)
    untouched = syncd(config, "sync", "stateu", "--json")
    assert summary(untouched)["calls"] == 0

    roster.mutate(seed=4, fraction=0.02)
    after = expected_mapping(roster, ROLES)
    changed = syncd(config, "sync", "stateu", "--json")
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert summary(changed)["calls"] == minimal_calls(before, after) > 0
    assert contains(canvas.provision.snapshot(), after)  # removed records stay: the API cannot delete
    assert summary(changed)["counts"]["enrollments"]["removed"] > 0


def test_the_data_quirks_map_as_the_spec_says(canvas, roster, tmp_path):
    config = write(canvas, tmp_path, roles='{ student = "learner", teacher = "instructor", ta = "assistant" }')
    assert syncd(config, "sync", "stateu").returncode == 0
    target = canvas.provision
    users = list(target.users.values())
    # The Test Student is never provisioned, nor are observers (their role is not mapped).
    assert not any(u["firstName"] == "Test" and u["lastName"] == "Student" for u in users)
    observers = {e["user_id"] for e in roster.enrollments.values() if e["type"] == "ObserverEnrollment"}
    only_observers = observers - {e["user_id"] for e in roster.enrollments.values()
                                  if e["type"] != "ObserverEnrollment" and e["enrollment_state"] == "active"}
    assert only_observers and not any(u["ids"].get("lms") in {str(i) for i in only_observers} for u in users)
    # Users without SIS id or e-mail are still provisioned, by their Canvas id, without an e-mail.
    no_sis = [u for u in users if "external" not in u["ids"]]
    assert no_sis and all(u["ids"]["lms"].isdigit() for u in no_sis)
    assert any("email" not in u for u in users)
    # A one-word name serves as both names; a name without a comma splits at its last space.
    assert any(u["firstName"] == u["lastName"] == "Cher" for u in users)
    assert any(" de la" in u["firstName"] for u in users)
    # Unpublished courses are in scope; completed and deleted ones are not.
    titles = {c["title"] for c in target.courses.values()}
    by_state = {state: {c["name"] for c in roster.courses.values() if c["workflow_state"] == state}
                for state in ("unpublished", "completed", "deleted")}
    assert by_state["unpublished"] <= titles
    assert not (by_state["completed"] | by_state["deleted"]) & titles
    # A student in two sections of one course is one enrollment; TAs map with the ta role.
    assert target.duplicates() == 0
    assert any(e["role"] == "assistant" for e in target.enrollments.values())
    assert target.snapshot() == expected_mapping(roster, {"student": "learner", "teacher": "instructor",
                                                          "ta": "assistant"})


def test_paging_survives_a_silent_per_page_cap_and_bookmarks(roster, tmp_path):
    with CanvasSandbox(roster, max_per_page=7) as box:
        config = write(box, tmp_path, source_extra='mode = "api"\npage_size = 100\n')
        result = syncd(config, "sync", "stateu", "--json")
        assert result.returncode == 0, result.stderr[-2000:]
        assert box.provision.snapshot() == expected_mapping(roster, ROLES)


@pytest.mark.parametrize("status", [403, 429])
def test_throttling_is_survived_without_a_failed_run(roster, tmp_path, status):
    # A small bucket: more than three requests in flight fill it up front. Answers slow enough that
    # twelve workers overlap even on a loaded machine (at 20 ms they could run one after another).
    with CanvasSandbox(roster, hwm=150.0, latency_s=0.1, throttle_status=status) as box:
        config = write(box, tmp_path, source_extra='mode = "api"\nconcurrency = 12\n')
        result = syncd(config, "sync", "stateu", "--json")
        assert result.returncode == 0, result.stderr[-2000:]
        assert summary(result)["status"] == "completed"
        assert box.canvas.throttled > 0
        assert any(e["event"] == "canvas.throttled" for e in log_events(result))
        assert box.provision.snapshot() == expected_mapping(roster, ROLES)


def test_an_access_token_that_dies_mid_run_is_refreshed_once(roster, tmp_path):
    with CanvasSandbox(roster, expire_tokens_at_request=10) as box:
        config = write(box, tmp_path, source_extra='mode = "api"\n')
        result = syncd(config, "sync", "stateu", "--json")
        assert result.returncode == 0, result.stderr[-2000:]
        assert box.canvas.token_requests == 2  # the first token, and one refresh
        assert box.provision.snapshot() == expected_mapping(roster, ROLES)


def test_the_access_token_is_reused_across_runs_in_an_owner_only_file(canvas, tmp_path):
    config = write(canvas, tmp_path)
    assert syncd(config, "sync", "stateu").returncode == 0
    assert syncd(config, "sync", "stateu").returncode == 0
    assert canvas.canvas.token_requests == 1
    cached = tmp_path / "state" / "credentials" / "stateu.access.json"
    assert cached.stat().st_mode & 0o777 == 0o600
    assert canvas.refresh_token.encode() not in (tmp_path / "state" / "syncd.db").read_bytes()


def test_a_dead_refresh_token_fails_the_run_before_anything_changes(canvas, roster, tmp_path):
    config = write(canvas, tmp_path)
    assert syncd(config, "sync", "stateu").returncode == 0
    calls = canvas.provision.calls
    canvas.canvas.revoke_refresh_tokens()  # the admin removed the integration
    roster.mutate(seed=9, fraction=0.05)
    result = syncd(config, "sync", "stateu", "--json")
    assert result.returncode == 1
    outcome = summary(result)
    assert outcome["status"] == "failed"
    assert all(c["removed"] == 0 and c["created"] == 0 for c in outcome["counts"].values())
    assert canvas.provision.calls == calls
    assert "syncd auth stateu" in result.stderr
    assert canvas.refresh_token not in result.stderr + result.stdout
    status = syncd(config, "status", "stateu")
    assert "syncd auth stateu" in status.stdout


def test_a_link_to_another_host_is_not_followed(canvas, tmp_path):
    original = canvas.canvas._numeric_page

    def hostile(request, rows, render=None):
        response = original(request, rows, render)
        response.headers = {"Link": '<http://127.0.0.2:9/api/v1/steal?page=2>; rel="next"'}
        return response

    canvas.canvas._numeric_page = hostile
    config = write(canvas, tmp_path)
    result = syncd(config, "sync", "stateu", "--json")
    assert result.returncode == 1
    assert summary(result)["status"] == "failed"
    assert "another host" in result.stderr
    assert canvas.provision.calls == 0


def test_a_failing_course_makes_the_run_failed_and_removes_nothing(canvas, roster, tmp_path):
    config = write(canvas, tmp_path, source_extra='mode = "api"\n')
    assert syncd(config, "sync", "stateu").returncode == 0
    course = next(c for c in roster.courses.values() if c["workflow_state"] == "available")
    canvas.canvas.faults.append(CanvasFault(path=f"/courses/{course['id']}/enrollments", status=500))
    result = syncd(config, "sync", "stateu", "--json")
    assert result.returncode == 1
    outcome = summary(result)
    assert outcome["status"] == "failed"
    assert all(c["removed"] == 0 for c in outcome["counts"].values())


def test_a_scoped_key_without_include_parameters_is_pointed_out(roster, tmp_path):
    with CanvasSandbox(roster, enforce_scopes=True, allow_includes=False) as box:
        config = write(box, tmp_path)
        result = syncd(config, "sync", "stateu")
        assert result.returncode == 0, result.stderr[-2000:]
        assert any(e["event"] == "canvas.no_emails" for e in log_events(result))
        assert not any("email" in u for u in box.provision.users.values())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_auth(config: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([SYNCD, "--config", str(config), "auth", "stateu", "--timeout", "30"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if "/login/oauth2/auth?" in line:
            return process, line.strip()
    process.kill()
    raise AssertionError("syncd auth printed no authorize URL")


def test_syncd_auth_receives_the_redirect_and_stores_the_refresh_token(canvas, roster, tmp_path):
    port = _free_port()
    config = write(canvas, tmp_path, auth="none",
                   source_extra=f'redirect_uri = "http://127.0.0.1:{port}/oauth/callback"\n')
    before = syncd(config, "sync", "stateu", "--json")
    assert before.returncode == 1 and "syncd auth stateu" in before.stderr

    process, url = _start_auth(config)
    try:
        assert "state=" in url and "scope=url%3AGET" in url
        page = requests.get(url, timeout=10)  # the admin's browser: Canvas redirects to the listener
        assert "authorization received" in page.text
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, err
    stored = tmp_path / "state" / "credentials" / "stateu.refresh_token"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert stored.read_text().strip() not in out + err

    after = syncd(config, "sync", "stateu", "--json")
    assert after.returncode == 0, after.stderr[-2000:]
    assert canvas.provision.snapshot() == expected_mapping(roster, ROLES)


def test_syncd_auth_listens_before_it_prints_the_url(canvas, tmp_path):
    """A browser that follows the URL at once must find the redirect listener already open."""
    import socket

    from syncd.config import load
    from syncd.sources.canvas_auth import authorize

    port = _free_port()
    config = load(write(canvas, tmp_path, auth="none",
                        source_extra=f'redirect_uri = "http://127.0.0.1:{port}/oauth/callback"\n'))
    reachable: list[bool] = []

    def say(line: str) -> None:
        if "/login/oauth2/auth?" in line:
            with socket.socket() as probe:
                reachable.append(probe.connect_ex(("127.0.0.1", port)) == 0)

    with pytest.raises(SourceError, match="no authorization arrived"):
        authorize("stateu", config.tenants["stateu"].source, tmp_path / "state", say, time.sleep, 0.5)
    assert reachable == [True]


def _paste_redirect(canvas: CanvasSandbox, tmp_path: Path, tamper=lambda url: url) -> tuple[int, str]:
    """`syncd auth` on a headless server: the admin pastes the URL the browser was sent to."""
    config = write(canvas, tmp_path, auth="none",
                   source_extra='redirect_uri = "https://proctoring.example.edu/oauth/callback"\n')
    process, url = _start_auth(config)
    try:
        redirect = requests.get(url, timeout=10, allow_redirects=False).headers["Location"]
        _out, err = process.communicate(tamper(redirect) + "\n", timeout=20)
    finally:
        process.kill()
    return process.returncode, err


def test_syncd_auth_accepts_a_pasted_redirect_on_a_headless_server(canvas, tmp_path):
    code, err = _paste_redirect(canvas, tmp_path)
    assert code == 0, err
    assert (tmp_path / "state" / "credentials" / "stateu.refresh_token").exists()


def test_syncd_auth_refuses_a_redirect_with_another_state(canvas, tmp_path):
    code, err = _paste_redirect(canvas, tmp_path, tamper=lambda url: url.replace("state=", "state=x"))
    assert code == 1
    assert "state" in err
    assert not (tmp_path / "state" / "credentials" / "stateu.refresh_token").exists()


@pytest.mark.parametrize(("sortable", "name", "expected"), [
    ("Smith, Ann", "Ann Smith", ("Ann", "Smith")),
    ("de la Cruz, María José", "María José de la Cruz", ("María José", "de la Cruz")),
    ("Ann Smith", "Ann Marie Smith", ("Ann Marie", "Smith")),
    ("Cher", "Cher", ("Cher", "Cher")),
    (None, "Prince", ("Prince", "Prince")),
])
def test_names_split_as_the_spec_says(sortable, name, expected):
    assert split_name(sortable, name) == expected


def test_secrets_stay_out_of_every_output_at_debug_level(canvas, tmp_path):
    config = canvas.write_config(tmp_path / "syncd.toml", tmp_path / "state", log_level="debug")
    canvas.canvas.expire_tokens_at_request = 5
    result = syncd(config, "sync", "stateu", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    issued = [t for t in canvas.canvas._tokens]
    database = (tmp_path / "state" / "syncd.db").read_bytes()
    for secret in [canvas.refresh_token, canvas.canvas.client_secret, canvas.provision.token, *issued]:
        assert secret not in result.stdout + result.stderr
        assert secret.encode() not in database
    assert os.stat(tmp_path / "state" / "syncd.db").st_mode & 0o777 == 0o600
