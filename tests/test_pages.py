"""Page fingerprints (issue 15, syncd.store.pages): a full run that skips the pages whose bytes did
not change leaves the store a parse of every page leaves, parses what changed, keeps the first read
of an id, never infers a removal from an incomplete extract nor keeps a fingerprint that could hide
a change, and rebuilds the desired state when the mapping changes."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from syncd import config as configuration
from syncd import delta, engine
from syncd.sandbox import Roster, Sandbox
from syncd.sandbox.oneroster import Fault
from syncd.sandbox.roster import modified_now
from syncd.sources import oneroster
from syncd.store import Store, TenantStore

SAFE = "safety = { max_updates_percent = 100, max_removals_percent = 100 }"
STAGED = {
    "stage_courses": "tenant, source_id, title, code, external_id, lms_id, parent_id, active, status",
    "stage_course_codes": "tenant, source_id, code",
    "stage_users": "tenant, source_id, first_name, last_name, email, external_id, lms_id, active, status",
    "stage_enrollments": "tenant, source_id, course_id, user_id, role, active, status, end_date",
    "desired_courses": "tenant, source_id, body, hash",
    "desired_users": "tenant, source_id, body, hash",
    "desired_enrollments": "tenant, course_id, user_id, source_id, body, hash",
}


class Parsed:
    """The pages decoded that held records (the skipped ones are not decoded; the empty page that
    ends a collection always is, with nothing to map)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.pages: list[str] = []
        self._lock = threading.Lock()
        original = oneroster._envelope

        def counting(response: Any, collection: str) -> list[Any]:
            items = original(response, collection)
            if items:
                with self._lock:
                    self.pages.append(collection)
            return items

        monkeypatch.setattr(oneroster, "_envelope", counting)

    def take(self) -> list[str]:
        with self._lock:
            pages, self.pages = self.pages, []
        return pages


def _tenant(box: Sandbox, tmp: Path, **fields: Any) -> configuration.TenantConfig:
    config = box.write_config(tmp / "syncd.toml", tmp / "state", source_extra="page_size = 20", extra=SAFE)
    return dataclasses.replace(configuration.load(config).tenants["lincoln"], **fields)


def _delta_tenant(box: Sandbox, tmp: Path, make_store: Any) -> tuple[configuration.TenantConfig, Store]:
    """A tenant of the sandbox with delta runs on, and its empty store."""
    config = box.write_config(tmp / "syncd.toml", tmp / "state", extra=SAFE,
                              source_extra='page_size = 20\ndelta = "auto"')
    return configuration.load(config).tenants["lincoln"], make_store(tmp / "state")


def _snapshot(store: Store) -> dict[str, list[tuple]]:
    conn = store.tenant("lincoln").conn
    return {t: sorted(conn.execute(f"SELECT {cols} FROM {t}").fetchall(), key=repr) for t, cols in STAGED.items()}


def _errors(result: dict[str, Any], store: Store) -> set[tuple]:
    return set(store.tenant("lincoln").conn.execute(
        "SELECT entity, source_id, message FROM errors WHERE run_id = ?", (result["run_id"],)).fetchall())


def _parse_all(monkeypatch: pytest.MonkeyPatch, tenant: configuration.TenantConfig,
               store: Store) -> dict[str, Any]:
    """One run as before page fingerprints: the mirror reset, every page parsed."""
    with monkeypatch.context() as patch:
        patch.setattr(delta, "_pages_allowed", lambda state, source: False)
        return engine.run(tenant, store)


def _spy_builds(monkeypatch: pytest.MonkeyPatch, keep: Callable[[TenantStore, bool], Any]) -> list[Any]:
    """What ``keep`` takes of each ``build_desired`` (the store after it, and what it returned)."""
    kept: list[Any] = []
    build = TenantStore.build_desired

    def spy(self: TenantStore, *args: Any, **kwargs: Any) -> bool:
        result = build(self, *args, **kwargs)
        kept.append(keep(self, result))
        return result

    monkeypatch.setattr(TenantStore, "build_desired", spy)
    return kept


@pytest.fixture
def roster() -> Roster:
    return Roster.generate(seed=11, users=60, classes=6, enrollments=240)


