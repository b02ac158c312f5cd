"""One error taxonomy, typed by what the caller should do about it.

- :class:`RetryLater`: a later attempt or run may succeed (timeouts, 5xx, 429): retry, keep the
  record pending;
- :class:`RecordFailed`: one record is unreadable or refused: record it and go on with the rest;
- :class:`RunStopped`: the run cannot go on (a broken extract, refused credentials): stop it,
  infer nothing, keep what was acknowledged;
- :class:`AdminNeeded`: only a person can fix it (a bad config, a revoked authorization): stop
  and say exactly what to do.

Every message is safe to log: no secret, no token. :func:`action` answers the question for any
exception syncd raises, including the HTTP errors of :mod:`syncd.http`, which keep their own
classes (``TransientError`` = retry, ``RejectedError`` = record, ``AuthError`` = stop).

A failed record is one value, :class:`RecordFailure`, from where it is found to the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["retry", "record", "stop", "admin"]


class SyncError(Exception):
    """Base of syncd's own errors; the message is safe to log."""

    action: Action = "stop"


class RetryLater(SyncError):
    action: Action = "retry"


class RecordFailed(SyncError):
    action: Action = "record"


class RunStopped(SyncError):
    action: Action = "stop"


class AdminNeeded(SyncError):
    action: Action = "admin"


def action(exc: BaseException) -> Action:
    """What the caller should do about ``exc``."""
    from syncd import http  # http imports nothing of ours; imported here to keep this module a leaf

    if isinstance(exc, SyncError):
        return exc.action
    if isinstance(exc, http.AuthError):
        return "stop"
    if isinstance(exc, http.TransientError):
        return "retry"
    if isinstance(exc, http.HttpError):
        status = exc.status
        return "retry" if status is None or status == 429 or status >= 500 else "record"
    return "stop"


@dataclass(frozen=True)
class RecordFailure:
    """One record that failed: stored in ``errors``, shown by `syncd errors`, logged once.

    ``attempts``, ``first_seen`` and ``next_retry_at`` are given for a record in escrow; else the
    store counts consecutive runs itself.
    """

    entity: str
    source_id: str
    stage: str  # "extract" or "push"
    message: str
    http_status: int | None = None
    course_id: str | None = None
    user_id: str | None = None
    name: str | None = None
    attempts: int | None = None
    first_seen: str | None = None
    next_retry_at: str | None = None
