"""`syncd explain`: why is this student (course, enrollment) in the proctoring platform, or not?

It reads what the store kept of one record: what the last extract said (``stage_*``, with the
raw status and endDate that decide scope), whether it is in scope and, if not, the rule that
excluded it, its provision body (``desired_*``), what the target acknowledged (``acked_*``), the
last call that carried it (``call_log``), and any error, escrow, hold or tombstone. It returns
data (``--json`` prints it as is); ``render.render_explain`` words it for an admin. The read
queries are the store's (``syncd/store/explain.py``, on ``Store.tenant(name)``).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any, cast

from syncd.entities import Entity
from syncd.store import Store, TenantStore

KINDS = ("user", "course", "enrollment", "exam")

# The rules that keep a record out of scope (SPEC §4), as --json names them.
INACTIVE, ENDED, ROLE_NOT_MAPPED = "inactive", "ended", "role_not_mapped"
CLASS_OUT, USER_OUT, DANGLING = "class_out_of_scope", "user_out_of_scope", "dangling_reference"
DUPLICATE, UNREADABLE, NO_ENROLLMENT = "duplicate_id", "unreadable", "no_enrollment_in_scope"
NOT_IN_SOURCE, EXAMS_NOT_CONFIGURED = "not_in_source", "exams_not_configured"

# Where the record stands now, most pressing first.
STATES = ("unknown", "escrow", "held", "synced", "pending", "removed", "out_of_scope", "not_in_source")


@dataclass(frozen=True)
class Subject:
    """What the admin asked about: ``user:ID``, ``course:ID``, ``enrollment:CLASS/USER``, ``exam:ID``."""

    kind: str
    key: tuple[str, ...]

    @property
    def label(self) -> str:
        return "/".join(self.key)

    @property
    def entity(self) -> Entity:
        """The store's name for it (an exam never gets this far)."""
        return cast(Entity, self.kind)


def parse_subject(text: str) -> tuple[str, str]:
    """``KIND:ID`` split and checked; the enrollment's ``CLASS/USER`` is split later, against the store."""
    kind, _, ident = text.partition(":")
    if kind not in KINDS or not ident:
        raise ValueError(f"expected user:ID, course:ID, exam:ID or enrollment:CLASS_ID/USER_ID, not {text!r}")
    if kind == "enrollment" and "/" not in ident.strip("/"):
        raise ValueError(f"an enrollment is named enrollment:CLASS_ID/USER_ID, not {text!r}")
    return kind, ident


def explain(store: Store, tenant: str, kind: str, ident: str, roles: dict[str, str],
            exams_configured: bool = False) -> dict[str, Any]:
    """Everything the store knows of one record, in order, as data."""
    if kind == "exam":
        return _exam(tenant, ident, exams_configured)
    reader = store.tenant(tenant)
    subject = Subject(kind, _split_enrollment(reader, ident) if kind == "enrollment" else (ident,))
    run = reader.last_extract_run()
    report: dict[str, Any] = {"tenant": tenant, "entity": kind, "id": subject.label, "found": True}
    extract = _extract_section(reader, subject, run, roles)
    target = _target_section(reader, subject)
    if not extract["records"] and not extract["errors"] and not target["known"]:
        return {**report, "found": False, "state": "unknown", "name": None,
                "verdict": f"tenant {tenant} has no {kind} {subject.label}: the last extract did not have it "
                           "and it was never synced",
                "suggestions": _suggest(reader, subject), "last_run": run}
    report["name"] = _name(reader, subject) or target.get("name")
    report["last_run"] = run
    report["extract"] = extract
    report["scope"] = extract.pop("scope")
    report["body"] = extract.pop("body")
    desired_hash = extract.pop("hash")
    report["target"] = {k: v for k, v in target.items() if k not in ("known", "name")}
    report["errors"] = _errors(reader, subject, extract["source_ids"])
    report["escrow"] = reader.escrow_entry(subject.entity, subject.key)
    report["held"] = reader.holds_of(subject.entity, subject.key)
    report["pending_removal"] = reader.removal_pending(subject.entity, subject.key)
    report["state"], report["verdict"] = _verdict(report, run, desired_hash)
    report["held_changes"] = _held_changes(report) if report["state"] == "held" else {}
    report["events"] = _events(report, run)
    return report


