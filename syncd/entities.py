"""The objects syncd provisions, as data: one :class:`EntitySpec` per entity, and the planned
:class:`Call` that carries them.

Everything that differs between a course, a user and an enrollment lives in its spec: the key
columns of its ``desired_*`` / ``acked_*`` rows, its slot in the provision payload and answer,
its plural, and what an admin knows it by. The store, the target and the engine loop over
:data:`SPECS` instead of naming entities, so a new entity (an exam) is one more spec here, its
tables in a migration (``syncd/store/schema.py``) and its mapping (the source and the desired SQL).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

Entity = Literal["course", "user", "enrollment", "exam"]


def _course_name(bodies: Mapping[str, dict[str, Any]]) -> str | None:
    return (bodies.get("course") or {}).get("title")


def _person(bodies: Mapping[str, dict[str, Any]]) -> str | None:
    user = bodies.get("user")
    if not user:
        return None
    return f"{user.get('firstName', '')} {user.get('lastName', '')}".strip() or None


def _exam_title(bodies: Mapping[str, dict[str, Any]]) -> str | None:
    return (bodies.get("exam") or {}).get("title")


def _enrollment_name(bodies: Mapping[str, dict[str, Any]]) -> str | None:
    person, title = _person(bodies), _course_name(bodies)
    return f"{person} in {title}" if person and title else person or title


# The OpenAPI schema's three results (SPEC §4) all acknowledge the object: "Found Existing" is what
# a real install answers for the people its own LMS integration created. The others are accepted
# as acknowledgements when a sid comes back. Anything else is not trusted: the object stays
# pending and the answer is reported.
KNOWN_RESULTS = {"created", "found existing", "updated", "unchanged", "existing", "exists", "enrolled", "ok",
                 "success"}


class Answer(NamedTuple):
    """The target's answer for one object that it acknowledged: its sid, and its word for what it
    did (``Created``, ``Updated``…, None when it said nothing), kept for `syncd explain`."""

    sid: str
    result: str | None = None


def parse_answer(entity: str, answer: Any) -> Answer:
    """The sid (and result) in the target's answer for one object, or ValueError saying why it
    acknowledges nothing. Every ``result`` the target documents (SPEC §4) acknowledges; see
    ``KNOWN_RESULTS``."""
    sid = answer.get("sid") if isinstance(answer, dict) else None
    result = answer.get("result") if isinstance(answer, dict) else None
    if not isinstance(sid, str) or not sid:
        raise ValueError(f"the response carries no {entity} sid")
    if result is not None and (not isinstance(result, str) or result.lower() not in KNOWN_RESULTS):
        raise ValueError(f"the response carries an unknown {entity} result {result!r}")
    return Answer(sid, result)


@dataclass(frozen=True)
class EntitySpec:
    name: Entity
    plural: str  # tables are stage_<plural>, desired_<plural>, acked_<plural>; summary counts too
    keys: tuple[str, ...]  # key columns of its desired/acked rows, besides tenant
    slot: str  # its key in the provision payload and in the answer
    # What an admin knows it by ("Biology 101", "Ann Smith", "Ann Smith in Biology 101"), from
    # the bodies of the call that carries it (entity -> body).
    label: Callable[[Mapping[str, dict[str, Any]]], str | None]
    parse: Callable[[str, Any], Answer] = parse_answer

    @property
    def desired(self) -> str:
        return f"desired_{self.plural}"

    @property
    def acked(self) -> str:
        return f"acked_{self.plural}"

    @property
    def stage(self) -> str:
        return f"stage_{self.plural}"


# In payload order: a call carries one course, at most one user and that user's enrollment, and at
# most one exam (SPEC §7; a tenant without ``exams`` never has an exam row).
SPECS: dict[Entity, EntitySpec] = {
    "course": EntitySpec("course", "courses", ("source_id",), "course", _course_name),
    "user": EntitySpec("user", "users", ("source_id",), "user", _person),
    "enrollment": EntitySpec("enrollment", "enrollments", ("course_id", "user_id"), "enrollment", _enrollment_name),
    "exam": EntitySpec("exam", "exams", ("source_id",), "exam", _exam_title),
}
ENTITIES: tuple[Entity, ...] = tuple(SPECS)
ROSTER: tuple[Entity, ...] = ("course", "user", "enrollment")  # the entities of a tenant without exams
SPECIFIC: tuple[Entity, ...] = ("enrollment", "exam", "user", "course")  # most specific first
PLURAL: dict[Entity, str] = {e: s.plural for e, s in SPECS.items()}
KEYS: dict[Entity, tuple[str, ...]] = {e: s.keys for e, s in SPECS.items()}


@dataclass(frozen=True)
class Part:
    """One object a call carries: its key, the mapped body, the sid the target gave it (when
    known and sent) and the hash of the body (what acknowledging it records)."""

    key: tuple[str, ...]
    body: dict[str, Any]
    sid: str | None = None
    hash: str | None = None
    source_id: str | None = None  # the source's own id, where it is not the key (an enrollment's)
    # The body's canonical JSON text (canonical_json(body)) as the store holds it, when read from
    # the store: acknowledging stores it as is rather than encoding the body again.
    text: str | None = None


@dataclass(frozen=True)
class Call:
    """One planned provision call, its parts by entity in payload order: one course, at most one
    user with their enrollment, at most one exam."""

    seq: int
    parts: dict[Entity, Part]

    @property
    def course_id(self) -> str:
        return self.parts["course"].key[0]

    @property
    def user_id(self) -> str | None:
        user = self.parts.get("user")
        return user.key[0] if user else None

    @property
    def exam_id(self) -> str | None:
        exam = self.parts.get("exam")
        return exam.key[0] if exam else None

    @property
    def innermost(self) -> Entity:
        """The most specific object the call carries, which a rejection is put on: its enrollment,
        else its exam, else its user, else its course."""
        return next(e for e in SPECIFIC if e in self.parts)

    def source_id(self, entity: Entity) -> str:
        part = self.parts.get(entity)
        if part is None:
            return ""
        return part.source_id or "/".join(part.key)

    def name(self, entity: Entity) -> str | None:
        return SPECS[entity].label({e: p.body for e, p in self.parts.items()})

    def describe(self) -> str:
        """"course c1, user u1, enrollment as learner": for an admin reading `--only`."""
        words = [f"course {self.course_id}"]
        if self.user_id:
            words.append(f"user {self.user_id}")
        if "enrollment" in self.parts:
            words.append(f"enrollment as {self.parts['enrollment'].body.get('role')}")
        if self.exam_id:
            words.append(f"exam {self.exam_id}")
        return ", ".join(words)