def test_a_no_change_run_skips_every_page_and_leaves_what_a_parse_leaves(tmp_path, roster, monkeypatch,
                                                                         make_store):
    parsed = Parsed(monkeypatch)
    with Sandbox(roster) as box:
        tenant, store = _tenant(box, tmp_path), make_store(tmp_path / "state")
        try:
            first = engine.run(tenant, store)
            assert first["status"] == "completed" and first["calls"] > 0
            assert len(parsed.take()) > 10
            after_first = _snapshot(store)
            again = engine.run(tenant, store)
            assert again["status"] == "completed" and again["calls"] == 0, again
            assert parsed.take() == []  # nothing decoded, mapped or staged
            assert _snapshot(store) == after_first
            assert again["counts"] == {k: c | {"unchanged": first["counts"][k]["created"]} | {"created": 0}
                                       for k, c in first["counts"].items()}
            reparsed = _parse_all(monkeypatch, tenant, store)
            assert parsed.take() and reparsed["counts"] == again["counts"]
            assert _snapshot(store) == after_first
        finally:
            store.close()


def test_a_changed_page_is_parsed_and_the_others_are_not(tmp_path, roster, monkeypatch, make_store):
    parsed = Parsed(monkeypatch)
    with Sandbox(roster) as box:
        tenant, store = _tenant(box, tmp_path), make_store(tmp_path / "state")
        try:
            engine.run(tenant, store)
            parsed.take()
            user = sorted(roster.users)[25]
            roster.users[user]["givenName"] = "Renamed"
            result = engine.run(tenant, store)
            assert parsed.take() == ["users"]  # the one page that holds the user
            assert result["counts"]["users"]["updated"] == 1 and result["calls"] == 1, result
            kept = _snapshot(store)
            assert any(row[1] == user and row[2] == "Renamed" for row in kept["stage_users"])
            _parse_all(monkeypatch, tenant, store)
            assert _snapshot(store) == kept
        finally:
            store.close()


def test_records_that_move_between_pages_give_what_a_parse_gives(tmp_path, roster, monkeypatch, make_store):
    parsed = Parsed(monkeypatch)
    with Sandbox(roster) as box:
        tenant, store = _tenant(box, tmp_path), make_store(tmp_path / "state")
        try:
            engine.run(tenant, store)
            first_user = sorted(roster.users)[0]
            # A new user sorted first shifts every later user one place: each users page changes,
            # and each takes over a record the next page held last time.
            roster.users["usr-0000000"] = dict(roster.users[first_user], sourcedId="usr-0000000", givenName="New")
            in_scope = {row[3] for row in _snapshot(store)["desired_enrollments"]}
            dropped = sorted(roster.enrollments)[100:103]
            for gone in dropped:
                del roster.enrollments[gone]  # and enrollments shift back
            roster.revision += 1
            parsed.take()
            result = engine.run(tenant, store)
            assert result["status"] == "completed", result
            assert "classes" not in parsed.take()
            assert result["counts"]["enrollments"]["removed"] == len(in_scope & set(dropped)) > 0, result
            kept = _snapshot(store)
            errors = _errors(result, store)
            again = _parse_all(monkeypatch, tenant, store)
            assert _snapshot(store) == kept and _errors(again, store) == errors
        finally:
            store.close()


def _with_twin(box: Sandbox, twin: dict[str, Any], offset: int) -> None:
    """The users page at ``offset`` ends with ``twin`` (a record whose id a later page holds) in
    place of its own last record: the same length, so the pages after it do not move."""
    original = box.oneroster._page

    def page(request, collection, limit, offset_asked, original=original):
        response = original(request, collection, limit, offset_asked)
        if collection == "users" and offset_asked == offset:
            response.body["users"][-1] = twin
        return response

    box.oneroster._page = page


