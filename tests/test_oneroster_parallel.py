"""Parallel, pipelined OneRoster extraction: the same result as the sequential crawl, on unkind servers.

Every test here runs over real HTTP against the fake OneRoster server; the end-to-end ones run the
real `syncd sync` twice (concurrency 1 and 4) and compare the SQLite stores they leave.
"""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import state as state_store
from conftest import summary, syncd

from syncd import config as configuration
from syncd.model import RecordError, User
from syncd.sandbox import Fault, Roster, Sandbox, expected_mapping
from syncd.sources.oneroster import OneRosterSource, SourceError
from syncd.sources.oneroster_config import OneRosterConfig

TODAY = date.today()  # noqa: DTZ011
ROLES = {"student": "learner", "teacher": "instructor"}


def source_for(box: Sandbox, *, page_size: int = 50, concurrency: int = 4, auth: str = "") -> OneRosterSource:
    app = box.oneroster
    oauth2 = (auth or app.auth) == "oauth2"
    config = OneRosterConfig(type="oneroster", base_url=box.source_url, version=app.version, auth=auth,
                          client_id=app.client_id, client_secret=app.client_secret,
                          token_url=box.token_url if oauth2 else "", page_size=page_size, timeout_s=5,
                          concurrency=concurrency)
    return OneRosterSource(config, TODAY)


def pages_by_kind(source: OneRosterSource) -> dict[str, list[Any]]:
    """Every record in the order the source handed it over, per record type (collections are
    fetched side by side, so only the order within one collection is the sequential one)."""
    out: dict[str, list[Any]] = {}
    for page in source.extract():
        for record in page:
            kind = type(record).__name__
            out.setdefault(kind if not isinstance(record, RecordError) else f"{kind}:{record.entity}",
                           []).append(record)
    return out


def roster_with_bad_records() -> Roster:
    roster = Roster.generate(seed=5, users=230, classes=23, enrollments=770)
    roster.users["usr-000007"]["givenName"] = None
    roster.users["usr-000100"]["status"] = "suspended"
    next(iter(roster.enrollments.values()))["endDate"] = "soon"
    return roster


UNKIND = {
    "clamped limit, no counts, no links": dict(max_limit=30, total_count=False, link=False),
    "clamped limit with counts": dict(max_limit=40),
    "counts but no links": dict(link=False),
    "GG4L: clamp at 500-like, malformed Link": dict(max_limit=35, link_style="gg4l"),
}


@pytest.mark.parametrize("quirks", UNKIND.values(), ids=UNKIND.keys())
def test_parallel_extract_hands_over_exactly_what_the_sequential_one_does(quirks):
    roster = roster_with_bad_records()
    results = {}
    for concurrency in (1, 4, 8):
        with Sandbox(roster, **quirks) as box:
            # Transient failures on pages in the middle of collections, retried.
            box.oneroster.faults += [Fault(503, times=2, collection="users", offset=60),
                                     Fault(429, times=1, retry_after="0", collection="enrollments")]
            source = source_for(box, page_size=60, concurrency=concurrency)
            results[concurrency] = pages_by_kind(source)
            assert source.complete, concurrency
    assert results[4] == results[1] and results[8] == results[1]
    assert sorted(r.source_id for r in results[1]["User"]) == sorted(set(roster.users) - {"usr-000007", "usr-000100"})
    assert len(results[1]["Enrollment"]) == len(roster.enrollments) - 1
    assert len(results[1]["RecordError:user"]) == 2 and len(results[1]["RecordError:enrollment"]) == 1


def test_with_counts_parallel_paging_asks_no_more_than_sequential_paging():
    roster = Roster.generate(seed=2, users=120, classes=10, enrollments=400)
    asked = {}
    for concurrency in (1, 4, 8):
        with Sandbox(roster) as box:
            pages_by_kind(source_for(box, page_size=100, concurrency=concurrency))
            asked[concurrency] = box.oneroster.requests
    # courses 3 + confirm, classes 10 + confirm, users 100 + 20, enrollments 4 x 100 + confirm.
    assert asked == {1: 11, 4: 11, 8: 11}


