"""Change set -> the fewest provision calls (SPEC §4).

A call carries one course and at most one user with one enrollment. So:

1. every new or changed enrollment needs a call of its own, which also covers its user and course;
2. every changed user still uncovered rides on a call for one of its in-scope enrollments; where
   that enrollment's course is itself changed and uncovered, the call covers both. Choosing which
   user covers which course is a maximum bipartite matching (users x courses): a greedy choice
   can leave a course that another assignment would have covered;
3. every changed course still uncovered is sent alone.

The minimum is ``|E| + |U'| + |C'| - matching(U', C')``, and that is what this plans. Only
the uncovered changed users and courses (and their enrollment edges) are held in memory.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from syncd.store import TenantStore

SEAT = "\x1f"  # joins a course id and a seat number: never in a source id (control characters are cleaned)


def build(store: TenantStore) -> int:
    """Write the plan for the store's tenant into it (SQL in ``syncd/store/plan.py``); return the
    number of calls.

    With exams (SPEC §7, exam_plan.py), a course whose changed exams need more calls than it has
    offers that many seats to riders, so the matching is over seats (``course SEAT i``); without
    changed exams every seat is the course itself and this is the plan above."""
    store.plan_enrollment_calls()
    seats = store.exam_seats()
    edges: Iterable[tuple[str, str]] = store.uncovered_edges()
    if seats:
        edges = _seated(edges, store.exam_edges(), seats)
    match = max_matching(edges)
    rides: list[tuple[str, str | None]] = []
    for user, fallback_course in store.uncovered_users():
        rides.append((match[user].split(SEAT)[0] if user in match else fallback_course, user))
    store.add_calls(sorted(rides))
    store.plan_course_calls()
    if seats:
        store.plan_exam_calls()
    return store.call_count()


def _seated(edges: Iterable[tuple[str, str]], exam_edges: Iterable[tuple[str, str]],
            seats: dict[str, int]) -> list[tuple[str, str]]:
    """The matching's edges once courses with changed exams offer ``seats[course]`` seats."""
    out = [(user, course) for user, course in edges if course not in seats]
    for user, course in exam_edges:
        out += [(user, f"{course}{SEAT}{i}") for i in range(seats[course])]
    return out


def max_matching(edges: Iterable[tuple[str, str]]) -> dict[str, str]:
    """A maximum matching of users to distinct courses (augmenting paths, iterative).

    Returns user -> course for every matched user.
    """
    adjacency: dict[str, list[str]] = defaultdict(list)
    for user, course in edges:
        adjacency[user].append(course)
    owner: dict[str, str] = {}  # course -> user
    matched: dict[str, str] = {}  # user -> course
    # Fewest options first: the greedy pass then leaves less for the augmenting search.
    for user in sorted(adjacency, key=lambda u: (len(adjacency[u]), u)):
        for course in adjacency[user]:
            if course not in owner:
                owner[course], matched[user] = user, course
                break
    for user in sorted(adjacency):
        if user not in matched:
            _augment(user, adjacency, owner, matched)
    return matched


def _augment(start: str, adjacency: dict[str, list[str]], owner: dict[str, str],
             matched: dict[str, str]) -> bool:
    """Find an alternating path from an unmatched user to a free course and flip it (BFS)."""
    came_from: dict[str, tuple[str, str | None]] = {}  # course -> (user who reached it, that user's course)
    frontier = [start]
    visited_users = {start}
    while frontier:
        next_frontier = []
        for user in frontier:
            for course in adjacency[user]:
                if course in came_from:
                    continue
                came_from[course] = (user, matched.get(user))
                holder = owner.get(course)
                if holder is None:
                    _flip(course, came_from, owner, matched)
                    return True
                if holder not in visited_users:
                    visited_users.add(holder)
                    next_frontier.append(holder)
        frontier = next_frontier
    return False


def _flip(course: str, came_from: dict[str, tuple[str, str | None]], owner: dict[str, str],
          matched: dict[str, str]) -> None:
    current: str | None = course
    while current is not None:
        user, previous = came_from[current]
        owner[current], matched[user] = user, current
        current = previous
