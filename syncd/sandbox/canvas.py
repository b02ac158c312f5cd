"""A fake Canvas LMS that behaves like the real one where a roster sync can trip (reference/canvas.md §8).

- OAuth 2: ``/login/oauth2/auth`` (auto-approves, redirects with ``code`` and ``state``),
  ``/login/oauth2/token`` for ``authorization_code`` and ``refresh_token`` (form or Basic auth),
  access tokens that expire after ``token_ttl``, refresh answers without a new refresh token,
  ``invalid_grant`` "refresh_token not found" for a dead one, 401 + ``WWW-Authenticate`` for a
  bad access token; optional scope enforcement, and ``include[]`` ignored for scoped tokens
  unless includes are allowed.
- Paging: ``per_page`` default 10 and silently capped at ``max_per_page``; numeric pages without
  ``rel="last"`` for courses and users, bookmark pages for enrollments; absolute links; the
  ``Link`` header name in a random case.
- Throttle: a leaky bucket per grant (high-water mark 600, 50 up front per request in flight,
  refunded at the end, outflow 10/s, cost = the request's own time); throttled answers are
  ``403 Forbidden (Rate Limit Exceeded)`` in text/plain or 429, as chosen.
- ``provisioning_csv`` reports: created, running, complete with a ``file_url`` to a zip.
- Latency per API request, and scripted faults by path.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import random
import re
import secrets
import threading
import time
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from typing import Any

from syncd.sandbox.canvas_quizzes import SCOPES as QUIZ_SCOPES
from syncd.sandbox.canvas_quizzes import CanvasQuizzes
from syncd.sandbox.canvas_roster import CanvasRoster
from syncd.sandbox.server import DROP, Request, Response

SCOPES = {
    "courses": "url:GET|/api/v1/accounts/:account_id/courses",
    "users": "url:GET|/api/v1/accounts/:account_id/users",
    "enrollments": "url:GET|/api/v1/courses/:course_id/enrollments",
    "report_start": "url:POST|/api/v1/accounts/:account_id/reports/:report",
    "report_status": "url:GET|/api/v1/accounts/:account_id/reports/:report/:id",
} | QUIZ_SCOPES
UNPUBLISHED = ("created", "claimed")
RATE_LIMITED = b"403 Forbidden (Rate Limit Exceeded)\n"


@dataclass
class CanvasFault:
    path: str  # a regular expression searched in the request path
    status: int
    times: int | None = None  # None: forever
    drop: bool = False


@dataclass
class _Bucket:
    count: float = 0.0
    at: float = field(default_factory=time.monotonic)

    def leak(self, outflow: float) -> None:
        now = time.monotonic()
        self.count = max(0.0, self.count - (now - self.at) * outflow)
        self.at = now


@dataclass
class _Grant:
    refresh_token: str
    scopes: tuple[str, ...]
    bucket: _Bucket = field(default_factory=_Bucket)


@dataclass
class _Report:
    id: int
    started: float
    seconds: float
    parameters: dict[str, str]
    account_id: int
    file: bytes | None = None


@dataclass
class CanvasApp:
    roster: CanvasRoster
    client_id: str = "170000000000042"
    client_secret: str = "sandbox-canvas-key-secret"
    token_ttl: float = 3600.0
    max_per_page: int = 100
    latency_s: float = 0.0
    enforce_scopes: bool = False
    allow_includes: bool = True
    # Throttle (reference/canvas.md §4): a dozen requests in flight fill the bucket up front.
    throttle: bool = True
    throttle_status: int = 403
    hwm: float = 600.0
    up_front: float = 50.0
    outflow: float = 10.0
    # The provisioning report's run time: a queue delay plus a cost per row.
    report_delay_s: float = 1.0
    report_s_per_row: float = 0.00002
    faults: list[CanvasFault] = field(default_factory=list)
    expire_tokens_at_request: int | None = None  # every access token dies when this API request arrives
    quizzes: CanvasQuizzes | None = None  # classic and New Quizzes (canvas_quizzes.py), when seeded
    requests: int = 0
    token_requests: int = 0
    throttled: int = 0
    max_in_flight: int = 0
    _in_flight: int = 0
    _codes: dict[str, tuple[str, str]] = field(default_factory=dict)
    _grants: dict[str, _Grant] = field(default_factory=dict)  # refresh token -> grant
    _tokens: dict[str, tuple[_Grant, float]] = field(default_factory=dict)  # access token -> (grant, expiry)
    _reports: dict[int, _Report] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _rng: random.Random = field(default_factory=lambda: random.Random(7))
    _cache: dict[Any, Any] = field(default_factory=dict)

    # --- tokens the tests hand out directly -------------------------------------------------

    def issue_refresh_token(self, scopes: tuple[str, ...] = tuple(SCOPES.values())) -> str:
        """A refresh token as if an admin had authorized the key (for configs and tests)."""
        token = f"7~{secrets.token_urlsafe(32)}"
        with self._lock:
            self._grants[token] = _Grant(token, scopes)
        return token

    def issue_access_token(self, ttl: float | None = None) -> str:
        grant = _Grant(refresh_token="", scopes=tuple(SCOPES.values()))
        token = f"7~{secrets.token_urlsafe(32)}"
        with self._lock:
            self._tokens[token] = (grant, time.monotonic() + (ttl or 10 * 365 * 86400))
        return token

    def revoke_refresh_tokens(self) -> None:
        """The admin removed the integration: refresh tokens and their access tokens die."""
        with self._lock:
            self._grants.clear()
            self._tokens.clear()

    def expire_access_tokens(self) -> None:
        with self._lock:
            self._tokens = {t: (g, 0.0) for t, (g, _) in self._tokens.items()}

    # --- dispatch --------------------------------------------------------------------------

    def __call__(self, request: Request) -> Response | object:
        path = request.path
        if path == "/login/oauth2/auth" and request.method == "GET":
            return self._authorize(request)
        if path == "/login/oauth2/token":
            return self._token(request) if request.method == "POST" else self._revoke(request)
        if path.startswith("/files/"):
            return self._download(request)
        if not path.startswith(("/api/v1/", "/api/quiz/v1/")):
            return _errors(404, "The specified resource does not exist.")
        with self._lock:
            self.requests += 1
            if self.requests == self.expire_tokens_at_request:
                self._tokens = {t: (g, 0.0) for t, (g, _) in self._tokens.items()}
        for fault in self.faults:
            if re.search(fault.path, path) and (fault.times is None or fault.times > 0):
                if fault.times is not None:
                    fault.times -= 1
                return DROP if fault.drop else _errors(fault.status, "scripted fault")
        grant = self._grant_for(request)
        if isinstance(grant, Response):
            return grant
        return self._throttled(grant, request)

    def _throttled(self, grant: _Grant, request: Request) -> Response | object:
        """Canvas's leaky bucket: reserve up front, refund at the end, charge the request's time."""
        with self._lock:
            bucket = grant.bucket
            bucket.leak(self.outflow)
            if self.throttle and bucket.count >= self.hwm:
                self.throttled += 1
                if self.throttle_status == 429:
                    return Response(429, {"errors": [{"message": "Rate Limit Exceeded"}]},
                                    {"X-Rate-Limit-Remaining": "0.0"})
                return Response(403, raw=RATE_LIMITED, headers={"Content-Type": "text/plain; charset=utf-8",
                                                                "X-Rate-Limit-Remaining": "0.0"})
            bucket.count += self.up_front
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        started = time.monotonic()
        try:
            if self.latency_s:  # counted from the request's arrival
                request.wait_latency(self.latency_s)
            response = self._route(request, grant)
        finally:
            cost = time.monotonic() - started
            with self._lock:
                self._in_flight -= 1
                bucket.leak(self.outflow)
                bucket.count = max(0.0, bucket.count - self.up_front) + cost
                remaining = self.hwm - bucket.count
        if isinstance(response, Response):
            response.headers["X-Request-Cost"] = f"{cost:.4f}"
            response.headers["X-Rate-Limit-Remaining"] = f"{remaining:.1f}"
        return response

    def _route(self, request: Request, grant: _Grant) -> Response | object:
        exams = self.quizzes.route(self, request, grant) if self.quizzes else None
        if exams is not None:
            return exams
        parts = request.path.strip("/").split("/")[2:]  # after api/v1
        if len(parts) == 2 and parts[0] == "accounts" and _int(parts[1]) in self.roster.subtree(1):
            account = _int(parts[1])
            return Response(200, {"id": account, "name": f"Account {account}", "workflow_state": "active",
                                  "parent_account_id": None if account == 1 else 1, "root_account_id": None})
        if len(parts) == 3 and parts[0] == "accounts" and parts[2] in ("courses", "users"):
            if not self._scoped(grant, parts[2]):
                return _unauthorized()
            account = _int(parts[1])
            if account is None or account not in self.roster.subtree(1) | {1}:
                return _errors(404, "The specified resource does not exist.")
            if parts[2] == "courses":
                return self._courses(request, account)
            return self._users(request, account, grant)
        if len(parts) == 3 and parts[0] == "courses" and parts[2] == "enrollments":
            if not self._scoped(grant, "enrollments"):
                return _unauthorized()
            course = self.roster.courses.get(_int(parts[1]) or -1)
            if course is None:
                return _errors(404, "The specified resource does not exist.")
            return self._enrollments(request, course["id"], grant)
        if len(parts) >= 4 and parts[0] == "accounts" and parts[2] == "reports" and parts[3] == "provisioning_csv":
            if request.method == "POST" and len(parts) == 4:
                return self._report_start(request, _int(parts[1]) or 1, grant)
            if request.method == "GET" and len(parts) == 5:
                return self._report_status(request, _int(parts[4]) or -1, grant)
        return _errors(404, "The specified resource does not exist.")

    # --- collections -----------------------------------------------------------------------

    def _courses(self, request: Request, account: int) -> Response:
        states = set(request.query.get("state[]", [])) or {"created", "claimed", "available", "completed"}
        if "all" in states:
            states = {"created", "claimed", "available", "completed", "deleted"}
        wanted = {"unpublished" if s in UNPUBLISHED else s for s in states}
        accounts = self.roster.subtree(account)
        subs = request.query.get("by_subaccounts[]")
        if subs:
            accounts = set().union(*(self.roster.subtree(_int(s) or -1) for s in subs)) & accounts
        term = request.arg("enrollment_term_id")
        rows = [self._course_json(c) for c in self.roster.courses.values()
                if c["workflow_state"] in wanted and c["account_id"] in accounts
                and (term is None or str(c["enrollment_term_id"]) == term)]
        return self._numeric_page(request, rows)

    def _users(self, request: Request, account: int, grant: _Grant) -> Response:
        with_email = "email" in request.query.get("include[]", []) and self._includes(grant)

        def render(user_id: int) -> dict[str, Any]:
            user = self.roster.users[user_id]
            body = {k: user[k] for k in ("id", "name", "sortable_name", "short_name", "sis_user_id", "login_id",
                                         "created_at")}
            if with_email and user.get("email"):
                body["email"] = user["email"]
            return body

        return self._numeric_page(request, self._members(account), render)

    def _members(self, account: int) -> list[int]:
        """Users associated with the account (enrolled in one of its courses; the root: all), cached."""
        key = ("members", account, self.roster.revision, len(self.roster.users), len(self.roster.enrollments))
        if key not in self._cache:
            accounts = self.roster.subtree(account)
            if account == 1:
                members = set(self.roster.users)
            else:
                courses = {c for c, v in self.roster.courses.items() if v["account_id"] in accounts}
                members = {e["user_id"] for e in self.roster.enrollments.values() if e["course_id"] in courses}
            self._cache[key] = sorted(u for u in members if not self.roster.users[u].get("test_student"))
        return self._cache[key]

    def _of_course(self, course_id: int) -> list[dict[str, Any]]:
        """The course's enrollments, from an index rebuilt when enrollments are added."""
        key = ("by_course", len(self.roster.enrollments))
        if key not in self._cache:
            index: dict[int, list[dict[str, Any]]] = {}
            for enrollment in self.roster.enrollments.values():
                index.setdefault(enrollment["course_id"], []).append(enrollment)
            self._cache.clear()
            self._cache[key] = index
        return self._cache[key].get(course_id, [])

    def _enrollments(self, request: Request, course_id: int, grant: _Grant) -> Response:
        types = set(request.query.get("type[]", []))
        states = set(request.query.get("state[]", [])) or {"active", "invited", "inactive"}  # admin default
        rows = []
        for enrollment in self._of_course(course_id):
            if enrollment["enrollment_state"] not in states:
                continue
            # Canvas lists the Test Student whatever type[] says ("Results may include 'Test Student'").
            if types and enrollment["type"] not in types and enrollment["type"] != "StudentViewEnrollment":
                continue
            body = dict(enrollment)
            user = self.roster.users[enrollment["user_id"]]
            # Enrollment users never carry e-mail; include[]=user is implied on this endpoint.
            body["user"] = {k: user[k] for k in ("id", "name", "sortable_name", "short_name", "sis_user_id",
                                                 "login_id", "created_at")}
            body["sis_user_id"] = user["sis_user_id"]
            body["sis_course_id"] = self.roster.courses[course_id]["sis_course_id"]
            rows.append(body)
        rows.sort(key=lambda e: (e["type"], e["user"]["sortable_name"], e["id"]))
        return self._bookmark_page(request, rows)

    def _course_json(self, course: dict[str, Any]) -> dict[str, Any]:
        return dict(course)

    # --- paging ----------------------------------------------------------------------------

    def _per_page(self, request: Request) -> int:
        per_page = _int(request.arg("per_page") or "10") or 10
        return max(1, min(per_page, self.max_per_page))  # silently capped, never rejected

    def _numeric_page(self, request: Request, rows: list[Any], render: Any = None) -> Response:
        per_page = self._per_page(request)
        page = max(1, _int(request.arg("page") or "1") or 1)
        chunk = rows[(page - 1) * per_page: page * per_page]
        if render:
            chunk = [render(row) for row in chunk]
        links = {"current": page, "first": 1}
        if page * per_page < len(rows):
            links["next"] = page + 1
        if page > 1:
            links["prev"] = page - 1
        header = ", ".join(f'<{_link(request, page=str(n), per_page=str(per_page))}>; rel="{rel}"'
                           for rel, n in links.items())
        return Response(200, chunk, {self._link_name(): header})

    def _bookmark_page(self, request: Request, rows: list[dict[str, Any]]) -> Response:
        per_page = self._per_page(request)
        page = request.arg("page") or "first"
        start = 0
        if page.startswith("bookmark:"):
            try:
                after = json.loads(base64.urlsafe_b64decode(page[9:] + "=" * (-len(page[9:]) % 4)))
            except (ValueError, TypeError):
                return _errors(400, "invalid bookmark")
            start = next((i for i, e in enumerate(rows) if [e["type"], e["user"]["sortable_name"], e["id"]] > after),
                         len(rows))
        chunk = rows[start:start + per_page]
        parts = [f'<{_link(request, page=page, per_page=str(per_page))}>; rel="current"']
        if start + per_page < len(rows):
            last = chunk[-1]
            mark = base64.urlsafe_b64encode(json.dumps(
                [last["type"], last["user"]["sortable_name"], last["id"]]).encode()).decode().rstrip("=")
            parts.append(f'<{_link(request, page="bookmark:" + mark, per_page=str(per_page))}>; rel="next"')
        parts.append(f'<{_link(request, page="first", per_page=str(per_page))}>; rel="first"')
        return Response(200, chunk, {self._link_name(): ",".join(parts)})

    def _link_name(self) -> str:
        with self._lock:
            return self._rng.choice(("Link", "link", "LINK"))

    # --- reports ---------------------------------------------------------------------------

    def _report_start(self, request: Request, account: int, grant: _Grant) -> Response:
        if not self._scoped(grant, "report_start"):
            return _unauthorized()
        form = {**{k: v[0] for k, v in request.query.items()},
                **{k: v[0] for k, v in urllib.parse.parse_qs(request.body.decode()).items()}}
        parameters = {k[len("parameters["):-1]: v for k, v in form.items() if k.startswith("parameters[")}
        rows = len(self.roster.users) + len(self.roster.courses) + len(self.roster.enrollments)
        with self._lock:
            report = _Report(len(self._reports) + 1, time.monotonic(),
                             self.report_delay_s + rows * self.report_s_per_row, parameters, account)
            self._reports[report.id] = report
        # Canvas writes the file while the report runs; so does the fake, off the request thread.
        threading.Thread(target=self._build_report, args=(report,), daemon=True).start()
        return Response(200, self._report_json(request, report))

    def _build_report(self, report: _Report) -> None:
        report.file = self._report_zip(report)

    def _report_status(self, request: Request, report_id: int, grant: _Grant) -> Response:
        if not self._scoped(grant, "report_status"):
            return _unauthorized()
        report = self._reports.get(report_id)
        if report is None:
            return _errors(404, "The specified resource does not exist.")
        return Response(200, self._report_json(request, report))

    def _report_json(self, request: Request, report: _Report) -> dict[str, Any]:
        elapsed = time.monotonic() - report.started
        body: dict[str, Any] = {"id": report.id, "report": "provisioning_csv", "parameters": report.parameters,
                                "created_at": "2026-11-24T10:00:00Z", "current_line": None}
        if elapsed < report.seconds * 0.2:
            return body | {"status": "created", "progress": 0, "file_url": None}
        if elapsed < report.seconds or report.file is None:
            progress = min(99, int(100 * elapsed / report.seconds))
            return body | {"status": "running", "progress": progress, "file_url": None}
        base = request.url.split("/api/v1/")[0]
        url = f"{base}/files/{report.id}/download?download_frd=1&verifier={secrets.token_hex(8)}"
        return body | {"status": "complete", "progress": 100, "file_url": url,
                       "attachment": {"id": report.id, "filename": "provisioning.zip", "url": url,
                                      "content-type": "application/zip", "size": len(report.file)}}

    def _report_zip(self, report: _Report) -> bytes:
        """users.csv, courses.csv, enrollments.csv as hosted Canvas writes them (no deleted or
        concluded rows without include_deleted)."""
        roster, accounts = self.roster, self.roster.subtree(report.account_id)
        term = report.parameters.get("enrollment_term_id")
        status = {"available": "active", "unpublished": "unpublished", "completed": "concluded",
                  "deleted": "deleted"}
        courses = {c: v for c, v in roster.courses.items() if v["account_id"] in accounts
                   and v["workflow_state"] in ("available", "unpublished")
                   and (not term or str(v["enrollment_term_id"]) == term)}
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("courses.csv", _csv(
                ["canvas_course_id", "course_id", "integration_id", "short_name", "long_name", "canvas_account_id",
                 "account_id", "canvas_term_id", "term_id", "status", "start_date", "end_date", "created_by_sis"],
                ([c["id"], c["sis_course_id"], "", c["course_code"], c["name"], c["account_id"], "",
                  c["enrollment_term_id"], "", status[c["workflow_state"]], c["start_at"], c["end_at"], "false"]
                 for c in courses.values())))
            archive.writestr("users.csv", _csv(
                ["canvas_user_id", "user_id", "integration_id", "authentication_provider_id", "login_id",
                 "first_name", "last_name", "full_name", "sortable_name", "short_name", "email", "status",
                 "created_by_sis"],
                ([u["id"], u["sis_user_id"], "", "", u["login_id"], *_report_names(u), u["name"],
                  u["sortable_name"], u["short_name"], u["email"], "active", "false"]
                 for u in roster.users.values() if not u.get("test_student"))))
            archive.writestr("enrollments.csv", _csv(
                ["canvas_course_id", "course_id", "canvas_user_id", "user_id", "role", "role_id",
                 "canvas_section_id", "section_id", "status", "canvas_associated_user_id", "associated_user_id",
                 "created_by_sis", "base_role_type", "limit_section_privileges"],
                ([e["course_id"], roster.courses[e["course_id"]]["sis_course_id"], e["user_id"],
                  roster.users[e["user_id"]]["sis_user_id"], _report_role(e), 3, e["course_section_id"], "",
                  e["enrollment_state"], e["associated_user_id"], "", "false", e["type"], "false"]
                 for e in roster.enrollments.values()
                 if e["course_id"] in courses and e["enrollment_state"] not in ("deleted", "completed")
                 and e["type"] != "StudentViewEnrollment")))
        return out.getvalue()

    def _download(self, request: Request) -> Response:
        report = self._reports.get(_int(request.path.split("/")[2]) or -1)
        if report is None or report.file is None or not request.arg("verifier"):
            return _errors(404, "The specified resource does not exist.")
        return Response(200, raw=report.file, headers={"Content-Type": "application/zip"})

    # --- OAuth -----------------------------------------------------------------------------

    def _authorize(self, request: Request) -> Response:
        redirect = request.arg("redirect_uri") or ""
        if request.arg("client_id") != self.client_id or request.arg("response_type") != "code" or not redirect:
            return Response(400, {"error": "invalid_request"})
        code = secrets.token_urlsafe(16)
        scopes = tuple((request.arg("scope") or "").split())
        with self._lock:
            self._codes[code] = (redirect, " ".join(scopes))
        state = {"state": request.arg("state")} if request.arg("state") else {}
        query = urllib.parse.urlencode({"code": code, **state})
        return Response(302, raw=b"", headers={"Location": f"{redirect}?{query}"})

    def _token(self, request: Request) -> Response:
        with self._lock:
            self.token_requests += 1
        form = {k: v[0] for k, v in urllib.parse.parse_qs(request.body.decode()).items()}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        if client_id != self.client_id or secret != self.client_secret:
            return Response(401, {"error": "invalid_client", "error_description": "unknown client"},
                            {"WWW-Authenticate": "Canvas OAuth 2.0"})
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            with self._lock:
                found = self._codes.pop(form.get("code", ""), None)
            if found is None:
                return Response(400, {"error": "invalid_grant", "error_description": "authorization_code not found"})
            if found[0] != form.get("redirect_uri"):
                return Response(400, {"error": "invalid_request",
                                      "error_description": "redirect_uri does not match client settings"})
            refresh = self.issue_refresh_token(tuple(found[1].split()) or tuple(SCOPES.values()))
            return Response(200, self._new_access(self._grants[refresh]) | {"refresh_token": refresh})
        if grant_type == "refresh_token":
            with self._lock:
                grant = self._grants.get(form.get("refresh_token", ""))
            if grant is None:
                return Response(400, {"error": "invalid_grant", "error_description": "refresh_token not found"})
            return Response(200, self._new_access(grant))
        return Response(400, {"error": "unsupported_grant_type"})

    def _new_access(self, grant: _Grant) -> dict[str, Any]:
        token = f"7~{secrets.token_urlsafe(32)}"
        with self._lock:
            self._tokens[token] = (grant, time.monotonic() + self.token_ttl)
        return {"access_token": token, "token_type": "Bearer", "user": {"id": 1, "name": "Sync Admin"},
                "expires_in": int(self.token_ttl), "canvas_region": "unknown"}

    def _revoke(self, request: Request) -> Response:
        token = _bearer(request)
        with self._lock:
            self._tokens.pop(token, None)
        return Response(200, {})

    def _grant_for(self, request: Request) -> _Grant | Response:
        token = _bearer(request)
        with self._lock:
            entry = self._tokens.get(token)
        if entry is None or entry[1] < time.monotonic():
            message = "Invalid access token." if entry is None else "Expired access token."
            return Response(401, {"errors": [{"message": message}]},
                            {"WWW-Authenticate": 'Bearer realm="canvas-lms"'})
        return entry[0]

    def _scoped(self, grant: _Grant, what: str) -> bool:
        return not self.enforce_scopes or SCOPES[what] in grant.scopes

    def _includes(self, grant: _Grant) -> bool:
        return self.allow_includes or not self.enforce_scopes


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    return header[7:] if header.lower().startswith("bearer ") else ""


