"""A tenant's ``schedule`` ("*/30 * * * *" or "every 15m") as APScheduler triggers and times.

Shared by the daemon (which fires the jobs) and ``syncd status`` (which shows the next run).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

# APScheduler is imported where a trigger is built: validating an "every 15m" schedule (every
# `syncd sync` loads the config) needs only EVERY, and the import costs a command ~15 ms.
if TYPE_CHECKING:
    from apscheduler.triggers.base import BaseTrigger
    from apscheduler.triggers.cron import CronTrigger

EVERY = re.compile(r"^every\s+(\d+)\s*([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# crontab counts weekdays from Sunday = 0 (7 too); APScheduler 3 from Monday = 0 (its issue 286).
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def interval_s(schedule: str) -> float | None:
    """Seconds of an ``every N{s,m,h,d}`` schedule, None for a cron expression."""
    match = EVERY.match(schedule.strip())
    return float(int(match.group(1)) * UNITS[match.group(2)]) if match else None


def jitter_s(schedule: str, now: datetime) -> float:
    """A small random delay so that tenants on the same cron do not all start at once:
    a tenth of the period, at most a minute."""
    return min(60.0, period_s(schedule, now) / 10)


def trigger(schedule: str, now: datetime, jitter: bool = True) -> BaseTrigger:
    from apscheduler.triggers.interval import IntervalTrigger

    spread = int(jitter_s(schedule, now)) if jitter else None
    every = interval_s(schedule)
    if every is not None:
        return IntervalTrigger(seconds=every, jitter=spread or None, timezone=now.tzinfo)
    return cron(schedule, now.tzinfo, jitter=spread or None)


def cron(schedule: str, zone: tzinfo | None, jitter: int | None = None) -> CronTrigger:
    """A CronTrigger with crontab's meaning of every field (weekday numbers included)."""
    from apscheduler.triggers.cron import CronTrigger

    fields = schedule.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields, got {len(fields)}")
    minute, hour, day, month, day_of_week = fields
    return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=_weekdays(day_of_week),
                       jitter=jitter, timezone=zone)


def _weekdays(field: str) -> str:
    """crontab weekday numbers as names, which APScheduler reads unambiguously."""
    def name(number: str) -> str:
        value = int(number)
        if value > 7:
            raise ValueError(f"day of week {value} is out of range 0-7")
        return WEEKDAYS[value]

    parts = []
    for part in field.split(","):
        base, slash, step = part.partition("/")
        if "-" in base:
            low, high = base.split("-", 1)
            if low.isdigit() and high.isdigit() and int(low) == 0 and int(high) > 0:
                # 0-N starts on Sunday, which APScheduler numbers last: Sunday, then Monday-N.
                parts.append("sun")
                base = f"mon-{name(high)}" if int(high) >= 1 and int(high) != 7 else "mon-sat"
            elif low.isdigit() and high.isdigit():
                base = f"{name(low)}-{name(high)}" if int(high) != 7 else f"{name(low)}-sat,sun"
        elif base.isdigit():
            base = name(base)
        parts.append(base + slash + step)
    return ",".join(parts)


def period_s(schedule: str, now: datetime) -> float:
    """The gap between two runs: the interval, or for a cron the gap between its next two fires."""
    every = interval_s(schedule)
    if every is not None:
        return every
    trigger = cron(schedule, now.tzinfo)
    first = trigger.get_next_fire_time(None, now)
    second = trigger.get_next_fire_time(first, first + timedelta(seconds=1)) if first else None
    return (second - first).total_seconds() if first and second else 86400.0


def overdue(schedule: str, last_started: datetime | None, now: datetime) -> bool:
    """True when the last run is older than one period (or there was none): run at start,
    like a persistent systemd timer, instead of waiting for the next slot."""
    return last_started is None or (now - last_started).total_seconds() >= period_s(schedule, now)


def next_run(schedule: str, last_started: datetime | None, now: datetime) -> datetime:
    """When the daemon will next run this tenant (before jitter)."""
    every = interval_s(schedule)
    if every is not None:
        if last_started is None:
            return now
        return max(now, last_started + timedelta(seconds=every))
    fire = cron(schedule, now.tzinfo).get_next_fire_time(None, now)
    return fire or now
