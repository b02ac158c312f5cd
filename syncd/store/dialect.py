"""What differs between the two state stores' SQL, side by side (SPEC §11).

The store's SQL is written once, in the words both SQLite and PostgreSQL accept (``?``
placeholders, which the PostgreSQL connection turns into ``%s``; ``ON CONFLICT DO NOTHING``;
``UPDATE … FROM``; row values; window functions). The few places where the dialects disagree are
methods here, the SQLite form beside the PostgreSQL one:

- a body's canonical JSON text: ``json_patch('{}', json_object(…))`` | ``'{' || concat_ws(',', '"k":' ||
  to_json(v), …) || '}'`` (both omit a NULL member);
- the content hash of that text: ``digest(text)`` (blake2b, a Python UDF) | ``md5(text)`` (the server
  has no blake2b and runs no Python);
- a record key (a JSON array's text): ``json_array(a, b)`` | ``'[' || concat_ws(',', to_json(a), …) || ']'``;
- the elements of a JSON array parameter: ``json_each(?)`` | ``json_array_elements_text(?::json)``;
- NULL-safe (in)equality: ``IS`` / ``IS NOT`` | ``IS NOT DISTINCT FROM`` / ``IS DISTINCT FROM``;
- table statistics after a bulk load: none (SQLite plans by its indexes) | ``ANALYZE`` (a freshly
  filled table has none, and the planner then nests loops over 100k rows: quadratic);
- a write transaction: ``BEGIN IMMEDIATE`` (the write lock up front) | ``BEGIN`` (row locks; a run
  holds its tenant's lease, so no other writer touches its rows).

Bodies and keys are TEXT on both, in the exact text :func:`syncd.model.canonical_json` and
:func:`syncd.store.base.key_json` make: keys sorted, no whitespace, UTF-8 (not ``\\u`` escapes),
absent members omitted. So a body acknowledged on one store compares equal on the other, and
``state copy`` only has to recompute the hash (each store hashes that same text its own way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

# A member of a body: its SQL value (a scalar expression, NULL meaning "omit the member"), a JSON
# value, or a nested object (always present, possibly empty, as SQLite's json_patch leaves it).
Member = Union[str, "Json", "Obj"]


@dataclass(frozen=True)
class Json:
    """A member whose SQL value is already JSON text (a number, ``true``/``false``, an object in
    canonical text), nested as JSON, not as a string; NULL omits it. An integer column is one too."""

    sql: str


@dataclass(frozen=True)
class Obj:
    """A JSON object whose text is built in SQL; members are written in sorted key order."""

    members: dict[str, Member]
    # SQLite only: the members in the order given, not sorted. The exam bodies were first written
    # so, and a new text would push every exam again once (PostgreSQL always sorts: canonical).
    ordered: bool = False

    def items(self) -> list[tuple[str, Member]]:
        return sorted(self.members.items())


class Dialect:
    name: str

    def body(self, obj: Obj) -> str:
        """SQL for the canonical JSON text of ``obj`` (NULL members omitted)."""
        raise NotImplementedError

    def hash(self, text: str) -> str:
        """SQL for the content hash of a canonical JSON text."""
        raise NotImplementedError

    def key(self, *columns: str) -> str:
        """SQL for a record key: a JSON array of text, in :func:`key_json`'s exact text."""
        raise NotImplementedError

    def each_text(self, param: str) -> str:
        """A one-column (``value``) table of the text elements of a JSON array parameter."""
        raise NotImplementedError

    def each_pair(self, param: str) -> str:
        """A two-column table of the ``[[a, b], …]`` text pairs of a JSON array parameter (for a
        row value's ``IN``)."""
        raise NotImplementedError

    def roles(self, param: str) -> str:
        """The ``[[source, target], …]`` parameter as rows (source_role, target_role, priority)."""
        raise NotImplementedError

    def same(self, left: str, right: str) -> str:
        raise NotImplementedError

    def differs(self, left: str, right: str) -> str:
        raise NotImplementedError

    def member(self, text: str, key: str) -> str:
        """SQL for one text member of a JSON object's text (``a.b``: member b of member a)."""
        raise NotImplementedError

    def element(self, text: str, index: int) -> str:
        """SQL for one text element of a JSON array's text (a stored key's column)."""
        raise NotImplementedError

    def analyze(self, *tables: str) -> list[str]:
        """Statements that refresh the planner's statistics of freshly filled tables."""
        return []

    begin: str


