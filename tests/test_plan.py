"""Diff and plan on a real SQLite store: the fewest calls, then nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import summary, syncd
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_sync_end_to_end import minimal_calls

from syncd import exam_plan, pg_schema, plan
from syncd.exams import Exam
from syncd.exams_config import ExamsConfig
from syncd.model import Course, Enrollment, User, body_hash, canonical_json
from syncd.store import Store, TenantStore

ROLES = {"student": "learner", "teacher": "instructor"}
COURSES = [f"c{i}" for i in range(5)]
USERS = [f"u{i}" for i in range(6)]

rosters = st.fixed_dictionaries({
    "courses": st.dictionaries(st.sampled_from(COURSES), st.sampled_from(["Art", "Bio", "Chem"]), min_size=1),
    "users": st.dictionaries(st.sampled_from(USERS), st.sampled_from(["Ann", "Bo", "Cy"]), min_size=1),
    "enrollments": st.dictionaries(st.tuples(st.sampled_from(COURSES), st.sampled_from(USERS)),
                                   st.sampled_from(["student", "teacher", "observer"])),
})


def records(roster: dict) -> list:
    out: list = [Course(c, title, True, external_id=c) for c, title in roster["courses"].items()]
    out += [User(u, name, "Smith", True, external_id=u) for u, name in roster["users"].items()]
    out += [Enrollment(f"{c}-{u}", c, u, role, True) for (c, u), role in roster["enrollments"].items()]
    return out


def mapping(roster: dict) -> dict:
    """What SPEC §4 puts in scope, for the independent minimum."""
    enrollments = {(c, u): {"role": ROLES[r]} for (c, u), r in roster["enrollments"].items()
                   if r in ROLES and c in roster["courses"] and u in roster["users"]}
    users = {u: roster["users"][u] for _, u in enrollments}
    return {"courses": dict(roster["courses"]), "users": users, "enrollments": enrollments}


def plan_for(store: TenantStore, roster: dict, pages: int = 1) -> int:
    store.reset_stage()
    batch = records(roster)
    for i in range(pages):  # staged in several pages, in another order
        store.stage(batch[i::pages][::-1])
    store.build_desired(ROLES, None)
    store.classify(force=False)
    return plan.build(store)


def acknowledge_everything(store: TenantStore) -> None:
    for call in store.calls():
        sids = {"course": "CU" + call.course_id}
        if call.user_id:
            sids |= {"user": "US" + call.user_id, "enrollment": f"EN{call.course_id}{call.user_id}"}
        store.acknowledge([(call, sids)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=rosters, after=rosters, pages=st.integers(1, 3))
def test_the_plan_uses_the_minimum_number_of_calls_and_then_none(tmp_path_factory, make_store, before, after, pages):
    state_file = make_store(Path(tmp_path_factory.mktemp("state")))
    store = state_file.tenant("t")
    try:
        plan_for(store, before)
        acknowledge_everything(store)
        calls = plan_for(store, after, pages)
        assert calls == minimal_calls(mapping(before), mapping(after))
        covered = {"courses": set(), "users": set(), "enrollments": set()}
        for call in store.calls():
            covered["courses"].add(call.course_id)
            if call.user_id:
                assert "enrollment" in call.parts, "a user always travels with an enrollment"
                covered["users"].add(call.user_id)
                covered["enrollments"].add((call.course_id, call.user_id))
        new, old = mapping(after), mapping(before)
        for kind in covered:
            changed = {k for k, v in new[kind].items() if old[kind].get(k) != v}
            assert changed <= covered[kind]
        acknowledge_everything(store)
        assert plan_for(store, after) == 0
    finally:
        state_file.close()


def test_matching_covers_courses_a_greedy_choice_would_miss():
    # u1 can ride with c1 or c2, u2 only with c1: only u1->c2, u2->c1 covers both courses.
    assert plan.max_matching([("u1", "c1"), ("u1", "c2"), ("u2", "c1")]) == {"u1": "c2", "u2": "c1"}


def test_duplicate_ids_are_record_errors_and_the_first_one_wins(tmp_path, make_store):
    state_file = make_store(tmp_path)
    store = state_file.tenant("t")
    try:
        first = User("u1", "First", "Read", True)
        errors = store.stage([first, User("u1", "Second", "Read", True)])
        errors += store.stage([User("u1", "Third", "Read", True)])
        assert [(e.entity, e.source_id) for e in errors] == [("user", "u1"), ("user", "u1")]
        name = store.conn.execute("SELECT first_name FROM stage_users WHERE source_id = 'u1'").fetchone()[0]
        assert name == "First"
    finally:
        state_file.close()


def test_the_role_listed_first_wins_when_a_user_has_two_in_one_course(tmp_path, make_store):
    state_file = make_store(tmp_path)
    store = state_file.tenant("t")
    try:
        plan_for(store, {"courses": {"c1": "Art"}, "users": {"u1": "Ann"}, "enrollments": {}})
        store.reset_stage()
        store.stage([Course("c1", "Art", True), User("u1", "Ann", "Smith", True),
                          Enrollment("e1", "c1", "u1", "teacher", True), Enrollment("e2", "c1", "u1", "student", True)])
        store.build_desired(ROLES, None)
        rows = store.conn.execute("SELECT body, source_id FROM desired_enrollments").fetchall()
        assert rows == [('{"role":"learner"}', "e2")]
    finally:
        state_file.close()


@pytest.mark.sqlite_only("the state file's mode")
def test_the_state_file_is_owner_only(tmp_path):
    Store.open(tmp_path / "state").close()
    assert (tmp_path / "state" / "syncd.db").stat().st_mode & 0o077 == 0
    assert (tmp_path / "state").stat().st_mode & 0o077 == 0


@pytest.mark.sqlite_only("a SQLite state file from an older syncd")
def test_a_state_file_from_before_canonical_hashes_sends_nothing_after_the_upgrade(sandbox, tmp_path):
    """tests/fixtures/state-before-canonical-hash.sql is the state file that the code before
    canonical hashes left after a first sync of the conftest roster (seed 11): the migration
    re-hashes what was acknowledged, so the same roster is still unchanged."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with sqlite3.connect(state / "syncd.db") as conn:  # a file as the older syncd left it: SQLite itself
        conn.executescript((Path(__file__).parent / "fixtures" / "state-before-canonical-hash.sql").read_text())
    (state / "syncd.db").chmod(0o600)
    config = sandbox.write_config(tmp_path / "syncd.toml", state)
    result = syncd(config, "sync", "lincoln", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(result)["calls"] == 0
    assert summary(result)["counts"]["users"]["unchanged"] == 147


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=20))
def test_the_body_each_store_builds_is_its_canonical_json(tmp_path_factory, make_store, state_backend, text):
    """The hash is defined over canonical JSON; each store hashes the text it built, so that text
    must be exactly the canonical form, whatever the characters: the same on SQLite and PostgreSQL
    (so a store copied from one to the other finds nothing changed)."""
    # PostgreSQL text cannot hold NUL (a source sending one fails the run there, not on SQLite).
    assume(state_backend == "sqlite" or "\x00" not in text)
    digest_of = pg_schema.text_hash if state_backend == "postgresql" else lambda body: body_hash(json.loads(body))
    state_file = make_store(Path(tmp_path_factory.mktemp("state")))
    store = state_file.tenant("t")
    try:
        store.reset_stage()
        store.stage([Course("c1", text, True, code=text, external_id="c1"),
                     User("u1", text, text, True, email=text, external_id="u1", lms_id="7"),
                     Enrollment("e1", "c1", "u1", "student", True)])
        store.build_desired(ROLES, "Europe/Paris")
        store.classify(False)  # the hashes are filled in when the rows are classified
        for table in ("desired_courses", "desired_users", "desired_enrollments"):
            for body, digest in store.conn.execute(f"SELECT body, hash FROM {table}"):
                assert body == canonical_json(json.loads(body))
                assert digest == digest_of(body)
    finally:
        state_file.close()