def test_without_counts_pages_asked_ahead_of_the_end_are_few():
    roster = Roster.generate(seed=2, users=120, classes=10, enrollments=400)
    with Sandbox(roster, total_count=False, link=False) as box:
        pages_by_kind(source_for(box, page_size=100, concurrency=4))
        asked = box.oneroster.requests
    # The 11 pages a sequential crawl asks for, and at most 2 x 4 asked ahead of the end of
    # each of the two collections whose first page was full (users, enrollments).
    assert 11 <= asked <= 11 + 2 * 2 * 4


def test_requests_in_flight_never_exceed_the_concurrency_and_do_overlap():
    roster = Roster.generate(seed=3, users=400, classes=20, enrollments=1200)
    with Sandbox(roster, latency_s=0.03) as box:
        started = time.monotonic()
        parallel = pages_by_kind(source_for(box, page_size=100, concurrency=4))
        parallel_s = time.monotonic() - started
        peak = box.oneroster.peak_in_flight
    with Sandbox(roster, latency_s=0.03) as box:
        started = time.monotonic()
        sequential = pages_by_kind(source_for(box, page_size=100, concurrency=1))
        sequential_s = time.monotonic() - started
        assert box.oneroster.peak_in_flight == 1
    assert parallel == sequential
    assert peak == 4
    # 23 pages at 30 ms: about 0.7 s one by one, a quarter of it four at a time.
    assert parallel_s < 0.6 * sequential_s, (parallel_s, sequential_s)


@pytest.mark.slow  # timing-dependent: on a loaded machine the look-ahead cap can be full at that moment (CI saw 0)
def test_decoding_a_page_holds_no_request_slot():
    """While a worker decodes and maps a page, ``concurrency`` requests are still in flight: the
    next pages wait for a slot on workers of their own, not for the decoding to end."""
    roster = Roster.generate(seed=3, users=400, classes=20, enrollments=2000)
    with Sandbox(roster, latency_s=0.05) as box:
        source = source_for(box, page_size=50, concurrency=4)
        user, mapped, seen = source._user, [], []

        def slow_user(item: dict[str, Any]) -> Any:
            mapped.append(item)
            if len(mapped) == 120:  # in the third page of users, with 40 pages of enrollments to go
                deadline = time.monotonic() + 2
                while box.oneroster.in_flight < 4 and time.monotonic() < deadline:
                    time.sleep(0.005)
                seen.append(box.oneroster.in_flight)
            return user(item)

        source._user = slow_user  # type: ignore[method-assign]
        pages = pages_by_kind(source)
        assert len(pages["User"]) == len(roster.users) and source.complete
        assert box.oneroster.peak_in_flight == 4
    assert seen == [4]


def test_a_slow_consumer_holds_the_crawl_back():
    """Memory is bounded: fetched pages wait in a short queue, never the whole roster."""
    roster = Roster.generate(seed=3, users=400, classes=20, enrollments=2000)
    with Sandbox(roster) as box:
        source = source_for(box, page_size=50, concurrency=4)
        handed = 0
        most_ahead = 0
        for _ in source.extract():
            handed += 1
            time.sleep(0.01)  # let the pool run as far ahead as it may
            most_ahead = max(most_ahead, box.oneroster.requests - handed)
        assert handed == 1 + 1 + 8 + 40  # courses, classes, users, enrollments
    # At most 4 in flight and 4 fetched and waiting, besides the page being staged; and the
    # 4 empty pages that end the collections are asked for but never handed over.
    assert most_ahead <= 2 * 4 + 1 + 4


def test_an_extract_closed_early_starts_no_more_requests():
    roster = Roster.generate(seed=3, users=400, classes=20, enrollments=3000)
    with Sandbox(roster, latency_s=0.01) as box:
        extract = source_for(box, page_size=50, concurrency=4).extract()
        next(extract)
        extract.close()
        time.sleep(0.2)
        after_close = box.oneroster.requests
        time.sleep(0.2)
        assert box.oneroster.requests == after_close
        assert after_close < 20


