"""The fewest provision calls once exams ride along (SPEC §7), as a pure function over ids.

A call carries one course, at most one user with its enrollment, and at most one exam. Every new or
changed enrollment needs its own call; every other changed user rides on a call for one of its
in-scope courses; every changed course and every changed exam needs a call carrying its course.
So a course ``A`` needs ``need(A) = max(exams(A), 1 if A changed else 0)`` calls, of which its
enrollment calls already give ``e(A)``: it has ``cap(A) = max(0, need(A) - e(A))`` free seats,
and a user that rides on a free seat costs nothing extra. The minimum is

    |E| + |U'| + sum(cap) - (the most users seated),

a maximum bipartite b-matching of riders to seats, solved with plan.max_matching on seats
(``cap(A)`` copies of ``A``). With no exam, ``cap`` is 1 for a changed course without an
enrollment call and 0 otherwise: today's plan (plan.py) exactly. Exams then take the calls of their
course in order, one each; the exams left over get calls of their own.

plan.build is this rule in SQL over the store (the property tests in tests/test_plan.py compare
the two); this pure form is what the brute-force proof of the minimum runs on.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from syncd.plan import SEAT, max_matching


@dataclass(frozen=True)
class PlannedCall:
    course: str
    user: str | None = None  # the user, with their enrollment when it is an enrollment call
    enrollment: bool = False
    exam: str | None = None


def plan(enrollment_calls: Iterable[tuple[str, str]], riders: dict[str, list[str]],
         changed_courses: Iterable[str], changed_exams: dict[str, str]) -> list[PlannedCall]:
    """``enrollment_calls``: (course, user) of new or changed enrollments; ``riders``: each changed
    user not in one of those, with the in-scope courses of its enrollments (its fallback first);
    ``changed_exams``: exam -> course. Returns the calls, in a stable order."""
    calls = [PlannedCall(course, user, enrollment=True) for course, user in sorted(enrollment_calls)]
    exams_of: dict[str, list[str]] = defaultdict(list)
    for exam, course in sorted(changed_exams.items()):
        exams_of[course].append(exam)
    changed = set(changed_courses)
    enrolled = Counter(call.course for call in calls)
    need = {course: max(len(exams_of.get(course, ())), 1 if course in changed else 0)
            for course in changed | set(exams_of)}
    cap = {course: n - enrolled[course] for course, n in need.items() if n > enrolled[course]}
    calls += _seat(riders, cap)
    seated = Counter(call.course for call in calls)
    calls += [PlannedCall(course) for course in sorted(changed) if not seated[course] and not exams_of.get(course)]
    return _with_exams(calls, exams_of)


def _seat(riders: dict[str, list[str]], cap: dict[str, int]) -> list[PlannedCall]:
    """Each rider on a free seat of one of its courses where the most can be, else its fallback."""
    edges = []
    for user, courses in sorted(riders.items()):
        for course in dict.fromkeys(courses):
            # More copies than riders of a course could never be used: bound the graph.
            edges += [(user, f"{course}{SEAT}{i}") for i in range(min(cap.get(course, 0), len(riders)))]
    match = max_matching(edges)
    return [PlannedCall(match[user].split(SEAT)[0] if user in match else courses[0], user)
            for user, courses in sorted(riders.items()) if courses]


def _with_exams(calls: list[PlannedCall], exams_of: dict[str, list[str]]) -> list[PlannedCall]:
    waiting = {course: list(exams) for course, exams in exams_of.items()}
    out = []
    for call in calls:
        queue = waiting.get(call.course)
        out.append(PlannedCall(call.course, call.user, call.enrollment, queue.pop(0)) if queue else call)
    out += [PlannedCall(course, exam=exam) for course, exams in sorted(waiting.items()) for exam in exams]
    return out


def minimum(enrollment_calls: Iterable[tuple[str, str]], placements: dict[str, str], changed_courses: Iterable[str],
            changed_exams: dict[str, str]) -> int:
    """The calls a plan needs when each rider sits on ``placements[user]``: sum over courses of
    max(calls with a user, exams, 1 if changed). For proofs by brute force."""
    users = Counter(course for course, _ in enrollment_calls) + Counter(placements.values())
    exams = Counter(changed_exams.values())
    changed = set(changed_courses)
    return sum(max(users[c], exams[c], 1 if c in changed else 0) for c in set(users) | set(exams) | changed)
