"""Staging and the desired state: what the source said this run, mapped to provision bodies in SQL."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from syncd.entities import SPECS, Entity
from syncd.exams import Exam
from syncd.exams_config import ExamsConfig
from syncd.model import Course, CourseCode, Enrollment, Record, RecordError, User
from syncd.store import exams as exam_sql
from syncd.store.base import Scoped
from syncd.store.dialect import Dialect, Obj

STAGE_TABLES: dict[type, tuple[str, Entity]] = {
    Course: ("stage_courses", "course"),
    CourseCode: ("stage_course_codes", "course"),
    User: ("stage_users", "user"),
    Enrollment: ("stage_enrollments", "enrollment"),
    Exam: ("stage_exams", "exam"),
}
STAGE_NAMES = ("stage_courses", "stage_course_codes", "stage_users", "stage_enrollments")
RUN_TABLES = ("stage_courses", "stage_course_codes", "stage_users", "stage_enrollments", "stage_exams",
              "desired_courses", "desired_users", "desired_enrollments", "desired_exams", "plan_calls",
              "source_pages", "desired_marks", "settled_marks")
DESIRED_NAMES = ("desired_courses", "desired_users", "desired_enrollments")
# Bump when the SQL below changes the bodies it builds: a kept desired state is then rebuilt.
DESIRED_VERSION = "1"
# The changes classify and the planner leave in desired_*; any other (held, deferred) rewrote a
# row's body or must not outlive its run, so such a desired state is never kept.
KEPT_CHANGES = ("none", "create", "update")


# The columns of a roster stage row as _STAGE_ROW builds it (the page tag, syncd.store.pages, after).
STAGE_COLUMNS = {
    "stage_courses": "tenant, source_id, title, code, external_id, lms_id, parent_id, active, status",
    "stage_course_codes": "tenant, source_id, code",
    "stage_users": "tenant, source_id, first_name, last_name, email, external_id, lms_id, active, status",
    "stage_enrollments": "tenant, source_id, course_id, user_id, role, active, status, end_date",
}


ACTIVE = 7  # the ``active`` column of a stage_courses or stage_users row (STAGE_COLUMNS)
# Keys a Dirty holds at most (about 4 MB): beyond, the change is too large to be worth following
# key by key, and the desired state is mapped again whole; so memory does not grow with the roster.
DIRTY_LIMIT = 20_000


@dataclass
class Dirty:
    """The staged rows that changed since the desired state was built, as what must be mapped
    again. What a row feeds decides how far a change reaches:

    - a class that came, went or changed ``active`` (``classes``): its course, its enrollments, and
      so their users; a class whose other fields changed (``courses``): its course alone;
    - a course code (``codes``): the courses under it;
    - a user who came, went or changed ``active`` (``users``): the user and the user's
      enrollments; a user whose other fields changed (``people``): the user alone;
    - an enrollment (``pairs``): its (class, user) pair, before and after the change, and the
      user, whose being in scope depends on having an enrollment.

    An enrollment's body depends on its class and user only through their being active, and a
    course's or user's body on nothing but its own row (and a course's code): a renamed user or a
    retitled class maps again one row, not every row of its enrollments. Past ``DIRTY_LIMIT``
    keys it stops noting and says ``overflow``: map everything again."""

    classes: set[str] = field(default_factory=set)
    courses: set[str] = field(default_factory=set)
    codes: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    people: set[str] = field(default_factory=set)
    pairs: set[tuple[str, str]] = field(default_factory=set)
    overflow: bool = False
    _noted: int = 0

    def note(self, table: str, old: tuple[Any, ...] | None, new: tuple[Any, ...] | None) -> None:
        """One staged row replaced (``old`` and ``new`` without their page tag; None: absent)."""
        if old == new or self.overflow:
            return
        self._noted += 1
        if self._noted > DIRTY_LIMIT // 4:  # a row notes at most four keys (two pairs, two users)
            self.overflow = True
            for keys in (self.classes, self.courses, self.codes, self.users, self.people, self.pairs):
                keys.clear()
            return
        row = old if old is not None else new
        assert row is not None
        if table == "stage_course_codes":
            self.codes.add(row[1])
        elif table in ("stage_courses", "stage_users"):
            same_scope = old is not None and new is not None and old[ACTIVE] == new[ACTIVE]
            if table == "stage_courses":
                (self.courses if same_scope else self.classes).add(row[1])
            else:
                (self.people if same_scope else self.users).add(row[1])
        else:
            for r in (old, new):
                if r is not None:
                    self.pairs.add((r[2], r[3]))
                    self.people.add(r[3])

    def __bool__(self) -> bool:
        return self.overflow or bool(self.classes or self.courses or self.codes or self.users or self.people
                                     or self.pairs)


@dataclass(frozen=True)
class Remapped:
    """The desired rows build_desired deleted and mapped again (by key): the only ones whose
    mapping may have changed when the rest were kept."""

    courses: frozenset[str] = frozenset()  # desired_courses source ids
    classes: frozenset[str] = frozenset()  # desired_enrollments of these classes…
    users: frozenset[str] = frozenset()  # …of these users…
    pairs: frozenset[tuple[str, str]] = frozenset()  # …and of these (class, user) pairs
    people: frozenset[str] = frozenset()  # desired_users source ids

    def pairs_json(self) -> str:
        return json.dumps(sorted(self.pairs))


class Staging(Scoped):
    # The install's key for exam passwords (exams.password_key): set by the engine when the tenant
    # has exams; a password is staged only as its keyed digest.
    exam_key: bytes | None = None
    # What this run changed in stage_*, when the staging knew it (a delta, or page fingerprints),
    # and the desired_marks row as it was before the first change: together they let build_desired
    # map again only what changed. None: unknown, the desired state is rebuilt whole.
    _dirty: Dirty | None = None
    # Set by build_desired: every desired row was mapped this run (none kept from the last), or
    # else which rows were mapped again (none: the whole desired state was kept).
    mapped_whole: bool = True
    remapped: Remapped = Remapped()
    _start_marks: tuple[str, str] | None = None

    def track_changes(self) -> None:
        """Staging is about to change rows one by one (a delta, changed pages): note what changes."""
        self._start_marks = self.conn.execute("SELECT fingerprint, counts FROM desired_marks WHERE tenant = ?",
                                              (self.name,)).fetchone()
        # No desired state to update (a first run, or one after a rebuild was cut short): it is
        # mapped whole, so there is nothing worth noting.
        self._dirty = Dirty() if self._start_marks is not None else None

    def reset_stage(self) -> None:
        """Forget the last run's staged rows, desired state and plan."""
        self._dirty = None
        with self._write():
            for table in RUN_TABLES:
                self.conn.execute(f"DELETE FROM {table} WHERE tenant = ?", (self.name,))

    def stage(self, records: list[Record]) -> list[RecordError]:
        """Stage one page in one transaction. Returns the records that could not be staged:
        those the source could not read, and duplicates of an id already read (first one wins)."""
        failed: list[RecordError] = []
        rows: dict[type, list[tuple[Any, ...]]] = {kind: [] for kind in STAGE_TABLES}
        for record in records:
            # A dict lookup on the exact type, not an isinstance chain: this runs once per record.
            to_row = _STAGE_ROW.get(type(record))
            if to_row is not None:
                rows[type(record)].append((*to_row(self.name, record), None))  # page: none (syncd.store.pages)
            elif isinstance(record, Exam):
                if self.exam_key is None:
                    raise ValueError("an exam was read for a tenant without exams")
                rows[Exam].append(exam_sql.stage_row(self.name, record, self.exam_key))
            else:
                assert isinstance(record, RecordError)
                failed.append(record)
        with self._write():
            for kind, batch in rows.items():
                if batch:
                    failed += self._insert_stage(kind, batch)
        return failed

    def _insert_stage(self, kind: type, batch: list[tuple[Any, ...]]) -> list[RecordError]:
        """Insert a page's rows of one table. The common page has no duplicate id: one INSERT … ON
        CONFLICT DO NOTHING inserts it whole and its row count proves it. Otherwise the page is undone to a savepoint
        and inserted row by row, so that the first record read of an id wins and the rest fail."""
        table, entity = STAGE_TABLES[kind]
        if hasattr(self.conn, "copy_rows"):  # PostgreSQL: COPY, one round trip per page
            return self._copy_stage(table, entity, batch)
        marks = ",".join("?" * len(batch[0]))
        insert = f"INSERT INTO {table} VALUES ({marks}) ON CONFLICT DO NOTHING"
        self.conn.execute("SAVEPOINT stage_page")
        cursor = self.conn.executemany(insert, batch)
        if cursor.rowcount == len(batch):
            self.conn.execute("RELEASE stage_page")
            return []
        self.conn.execute("ROLLBACK TO stage_page")
        self.conn.execute("RELEASE stage_page")
        return [_duplicate(entity, row[1]) for row in batch if self.conn.execute(insert, row).rowcount == 0]

    def _copy_stage(self, table: str, entity: Entity, batch: list[tuple[Any, ...]]) -> list[RecordError]:
        """PostgreSQL: the ids already staged are looked up first, and the rest sent with COPY."""
        ids = [row[1] for row in batch]
        already = {r[0] for r in self.conn.execute(
            f"SELECT source_id FROM {table} WHERE tenant = ? "
            f"AND source_id IN ({self.dialect.each_text('?')})", (self.name, json.dumps(ids)))}
        duplicates: list[RecordError] = []
        fresh: list[tuple[Any, ...]] = []
        for row in batch:
            if row[1] in already:
                duplicates.append(_duplicate(entity, row[1]))
            else:
                already.add(row[1])
                fresh.append(row)
        self.conn.copy_rows(table, fresh)
        return duplicates

    def staged_counts(self) -> dict[Entity, int]:
        return {e: self.conn.execute(f"SELECT count(*) FROM {spec.stage} WHERE tenant = ?",
                                     (self.name,)).fetchone()[0] for e, spec in SPECS.items()}

    def build_desired(self, roles: dict[str, str], time_zone: str | None, exams: ExamsConfig | None = None) -> bool:
        """Map staged rows to provision bodies in scope (SPEC §4, §7), all in SQL. When the
        staging noted what changed (``track_changes``) since a desired state built with the same
        mapping options, only the rows that depend on a change are mapped again (none: the state
        is kept). True when any row was mapped."""
        fingerprint = None if exams is not None else self._desired_fingerprint(roles, time_zone)
        dirty = self._dirty
        self._dirty = None
        role_rows = json.dumps([[source, target] for source, target in roles.items()])
        self.mapped_whole, self.remapped = False, Remapped()
        if fingerprint is not None and dirty is not None and not dirty.overflow and self._desired_stands(fingerprint):
            if not dirty:
                return False
            with self._write():
                self._update_desired(dirty, role_rows, time_zone)
                self._write_marks(fingerprint)
            return True
        self.mapped_whole = True
        with self._write():
            for table in ("desired_marks", "settled_marks", *DESIRED_NAMES, "desired_exams"):
                self.conn.execute(f"DELETE FROM {table} WHERE tenant = ?", (self.name,))
            for sql in self.dialect.analyze(*STAGE_NAMES):
                self.conn.execute(sql)
            courses, enrollments, users = desired_sql(self.dialect)
            self.conn.execute(courses, (self.name,))
            self.conn.execute(enrollments, (role_rows, self.name))
            self.conn.execute(users, (time_zone, self.name))
            if exams is not None:  # after the courses: an exam is in scope when its course is
                self.conn.execute(*exam_sql.desired(self.dialect, self.name, exams))
            for sql in self.dialect.analyze("desired_courses", "desired_users", "desired_enrollments"):
                self.conn.execute(sql)
            if fingerprint is not None:
                self._write_marks(fingerprint)
        return True

    def _update_desired(self, dirty: Dirty, role_rows: str, time_zone: str | None) -> None:
        """Delete and map again the desired rows that depend on a changed staged row (``Dirty``
        says which). The classes under a code and the users of a class are read first, once, so
        that each statement below finds its rows by key (staged enrollments have no index by class
        or user: one scan, not one per statement)."""
        each, pair = self.dialect.each_text("?"), self.dialect.each_pair("?")
        tenant = self.name
        classes, codes, users = (json.dumps(sorted(ids)) for ids in (dirty.classes, dirty.codes, dirty.users))
        courses = dirty.classes | dirty.courses | {row[0] for row in self.conn.execute(
            f"SELECT source_id FROM stage_courses WHERE tenant = ? AND parent_id IN ({each})", (tenant, codes))}
        people = dirty.users | dirty.people | {row[0] for row in self.conn.execute(
            f"SELECT DISTINCT user_id FROM stage_enrollments WHERE tenant = ? AND course_id IN ({each})",
            (tenant, classes))}
        courses_json, people_json = json.dumps(sorted(courses)), json.dumps(sorted(people))
        self.remapped = Remapped(frozenset(courses), frozenset(dirty.classes), frozenset(dirty.users),
                                 frozenset(dirty.pairs), frozenset(people))
        pairs = self.remapped.pairs_json()
        self.conn.execute(f"DELETE FROM desired_courses WHERE tenant = ? AND source_id IN ({each})",
                          (tenant, courses_json))
        self.conn.execute(f"DELETE FROM desired_enrollments WHERE tenant = ? AND course_id IN ({each})",
                          (tenant, classes))
        self.conn.execute(f"DELETE FROM desired_enrollments WHERE tenant = ? AND user_id IN ({each})",
                          (tenant, users))
        self.conn.execute(f"DELETE FROM desired_enrollments WHERE tenant = ? AND (course_id, user_id) IN ({pair})",
                          (tenant, pairs))
        self.conn.execute(f"DELETE FROM desired_users WHERE tenant = ? AND source_id IN ({each})",
                          (tenant, people_json))
        insert_courses, insert_enrollments, insert_users = desired_sql(self.dialect, True)
        self.conn.execute(insert_courses, (tenant, courses_json))
        self.conn.execute(insert_enrollments, (role_rows, tenant, classes, users, pairs))
        self.conn.execute(insert_users, (time_zone, tenant, people_json))

    def _write_marks(self, fingerprint: str) -> None:
        self._forget_desired()  # the desired state was mapped again: a settled mark vouches no more
        self.conn.execute("INSERT INTO desired_marks (tenant, fingerprint, counts) VALUES (?, ?, ?)",
                          (self.name, fingerprint, json.dumps(self._desired_counts())))

    def _desired_fingerprint(self, roles: dict[str, str], time_zone: str | None) -> str:
        """What the desired state is a function of, besides the staged rows."""
        return json.dumps([DESIRED_VERSION, self.dialect.name, list(roles.items()), time_zone])

    def _desired_counts(self) -> list[int]:
        return [self.conn.execute(f"SELECT count(*) FROM {table} WHERE tenant = ?", (self.name,)).fetchone()[0]
                for table in DESIRED_NAMES]

    def _desired_stands(self, fingerprint: str) -> bool:
        """The last desired state, as it was when this run's staging began, may be updated: built
        with this mapping, all its rows there, and none held or deferred (another body)."""
        row = self._start_marks
        if row is None or row[0] != fingerprint or json.loads(row[1]) != self._desired_counts():
            return False
        kept = ", ".join(f"'{change}'" for change in KEPT_CHANGES)
        return not any(self.conn.execute(
            f"SELECT 1 FROM {table} WHERE tenant = ? AND change IS NOT NULL AND change NOT IN ({kept}) LIMIT 1",
            (self.name,)).fetchone() for table in DESIRED_NAMES)

    def dangling_enrollments(self, among: Remapped | None = None) -> Iterator[tuple[str, str, str, str]]:
        """Active enrollments whose class or user is missing from a complete extract; ``among``:
        only those of the classes and users whose staged rows changed (a run that began settled had
        none dangling before)."""
        each = self.dialect.each_text("?")
        narrow, params = ((f"AND (e.course_id IN ({each}) OR e.user_id IN ({each}) "
                           f"OR (e.course_id, e.user_id) IN ({self.dialect.each_pair('?')})) ",
                           (json.dumps(sorted(among.classes)), json.dumps(sorted(among.users)), among.pairs_json()))
                          if among is not None else ("", ()))
        yield from self.conn.execute(
            "SELECT e.source_id, e.course_id, e.user_id, "
            "CASE WHEN c.source_id IS NULL THEN 'class' ELSE 'user' END "
            "FROM stage_enrollments e "
            "LEFT JOIN stage_courses c ON c.tenant = e.tenant AND c.source_id = e.course_id "
            "LEFT JOIN stage_users u ON u.tenant = e.tenant AND u.source_id = e.user_id "
            f"WHERE e.tenant = ? AND e.active = 1 {narrow}AND (c.source_id IS NULL OR u.source_id IS NULL)",
            (self.name, *params),
        )


def _duplicate(entity: Entity, source_id: str) -> RecordError:
    return RecordError(entity, source_id, "duplicate id: an earlier record with this id was read first and wins")


def _course_row(tenant: str, r: Course) -> tuple[Any, ...]:
    return (tenant, r.source_id, r.title, r.code, r.external_id, r.lms_id, r.parent_id, int(r.active), r.status)


def _course_code_row(tenant: str, r: CourseCode) -> tuple[Any, ...]:
    return (tenant, r.source_id, r.code)


def _user_row(tenant: str, r: User) -> tuple[Any, ...]:
    return (tenant, r.source_id, r.first_name, r.last_name, r.email, r.external_id, r.lms_id, int(r.active),
            r.status)


def _enrollment_row(tenant: str, r: Enrollment) -> tuple[Any, ...]:
    return (tenant, r.source_id, r.course_id, r.user_id, r.role, int(r.active), r.status, r.end_date)


_STAGE_ROW: dict[type, Callable[[str, Any], tuple[Any, ...]]] = {
    Course: _course_row, CourseCode: _course_code_row, User: _user_row, Enrollment: _enrollment_row}


# The bodies' text is their canonical JSON (model.canonical_json: keys sorted, nested ones too, an
# empty field omitted, not null), built by the dialect (dialect.py), so the hash is taken over it.
# The hash is left NULL here: Diff.classify takes it from the acknowledged row when the body text
# is the same and computes it (the dialect's hash) only for the bodies that are new or changed.
def _desired_courses(d: Dialect, only: bool) -> str:
    changed = f"AND c.source_id IN ({d.each_text('?')})" if only else ""
    body = d.body(Obj({"code": "coalesce(c.code, cc.code)",
                       "ids": Obj({"external": "c.external_id", "lms": "c.lms_id"}), "title": "c.title"}))
    return f"""
INSERT INTO desired_courses (tenant, source_id, body, hash)
SELECT tenant, source_id, body, NULL FROM (
    SELECT c.tenant, c.source_id, {body} AS body
    FROM stage_courses c
    LEFT JOIN stage_course_codes cc ON cc.tenant = c.tenant AND cc.source_id = c.parent_id
    WHERE c.tenant = ? AND c.active = 1 {changed}) AS b
"""


# One enrollment per (course, user): the role listed first in `roles` wins.
def _desired_enrollments(d: Dialect, only: bool) -> str:
    changed = (f"AND (e.course_id IN ({d.each_text('?')}) OR e.user_id IN ({d.each_text('?')}) "
               f"OR (e.course_id, e.user_id) IN ({d.each_pair('?')}))") if only else ""
    return f"""
INSERT INTO desired_enrollments (tenant, course_id, user_id, source_id, body, hash)
SELECT tenant, course_id, user_id, source_id, body, NULL FROM (
    SELECT e.tenant, e.course_id, e.user_id, e.source_id, {d.body(Obj({"role": "r.target_role"}))} AS body,
           row_number() OVER (PARTITION BY e.tenant, e.course_id, e.user_id ORDER BY r.priority) AS choice
    FROM stage_enrollments e
    JOIN ({d.roles('?')}) r ON r.source_role = e.role
    JOIN stage_courses c ON c.tenant = e.tenant AND c.source_id = e.course_id AND c.active = 1
    JOIN stage_users u ON u.tenant = e.tenant AND u.source_id = e.user_id AND u.active = 1
    WHERE e.tenant = ? AND e.active = 1 {changed}) AS b
WHERE choice = 1
"""


def _desired_users(d: Dialect, only: bool) -> str:
    changed = f"AND u.source_id IN ({d.each_text('?')})" if only else ""
    body = d.body(Obj({"email": "u.email", "firstName": "u.first_name",
                       "ids": Obj({"external": "u.external_id", "lms": "u.lms_id"}),
                       "lastName": "u.last_name", "timeZone": "CAST(? AS TEXT)"}))
    return f"""
INSERT INTO desired_users (tenant, source_id, body, hash)
SELECT tenant, source_id, body, NULL FROM (
    SELECT u.tenant, u.source_id, {body} AS body
    FROM stage_users u
    WHERE u.tenant = ? AND u.active = 1 AND EXISTS (
        SELECT 1 FROM desired_enrollments e WHERE e.tenant = u.tenant AND e.user_id = u.source_id) {changed}) AS b
"""


@functools.cache
def desired_sql(d: Dialect, only: bool = False) -> tuple[str, str, str]:
    """The three statements that build the desired state, in the order they run; with ``only``,
    of the rows that depend on changed ones (parameters after the tenant's: the courses to map, the
    classes and users whose enrollments to map, the users to map; see ``_update_desired``)."""
    return _desired_courses(d, only), _desired_enrollments(d, only), _desired_users(d, only)
