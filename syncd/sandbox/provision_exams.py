"""Exams in the fake provision API: validation as the OpenAPI requires (reference/exams.md §6), and
exams with their primary configuration matched on ``ids.external`` (or ``ids.sid``).

A body that breaks the schema is ``INVALIDINPUT`` (400); an unknown exam sid is
``RESOURCENOTFOUND`` (404). The first call for an exam answers ``Created``, the same fields again
``Found Existing``, changed fields ``Updated``, each with its ``EX…`` / ``EC…`` sid (32 lowercase
alphanumerics). The v1 ``PUT …/courses/{courseSid}/exams/{examSid}`` replaces an exam with its
``status`` (``active``, ``draft`` or ``deleted``).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from syncd.sandbox.server import Request, Response

EXAM_SID = re.compile(r"^EX[a-z0-9]{32}$")
PROCTOR_TYPE = re.compile(r"^TS[a-zA-Z0-9]{32}$")
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")
EXAM_KEYS = {"ids", "title", "description", "type", "practice", "limitedScope", "deliverySystem", "configuration"}
CONFIGURATION_KEYS = {"ids", "type", "url", "access", "scheduling", "duration", "password", "attempts", "notes",
                      "proctorTypes", "permittedItems"}
STATUSES = ("active", "draft", "deleted")


def _window_moved(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Did the access window or the duration change while the old window was open already?"""
    opened = (old.get("access") or {}).get("open", "")
    try:
        started = datetime.fromisoformat(opened.replace("Z", "+00:00")) <= datetime.now(UTC)
    except ValueError:
        return False
    return started and (old.get("access") != new.get("access") or old.get("duration") != new.get("duration"))


def invalid(message: str) -> Response:
    return Response(400, {"code": "INVALIDINPUT", "message": message})


