"""A fake SmarterProctoring provision API that validates bodies and upserts by stable ids.

``POST /v2/installs/{installSid}/provision`` with the ``token`` header. A course or user is
found by ``ids.sid``, else ``ids.external``, else ``ids.lms``; an enrollment by (course, user).
Each object's ``result`` is ``Created``, ``Found Existing`` (same fields) or ``Updated``.
Faults: per-request latency (``latency_s``: the answer leaves that long after the request
arrived, as a real server's would, and the call is applied after the wait, so a client killed
meanwhile left nothing applied), scripted statuses (5xx, 429 with or without Retry-After),
responses lost after the write was applied, and rejections of chosen records (4xx with a message).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from syncd.sandbox.provision_exams import ExamBook
from syncd.sandbox.server import DROP, Request, Response

TOP_LEVEL = {"course", "user", "enrollment", "exam", "signon"}
# The three results of the real API's OpenAPI schema: a new object, an object that already held
# exactly these fields, and an object whose fields changed.
CREATED, FOUND_EXISTING, UPDATED = "Created", "Found Existing", "Updated"


@dataclass
class Scripted:
    status: int | str  # an HTTP status, or "drop_after_apply"
    times: int = 1
    retry_after: str | None = None


@dataclass
class ProvisionApp:
    install_sid: str = "AI0123456789abcdef0123456789abcdef"
    token: str = "sandbox-target-token-0000"
    latency_s: float = 0.0
    courses: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    enrollments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    calls: int = 0
    applied: int = 0
    script: list[Scripted] = field(default_factory=list)
    disabled: set[str] = field(default_factory=set)  # user sids that may not sign in
    # body -> (status, message) to reject that call, or None to accept it
    reject: Callable[[dict[str, Any]], tuple[int, str] | None] | None = None
    exam_book: ExamBook = field(default_factory=ExamBook)  # exams and their configurations (provision_exams.py)
    _index: dict[tuple[str, str, str], str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Request) -> Response | object:
        with self._lock:
            self.calls += 1
        if self.latency_s:  # counted from the request's arrival, and before anything is applied
            # The body is read while the latency runs, as a real server's 20 ms include its own
            # parsing: only what comes after (apply, answer) is on top of latency_s.
            parsed = _parsed(request)
            request.wait_latency(self.latency_s)
        else:
            parsed = None
        if request.method == "PUT" and request.path.startswith(f"/v1/installs/{self.install_sid}/users/"):
            return self._set_enabled(request)
        if request.method == "PUT" and "/exams/" in request.path:  # v1 exam update / soft delete
            return self.exam_book.put(request, self.install_sid) if request.headers.get("token") == self.token \
                else Response(401, {"message": "invalid token"})
        expected = f"/v2/installs/{self.install_sid}/provision"
        if request.method != "POST" or request.path != expected:
            return Response(404, {"message": f"no route {request.method} {request.path}"})
        if request.headers.get("token") != self.token:
            return Response(401, {"message": "invalid token"})
        scripted = self._next_scripted()
        if scripted is not None and scripted.status != "drop_after_apply":
            headers = {"Retry-After": scripted.retry_after} if scripted.retry_after else {}
            return Response(int(scripted.status), {"message": "scripted failure"}, headers)
        body, problem = parsed or _parsed(request)
        if problem:
            return Response(400, {"message": problem})
        exam_problem = self.exam_book.problem(body)
        if exam_problem:
            return exam_problem
        if self.reject:
            rejected = self.reject(body)
            if rejected:
                return Response(rejected[0], {"message": rejected[1]})
        try:
            result = self._apply(body)
        except LookupError as exc:
            return Response(404, {"message": str(exc)})
        if scripted is not None:
            return DROP  # applied, but the client never hears of it
        return Response(200, result)

    def _set_enabled(self, request: Request) -> Response:
        """``PUT /v1/installs/{installSid}/users/{userSid}`` with ``{"enabled": bool}``."""
        if request.headers.get("token") != self.token:
            return Response(401, {"message": "invalid token"})
        sid = request.path.rsplit("/", 1)[-1]
        try:
            enabled = request.json().get("enabled")
        except (ValueError, AttributeError):
            enabled = None
        if not isinstance(enabled, bool):
            return Response(400, {"message": "enabled must be true or false"})
        with self._lock:
            if sid not in self.users:
                return Response(404, {"message": f"no user {sid}"})
            (self.disabled.discard if enabled else self.disabled.add)(sid)
        return Response(200, {"sid": sid, "enabled": enabled})

    def _next_scripted(self) -> Scripted | None:
        with self._lock:
            while self.script:
                head = self.script[0]
                if head.times <= 0:
                    self.script.pop(0)
                    continue
                head.times -= 1
                return head
        return None

    def _apply(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.applied += 1
            course_sid, course_result = self._upsert("course", self.courses, body["course"], "CU")
            result: dict[str, Any] = {"course": {"sid": course_sid, "result": course_result}}
            if "exam" in body:
                result |= self.exam_book.apply(course_sid, body["exam"])
            if "user" in body:
                user_sid, user_result = self._upsert("user", self.users, body["user"], "US")
                result["user"] = {"sid": user_sid, "result": user_result}
                key = (course_sid, user_sid)
                enrollment = self.enrollments.get(key)
                role = (body.get("enrollment") or {}).get("role", "learner")
                if enrollment is None:
                    enrollment = {"sid": "EN" + secrets.token_hex(16), "role": role}
                    self.enrollments[key] = enrollment
                    outcome = CREATED
                else:
                    outcome = FOUND_EXISTING if enrollment["role"] == role else UPDATED
                    enrollment["role"] = role
                result["enrollment"] = {"sid": enrollment["sid"], "result": outcome}
            return result

    def _upsert(self, kind: str, table: dict[str, dict[str, Any]], obj: dict[str, Any],
                prefix: str) -> tuple[str, str]:
        ids = obj.get("ids") or {}
        sid = ids.get("sid")
        if sid and sid not in table:
            raise LookupError(f"unknown {kind} sid {sid}")
        for id_kind in ("external", "lms"):
            if not sid and ids.get(id_kind):
                sid = self._index.get((kind, id_kind, ids[id_kind]))
        record = {k: v for k, v in obj.items() if k != "ids"}
        record["ids"] = {k: v for k, v in ids.items() if k != "sid"}
        if not sid:
            outcome, sid = CREATED, prefix + secrets.token_hex(16)
        else:
            outcome = FOUND_EXISTING if table[sid] == record else UPDATED
        table[sid] = record
        for id_kind in ("external", "lms"):
            if ids.get(id_kind):
                self._index[(kind, id_kind, ids[id_kind])] = sid
        return sid, outcome

    # --- views for tests -------------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[Any, dict[str, Any]]]:
        """The target's roster keyed like :func:`expected_mapping` (by external ids)."""
        with self._lock:
            def external(record: dict[str, Any]) -> str:
                return record["ids"].get("external") or record["ids"].get("lms")

            courses = {external(c): {k: v for k, v in c.items() if k != "ids"} for c in self.courses.values()}
            users = {external(u): {k: v for k, v in u.items() if k != "ids"} for u in self.users.values()}
            enrollments = {(external(self.courses[c]), external(self.users[u])): {"role": e["role"]}
                           for (c, u), e in self.enrollments.items()}
        return {"courses": courses, "users": users, "enrollments": enrollments}

    def duplicates(self) -> int:
        """Objects that share an external id (there must be none)."""
        with self._lock:
            seen: dict[tuple[str, str], int] = {}
            for kind, table in (("course", self.courses), ("user", self.users)):
                for record in table.values():
                    key = (kind, record["ids"].get("external") or record["ids"].get("lms"))
                    seen[key] = seen.get(key, 0) + 1
        return sum(n - 1 for n in seen.values() if n > 1)

    def wipe(self) -> None:
        """The target loses all its data (what `syncd sync --force` repairs)."""
        with self._lock:
            self.courses.clear()
            self.users.clear()
            self.enrollments.clear()
            self._index.clear()
            self.exam_book = ExamBook()