# --- with exams (SPEC §7): the same minimum, exams riding on their course's calls ------------

EXAM_CONFIG = ExamsConfig(select="all", proctor_types={"TS" + "0" * 32: {}})
def with_exams(roster: dict, exams_of: dict) -> dict:
    return {**roster, "exams": exams_of}


exam_maps = st.dictionaries(st.tuples(st.sampled_from(COURSES), st.integers(0, 2)), st.sampled_from(["Mid", "Final"]))


def exam_records(roster: dict) -> list:
    return [Exam(f"{c}-x{i}", c, title, True, url="https://lms.example.edu/q", open="2030-01-01T00:00:00Z",
                 close="2030-01-02T00:00:00Z", duration_min=60, password="pw-1234")
            for (c, i), title in roster["exams"].items()]


def exam_plan_for(store: TenantStore, roster: dict) -> int:
    store.reset_stage()
    store.stage(records(roster) + exam_records(roster))
    store.build_desired(ROLES, None, EXAM_CONFIG)
    store.classify(force=False)
    return plan.build(store)


def acknowledge_with_exams(store: TenantStore) -> None:
    for call in store.calls():
        sids = {"course": "CU" + call.course_id}
        if call.user_id:
            sids |= {"user": "US" + call.user_id, "enrollment": f"EN{call.course_id}{call.user_id}"}
        if call.exam_id:
            sids |= {"exam": "EX" + call.exam_id, "configuration": "EC" + call.exam_id}
        store.acknowledge([(call, sids)])


