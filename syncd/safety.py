"""Guard rails: when a run may remove or update unattended (reference/anchors.md §0, §7).

Pure decisions, no I/O: the engine asks, the store holds what is held.
"""

from __future__ import annotations

from datetime import date

from syncd.config import SafetyConfig


def removal_breaker(safety: SafetyConfig, removals: int, acknowledged: int) -> str | None:
    """Why removing ``removals`` of ``acknowledged`` objects needs an admin, or None if it does not."""
    if removals > safety.max_removals:
        return f"{removals} removals exceed max_removals = {safety.max_removals}"
    if acknowledged and removals * 100 > safety.max_removals_percent * acknowledged:
        share = 100 * removals / acknowledged
        return f"{removals} removals are {share:.1f} % of {acknowledged}, above max_removals_percent = " \
               f"{safety.max_removals_percent:g}"
    return None


def update_breaker(safety: SafetyConfig, updates: int, acknowledged: int) -> str | None:
    """Why updating ``updates`` of ``acknowledged`` objects needs an admin, or None."""
    if acknowledged and updates * 100 > safety.max_updates_percent * acknowledged:
        share = 100 * updates / acknowledged
        return f"{updates} updates are {share:.1f} % of {acknowledged}, above max_updates_percent = " \
               f"{safety.max_updates_percent:g}"
    return None


def freeze(safety: SafetyConfig, today: date) -> tuple[date, date] | None:
    """The freeze window ``today`` falls in (inclusive), if any: no removals then."""
    return next(((first, last) for first, last in safety.freeze if first <= today <= last), None)