def test_an_id_read_first_on_a_changed_page_wins_over_an_unchanged_page(tmp_path, roster, monkeypatch,
                                                                        make_store):
    """The twin on page 0 takes over the row of the record on page 2, which is skipped: the
    record there is still reported as the duplicate a parse finds, this run and the next."""
    parsed = Parsed(monkeypatch)
    with Sandbox(roster) as box:
        tenant, store = _tenant(box, tmp_path), make_store(tmp_path / "state")
        try:
            engine.run(tenant, store)
            victim = sorted(roster.users)[45]  # on the third page of 20
            _with_twin(box, dict(roster.users[victim], givenName="Twin"), 0)
            parsed.take()
            result = engine.run(tenant, store)
            assert parsed.take() == ["users"]  # page 0 only
            duplicate = ("user", victim, "duplicate id: an earlier record with this id was read first and wins")
            assert duplicate in _errors(result, store), _errors(result, store)
            kept = _snapshot(store)
            assert any(row[1] == victim and row[2] == "Twin" for row in kept["stage_users"])
            again = engine.run(tenant, store)  # the page that lost its record is parsed again
            assert "users" in parsed.take() and duplicate in _errors(again, store)
            assert _snapshot(store) == kept
            reparsed = _parse_all(monkeypatch, tenant, store)
            assert _snapshot(store) == kept and _errors(reparsed, store) == _errors(again, store)
        finally:
            store.close()


def test_a_page_with_an_unreadable_record_is_parsed_every_run(tmp_path, roster, monkeypatch, make_store):
    parsed = Parsed(monkeypatch)
    roster.users[sorted(roster.users)[5]]["status"] = "bogus"
    with Sandbox(roster) as box:
        tenant, store = _tenant(box, tmp_path), make_store(tmp_path / "state")
        try:
            assert engine.run(tenant, store)["counts"]["users"]["failed"] == 1
            parsed.take()
            result = engine.run(tenant, store)
            assert parsed.take() == ["users"]  # the page with the bad record, so its error is reported again
            assert result["counts"]["users"]["failed"] == 1, result
        finally:
            store.close()


def test_an_incomplete_extract_infers_no_removal_and_hides_no_change(tmp_path, roster, monkeypatch, make_store):
    parsed = Parsed(monkeypatch)
    with Sandbox(roster) as box:
        tenant, store = _tenant(box, tmp_path), make_store(tmp_path / "state")
        try:
            engine.run(tenant, store)
            gone = sorted(row[1] for row in _snapshot(store)["desired_users"])[40]
            del roster.users[gone]
            roster.users[sorted(roster.users)[3]]["familyName"] = "Changed"
            roster.revision += 1
            box.oneroster.faults.append(Fault(500, collection="enrollments", offset=100))
            failed = engine.run(tenant, store)
            assert failed["status"] == "failed", failed
            assert all(c["removed"] == 0 for c in failed["counts"].values()), failed
            box.oneroster.faults.clear()
            parsed.take()
            result = engine.run(tenant, store)
            assert result["status"] == "completed_with_errors", result  # enrollments of the user gone
            assert result["counts"]["users"]["removed"] == 1, result
            # The enrollments pages the failed run never read are parsed; those it read are not.
            assert 0 < parsed.take().count("enrollments") < 240 // 20
            kept = _snapshot(store)
            assert gone not in {row[1] for row in kept["stage_users"]}
            assert any(row[3] == "Changed" for row in kept["stage_users"])
            reparsed = _parse_all(monkeypatch, tenant, store)
            assert _snapshot(store) == kept and _errors(reparsed, store) == _errors(result, store)
        finally:
            store.close()


def test_a_mapping_change_rebuilds_the_desired_state_and_a_new_day_reparses(tmp_path, roster, monkeypatch,
                                                                           make_store):
    parsed = Parsed(monkeypatch)
    rebuilt = _spy_builds(monkeypatch, lambda _, result: result)
    with Sandbox(roster) as box:
        tenant, store = _tenant(box, tmp_path), make_store(tmp_path / "state")
        try:
            engine.run(tenant, store)
            assert engine.run(tenant, store)["calls"] == 0
            assert rebuilt == [True, False]
            zoned = dataclasses.replace(tenant, time_zone="America/Chicago")
            result = engine.run(zoned, store)
            assert rebuilt[-1] is True
            assert result["counts"]["users"]["updated"] == len(_snapshot(store)["desired_users"]) > 0, result
            parsed.take()
            tomorrow = datetime.now(UTC).date() + timedelta(days=1)
            source = oneroster.OneRosterSource(zoned.source, tomorrow)
            assert engine.run(zoned, store, source=source)["status"] == "completed"
            assert len(parsed.take()) > 10  # the date decides what an endDate means: every page again
        finally:
            store.close()