# --- the last extract and scope --------------------------------------------------------------


def _extract_section(reader: TenantStore, subject: Subject, run: dict[str, Any] | None,
                     roles: dict[str, str]) -> dict[str, Any]:
    """What the last extract said of the record, whether it is in scope and why not."""
    records, desired = reader.staged_rows(subject.entity, subject.key), reader.desired_row(subject.entity, subject.key)
    source_ids = [r["source_id"] for r in records] if subject.kind == "enrollment" else list(subject.key)
    errors = reader.extract_errors(subject.entity, subject.key, source_ids, run["run_id"] if run else None)
    rules: list[dict[str, Any]] = []
    for error in errors:
        code = DUPLICATE if error["message"].startswith("duplicate id") else (
            DANGLING if "refers to a" in error["message"] else UNREADABLE)
        if code != DANGLING or not records:  # the staged record's own rules name the missing id
            rules.append({"rule": code, "source_id": error["source_id"], "reason": error["message"]})
    if desired is None:
        if subject.kind == "enrollment":
            rules += [r for record in records for r in _enrollment_rules(reader, record, roles)]
        elif records:
            rules += _object_rules(reader, subject, records[0], roles)
        elif not errors:
            complete = run and run.get("extract_complete")
            rules.append({"rule": NOT_IN_SOURCE, "reason": f"the last extract did not have this {subject.kind}"
                          + ("" if complete else " (but that extract was incomplete)")})
        # A duplicate does not exclude a record (the first one read wins); the other rules do.
        rules.sort(key=lambda r: r["rule"] == DUPLICATE)
    in_scope = desired is not None
    return {"run_id": run["run_id"] if run else None, "found": bool(records), "records": records,
            "errors": errors, "source_ids": source_ids,
            "scope": {"in_scope": in_scope, "rule": None if in_scope else (rules[0]["rule"] if rules else None),
                      "rules": rules, "won": desired.get("source_id") if desired and len(records) > 1 else None},
            "body": desired["body"] if desired else None, "change": desired["change"] if desired else None,
            "hash": desired["hash"] if desired else None}


def _enrollment_rules(reader: TenantStore, record: dict[str, Any], roles: dict[str, str]) -> list[dict[str, Any]]:
    """Every SPEC §4 rule that keeps this source enrollment out of scope, the deciding one first."""
    rules: list[dict[str, Any]] = []
    sid = record["source_id"]

    def add(rule: str, reason: str) -> None:
        rules.append({"rule": rule, "source_id": sid, "reason": reason})

    if not record["active"]:
        status = record.get("status")
        if status and status != "active":
            add(INACTIVE, f'the source marks enrollment {sid} "{status}"')
        elif record.get("end_date"):
            add(ENDED, f"enrollment {sid} ended on {record['end_date']} (endDate is exclusive: it is over "
                       "from that day on)")
        else:
            add(INACTIVE, f"the source marks enrollment {sid} inactive")
    if record["role"] not in roles:
        mapped = ", ".join(roles) or "none"
        add(ROLE_NOT_MAPPED, f'enrollment {sid} has role "{record["role"]}", which `roles` does not map '
                             f"(mapped: {mapped})")
    course = reader.staged_rows("course", (record["course_id"],))
    user = reader.staged_rows("user", (record["user_id"],))
    for entity, rows, word, rule in (("class", course, "course", CLASS_OUT), ("user", user, "user", USER_OUT)):
        ident = record["course_id" if word == "course" else "user_id"]
        if not rows:
            add(DANGLING, f"enrollment {sid} refers to {entity} {ident}, which the source does not have")
        elif not rows[0]["active"]:
            add(rule, f"its {entity} {ident} is out of scope ({_status_words(rows[0], entity)})")
    return rules