def _link(request: Request, **changes: str) -> str:
    """An absolute link with ``changes`` applied; a query ``access_token`` is never echoed."""
    base, _, query = request.url.partition("?")
    params = [(k, v) for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True)
              if k not in changes and k != "access_token"]
    params += list(changes.items())
    return f"{base}?{urllib.parse.urlencode(params)}"


def _report_names(user: dict[str, Any]) -> tuple[str, str]:
    sortable = user.get("sortable_name") or ""
    if ", " in sortable:
        last, first = sortable.split(", ", 1)
        return first, last
    return user.get("short_name") or "", ""


def _report_role(enrollment: dict[str, Any]) -> str:
    names = {"StudentEnrollment": "student", "TeacherEnrollment": "teacher", "TaEnrollment": "ta",
             "DesignerEnrollment": "designer", "ObserverEnrollment": "observer"}
    role = enrollment.get("role") or enrollment["type"]
    return names.get(role, role)  # custom roles keep their own name; base_role_type says the type


def _csv(header: list[str], rows: Any) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _errors(status: int, message: str) -> Response:
    return Response(status, {"errors": [{"message": message}]})


def _unauthorized() -> Response:
    message = "user not authorized to perform that action"
    return Response(401, {"status": "unauthorized", "errors": [{"message": message}]})