def test_a_purged_mirror_is_noticed_and_every_page_parsed(tmp_path, roster, monkeypatch):
    parsed = Parsed(monkeypatch)
    with Sandbox(roster) as box:
        tenant, store = _tenant(box, tmp_path), Store.open(tmp_path / "state")
        try:
            engine.run(tenant, store)
            kept = _snapshot(store)
            with store.conn:
                store.conn.execute("DELETE FROM stage_users WHERE tenant = 'lincoln'")
            parsed.take()
            result = engine.run(tenant, store)
            assert result["calls"] == 0 and all(c["removed"] == 0 for c in result["counts"].values()), result
            assert len(parsed.take()) > 10
            assert _snapshot(store) == kept
        finally:
            store.close()


def test_a_delta_maps_again_only_what_changed_and_gets_what_a_rebuild_gets(tmp_path, roster, monkeypatch,
                                                                          make_store):
    rebuilt = _spy_builds(monkeypatch, lambda _, result: result)
    with Sandbox(roster) as box:
        tenant, store = _delta_tenant(box, tmp_path, make_store)
        try:
            engine.run(tenant, store)
            assert engine.run(tenant, store)["calls"] == 0  # a delta that reads nothing new
            assert rebuilt == [True, False]
            roster.mutate(seed=9, fraction=0.05)
            klass = sorted(row[1] for row in _snapshot(store)["desired_courses"])[2]
            roster.classes[klass] |= {"status": "tobedeleted", "dateLastModified": modified_now()}
            result = engine.run(tenant, store)
            assert box.oneroster.filtered_requests > 0 and result["calls"] > 0, result
            assert result["counts"]["courses"]["removed"] == 1, result
            kept = _snapshot(store)
            reparsed = _parse_all(monkeypatch, tenant, store)
            assert reparsed["calls"] == 0 and _snapshot(store) == kept
        finally:
            store.close()


def test_the_daemon_s_wrapped_source_gets_the_fingerprints_and_the_delta_filter(tmp_path, roster, monkeypatch):
    """The daemon hands the engine a MeteredSource, which forwards reads to the source it opens:
    what the engine sets on the source goes through methods, so it reaches the real one."""
    from syncd.metrics import MeteredSource

    parsed = Parsed(monkeypatch)
    with Sandbox(roster) as box:
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state", extra=SAFE,
                                  source_extra='page_size = 20\ndelta = "auto"')
        tenant, store = configuration.load(config).tenants["lincoln"], Store.open(tmp_path / "state")

        def wrapped() -> MeteredSource:
            return MeteredSource(lambda: oneroster.OneRosterSource(tenant.source, datetime.now(UTC).date()))

        try:
            assert engine.run(tenant, store, source=wrapped())["calls"] > 0
            assert len(parsed.take()) > 10
            assert engine.run(tenant, store, source=wrapped())["calls"] == 0  # a delta
            assert box.oneroster.filtered_requests > 0
            parsed.take()
            assert engine.run(tenant, store, engine.Options(full=True), source=wrapped())["calls"] == 0
            assert parsed.take() == []  # every page skipped
        finally:
            store.close()


def test_a_class_that_goes_takes_its_only_students_with_it_in_a_delta(tmp_path, roster, make_store, monkeypatch):
    """A delta maps again the users of a changed class, even when other users changed too."""
    klass = sorted(roster.classes)[2]
    lonely = next(e["user"]["sourcedId"] for e in roster.enrollments.values()
                  if e["class"]["sourcedId"] == klass and e["role"] == "student")
    for key in [k for k, e in roster.enrollments.items()
                if e["user"]["sourcedId"] == lonely and e["class"]["sourcedId"] != klass]:
        del roster.enrollments[key]
    with Sandbox(roster) as box:
        tenant, store = _delta_tenant(box, tmp_path, make_store)
        try:
            engine.run(tenant, store)
            assert engine.run(tenant, store)["calls"] == 0
            assert lonely in {row[1] for row in _snapshot(store)["desired_users"]}
            other = next(u for u in sorted(roster.users) if u != lonely)
            roster.users[other] |= {"givenName": "Renamed", "dateLastModified": modified_now()}
            roster.classes[klass] |= {"status": "tobedeleted", "dateLastModified": modified_now()}
            result = engine.run(tenant, store)
            assert result["counts"]["users"]["removed"] >= 1 and result["counts"]["users"]["updated"] == 1, result
            kept = _snapshot(store)
            assert lonely not in {row[1] for row in kept["desired_users"]}
            reparsed = _parse_all(monkeypatch, tenant, store)
            assert reparsed["calls"] == 0 and _snapshot(store) == kept
        finally:
            store.close()