def _object_rules(reader: TenantStore, subject: Subject, record: dict[str, Any],
                  roles: dict[str, str]) -> list[dict[str, Any]]:
    noun = "class" if subject.kind == "course" else "user"
    if not record["active"]:
        return [{"rule": INACTIVE, "source_id": record["source_id"], "reason": _status_words(record, noun)}]
    if subject.kind == "course":  # an active course is always in scope; only an odd store gets here
        return []
    enrollments = reader.staged_enrollments_of(record["source_id"])
    why = [r for e in enrollments for r in _enrollment_rules(reader, e, roles)]
    reason = ("the user is active, but the source lists no enrollment for them" if not enrollments else
              f"the user is active, but none of their {len(enrollments)} enrollment(s) is in scope")
    return [{"rule": NO_ENROLLMENT, "source_id": record["source_id"], "reason": reason, "enrollments": why}]


def _status_words(record: dict[str, Any], noun: str) -> str:
    status = record.get("status")
    return f'the source marks the {noun} "{status}"' if status else f"the source marks the {noun} inactive"


# --- the target ----------------------------------------------------------------------------


def _target_section(reader: TenantStore, subject: Subject) -> dict[str, Any]:
    acked = reader.acked_row(subject.entity, subject.key)
    last_call = reader.last_call(subject.entity, subject.key)
    body = json.loads(acked["body"]) if acked and acked.get("body") else None
    return {"known": bool(acked or last_call), "name": _body_name(subject.kind, body),
            "sid": acked["sid"] if acked else None, "acked_at": acked["acked_at"] if acked else None,
            "acked_hash": acked["hash"] if acked else None, "acked_body": body,
            "removed_at": acked["removed_at"] if acked else None,
            "disabled_at": acked.get("disabled_at") if acked else None, "last_call": last_call}


def _errors(reader: TenantStore, subject: Subject, source_ids: list[str]) -> list[dict[str, Any]]:
    """The record's errors over the retained runs, one entry per distinct failure."""
    grouped: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in reader.record_errors(subject.entity, subject.key, source_ids):
        key = (row["entity"], row["course_id"], row["stage"], row["http_status"], row["message"])
        entry = grouped.setdefault(key, {**row, "runs": 0})
        entry["runs"] += 1
        entry["last_seen"], entry["attempts"], entry["run_id"] = row["last_seen"], row["attempts"], row["run_id"]
        entry["next_retry_at"] = row["next_retry_at"]
    return sorted(grouped.values(), key=lambda e: e["first_seen"])


# --- the verdict and the story ---------------------------------------------------------------


def _verdict(report: dict[str, Any], run: dict[str, Any] | None, desired_hash: str | None) -> tuple[str, str]:
    kind, target, scope = report["entity"], report["target"], report["scope"]
    last_held = [h for h in report["held"] if run and h["run_id"] == run["run_id"]]
    if report["escrow"]:
        x = report["escrow"]
        return "escrow", (f"waiting in escrow: the target refused it (HTTP {x['http_status'] or '-'}: {x['message']}); "
                          f"{x['attempts']} run(s) refused so far, next try not before {x['next_retry_at']}")
    if last_held:
        held = last_held[0]
        what = "an update" if held["kind"] == "update" else "its removal"
        return "held", (f"held: {what} was held back by a safety threshold in run {held['run_id']} "
                        f"({held['message'] or 'see syncd status'}); `syncd approve {report['tenant']} --run "
                        f"{held['run_id']}` releases it")
    if scope["in_scope"]:
        synced = target["sid"] and not target["removed_at"] and report["body"] is not None and \
            target["acked_hash"] == desired_hash
        if synced:
            return "synced", (f"synced: in scope, and the target acknowledged it as {target['sid']} "
                              f"on {target['acked_at']}")
        why = ("the last run was a dry run" if run and run.get("dry_run") else
               "see the errors below" if report["errors"] else "it waits for the next run")
        return "pending", f"in scope but not yet in the target as the source says it: {why}"
    rule = scope["rules"][0]["reason"] if scope["rules"] else "out of scope"
    if target["removed_at"]:
        return "removed", (f"removed: it left scope ({rule}) and was tombstoned on {target['removed_at']}; the "
                           "provision API has no delete, so the target still holds it"
                           + (", disabled" if target["disabled_at"] else ""))
    if scope["rule"] == NOT_IN_SOURCE and not report["extract"]["errors"]:
        tail = " (it is still in the target: removals wait for a complete extract)" if target["sid"] else ""
        return "not_in_source", f"not in scope: the last extract did not have this {kind}{tail}"
    tail = (" It is still in the target: its removal waits (incomplete extract, or a safety threshold)."
            if target["sid"] else "")
    return "out_of_scope", f"not in scope: {rule}.{tail}"


