"""What an admin reads: the engine returns data (summaries, plan items), this turns it into text.

The engine never formats a line for a person; the CLI and the demo call these.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

COLUMNS = ("created", "updated", "unchanged", "removed", "failed")

# An item the engine hands to ``show`` while it runs: a narrative line (``--only``), or one
# element of a dry run's plan as data (see :func:`plan_lines`).
Item = str | dict[str, Any]


def render_summary(summary: dict[str, Any]) -> str:
    planned = f", {summary['planned_calls']} planned" if summary["dry_run"] else ""
    head = (f"{summary['tenant']}: {summary['status']}{' (dry run)' if summary['dry_run'] else ''} · "
            f"run {summary['run_id']} · {summary['calls']} call(s) sent{planned} · "
            f"{summary['duration_s']:.2f}s")
    lines = [head, f"  {'':<12}" + "".join(f"{c:>11}" for c in COLUMNS)]
    for entity, counts in summary["counts"].items():
        lines.append(f"  {entity:<12}" + "".join(f"{counts.get(c, 0):>11}" for c in COLUMNS))
    return "\n".join(lines)


def plan_lines(item: Item) -> list[str]:
    """The lines of one item of a dry run: the plan's head, a call and its objects, a removal, a
    hold, the reason of a hold; a plain string is already a line."""
    if isinstance(item, str):
        return [item]
    if "plan_for" in item:
        return [f"plan for {item['plan_for']}: {item['calls']} provision call(s)"]
    if "call" in item:
        lines, prefix = [], f"  call {item['call']}:"
        for change in item["objects"]:
            lines.append(f"{prefix:<13} {describe_change(change)}")
            prefix = ""
        return lines
    if "remove" in item:
        return [f"  remove {item['remove']['entity']} {item['remove']['source_id']} "
                "(left scope: tombstoned, nothing is deleted in the target)"]
    if "hold" in item:
        hold = item["hold"]
        return [f"  HOLD {hold['kind']} of {hold['entity']} {hold['source_id']} "
                "(a safety threshold; `syncd approve` releases it)"]
    return [f"  held: {item['held']}"]


def describe_change(change: dict[str, Any]) -> str:
    """One object of a planned call, as a dry run shows it."""
    entity, label = change["entity"], change["source_id"]
    if change["action"] == "create":
        return f"create {entity} {label}: " + " ".join(f"{k}={v!r}" for k, v in change["fields"].items())
    if change["action"] == "carried":
        return f"(unchanged {entity} {label}, carried by this call)"
    return f"update {entity} {label}: " + "; ".join(
        f"{k}: {v}" if isinstance(v, str) else f"{k}: {v[0]!r} -> {v[1]!r}"  # a secret only says "changed"
        for k, v in change["changes"].items())


def printer(write: Callable[[str], None]) -> Callable[[Item], None]:
    """A ``show`` for the engine that renders each item as it comes (a plan is never held in memory)."""

    def show(item: Item) -> None:
        for line in plan_lines(item):
            write(line)

    return show


def render_explain(report: dict[str, Any]) -> str:
    """`syncd explain` for an admin: the verdict, the story in order, then the details."""
    head = f"{report['entity']} {report['id']}" + (f" · {report['name']}" if report.get("name") else "")
    lines = [f"{head} · tenant {report['tenant']}", f"  {report['verdict']}"]
    if not report["found"]:
        if report.get("suggestions"):
            lines.append("  closest matches:")
            lines += [f"    {s['entity'] if 'entity' in s else report['entity']}:{s['id']}"
                      + (f"  {s['name']}" if s["name"] else "") + f"  (by {s['matched_by']})"
                      for s in report["suggestions"]]
        elif report["entity"] != "exam":
            lines.append("  no close match among the known records")
        return "\n".join(lines)
    lines += ["", "what happened, in order:"]
    lines += [f"  {e['at'][:19].replace('T', ' ')}  {e['text']}" for e in report["events"]] or ["  nothing yet"]
    run, extract, scope = report["last_run"], report["extract"], report["scope"]
    lines += ["", "the last extract" + (f" (run {run['run_id']}, {run['started_at'][:19].replace('T', ' ')}, "
                                        f"{'complete' if run['extract_complete'] else 'incomplete'}"
                                        f"{', dry run' if run['dry_run'] else ''}):" if run else ": none yet")]
    if not extract["records"]:
        lines.append(f"  the source did not list this {report['entity']}")
    for record in extract["records"]:
        fields = " ".join(f"{k}={v!r}" for k, v in record.items() if k != "source_id" and v is not None)
        lines.append(f"  {record['source_id']}: {fields}")
    if scope["in_scope"]:
        won = f" (source enrollment {scope['won']} wins: its role is listed first in roles)" if scope["won"] else ""
        kept = " (the target's, kept while the update is held)" if report["state"] == "held" else ""
        lines.append(f"  in scope{won}; provision body{kept}: {json.dumps(report['body'])}")
    for field, (old, new) in report.get("held_changes", {}).items():
        lines.append(f"  held change: {field} {old!r} -> {new!r}")
    for i, rule in enumerate(scope["rules"]):
        lines.append(f"  {'out of scope' if i == 0 and not scope['in_scope'] else 'also'}: "
                     f"[{rule['rule']}] {rule['reason']}")
        lines += [f"      [{r['rule']}] {r['reason']}" for r in rule.get("enrollments", [])]
    target = report["target"]
    lines += ["", "the target:"]
    if target["sid"]:
        lines.append(f"  sid {target['sid']}, acknowledged {target['acked_at']}"
                     + (f", tombstoned {target['removed_at']}" if target["removed_at"] else "")
                     + (f", disabled {target['disabled_at']}" if target["disabled_at"] else ""))
    else:
        lines.append("  never acknowledged")
    call = target["last_call"]
    if call:
        lines.append(f"  last call: {call['at']} run {call['run_id']} call {call['seq']} "
                     f"({', '.join(call['carried'])}): {call['outcome']}"
                     + (f", HTTP {call['http_status']}" if call["http_status"] else "")
                     + (f", {call['answer']}" if call["answer"] else ""))
    for error in report["errors"]:
        lines.append(f"  error ({error['stage']}, {error['runs']} run(s), last {error['last_seen'][:19]}): "
                     f"{'HTTP ' + str(error['http_status']) + ': ' if error['http_status'] else ''}{error['message']}")
    return "\n".join(lines)
