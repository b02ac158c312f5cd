"""The records that flow from a source into the store, already mapped to provision fields.

A source turns its vendor's objects into these (SPEC §4, field by field); the store joins them
(course code fallback, scope, one enrollment per course and user) and builds the exact JSON
bodies the target sees, whose :func:`content_hash` decides what changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from syncd.entities import ENTITIES, PLURAL, Entity


@dataclass(frozen=True, slots=True)
class Course:
    """One provision course: a OneRoster class or a Canvas course."""

    source_id: str
    title: str
    active: bool
    code: str | None = None
    external_id: str | None = None
    lms_id: str | None = None
    # OneRoster: the class's course, whose courseCode stands in when the class has no classCode.
    parent_id: str | None = None
    status: str | None = None  # the source's raw status, kept so `syncd explain` can name it


@dataclass(frozen=True, slots=True)
class CourseCode:
    """A OneRoster course, read only for the courseCode fallback."""

    source_id: str
    code: str | None


@dataclass(frozen=True, slots=True)
class User:
    source_id: str
    first_name: str
    last_name: str
    active: bool
    email: str | None = None
    external_id: str | None = None
    lms_id: str | None = None
    status: str | None = None  # the source's raw status, kept so `syncd explain` can name it


@dataclass(frozen=True, slots=True)
class Enrollment:
    source_id: str
    course_id: str
    user_id: str
    role: str
    active: bool
    status: str | None = None  # the source's raw status, kept so `syncd explain` can name it
    end_date: str | None = None  # ISO date; an enrollment ended on it (exclusive) is not active


@dataclass(frozen=True, slots=True)
class RecordError:
    """A source record that could not be read; it fails alone and the run goes on."""

    entity: Entity
    source_id: str
    message: str


Record = Course | CourseCode | User | Enrollment | RecordError


def canonical_json(body: dict[str, Any]) -> str:
    """The one text of a body that its hash is taken over, whatever store built it: keys sorted,
    no whitespace, text as UTF-8 (not ``\\u`` escapes)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(text: str) -> str:
    """Hash of a body's canonical JSON text (:func:`canonical_json`); equal hashes mean the target
    already has these fields. The SQLite store builds bodies whose text is already canonical
    (keys in sorted order; ``tests/test_plan.py`` proves the text equal), so it hashes that text
    without parsing it again; any other store hashes :func:`body_hash` of the parsed body."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def body_hash(body: dict[str, Any]) -> str:
    return content_hash(canonical_json(body))

__all__ = ["ENTITIES", "PLURAL", "Course", "CourseCode", "Enrollment", "Entity", "Record", "RecordError", "User",
           "body_hash", "canonical_json", "content_hash"]