def validate(body: Any) -> str | None:
    """Why a provision body is invalid, or None."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    unknown = set(body) - TOP_LEVEL
    if unknown:
        return f"unknown top-level keys: {sorted(unknown)}"
    course = body.get("course")
    if not isinstance(course, dict):
        return "course is required"
    problem = _ids(course, "course") or _string(course, "title", "course") or _optional(course, "code", "course")
    if problem:
        return problem
    if "enrollment" in body and "user" not in body:
        return "enrollment requires user"
    user = body.get("user")
    if user is not None:
        if not isinstance(user, dict):
            return "user must be an object"
        problem = (_ids(user, "user") or _string(user, "firstName", "user") or _string(user, "lastName", "user")
                   or _optional(user, "email", "user") or _optional(user, "timeZone", "user"))
        if problem:
            return problem
        if "email" in user and "@" not in user["email"]:
            return f"user.email {user['email']!r} is not an e-mail address"
    enrollment = body.get("enrollment")
    if enrollment is not None and (not isinstance(enrollment, dict) or not isinstance(enrollment.get("role"), str)):
        return "enrollment.role must be a string"
    return None


def _ids(obj: dict[str, Any], kind: str) -> str | None:
    ids = obj.get("ids")
    if not isinstance(ids, dict) or not any(isinstance(ids.get(k), str) and ids[k] for k in ("sid", "external", "lms")):
        return f"{kind}.ids needs sid, external or lms"
    if any(not isinstance(v, str) for v in ids.values()):
        return f"{kind}.ids values must be strings"
    return None


def _string(obj: dict[str, Any], key: str, kind: str) -> str | None:
    value = obj.get(key)
    return None if isinstance(value, str) and value.strip() else f"{kind}.{key} is required"


def _optional(obj: dict[str, Any], key: str, kind: str) -> str | None:
    if key in obj and (not isinstance(obj[key], str) or not obj[key]):
        return f"{kind}.{key} must be a non-empty string when present"
    return None


def _parsed(request: Request) -> tuple[Any, str | None]:
    """(the provision body, what makes it invalid or None); reads nothing of the app's state."""
    if request.method != "POST":
        return None, None
    try:
        body = request.json()
    except ValueError:
        return None, "body is not JSON"
    return body, validate(body)