def exam_minimum(before: dict, after: dict) -> int:
    """The fewest calls, by exam_plan.plan (proved minimal by brute force in test_exams_plan.py)."""
    old, new = mapping(before), mapping(after)
    enrollment_calls = [k for k, v in new["enrollments"].items() if old["enrollments"].get(k) != v]
    changed_users = {u for u, v in new["users"].items() if old["users"].get(u) != v}
    covered = {u for _, u in enrollment_calls}
    riders = {u: sorted(c for c, v in new["enrollments"] if v == u) for u in changed_users - covered}
    changed_courses = [c for c, v in new["courses"].items() if old["courses"].get(c) != v]
    in_scope = {(c, i): t for (c, i), t in after["exams"].items() if c in after["courses"]}
    was = {(c, i): t for (c, i), t in before["exams"].items() if c in before["courses"]}
    changed_exams = {f"{c}-x{i}": c for (c, i), t in in_scope.items() if was.get((c, i)) != t}
    return len(exam_plan.plan(enrollment_calls, riders, changed_courses, changed_exams))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=rosters, after=rosters, exams_before=exam_maps, exams_after=exam_maps)
def test_with_exams_the_plan_uses_the_minimum_number_of_calls_and_then_none(make_store, tmp_path_factory, before,
                                                                             after, exams_before, exams_after):
    before, after = with_exams(before, exams_before), with_exams(after, exams_after)
    state_file = make_store(Path(tmp_path_factory.mktemp("state")))
    store = state_file.tenant("t")
    store.exam_key = b"k" * 32
    try:
        exam_plan_for(store, before)
        acknowledge_with_exams(store)
        calls = exam_plan_for(store, after)
        assert calls == exam_minimum(before, after)
        carried = [call.exam_id for call in store.calls() if call.exam_id]
        assert len(carried) == len(set(carried)), "an exam travels once"
        for call in store.calls():
            if call.exam_id:
                assert call.exam_id.startswith(call.course_id + "-x"), "an exam travels with its own course"
        was = {f"{c}-x{i}": t for (c, i), t in before["exams"].items() if c in before["courses"]}
        changed = {f"{c}-x{i}" for (c, i), t in after["exams"].items()
                   if c in after["courses"] and was.get(f"{c}-x{i}") != t}
        assert set(carried) == changed
        acknowledge_with_exams(store)
        assert exam_plan_for(store, after) == 0
    finally:
        state_file.close()


def test_a_changed_user_rides_where_an_exam_needs_a_call_not_on_its_first_course(make_store, tmp_path):
    # u1 changes and is enrolled in c0 and c1; only c1 has a changed exam: one call carries both.
    before = {"courses": {"c0": "Art", "c1": "Bio"}, "users": {"u1": "Ann"},
              "enrollments": {("c0", "u1"): "student", ("c1", "u1"): "student"}, "exams": {}}
    after = {**before, "users": {"u1": "Bo"}, "exams": {("c1", 0): "Mid"}}
    state_file = make_store(tmp_path)
    store = state_file.tenant("t")
    store.exam_key = b"k" * 32
    try:
        exam_plan_for(store, before)
        acknowledge_with_exams(store)
        assert exam_plan_for(store, after) == 1 == exam_minimum(before, after)
        [call] = store.calls()
        assert (call.course_id, call.user_id, call.exam_id) == ("c1", "u1", "c1-x0")
    finally:
        state_file.close()