# Staged columns and the provision fields they map to one to one (the rest needs the store's SQL).
DIRECT_FIELDS = {"user": {"first_name": "firstName", "last_name": "lastName", "email": "email"},
                 "course": {"title": "title"}}


def _held_changes(report: dict[str, Any]) -> dict[str, list[Any]]:
    """A held update: the fields the source changed, [what the target keeps, what the source says]."""
    fields = DIRECT_FIELDS.get(report["entity"], {})
    records, acked = report["extract"]["records"], report["target"]["acked_body"] or {}
    if not records:
        return {}
    return {field: [acked.get(field), records[0].get(column)] for column, field in fields.items()
            if acked.get(field) != records[0].get(column)}


def _events(report: dict[str, Any], run: dict[str, Any] | None) -> list[dict[str, str]]:
    """What happened to the record, oldest first, in words."""
    events: list[dict[str, str]] = []

    def add(at: str | None, event: str, text: str) -> None:
        if at:
            events.append({"at": at, "event": event, "text": text})

    target, last_call = report["target"], report["target"]["last_call"]
    if target["acked_at"] and not (last_call and last_call["at"] == target["acked_at"]):
        add(target["acked_at"], "acknowledged", f"the target acknowledged it as {target['sid']}")
    if last_call:
        add(last_call["at"], "call", _call_words(last_call))
    for error in report["errors"]:
        it = "it" if error["entity"] == report["entity"] else f"its enrollment in {error['course_id']}"
        where = f"reading {it} from the source" if error["stage"] == "extract" else f"pushing {it}"
        status = f"HTTP {error['http_status']}: " if error["http_status"] else ""
        add(error["first_seen"], "error", f"failed {where}: {status}{error['message']}")
        if error["last_seen"] != error["first_seen"]:
            add(error["last_seen"], "error", f"{it} still failed in run {error['run_id']}")
    if report["escrow"]:
        x = report["escrow"]
        add(x["first_seen"], "escrow", "put in escrow: the target refuses it; retried after 1 h, 6 h, 24 h, then "
                                       f"daily (next try not before {x['next_retry_at']})")
    for held in report["held"]:
        what = "an update of it" if held["kind"] == "update" else "its removal"
        reason = held["message"] or "a safety threshold"
        add(held["started_at"], "held", f"run {held['run_id']} held back {what}: {reason}")
        add(held["approved_at"], "approved", f"an admin approved run {held['run_id']}")
    if run:
        scope = report["scope"]
        found = "read it" if report["extract"]["found"] else "did not have it"
        verdict = "in scope" if scope["in_scope"] else f"out of scope: {scope['rules'][0]['reason']}" \
            if scope["rules"] else "out of scope"
        kind = " (a dry run)" if run.get("dry_run") else ""
        add(run["started_at"], "extract", f"the last extract (run {run['run_id']}{kind}) {found}: {verdict}")
    add(target["removed_at"], "tombstone", "it left scope: tombstoned (nothing is deleted in the target)")
    add(target["disabled_at"], "disabled", "disabled in the target: the user can no longer sign in")
    # Within one second, the order a run works in: extract, hold, call, error, escrow, tombstone
    # (their timestamps are taken a few milliseconds apart, not always in that order).
    events.sort(key=lambda e: (e["at"][:19], PHASES.index(e["event"]), e["at"]))
    return events


PHASES = ("extract", "held", "approved", "acknowledged", "call", "error", "escrow", "tombstone", "disabled")