def test_an_error_past_the_end_of_a_collection_does_not_matter():
    """Pages fetched ahead of an end nobody announced may fail (404 past the end): they are
    never needed, so they never stop the run."""
    roster = Roster.generate(seed=2, users=120, classes=10, enrollments=400)
    with Sandbox(roster, total_count=False, link=False) as box:
        box.oneroster.faults += [Fault(404, collection="users", offset=o) for o in range(150, 1000, 50)]
        box.oneroster.faults += [Fault(404, collection="enrollments", offset=o) for o in range(450, 2000, 50)]
        source = source_for(box, page_size=50, concurrency=8)
        records = pages_by_kind(source)
    assert source.complete
    assert len(records["User"]) == 120 and len(records["Enrollment"]) == 400


def test_an_error_on_a_needed_page_stops_the_extract_after_the_pages_before_it():
    roster = Roster.generate(seed=2, users=300, classes=10, enrollments=400)
    with Sandbox(roster) as box:
        box.oneroster.faults.append(Fault(404, collection="users", offset=150))
        source = source_for(box, page_size=50, concurrency=4)
        users: list[str] = []
        with pytest.raises(Exception, match="HTTP 404"):
            for page in source.extract():
                users += [r.source_id for r in page if isinstance(r, User)]
    assert not source.complete
    assert users == sorted(roster.users)[:150]


def test_a_server_that_ignores_offset_is_a_loop_in_parallel_too():
    roster = Roster.generate(seed=2, users=120, classes=10, enrollments=400)
    with Sandbox(roster, ignore_offset=True) as box:
        source = source_for(box, page_size=20, concurrency=4)
        with pytest.raises(SourceError, match="pagination loop"):
            pages_by_kind(source)
    assert not source.complete


def test_a_count_that_lies_low_is_read_past_and_one_that_lies_high_makes_the_extract_incomplete():
    roster = Roster.generate(seed=2, users=260, classes=6, enrollments=200)
    for lie, complete in ((-150, True), (+70, False)):
        with Sandbox(roster) as box:
            original = box.oneroster._page

            def lying(request, collection, limit, offset, original=original, lie=lie):
                response = original(request, collection, limit, offset)
                if collection == "users":
                    response.headers["X-Total-Count"] = str(len(roster.users) + lie)
                return response

            box.oneroster._page = lying
            source = source_for(box, page_size=40, concurrency=4)
            records = pages_by_kind(source)
        assert [r.source_id for r in records["User"]] == sorted(roster.users)
        assert source.complete is complete
        assert source.short == ([] if complete else ["users"])


def test_a_page_that_changes_size_midway_restarts_the_grid_without_a_gap_or_duplicate():
    """A server that clamps to a smaller page after a while (load shedding) still yields every
    record exactly once."""
    roster = Roster.generate(seed=2, users=500, classes=6, enrollments=50)
    with Sandbox(roster) as box:
        original = box.oneroster._page

        def shrinking(request, collection, limit, offset):
            if collection == "users" and offset >= 200:
                limit = min(limit, 30)
            return original(request, collection, limit, offset)

        box.oneroster._page = shrinking
        source = source_for(box, page_size=100, concurrency=4)
        records = pages_by_kind(source)
    assert [r.source_id for r in records["User"]] == sorted(roster.users)
    assert source.complete


# --- GG4L Data API: OneRoster 1.1 behind OAuth 2 ------------------------------------------------


def test_gg4l_style_server_oauth2_on_11_clamped_limit_malformed_link_no_count():
    roster = roster_with_bad_records()
    with Sandbox(roster, version="1.1", auth="oauth2", max_limit=500, link_style="gg4l",
                 total_count=False) as box:
        source = source_for(box, page_size=1000, concurrency=4, auth="oauth2")
        records = pages_by_kind(source)
        assert box.oneroster.token_requests == 1
    assert source.complete
    bad = next(iter(roster.enrollments))  # its endDate is "soon"
    assert [r.source_id for r in records["Enrollment"]] == sorted(set(roster.enrollments) - {bad})


