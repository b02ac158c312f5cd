"""Shared fixtures: the sandbox servers on 127.0.0.1 and the real `syncd` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.sandbox import Roster, Sandbox

SYNCD = str(Path(sys.executable).with_name("syncd"))


@pytest.fixture
def roster() -> Roster:
    return Roster.generate(seed=11, users=150, classes=15, enrollments=600)


@pytest.fixture
def sandbox(roster: Roster):
    with Sandbox(roster) as box:
        yield box


@pytest.fixture
def config(sandbox: Sandbox, tmp_path: Path, state_backend: str, request) -> Path:
    path = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    if state_backend == "postgresql":
        url = request.getfixturevalue("pg_database")
        path.write_text(path.read_text(encoding="utf-8") + f'\n[state]\nurl = "{url}"\n', encoding="utf-8")
    return path


# Both state stores (SPEC §11): the tests of these modules that use `config` or `make_store` run on
# SQLite and on PostgreSQL; `--state-backend=postgresql` runs every such test on PostgreSQL only.
BOTH_BACKENDS = {"test_sync_end_to_end", "test_safety", "test_plan", "test_pages"}
# Their PostgreSQL runs that CI's time budget leaves to `-m slow` (test_pg_store.py keeps a quick
# form of the canonical-text check in CI).
SLOW_ON_POSTGRESQL = {"test_the_body_each_store_builds_is_its_canonical_json",
                      "test_the_plan_uses_the_minimum_number_of_calls_and_then_none",
                      "test_a_record_rejected_run_after_run_is_retried_on_the_escrow_schedule",
                      # test_pages.py: CI keeps the no-change and changed-page ones on PostgreSQL
                      "test_records_that_move_between_pages_give_what_a_parse_gives",
                      "test_an_id_read_first_on_a_changed_page_wins_over_an_unchanged_page",
                      "test_a_page_with_an_unreadable_record_is_parsed_every_run",
                      "test_an_incomplete_extract_infers_no_removal_and_hides_no_change",
                      "test_a_mapping_change_rebuilds_the_desired_state_and_a_new_day_reparses",
                      "test_a_delta_maps_again_only_what_changed_and_gets_what_a_rebuild_gets"}


def pytest_addoption(parser) -> None:
    parser.addoption("--state-backend", choices=("sqlite", "postgresql"), default=None,
                     help="run the tests that use the state store on this backend only")


def pytest_generate_tests(metafunc) -> None:
    if "state_backend" not in metafunc.fixturenames:
        return
    chosen = metafunc.config.getoption("--state-backend")
    if chosen:
        backends = [chosen]
    elif metafunc.module.__name__.rsplit(".", 1)[-1] in BOTH_BACKENDS:
        backends = ["sqlite", "postgresql"]
    else:
        return  # SQLite only, under the test's usual id (the state_backend fixture's default)
    marks = {"postgresql": [pytest.mark.postgresql]}
    if metafunc.function.__name__ in SLOW_ON_POSTGRESQL:
        marks["postgresql"].append(pytest.mark.slow)
    metafunc.parametrize("state_backend", [pytest.param(b, marks=marks.get(b, ()), id=b) for b in backends],
                         indirect=True)


@pytest.fixture
def state_backend(request) -> str:
    """"sqlite" or "postgresql": the state store of a test that uses `config` or `make_store`."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def make_store(state_backend: str, request):
    """``make_store(state_dir)``: an open, empty state store on the test's backend."""
    from syncd.store import Store

    url = request.getfixturevalue("pg_database") if state_backend == "postgresql" else ""

    def make(state_dir: Path) -> Store:
        store = Store.open(Path(state_dir), url)
        if url:  # one database per test: a new store (a hypothesis example) starts empty
            store.conn.execute("TRUNCATE " + ", ".join(STATE_TABLES_ALL))
        return store

    return make


STATE_TABLES_ALL = ("runs", "errors", "stage_courses", "stage_course_codes", "stage_users", "stage_enrollments",
                    "desired_courses", "desired_users", "desired_enrollments", "acked_courses", "acked_users",
                    "acked_enrollments", "plan_calls", "pending_removals", "held", "approvals", "escrow",
                    "source_pages", "desired_marks")


def syncd(config: Path | None, *args: str, timeout: float = 120, env: dict[str, str] | None = None,
          check_json: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the installed `syncd` command, as an admin or systemd would."""
    argv = [SYNCD, *(["--config", str(config)] if config else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    return result


def summary(result: subprocess.CompletedProcess[str]) -> dict:
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, f"expected one JSON summary, got stdout={result.stdout!r} stderr={result.stderr[-2000:]}"
    return json.loads(lines[0])


def log_events(result: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


# PostgreSQL (SPEC §11): one throwaway server per test session, started only by the tests that ask.
# Skipped only where no PostgreSQL binaries exist; .ci/run installs them, so CI always runs these.
@pytest.fixture(scope="session")
def pg_server():
    import pg

    reason = pg.missing_reason()
    if reason:
        pytest.skip(f"PostgreSQL tests need a local server: {reason}")
    with pg.running() as server:
        yield server


@pytest.fixture(scope="session")
def pg_url(pg_server) -> str:
    """The URL of a database of its own on the session's throwaway server."""
    return pg_server.create_database("syncd_session")


@pytest.fixture
def pg_database(pg_server, request) -> str:
    """A fresh, empty database for one test (advisory locks and tables do not leak between tests)."""
    import re

    name = "t_" + re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:50] + f"_{os.getpid()}_{id(request) % 10000}"
    return pg_server.create_database(name)


@pytest.fixture
def start_daemon(tmp_path):
    """Start `syncd run` daemons for a test; any still running at its end are killed."""
    from test_daemon import Daemon  # the `syncd run` wrapper the daemon tests share

    started: list[Daemon] = []

    def start(config: Path) -> Daemon:
        daemon = Daemon(config, tmp_path)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
