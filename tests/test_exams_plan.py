"""The fewest calls with exams riding along: valid plans, and the minimum proved by brute force."""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.exam_plan import PlannedCall, minimum, plan

COURSES = ["A", "B", "C", "D"]
USERS = ["u1", "u2", "u3", "u4", "u5"]


@st.composite
def change_sets(draw):
    pairs = [(c, u) for c in COURSES for u in USERS]
    enrollment_calls = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=5))
    covered = {u for _, u in enrollment_calls}
    riders = {}
    for user in USERS:
        if user not in covered and draw(st.booleans()):
            riders[user] = draw(st.lists(st.sampled_from(COURSES), min_size=1, max_size=4, unique=True))
    changed = set(draw(st.lists(st.sampled_from(COURSES), unique=True)))
    exams = {f"x{i}": course for i, course in enumerate(draw(st.lists(st.sampled_from(COURSES), max_size=7)))}
    return enrollment_calls, riders, changed, exams


def check_valid(calls: list[PlannedCall], enrollment_calls, riders, changed, exams) -> None:
    assert Counter((c.course, c.user) for c in calls if c.enrollment) == Counter(enrollment_calls)
    for user, courses in riders.items():
        rides = [c for c in calls if c.user == user]
        assert len(rides) == 1 and rides[0].course in courses and not rides[0].enrollment
    carried = [c.exam for c in calls if c.exam]
    assert sorted(carried) == sorted(exams)  # every changed exam exactly once
    assert all(exams[c.exam] == c.course for c in calls if c.exam)  # on a call for its own course
    assert changed <= {c.course for c in calls}
    assert all(c.user or c.exam or c.course in changed for c in calls)  # no empty call


@settings(max_examples=400, deadline=None, derandomize=True)
@given(change_sets())
def test_the_plan_is_valid_and_as_small_as_any_placement_allows(case):
    enrollment_calls, riders, changed, exams = case
    calls = plan(enrollment_calls, riders, changed, exams)
    check_valid(calls, enrollment_calls, riders, changed, exams)
    users = sorted(riders)
    best = min((minimum(enrollment_calls, dict(zip(users, placement, strict=True)), changed, exams)
                for placement in itertools.product(*(riders[u] for u in users))),
               default=minimum(enrollment_calls, {}, changed, exams))
    assert len(calls) == best


def test_without_exams_it_is_todays_plan():
    # u1 rides on the changed course B (a matching), C is sent alone, the enrollment call stays.
    calls = plan([("A", "u2")], {"u1": ["A", "B"]}, {"B", "C"}, {})
    assert calls == [PlannedCall("A", "u2", enrollment=True), PlannedCall("B", "u1"), PlannedCall("C")]


def test_an_exam_rides_on_a_call_already_planned_for_its_course():
    calls = plan([("A", "u2")], {}, set(), {"quiz:1": "A"})
    assert calls == [PlannedCall("A", "u2", enrollment=True, exam="quiz:1")]


def test_a_changed_user_rides_where_an_exam_needs_a_call_anyway():
    # u1 could ride on D or A; A needs a call for its exam, so riding there saves one.
    calls = plan([], {"u1": ["D", "A"]}, set(), {"quiz:1": "A"})
    assert calls == [PlannedCall("A", "u1", exam="quiz:1")]


def test_leftover_exams_get_calls_of_their_own_and_cover_their_course():
    calls = plan([], {}, {"A"}, {"quiz:1": "A", "quiz:2": "A", "assignment:3": "B"})
    assert calls == [PlannedCall("A", exam="quiz:1"), PlannedCall("A", exam="quiz:2"),
                     PlannedCall("B", exam="assignment:3")]