def test_oauth1_against_an_oauth2_server_is_refused():
    roster = Roster.generate(seed=2, users=20, classes=2, enrollments=40)
    with Sandbox(roster, version="1.1", auth="oauth2") as box:
        source = source_for(box, auth="oauth1")
        with pytest.raises(Exception, match="401"):
            pages_by_kind(source)


def test_the_gg4l_link_header_is_what_the_documentation_shows():
    roster = Roster.generate(seed=2, users=120, classes=2, enrollments=40)
    with Sandbox(roster, link_style="gg4l") as box:
        source = source_for(box, page_size=50, concurrency=1)
        response = source._get("users", {"limit": 50, "offset": 0})
    link = response.headers["Link"].encode("latin-1").decode()
    assert link.endswith("/users?limit=50&offset=51; rel=\u201cnext\u201d") and "<" not in link
    link = box.oneroster._link("http://x/users", 100, 0, 100).encode("latin-1").decode()
    assert link == ("http://x/users?limit=100&offset=0; rel=\u201cprev\u201d, "
                    "http://x/users?limit=100&offset=101; rel=\u201cnext\u201d")


def test_a_token_revoked_mid_run_is_refreshed_once_for_all_requests_in_flight(tmp_path):
    roster = Roster.generate(seed=11, users=150, classes=15, enrollments=600)
    with Sandbox(roster, version="1.2", expire_tokens_at_request=4, latency_s=0.02) as box:
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state",
                                  source_extra="page_size = 50\nconcurrency = 4")
        result = syncd(config, "sync", "lincoln", "--json")
        assert result.returncode == 0, result.stderr[-3000:]
        assert box.oneroster.token_requests == 2  # the first token, and one refresh for all
        assert 1 <= box.oneroster.rejected_auth <= 4
        assert box.oneroster.peak_in_flight > 1
        assert box.provision.snapshot() == expected_mapping(roster, ROLES)


# --- config: source.auth, source.concurrency ----------------------------------------------------


CONFIG = """
[daemon]
state_dir = "{state}"
[tenants.lincoln]
schedule = "*/30 * * * *"
[tenants.lincoln.source]
type = "oneroster"
base_url = "https://sis.example.org/ims/oneroster/v1p1/"
client_id = "id"
client_secret = "a-secret"
{extra}
[tenants.lincoln.target]
base_url = "https://api.smarterproctoring.com"
install_sid = "AI0123456789abcdef0123456789abcdef"
token = "a-token"
"""


def load(tmp_path: Path, extra: str) -> Any:
    path = tmp_path / "syncd.toml"
    path.write_text(CONFIG.format(state=tmp_path / "state", extra=extra), encoding="utf-8")
    path.chmod(0o600)
    return configuration.load(path).tenants["lincoln"].source


def test_auth_defaults_by_version_and_can_be_chosen(tmp_path):
    assert (load(tmp_path, "").auth, load(tmp_path, "").concurrency) == ("oauth1", 4)
    v12 = load(tmp_path, 'version = "1.2"\ntoken_url = "https://sis.example.org/token"')
    assert v12.auth == "oauth2" and v12.scope.endswith("v1p2/scope/roster-core.readonly")
    gg4l = load(tmp_path, 'auth = "oauth2"\ntoken_url = "https://sis.example.org/token"\nscope = ""\n'
                          "page_size = 500\nconcurrency = 8")
    assert (gg4l.version, gg4l.auth, gg4l.scope, gg4l.page_size, gg4l.concurrency) == ("1.1", "oauth2", "", 500, 8)


