"""Diff and plan on a real SQLite store: the fewest calls, then nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import summary, syncd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sync_end_to_end import minimal_calls

from syncd import plan
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
def test_the_plan_uses_the_minimum_number_of_calls_and_then_none(tmp_path_factory, before, after, pages):
    state_file = Store.open(Path(tmp_path_factory.mktemp("state")))
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


def test_duplicate_ids_are_record_errors_and_the_first_one_wins(tmp_path):
    state_file = Store.open(tmp_path)
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


def test_the_role_listed_first_wins_when_a_user_has_two_in_one_course(tmp_path):
    state_file = Store.open(tmp_path)
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


def test_the_state_file_is_owner_only(tmp_path):
    Store.open(tmp_path / "state").close()
    assert (tmp_path / "state" / "syncd.db").stat().st_mode & 0o077 == 0
    assert (tmp_path / "state").stat().st_mode & 0o077 == 0


def test_a_state_file_from_before_canonical_hashes_sends_nothing_after_the_upgrade(sandbox, tmp_path):
    """tests/fixtures/state-before-canonical-hash.sql is the state file that the code before
    canonical hashes left after a first sync of the conftest roster (seed 11): the migration
    re-hashes what was acknowledged, so the same roster is still unchanged."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with sqlite3.connect(state / "syncd.db") as conn:
        conn.executescript((Path(__file__).parent / "fixtures" / "state-before-canonical-hash.sql").read_text())
    (state / "syncd.db").chmod(0o600)
    config = sandbox.write_config(tmp_path / "syncd.toml", state)
    result = syncd(config, "sync", "lincoln", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(result)["calls"] == 0
    assert summary(result)["counts"]["users"]["unchanged"] == 147


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=20))
def test_the_body_sqlite_builds_is_its_canonical_json(tmp_path_factory, text):
    """The hash is defined over canonical JSON; the SQLite store hashes the text it built, so that
    text must be exactly the canonical form, whatever the characters."""
    state_file = Store.open(Path(tmp_path_factory.mktemp("state")))
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
                assert digest == body_hash(json.loads(body))
    finally:
        state_file.close()
