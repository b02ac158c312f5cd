"""Gradebook lineItems for the fake OneRoster (reference/exams.md §3, §6).

1.1 serves ``/lineItems`` and ``/classes/{id}/lineItems`` beside the rostering collections; 1.2
serves them from the gradebook service (``…/gradebook/v1p2/…``, a sibling of
``…/rostering/v1p2``), plus ``assessmentLineItems``, which carry no dates. Seeded quirks:
``status: "tobedeleted"``, GUIDRefs with ``href`` and ``type``, dates as ``Z``, ``-06:00`` and bare
dates, a missing ``dueDate``. ``gradebook = False`` makes the provider answer 404, as many SIS do.
:func:`expected_exams` is written from SPEC §7 without syncd's code.
"""

from __future__ import annotations

import re
import urllib.parse
from datetime import UTC, date, datetime, timedelta
from typing import Any

from syncd.sandbox.roster import Roster, ref
from syncd.sandbox.server import Request, Response


def generate(roster: Roster, per_class: int = 2, today: date | None = None) -> dict[str, dict[str, Any]]:
    """``per_class`` lineItems for every class: exams, with a homework item beside each."""
    today = today or datetime.now(UTC).date()
    items: dict[str, dict[str, Any]] = {}
    n = 0
    for class_id in roster.classes:
        for k in range(1, per_class + 1):
            n += 1
            day = today + timedelta(days=(n % 30) - 5)
            assign: str | None = f"{day.isoformat()}T08:00:00Z"
            due: str | None = f"{day.isoformat()}T11:00:00-06:00"
            if n % 5 == 1:
                assign, due = f"{day.isoformat()}T08:00:00.000Z", day.isoformat()  # a bare date closes at day end
            if n % 11 == 4:
                due = None  # no window: a record error
            source_id = f"li-{n:05d}"
            items[source_id] = {
                "sourcedId": source_id, "status": "tobedeleted" if n % 13 == 6 else "active",
                "dateLastModified": "2026-09-01T08:00:00.000Z",
                "title": f"{'Unit Exam' if k % 2 else 'Homework'} {n}",
                "description": f"Chapters {n % 9 + 1}\u2013{n % 9 + 3}" if n % 3 else None,
                "assignDate": assign, "dueDate": due, "class": ref("class", class_id),
                "category": ref("category", "cat-exams" if k % 2 else "cat-homework"),
                "gradingPeriod": ref("academicSession", "term-1"), "resultValueMin": 0.0, "resultValueMax": 100.0,
            }
    return items


def serve(app: Any, request: Request) -> Response | None:
    """The lineItems routes of a OneRosterApp, or None for any other path."""
    if request.method != "GET":
        return None
    prefix = app.prefix if app.version == "1.1" else re.sub(r"/rostering/v1p2$", "/gradebook/v1p2", app.prefix)
    match = re.fullmatch(re.escape(prefix) + r"(?:/classes/([^/]+))?/(lineItems|assessmentLineItems)",
                         request.path)
    if not match or (match[2] == "assessmentLineItems" and app.version == "1.1"):
        return None
    with app._lock:
        app.requests += 1
    denied = app._authorize(request)
    if denied:
        return denied
    if not app.gradebook:
        return _error(404, f"no gradebook service at {request.path}")
    try:
        limit = int(request.arg("limit", "100") or 100)
        offset = int(request.arg("offset", "0") or 0)
    except ValueError:
        return _error(400, "limit and offset must be integers")
    fault = app._fault("lineItems", offset)
    if fault:
        return fault
    rows = [i for i in app.line_items.values() if match[1] is None or i["class"]["sourcedId"] == match[1]]
    if match[2] == "assessmentLineItems":
        rows = [{k: v for k, v in i.items() if k not in ("assignDate", "dueDate", "category", "gradingPeriod")}
                for i in rows]
    size = min(limit, app.max_limit) if app.max_limit else limit
    offset = 0 if app.ignore_offset else offset
    page = [_render(app.version, i) for i in rows[offset:offset + size]]
    headers = {"X-Total-Count": str(len(rows))} if app.total_count else {}
    if app.link and offset + size < len(rows):
        query = urllib.parse.urlencode({"limit": limit, "offset": offset + size})
        headers["Link"] = f'<{request.url.split("?")[0]}?{query}>; rel="next"'
    return Response(200, {match[2]: page}, headers)


def _render(version: str, item: dict[str, Any]) -> dict[str, Any]:
    if version == "1.1":
        return item
    return {**item, "school": ref("org", "sch-1"), "academicSession": item.get("gradingPeriod"),
            "scoreScale": None}


def _error(status: int, description: str) -> Response:
    return Response(status, {"imsx_codeMajor": "failure", "imsx_severity": "error", "imsx_description": description})


# --- the exams a target should end with (SPEC §7, lineItem column), written independently ---


def _z(value: str | None, end: bool) -> str | None:
    if not value:
        return None
    if len(value) == 10:
        moment = datetime.fromisoformat(value).replace(tzinfo=UTC)
        return (moment + timedelta(days=1, seconds=-1) if end else moment).strftime("%Y-%m-%dT%H:%M:%SZ")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expected_exams(items: dict[str, dict[str, Any]], roster: Roster, *, url_template: str, duration: int,
                   password: str, proctor_types: dict[str, Any], title_pattern: str | None = None,
                   limited_scope: bool = False) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """(exam bodies by ``ids.external``, source ids that must be record errors); UTC time zone."""
    bodies: dict[str, dict[str, Any]] = {}
    failed: set[str] = set()
    for item in items.values():
        class_id = item["class"]["sourcedId"]
        if item["status"] != "active" or roster.classes[class_id]["status"] != "active":
            continue
        if title_pattern and not re.search(title_pattern, item["title"]):
            continue
        external = f"lineitem:{item['sourcedId']}"
        opens, closes = _z(item["assignDate"], False), _z(item["dueDate"], True)
        if not opens or not closes or closes <= opens:
            failed.add(external)
            continue
        body: dict[str, Any] = {"title": item["title"], "type": "online", "practice": False,
                                "limitedScope": limited_scope}
        if item["description"]:
            body["description"] = item["description"]
        body["configuration"] = {
            "type": "primary", "url": url_template.format(id=item["sourcedId"], class_id=class_id),
            "access": {"open": opens, "close": closes}, "duration": duration, "password": password,
            "attempts": 1, "proctorTypes": proctor_types}
        bodies[external] = body
    return bodies, failed
