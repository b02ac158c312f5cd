"""The records that flow from a source into the store, already mapped to provision fields.

A source turns its vendor's objects into these (SPEC §4, field by field); the store joins them
(course code fallback, scope, one enrollment per course and user) and builds the exact JSON
bodies the target sees, whose :func:`content_hash` decides what changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

Entity = Literal["course", "user", "enrollment"]
ENTITIES: tuple[Entity, ...] = ("course", "user", "enrollment")
PLURAL = {"course": "courses", "user": "users", "enrollment": "enrollments"}


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


def content_hash(body: str) -> str:
    """Hash of a canonical JSON body; equal hashes mean the target already has these fields."""
    return hashlib.blake2b(body.encode("utf-8"), digest_size=16).hexdigest()