@pytest.mark.parametrize("extra, error", [
    ('auth = "oauth2"', "source.token_url: required key is missing"),
    ('auth = "basic"', "source.auth: must be one of 'oauth1', 'oauth2', not 'basic'"),
    ('token_url = "https://sis.example.org/token"', "source.token_url: only used with OAuth 2"),
    ('version = "1.2"\nauth = "oauth1"\ntoken_url = "https://sis.example.org/token"',
     "source.token_url: only used with OAuth 2"),
    ("concurrency = 0", "source.concurrency: must be between 1 and 32"),
])
def test_bad_auth_and_concurrency_are_clear_errors(tmp_path, extra, error):
    with pytest.raises(configuration.ConfigError) as caught:
        load(tmp_path, extra)
    assert any(error in e for e in caught.value.errors), caught.value.errors


# --- the real command: the same store at concurrency 1 and 4 -------------------------------------


def store_rows(state: Path) -> dict[str, list[tuple]]:
    """What a run leaves in the store, without times and run ids."""
    tables = {"stage_courses": "*", "stage_course_codes": "*", "stage_users": "*", "stage_enrollments": "*",
              "acked_courses": "tenant, source_id, hash", "acked_users": "tenant, source_id, hash",
              "acked_enrollments": "tenant, course_id, user_id, hash",
              "errors": "entity, source_id, message"}
    return {t: sorted(map(tuple, state_store.execute(state, f"SELECT {cols} FROM {t}")), key=repr)
            for t, cols in tables.items()}


def test_syncd_sync_leaves_the_same_store_at_concurrency_1_and_4(tmp_path):
    roster = roster_with_bad_records()
    # A duplicate id on two pages: the first one read must win at any concurrency.
    twin = dict(roster.users["usr-000200"], sourcedId="usr-000003", givenName="Twin")
    stores = {}
    for concurrency in (1, 4):
        with Sandbox(roster, max_limit=45, total_count=False, link=False, latency_s=0.005) as box:
            original = box.oneroster._page

            def with_twin(request, collection, limit, offset, original=original):
                response = original(request, collection, limit, offset)
                if collection == "users" and offset >= 180 and response.body["users"]:
                    response.body["users"].append(twin)  # one page one longer than the clamp
                return response

            box.oneroster._page = with_twin
            box.oneroster.faults.append(Fault(502, times=3, collection="enrollments", offset=90))
            work = tmp_path / str(concurrency)
            work.mkdir()
            config = box.write_config(work / "syncd.toml", work / "state",
                                      source_extra=f"page_size = 100\nconcurrency = {concurrency}")
            result = syncd(config, "sync", "lincoln", "--json")
            assert result.returncode in (0, 1), result.stderr[-2000:]
            assert summary(result)["calls"] > 0
            stores[concurrency] = store_rows(work / "state")
    assert stores[4] == stores[1]
    assert any("duplicate id" in e[2] for e in stores[1]["errors"])



@pytest.mark.parametrize(("version", "auth", "first_round"), [("1.1", "oauth1", 1), ("1.2", "oauth2", 4)])
def test_the_first_request_goes_alone_until_the_credentials_are_proven(version, auth, first_round):
    """Refused credentials are refused once, not once per collection: the first page request goes
    alone. Under OAuth 2 the token the engine's check obtained has proven them, and the first
    round is ``concurrency`` requests (one page's latency less per run)."""
    roster = Roster.generate(seed=4, users=200, classes=8, enrollments=400)
    with Sandbox(roster, version=version, auth=auth, latency_s=0.2) as box:
        source = source_for(box, page_size=50, concurrency=4, auth=auth)
        source.check()
        app, in_flight = box.oneroster, []
        original = app._page

        def first_answer(request: Any, collection: str, limit: int, offset: int) -> Any:
            if not in_flight:  # the first page to be answered, at the end of its latency
                in_flight.append(app.in_flight)
            return original(request, collection, limit, offset)

        app._page = first_answer  # type: ignore[method-assign]
        records = pages_by_kind(source)
    assert in_flight == [first_round]
    assert len(records["User"]) == len(roster.users) and source.complete