@dataclass
class ExamBook:
    exams: dict[str, dict[str, Any]] = field(default_factory=dict)  # exam sid -> record
    by_external: dict[str, str] = field(default_factory=dict)
    config_ids_object: bool = True  # accept configuration.ids as an object too (the sample does)
    one_id_type: bool = False  # reject ids carrying both sid and external
    puts: int = 0
    # External ids of exams whose window or duration changed after the window had opened: what
    # breaks students' bookings (exams.md §4), and what syncd's window guard must prevent.
    late_changes: list[str] = field(default_factory=list)

    # --- validation ----------------------------------------------------------------------

    def problem(self, body: dict[str, Any]) -> Response | None:
        """The error answer for the body's exam, or None when it is valid (or has no exam)."""
        if "exam" not in body:
            return None
        exam = body["exam"]
        if not isinstance(exam, dict):
            return invalid("exam must be an object")
        message = self._exam(exam)
        if message:
            return invalid(message)
        sid = exam["ids"].get("sid")
        if sid and sid not in self.exams:
            return Response(404, {"code": "RESOURCENOTFOUND", "message": f"unknown exam sid {sid}"})
        return None

    def _exam(self, exam: dict[str, Any]) -> str | None:
        unknown = set(exam) - EXAM_KEYS
        if unknown:
            return f"exam: unknown keys {sorted(unknown)}"
        ids = exam.get("ids")
        if not isinstance(ids, dict) or not ids or set(ids) - {"sid", "external"}:
            return "Exam IDs must contain either sid or external"
        if any(not isinstance(v, str) or not v for v in ids.values()):
            return "exam.ids values must be non-empty strings"
        if "sid" in ids and not EXAM_SID.match(ids["sid"]):
            return "exam.ids.sid must match ^EX[a-z0-9]{32}$"
        if self.one_id_type and len(ids) > 1:
            return "exam.ids: only one ID type is allowed"
        new = "sid" not in ids and ids.get("external") not in self.by_external
        if new and not (isinstance(exam.get("title"), str) and exam["title"].strip()):
            return "exam.title is required for a new exam"
        if new and "configuration" not in exam:
            return "exam.configuration is required for a new exam"
        checks = (
            ("title", lambda v: isinstance(v, str) and v.strip()),
            ("description", lambda v: v is None or isinstance(v, str)),
            ("type", lambda v: v in ("online", "written")),
            ("practice", lambda v: isinstance(v, bool)),
            ("limitedScope", lambda v: isinstance(v, bool)),
            ("deliverySystem", lambda v: v is None or isinstance(v, str)),  # "" accepted, as the sample sends
        )
        for key, ok in checks:
            if key in exam and not ok(exam[key]):
                return f"exam.{key} has an invalid value"
        if "configuration" in exam:
            return self._configuration(exam["configuration"])
        return None

    def _configuration(self, configuration: Any) -> str | None:
        if not isinstance(configuration, dict):
            return "exam.configuration must be an object"
        unknown = set(configuration) - CONFIGURATION_KEYS
        if unknown:
            return f"exam.configuration: unknown keys {sorted(unknown)}"
        if "ids" in configuration and not (isinstance(configuration["ids"], str) or
                                           (self.config_ids_object and isinstance(configuration["ids"], dict))):
            return "exam.configuration.ids must be a string"
        if configuration.get("type", "primary") not in ("primary", "accommodation"):
            return "exam.configuration.type must be primary or accommodation"
        for key in ("url", "password"):
            if not isinstance(configuration.get(key), str) or not configuration[key]:
                return f"exam.configuration.{key} is required"
        access = configuration.get("access")
        if not isinstance(access, dict) or not all(isinstance(access.get(k), str) and ISO_DATE.match(access[k])
                                                   for k in ("open", "close")):
            return "exam.configuration.access.open and access.close are required isoDates"
        scheduling = configuration.get("scheduling") or {}
        if not isinstance(scheduling, dict) or any(
                v not in ("", None) and not (isinstance(v, str) and ISO_DATE.match(v)) for v in scheduling.values()):
            return "exam.configuration.scheduling dates must be isoDates or empty"
        for key, required in (("duration", True), ("attempts", False)):
            value = configuration.get(key)
            if (value is not None or required) and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                return f"exam.configuration.{key} must be a positive integer"
        types = configuration.get("proctorTypes")
        if not isinstance(types, dict) or not types:
            return "exam.configuration.proctorTypes is required"
        for sid, value in types.items():
            if not PROCTOR_TYPE.match(sid) or not isinstance(value, dict):
                return f"exam.configuration.proctorTypes: {sid!r} is not a proctor type sid with an object"
        return None

    # --- upsert --------------------------------------------------------------------------

    def apply(self, course_sid: str, exam: dict[str, Any]) -> dict[str, Any]:
        """Upsert a validated exam; the response's ``exam`` and ``configuration`` parts."""
        ids = exam["ids"]
        sid = ids.get("sid") or self.by_external.get(ids.get("external", ""))
        fields = {k: v for k, v in exam.items() if k not in ("ids", "configuration")}
        configuration = {k: v for k, v in (exam.get("configuration") or {}).items() if k != "ids"}
        if sid is None:
            sid = "EX" + secrets.token_hex(16)
            record = {"sid": sid, "course": course_sid, "external": ids.get("external"), "fields": fields,
                      "configuration": configuration, "configuration_sid": "EC" + secrets.token_hex(16),
                      "status": "active"}
            self.exams[sid] = record
            if ids.get("external"):
                self.by_external[ids["external"]] = sid
            return self._answer(record, "Created", "Created")
        record = self.exams[sid]
        exam_changed = {**record["fields"], **fields} != record["fields"] or record["course"] != course_sid
        config_changed = bool(configuration) and configuration != record["configuration"]
        if config_changed and _window_moved(record["configuration"], configuration):
            self.late_changes.append(record["external"])
        record["fields"] = {**record["fields"], **fields}
        record["course"] = course_sid
        if configuration:
            record["configuration"] = configuration
        if record["status"] == "deleted":
            record["status"] = "active"  # provisioned again: back from the soft delete
            exam_changed = True
        return self._answer(record, "Updated" if exam_changed else "Found Existing",
                            "Updated" if config_changed else "Found Existing")

    @staticmethod
    def _answer(record: dict[str, Any], exam: str, configuration: str) -> dict[str, Any]:
        return {"exam": {"sid": record["sid"], "result": exam},
                "configuration": {"sid": record["configuration_sid"], "result": configuration}}

    def put(self, request: Request, install_sid: str) -> Response:
        """``PUT /v1/installs/{i}/courses/{courseSid}/exams/{examSid}``: a full replace with ``status``."""
        match = re.fullmatch(rf"/v1/installs/{re.escape(install_sid)}/courses/([^/]+)/exams/([^/]+)", request.path)
        if not match:
            return Response(404, {"code": "RESOURCENOTFOUND", "message": f"no route PUT {request.path}"})
        record = self.exams.get(match[2])
        if record is None or record["course"] != match[1]:
            return Response(404, {"code": "RESOURCENOTFOUND", "message": f"unknown exam {match[2]} in {match[1]}"})
        try:
            body = request.json()
        except ValueError:
            return invalid("body is not JSON")
        if not isinstance(body, dict) or body.get("status") not in STATUSES:
            return invalid("status must be one of active, draft, deleted")
        if not isinstance(body.get("title"), str) or not body["title"]:
            return invalid("title is required (the PUT replaces the whole exam)")
        self.puts += 1
        record["status"] = body["status"]
        record["fields"]["title"] = body["title"]
        return Response(200, {"sid": record["sid"], "status": record["status"]})

    # --- views for tests -----------------------------------------------------------------

    def snapshot(self, course_external: dict[str, str], deleted: bool = False) -> dict[str, dict[str, Any]]:
        """Live exams (``deleted``: also soft-deleted ones) by external id, each with its course's
        external id under ``course``, shaped like the expected mappings."""
        return {r["external"]: {**r["fields"], "configuration": r["configuration"],
                                "course": course_external.get(r["course"])}
                for r in self.exams.values() if deleted or r["status"] != "deleted"}

    def duplicates(self) -> int:
        seen: dict[str, int] = {}
        for record in self.exams.values():
            seen[record["external"]] = seen.get(record["external"], 0) + 1
        return sum(n - 1 for n in seen.values() if n > 1)


def snapshot(app: Any, deleted: bool = False) -> dict[str, dict[str, Any]]:
    """The exams of a ProvisionApp by external id, each naming its course's external (else lms) id."""
    with app._lock:
        courses = {sid: c["ids"].get("external") or c["ids"].get("lms") for sid, c in app.courses.items()}
        return app.exam_book.snapshot(courses, deleted)