def _call_words(call: dict[str, Any]) -> str:
    carried = ", ".join(call["carried"])
    head = f"call {call['seq']} of run {call['run_id']} carried it (with {carried})"
    if call["outcome"] == "acknowledged":
        return f"{head}: the target answered {call['answer'] or 'OK'}, sid {call['sid']}"
    if call["outcome"] == "not_acknowledged":
        return f"{head}: the target answered, but {call['answer']}"
    status = f"HTTP {call['http_status']}" if call["http_status"] else "no answer"
    verb = "refused it" if call["outcome"] == "rejected" else "failed"
    return f"{head}: the target {verb} ({status}: {call['answer']})"


# --- names and suggestions ---------------------------------------------------------------


def _name(reader: TenantStore, subject: Subject) -> str | None:
    if subject.kind == "enrollment":
        person = _name(reader, Subject("user", (subject.key[1],)))
        title = _name(reader, Subject("course", (subject.key[0],)))
        return f"{person or subject.key[1]} in {title or subject.key[0]}"
    rows = reader.staged_rows(subject.entity, subject.key)
    if rows:
        row = rows[0]
        return row.get("title") if subject.kind == "course" else f"{row['first_name']} {row['last_name']}".strip()
    acked = reader.acked_row(subject.entity, subject.key)
    return _body_name(subject.kind, json.loads(acked["body"])) if acked and acked.get("body") else None


def _body_name(kind: str, body: dict[str, Any] | None) -> str | None:
    if not body:
        return None
    if kind == "course":
        return body.get("title")
    if kind == "user":
        return f"{body.get('firstName', '')} {body.get('lastName', '')}".strip() or None
    return None


def _suggest(reader: TenantStore, subject: Subject, limit: int = 5) -> list[dict[str, str]]:
    """The closest known records: by source id (substring, then difflib), and by name."""
    if subject.kind == "enrollment":
        course, user = subject.key
        pairs = [f"{c}/{u}" for c, u in reader.enrollment_pairs_near(course, user)]
        found = difflib.get_close_matches(subject.label, pairs, n=limit, cutoff=0.0)
        return [{"id": p, "name": _name(reader, Subject("enrollment", tuple(p.split("/", 1)))) or "",
                 "matched_by": "id"} for p in found]
    names = reader.known_names(subject.entity)
    query = subject.label.lower()
    # A Canvas record's source id is its Canvas id; an admin may well type its SIS id instead.
    chosen: dict[str, str] = dict.fromkeys(reader.ids_by_external_id(subject.entity, subject.label), "external id")
    for ident in [i for i in names if query in i.lower()][:limit]:
        chosen.setdefault(ident, "id")
    for ident in difflib.get_close_matches(subject.label, list(names), n=limit, cutoff=0.6):
        chosen.setdefault(ident, "id")
    by_name: dict[str, list[str]] = {}
    for ident, name in names.items():
        if name:
            by_name.setdefault(name.lower(), []).append(ident)
    for name in [n for n in by_name if query in n][:limit] + difflib.get_close_matches(query, list(by_name), n=limit):
        for ident in by_name[name][:limit]:
            chosen.setdefault(ident, "name")
    return [{"id": i, "name": names[i] or "", "matched_by": how} for i, how in list(chosen.items())[:limit * 2]]


def _exam(tenant: str, ident: str, configured: bool) -> dict[str, Any]:
    # Exams are another issue's work: when they are tracked, their explanation joins the others here.
    verdict = (f"exams are not configured for tenant {tenant} (no [tenants.{tenant}.exams]): syncd provisions no "
               "exams for it, so exam " + ident + " is not known" if not configured else
               f"this version of syncd does not track exams yet, so exam {ident} is not known")
    return {"tenant": tenant, "entity": "exam", "id": ident, "found": False, "state": "unknown",
            "rule": EXAMS_NOT_CONFIGURED if not configured else None, "verdict": verdict, "suggestions": []}


def _split_enrollment(reader: TenantStore, ident: str) -> tuple[str, str]:
    """CLASS_ID/USER_ID, where an id may itself hold a "/": the split the store knows, else the first."""
    cuts = [i for i, ch in enumerate(ident) if ch == "/"]
    for cut in cuts:
        if reader.has_enrollment(ident[:cut], ident[cut + 1:]):
            return ident[:cut], ident[cut + 1:]
    return ident[:cuts[0]], ident[cuts[0] + 1:]