class SQLite(Dialect):
    name = "sqlite"
    begin = "BEGIN IMMEDIATE"

    def body(self, obj: Obj) -> str:
        # json_patch('{}', …) drops every null member (RFC 7396), nested ones too.
        return f"json_patch('{{}}', {self._object(obj)})"

    def _object(self, obj: Obj) -> str:
        parts = [f"'{key}', {self._value(v)}" for key, v in (obj.members.items() if obj.ordered else obj.items())]
        return f"json_object({', '.join(parts)})"

    def _value(self, member: Member) -> str:
        if isinstance(member, Obj):
            return self._object(member)
        return f"json({member.sql})" if isinstance(member, Json) else member

    def hash(self, text: str) -> str:
        return f"digest({text})"

    def key(self, *columns: str) -> str:
        return f"json_array({', '.join(columns)})"

    def each_text(self, param: str) -> str:
        return f"SELECT value FROM json_each({param})"

    def each_pair(self, param: str) -> str:
        return f"SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each({param})"

    def roles(self, param: str) -> str:
        return ("SELECT json_extract(value, '$[0]') AS source_role, json_extract(value, '$[1]') AS target_role, "
                f"CAST(key AS INTEGER) AS priority FROM json_each({param})")

    def same(self, left: str, right: str) -> str:
        return f"{left} IS {right}"

    def member(self, text: str, key: str) -> str:
        return f"json_extract({text}, '$.{key}')"

    def element(self, text: str, index: int) -> str:
        return f"json_extract({text}, '$[{index}]')"

    def differs(self, left: str, right: str) -> str:
        return f"{left} IS NOT {right}"


class Postgres(Dialect):
    name = "postgresql"
    begin = "BEGIN"

    def body(self, obj: Obj) -> str:
        # concat_ws skips NULLs: a member whose value is NULL is omitted, as json_patch does.
        # to_json() escapes text as json.dumps(ensure_ascii=False) does (", \, and controls as \u00xx).
        members = [f"'\"{key}\":' || {self._value(v)}" for key, v in obj.items()]
        return f"('{{' || concat_ws(',', {', '.join(members)}) || '}}')"

    def _value(self, member: Member) -> str:
        if isinstance(member, Obj):
            return self.body(member)
        if isinstance(member, Json):  # its text as it is: a number's or a boolean's is canonical already
            return f"CAST({member.sql} AS TEXT)"
        return f"to_json(CAST({member} AS TEXT))::text"

    def hash(self, text: str) -> str:
        return f"md5({text})"

    def key(self, *columns: str) -> str:
        return f"('[' || concat_ws(',', {', '.join(f'to_json(CAST({c} AS TEXT))::text' for c in columns)}) || ']')"

    def each_text(self, param: str) -> str:
        return f"SELECT value FROM json_array_elements_text(CAST({param} AS json)) AS t(value)"

    def each_pair(self, param: str) -> str:
        return f"SELECT p->>0, p->>1 FROM json_array_elements(CAST({param} AS json)) AS t(p)"

    def roles(self, param: str) -> str:
        return ("SELECT r->>0 AS source_role, r->>1 AS target_role, n AS priority "
                f"FROM json_array_elements(CAST({param} AS json)) WITH ORDINALITY AS t(r, n)")

    def same(self, left: str, right: str) -> str:
        return f"{left} IS NOT DISTINCT FROM {right}"

    def member(self, text: str, key: str) -> str:
        if "." in key:  # a nested member, "ids.external", as SQLite's '$.ids.external' path
            return f"(CAST({text} AS json)#>>'{{{key.replace('.', ',')}}}')"
        return f"(CAST({text} AS json)->>'{key}')"

    def element(self, text: str, index: int) -> str:
        return f"(CAST({text} AS json)->>{index})"

    def analyze(self, *tables: str) -> list[str]:
        return [f"ANALYZE {', '.join(tables)}"]

    def differs(self, left: str, right: str) -> str:
        return f"{left} IS DISTINCT FROM {right}"


SQLITE = SQLite()
POSTGRES = Postgres()