def test_a_delta_maps_again_only_the_rows_a_change_feeds(tmp_path, roster, make_store, monkeypatch):
    """A renamed user maps again that user alone, a retitled class its course alone (their
    enrollments depend only on their being active), and a dropped enrollment its pair and its user;
    a class that goes maps again its enrollments and their users. The result is a rebuild's."""
    seen = _spy_builds(monkeypatch, lambda store, _: store.remapped)
    renamed, retitled, gone = sorted(roster.users)[3], sorted(roster.classes)[1], sorted(roster.classes)[4]
    dropped = next(k for k, e in sorted(roster.enrollments.items())
                   if e["class"]["sourcedId"] not in (retitled, gone) and e["user"]["sourcedId"] != renamed)
    pair = (roster.enrollments[dropped]["class"]["sourcedId"], roster.enrollments[dropped]["user"]["sourcedId"])
    with Sandbox(roster) as box:
        tenant, store = _delta_tenant(box, tmp_path, make_store)
        try:
            engine.run(tenant, store)
            assert engine.run(tenant, store)["calls"] == 0
            now = modified_now()
            roster.users[renamed] |= {"givenName": "Renamed", "dateLastModified": now}
            roster.classes[retitled] |= {"title": "Retitled", "dateLastModified": now}
            roster.enrollments[dropped] |= {"status": "tobedeleted", "dateLastModified": now}
            result = engine.run(tenant, store)
            assert result["counts"]["users"]["updated"] == 1 and result["counts"]["courses"]["updated"] == 1, result
            assert result["counts"]["enrollments"]["removed"] == 1, result
            remapped = seen[-1]
            assert (remapped.courses, remapped.classes, remapped.users) == ({retitled}, set(), set())
            assert remapped.pairs == {pair} and remapped.people == {renamed, pair[1]}

            roster.classes[gone] |= {"status": "tobedeleted", "dateLastModified": modified_now()}
            engine.run(tenant, store)
            students = {e["user"]["sourcedId"] for e in roster.enrollments.values()
                        if e["class"]["sourcedId"] == gone and e["status"] == "active"}
            assert seen[-1].classes == {gone} and students <= seen[-1].people

            course = sorted(roster.courses)[0]  # a course code reaches the classes under it, alone
            roster.courses[course] |= {"courseCode": "RECODED-1", "dateLastModified": modified_now()}
            assert engine.run(tenant, store)["status"] == "completed"
            under = {c for c, v in roster.classes.items() if v["course"]["sourcedId"] == course}
            assert under and seen[-1].courses == under and not (seen[-1].classes or seen[-1].pairs)
            kept = _snapshot(store)
            reparsed = _parse_all(monkeypatch, tenant, store)
            assert reparsed["calls"] == 0 and _snapshot(store) == kept
        finally:
            store.close()


def test_a_change_too_large_to_follow_key_by_key_maps_everything_again(tmp_path, roster, make_store, monkeypatch):
    """Past ``DIRTY_LIMIT`` noted keys (memory must not grow with the roster) the desired state is
    mapped again whole, and the result is still a rebuild's."""
    from syncd.store import staging

    whole = _spy_builds(monkeypatch, lambda store, _: store.mapped_whole)
    with Sandbox(roster) as box:
        tenant, store = _delta_tenant(box, tmp_path, make_store)
        try:
            engine.run(tenant, store)
            engine.run(tenant, store)
            roster.mutate(seed=3, fraction=0.05)
            monkeypatch.setattr(staging, "DIRTY_LIMIT", 8)
            result = engine.run(tenant, store)
            assert box.oneroster.filtered_requests > 0 and result["calls"] > 0, result
            assert whole == [True, False, True]
            kept = _snapshot(store)
            reparsed = _parse_all(monkeypatch, tenant, store)
            assert reparsed["calls"] == 0 and _snapshot(store) == kept
        finally:
            store.close()
