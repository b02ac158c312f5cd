"""What an admin reads: the engine returns data (summaries, plan items), this turns it into text.

The engine never formats a line for a person; the CLI and the demo call these.
"""

from __future__ import annotations

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
