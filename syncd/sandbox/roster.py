"""A seeded OneRoster roster generator with mutations, and the mapping a target should end with.

The expected mapping here is written independently of syncd's SQL, from SPEC §4, so that tests
compare two implementations rather than one with itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

FIRST = ["Ann", "Ben", "Chloé", "Dmitri", "Eve", "Farah", "Gustavo", "Hana", "Ivan", "José", "Kai",
         "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Thu", "Uma", "Viktor",
         "Wen", "Xavier", "Yara", "Zoë"]
LAST = ["Anders", "Brown", "Chen", "Díaz", "Evans", "Fischer", "García", "Hughes", "Ito", "Jones",
        "Kowalski", "López", "Müller", "Nguyen", "O'Brien", "Patel", "Quist", "Rossi", "Smith",
        "Tanaka", "Usman", "Virtanen", "Wang", "Xu", "Young", "Zhang"]
SUBJECTS = ["Algebra", "Biology", "Chemistry", "Drama", "English", "French", "Geometry", "History",
            "Italian", "Journalism", "Physics", "Statistics"]
STAMP = "2026-09-01T08:00:00.000Z"


def ref(kind: str, source_id: str) -> dict[str, str]:
    return {"href": f"~/ims/oneroster/v1p1/{kind}s/{source_id}", "sourcedId": source_id, "type": kind}


@dataclass
class Roster:
    """OneRoster objects (1.1 shape) by collection, keyed by sourcedId, in insertion order."""

    courses: dict[str, dict[str, Any]] = field(default_factory=dict)
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    enrollments: dict[str, dict[str, Any]] = field(default_factory=dict)
    revision: int = 0

    def collection(self, name: str) -> dict[str, dict[str, Any]]:
        return getattr(self, name)

    # --- generation ----------------------------------------------------------------------

    @classmethod
    def generate(cls, seed: int = 1, users: int = 200, classes: int = 20, enrollments: int = 1000,
                 today: date | None = None) -> Roster:
        rng = random.Random(seed)
        today = today or date.today()  # noqa: DTZ011 - the sandbox lives in local time, like a SIS
        roster = cls()
        n_courses = max(1, classes // 3)
        for i in range(1, n_courses + 1):
            subject = SUBJECTS[i % len(SUBJECTS)]
            roster.courses[f"crs-{i:05d}"] = {
                "sourcedId": f"crs-{i:05d}", "status": "active", "dateLastModified": STAMP,
                "title": f"{subject} {100 + i}", "courseCode": f"{subject[:4].upper()}-{100 + i}",
                "org": ref("org", "sch-1"),
            }
        course_ids = list(roster.courses)
        for i in range(1, classes + 1):
            course = course_ids[(i - 1) % len(course_ids)]
            roster.classes[f"cls-{i:05d}"] = {
                "sourcedId": f"cls-{i:05d}", "status": "active", "dateLastModified": STAMP,
                "title": f"{roster.courses[course]['title']} section {i}",
                # One class in five has no classCode: the course's courseCode stands in.
                "classCode": None if i % 5 == 0 else f"C{i:05d}",
                "classType": "scheduled", "course": ref("course", course), "school": ref("org", "sch-1"),
                "terms": [ref("academicSession", "term-1")],
            }
        teachers = max(1, users // 20)
        for i in range(1, users + 1):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            roster.users[f"usr-{i:06d}"] = {
                "sourcedId": f"usr-{i:06d}", "status": "active", "dateLastModified": STAMP,
                "enabledUser": True, "username": f"user{i}", "givenName": first, "familyName": last,
                "middleName": "", "role": "teacher" if i <= teachers else "student",
                # Some users have no e-mail: the field is omitted from the provision body.
                "email": None if i % 23 == 0 else f"{first.lower()}.{i}@example.edu".replace("'", ""),
                "orgs": [ref("org", "sch-1")], "identifier": str(100000 + i),
            }
        class_ids, user_ids = list(roster.classes), list(roster.users)
        students = user_ids[teachers:] or user_ids
        n = 0
        for i, class_id in enumerate(class_ids):  # every class gets a teacher
            n += 1
            roster.enrollments[f"enr-{n:07d}"] = _enrollment(n, user_ids[i % teachers], class_id, "teacher")
        pairs = {(e["user"]["sourcedId"], e["class"]["sourcedId"]) for e in roster.enrollments.values()}
        while n < enrollments:
            user, klass = rng.choice(students), rng.choice(class_ids)
            if (user, klass) in pairs:
                continue
            pairs.add((user, klass))
            n += 1
            roster.enrollments[f"enr-{n:07d}"] = _enrollment(n, user, klass, "student")
        roster._add_noise(rng, today)
        return roster

    def _add_noise(self, rng: random.Random, today: date) -> None:
        """Records that must stay out of scope, as real SIS data has them."""
        for i, enrollment in enumerate(self.enrollments.values()):
            if i % 97 == 5:
                enrollment["status"] = "tobedeleted"
            elif i % 89 == 7:
                enrollment["endDate"] = (today - timedelta(days=3)).isoformat()  # over (exclusive)
            elif i % 83 == 9:
                enrollment["endDate"] = today.isoformat()  # ends today: exclusive, so over
        for i, user in enumerate(self.users.values()):
            if i % 101 == 50:
                user["status"] = "inactive"  # legacy 1.0 value: read as tobedeleted
        for i, klass in enumerate(self.classes.values()):
            if i % 41 == 40:
                klass["status"] = "tobedeleted"

    # --- mutations -----------------------------------------------------------------------

    def mutate(self, seed: int, fraction: float = 0.01) -> dict[str, int]:
        """Change about ``fraction`` of users (names, e-mails) and enrollments (new and dropped),
        plus some class titles. Returns how many of each kind were made."""
        rng = random.Random(seed)
        self.revision += 1
        now = modified_now()  # what a real server writes: delta runs read changes by this date
        users = [u for u in self.users.values() if u["status"] == "active"]
        made = {"renamed": 0, "new_enrollments": 0, "dropped": 0, "retitled": 0}
        for user in rng.sample(users, max(1, int(len(users) * fraction))):
            user["givenName"] = user["givenName"] + "-" + str(self.revision)
            user["dateLastModified"] = now
            made["renamed"] += 1
        active = [e for e in self.enrollments.values() if e["status"] == "active" and "endDate" not in e
                  and e["role"] == "student"]
        for enrollment in rng.sample(active, max(1, int(len(active) * fraction / 2))):
            enrollment["status"] = "tobedeleted"
            enrollment["dateLastModified"] = now
            made["dropped"] += 1
        pairs = {(e["user"]["sourcedId"], e["class"]["sourcedId"]) for e in self.enrollments.values()}
        class_ids = [c for c, v in self.classes.items() if v["status"] == "active"]
        student_ids = [u["sourcedId"] for u in users if u["role"] == "student"]
        n = len(self.enrollments)
        target = max(1, int(len(active) * fraction / 2))
        while made["new_enrollments"] < target:
            user, klass = rng.choice(student_ids), rng.choice(class_ids)
            if (user, klass) in pairs:
                continue
            pairs.add((user, klass))
            n += 1
            self.enrollments[f"enr-{n:07d}-r{self.revision}"] = _enrollment(n, user, klass, "student") | {
                "dateLastModified": now}
            made["new_enrollments"] += 1
        for klass in rng.sample(list(self.classes.values()), max(1, int(len(self.classes) * fraction))):
            klass["title"] = klass["title"] + f" (rev {self.revision})"
            klass["dateLastModified"] = now
            made["retitled"] += 1
        return made

    def touch_unmapped(self, seed: int, count: int = 10) -> None:
        """Change only fields that syncd does not map: nothing should be sent."""
        rng = random.Random(seed)
        for user in rng.sample(list(self.users.values()), min(count, len(self.users))):
            user["middleName"] = "Q"
            user["identifier"] = user["identifier"] + "9"
            user["dateLastModified"] = "2026-11-01T00:00:00Z"


def modified_now() -> str:
    """Now as OneRoster writes ``dateLastModified`` (UTC, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _enrollment(n: int, user: str, klass: str, role: str) -> dict[str, Any]:
    return {"sourcedId": f"enr-{n:07d}", "status": "active", "dateLastModified": STAMP,
            "user": ref("user", user), "class": ref("class", klass), "school": ref("org", "sch-1"),
            "role": role, "primary": role == "teacher", "beginDate": "2026-08-20"}


# --- the mapping a target should end with (SPEC §4), written independently ----------------


def expected_mapping(roster: Roster, roles: dict[str, str], time_zone: str | None = None,
                     today: date | None = None) -> dict[str, dict[Any, dict[str, Any]]]:
    """courses by class sourcedId, users by user sourcedId, enrollments by (class, user)."""
    today = today or date.today()  # noqa: DTZ011
    active = {"active", "", None}
    courses = {}
    for class_id, klass in roster.classes.items():
        if klass.get("status") not in active:
            continue
        code = klass.get("classCode")
        if not code:
            parent = roster.courses.get((klass.get("course") or {}).get("sourcedId"))
            code = parent.get("courseCode") if parent else None
        courses[class_id] = {"title": klass["title"], **({"code": code} if code else {})}
    users_in_scope = {u for u, v in roster.users.items() if v.get("status") in active}
    priority = {role: i for i, role in enumerate(roles)}
    enrollments: dict[tuple[str, str], tuple[int, str]] = {}
    for enrollment in roster.enrollments.values():
        end = enrollment.get("endDate")
        if enrollment.get("status") not in active or (end and date.fromisoformat(end[:10]) <= today):
            continue
        role = enrollment["role"]
        key = (enrollment["class"]["sourcedId"], enrollment["user"]["sourcedId"])
        if role not in roles or key[0] not in courses or key[1] not in users_in_scope:
            continue
        if key not in enrollments or priority[role] < enrollments[key][0]:
            enrollments[key] = (priority[role], roles[role])
    users = {}
    for user_id in {user for _, user in enrollments}:
        user = roster.users[user_id]
        body = {"firstName": user["givenName"], "lastName": user["familyName"]}
        if user.get("email"):
            body["email"] = user["email"]
        if time_zone:
            body["timeZone"] = time_zone
        users[user_id] = body
    return {"courses": courses, "users": users,
            "enrollments": {key: {"role": role} for key, (_, role) in enrollments.items()}}
