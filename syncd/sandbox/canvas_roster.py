"""A seeded Canvas account with the data quirks of real ones, and the mapping a target should end with.

Quirks seeded (reference/canvas.md §8.6): Test Student enrollments, observers, custom role names,
users without e-mail / SIS id / login, one-word names and names without a comma in
``sortable_name``, a student in two sections of one course, invited / inactive / completed /
deleted enrollments, unpublished, completed and deleted courses, sub-accounts and terms, and
datetimes that mix ``Z`` and offsets. :func:`expected_mapping` is written from SPEC §4 without
looking at syncd's code, so that tests compare two implementations.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from syncd.sandbox.roster import FIRST, LAST, SUBJECTS

# Canvas enrollment type -> the role SPEC §4 maps it to (StudentViewEnrollment: never).
TYPE_ROLES = {"StudentEnrollment": "student", "TeacherEnrollment": "teacher", "TaEnrollment": "ta",
              "DesignerEnrollment": "designer", "ObserverEnrollment": "observer"}
# One account tree: 1 is the root; 2 and 3 are its sub-accounts; 4 sits under 2.
ACCOUNTS = {1: None, 2: 1, 3: 1, 4: 2}
STAMPS = ("2026-08-20T08:00:00Z", "2026-08-20T03:00:00-05:00", "2026-08-20T08:00:00.000+00:00",
          "2026-08-20T10:00:00+02:00")


@dataclass
class CanvasRoster:
    courses: dict[int, dict[str, Any]] = field(default_factory=dict)
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    enrollments: dict[int, dict[str, Any]] = field(default_factory=dict)
    revision: int = 0
    _next_enrollment: int = 500_000

    @classmethod
    def generate(cls, seed: int = 1, users: int = 200, courses: int = 20, enrollments: int = 1000) -> CanvasRoster:
        rng = random.Random(seed)
        roster = cls()
        for i in range(1, courses + 1):
            subject = SUBJECTS[i % len(SUBJECTS)]
            state = "available"
            if i % 7 == 0:
                state = "unpublished"  # in scope: courses are provisioned before they are published
            elif i % 13 == 0:
                state = "completed"
            elif i % 29 == 0:
                state = "deleted"
            course_id = 1000 + i
            roster.courses[course_id] = {
                "id": course_id, "name": f"{subject} {100 + i}", "course_code": f"{subject[:4].upper()}-{100 + i}",
                "sis_course_id": None if i % 6 == 0 else f"SIS-C{i:05d}", "workflow_state": state,
                "account_id": (1, 2, 3, 4)[i % 4], "root_account_id": 1, "enrollment_term_id": 1 + i % 3,
                "start_at": STAMPS[i % len(STAMPS)], "end_at": None, "uuid": f"uuid-c{i}",
                "default_view": "modules", "time_zone": "America/Chicago",
            }
        for i in range(1, users + 1):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            user = _user(10_000 + i, first, last, i)
            if i % 53 == 0:
                user.update(name="Cher", sortable_name="Cher", short_name="Cher")  # one word: both names
            elif i % 59 == 0:
                name = f"{first} de la {last}"
                user.update(name=name, sortable_name=name, short_name=first)  # no comma: split at last space
            roster.users[10_000 + i] = user
        course_ids = list(roster.courses)
        user_ids = list(roster.users)
        teachers = max(1, users // 20)
        n = 0
        for course_id in course_ids:
            n += 1
            role = "Co-Instructor" if course_id % 11 == 0 else "TeacherEnrollment"  # a custom role name
            roster._enroll(100_000 + n, course_id, user_ids[n % teachers], "TeacherEnrollment", role=role)
            test_user = 90_000 + course_id  # the course's Test Student: never provisioned
            roster.users[test_user] = _user(test_user, "Test", "Student", 1) | {"sis_user_id": None,
                                                                                 "login_id": None, "email": None,
                                                                                 "test_student": True}
            n += 1
            roster._enroll(100_000 + n, course_id, test_user, "StudentViewEnrollment")
        students = user_ids[teachers:] or user_ids
        pairs: set[tuple[int, int]] = set()
        while n < enrollments:
            user_id, course_id = rng.choice(students), rng.choice(course_ids)
            if (user_id, course_id) in pairs:
                continue
            pairs.add((user_id, course_id))
            n += 1
            kind = "StudentEnrollment"
            if n % 41 == 0:
                kind = "TaEnrollment"
            elif n % 31 == 0:
                kind = "ObserverEnrollment"
            state = "active"
            if n % 19 == 0:
                state = "invited"  # a pending invitee: not active, out of scope
            elif n % 43 == 0:
                state = "inactive"
            elif n % 47 == 0:
                state = "completed"
            elif n % 61 == 0:
                state = "deleted"
            roster._enroll(100_000 + n, course_id, user_id, kind, state=state)
            if n % 37 == 0 and kind == "StudentEnrollment":
                n += 1  # the same student in a second section of the course: still one enrollment
                roster._enroll(100_000 + n, course_id, user_id, kind, section=2)
        for k in range(1, max(2, users // 40) + 1):  # parents who only observe: never provisioned
            parent = _user(80_000 + k, rng.choice(FIRST), rng.choice(LAST), 1000 + k)
            roster.users[parent["id"]] = parent
            observed = roster._enroll(400_000 + k, rng.choice(course_ids), parent["id"], "ObserverEnrollment")
            observed["associated_user_id"] = rng.choice(students)
        return roster

    def _enroll(self, enrollment_id: int, course_id: int, user_id: int, kind: str, *, state: str = "active",
                role: str | None = None, section: int = 1) -> dict[str, Any]:
        enrollment = {
            "id": enrollment_id, "course_id": course_id, "course_section_id": course_id * 10 + section,
            "user_id": user_id, "type": kind, "role": role or kind, "role_id": 3,
            "enrollment_state": state, "created_at": STAMPS[enrollment_id % len(STAMPS)],
            "updated_at": STAMPS[(enrollment_id + 1) % len(STAMPS)], "limit_privileges_to_course_section": False,
            "associated_user_id": None, "root_account_id": 1,
        }
        if kind == "ObserverEnrollment":
            enrollment["associated_user_id"] = next(iter(self.users))
        self.enrollments[enrollment_id] = enrollment
        return enrollment

    # --- mutations -----------------------------------------------------------------------

    def mutate(self, seed: int, fraction: float = 0.01) -> dict[str, int]:
        """Rename about ``fraction`` of users, drop and add enrollments, retitle some courses."""
        rng = random.Random(seed)
        self.revision += 1
        made = {"renamed": 0, "dropped": 0, "new_enrollments": 0, "retitled": 0}
        people = [u for u in self.users.values() if not u.get("test_student")]
        for user in rng.sample(people, max(1, int(len(people) * fraction))):
            first, last = user["short_name"] + str(self.revision), user["sortable_name"].split(", ")[0]
            user.update(name=f"{first} {last}", sortable_name=f"{last}, {first}", short_name=first)
            made["renamed"] += 1
        active = [e for e in self.enrollments.values()
                  if e["enrollment_state"] == "active" and e["type"] == "StudentEnrollment"]
        for enrollment in rng.sample(active, max(1, int(len(active) * fraction / 2))):
            enrollment["enrollment_state"] = "deleted"
            made["dropped"] += 1
        pairs = {(e["user_id"], e["course_id"]) for e in self.enrollments.values()}
        students = [u["id"] for u in people]
        courses = [c for c, v in self.courses.items() if v["workflow_state"] in ("available", "unpublished")]
        while made["new_enrollments"] < max(1, int(len(active) * fraction / 2)):
            user_id, course_id = rng.choice(students), rng.choice(courses)
            if (user_id, course_id) in pairs:
                continue
            pairs.add((user_id, course_id))
            self._next_enrollment += 1
            self._enroll(self._next_enrollment, course_id, user_id, "StudentEnrollment")
            made["new_enrollments"] += 1
        for course in rng.sample(list(self.courses.values()), max(1, int(len(self.courses) * fraction))):
            course["name"] = course["name"] + f" (rev {self.revision})"
            made["retitled"] += 1
        return made

    def touch_unmapped(self, seed: int, count: int = 10) -> None:
        """Change only fields that syncd does not map: nothing should be sent."""
        rng = random.Random(seed)
        for user in rng.sample(list(self.users.values()), min(count, len(self.users))):
            user["login_id"] = f"changed-{user['id']}"
            user["short_name"] = user["short_name"] + "!"
        for enrollment in rng.sample(list(self.enrollments.values()), min(count, len(self.enrollments))):
            enrollment["updated_at"] = "2026-11-01T00:00:00-06:00"
            enrollment["course_section_id"] += 7

    def subtree(self, account_id: int) -> set[int]:
        accounts = {account_id}
        while True:
            more = {a for a, parent in ACCOUNTS.items() if parent in accounts} - accounts
            if not more:
                return accounts
            accounts |= more


def _user(user_id: int, first: str, last: str, i: int) -> dict[str, Any]:
    return {
        "id": user_id, "name": f"{first} {last}", "sortable_name": f"{last}, {first}", "short_name": first,
        "sis_user_id": None if i % 17 == 0 else f"SIS-U{i:06d}",
        "login_id": None if i % 31 == 0 else f"u{i}",
        "email": None if i % 23 == 0 else f"{first.lower()}.{i}@example.edu".replace("'", ""),
        "created_at": STAMPS[i % len(STAMPS)], "locale": None, "time_zone": "America/Chicago",
    }


# --- the mapping a target should end with (SPEC §4, Canvas column), written independently --


def split_name(user: dict[str, Any]) -> tuple[str, str]:
    sortable = user.get("sortable_name") or ""
    if ", " in sortable:
        last, first = sortable.split(", ", 1)
        return first, last
    name = (user.get("name") or sortable).strip()
    if " " in name:
        first, last = name.rsplit(" ", 1)
        return first, last
    return name, name


def expected_mapping(roster: CanvasRoster, roles: dict[str, str], time_zone: str | None = None,
                     account_id: int = 1) -> dict[str, dict[Any, dict[str, Any]]]:
    """courses, users and enrollments keyed like ProvisionApp.snapshot() (external id, else lms id)."""
    accounts = roster.subtree(account_id)

    def key(record: dict[str, Any], sis: str) -> str:
        return record.get(sis) or str(record["id"])

    courses = {}
    for course in roster.courses.values():
        if course["workflow_state"] in ("available", "unpublished") and course["account_id"] in accounts:
            body = {"title": course["name"]}
            if course.get("course_code"):
                body["code"] = course["course_code"]
            courses[course["id"]] = body
    priority = {role: i for i, role in enumerate(roles)}
    chosen: dict[tuple[int, int], tuple[int, str]] = {}
    for enrollment in roster.enrollments.values():
        role = TYPE_ROLES.get(enrollment["type"])
        if enrollment["enrollment_state"] != "active" or role not in roles:
            continue
        pair = (enrollment["course_id"], enrollment["user_id"])
        if pair[0] not in courses or pair[1] not in roster.users:
            continue
        if pair not in chosen or priority[role] < chosen[pair][0]:
            chosen[pair] = (priority[role], roles[role])
    users = {}
    for user_id in {u for _, u in chosen}:
        user = roster.users[user_id]
        first, last = split_name(user)
        body = {"firstName": first, "lastName": last}
        if user.get("email"):
            body["email"] = user["email"]
        if time_zone:
            body["timeZone"] = time_zone
        users[key(user, "sis_user_id")] = body
    return {
        "courses": {key(roster.courses[c], "sis_course_id"): body for c, body in courses.items()},
        "users": users,
        "enrollments": {(key(roster.courses[c], "sis_course_id"), key(roster.users[u], "sis_user_id")): {"role": r}
                        for (c, u), (_, r) in chosen.items()},
    }
