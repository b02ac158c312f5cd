"""One error taxonomy, typed by what the caller should do about it.

- :class:`RetryLater`: a later attempt or run may succeed (timeouts, 5xx, 429): retry, keep the
  record pending;
- :class:`RecordFailed`: one record is unreadable or refused: record it and go on with the rest;
- :class:`RunStopped`: the run cannot go on (a broken extract, refused credentials): stop it,
  infer nothing, keep what was acknowledged;
- :class:`AdminNeeded`: only a person can fix it (a bad config, a revoked authorization): stop
  and say exactly what to do.

Every message is safe to log: no secret, no token. The HTTP errors of :mod:`syncd.http` are
classes of this taxonomy (``TransientError`` is a ``RetryLater``, ``RejectedError`` a
``RecordFailed``, ``AuthError`` a ``RunStopped``), and so are the sources' (``SourceError`` is a
``RunStopped``, ``ReauthorizeNeeded`` an ``AdminNeeded``) and the config's (``ConfigError``). A
caller catches :class:`SyncError`, the root, and asks :func:`action` what to do; anything else
is a bug and is left to crash the run.

A failed record is one value, :class:`RecordFailure`, from where it is found to the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["retry", "record", "stop", "admin"]


class SyncError(Exception):
    """Base of syncd's own errors; the message is safe to log.

    ``status`` is the HTTP status of the answer that caused it (None: no answer, or no HTTP);
    ``detail`` what an admin reads in `syncd errors` (the server's words, without our URL)."""

    action: Action = "stop"

    def __init__(self, message: str = "", status: int | None = None, detail: str | None = None):
        super().__init__(message)
        self.status = status
        self.detail = detail or message


class RetryLater(SyncError):
    action: Action = "retry"


class RecordFailed(SyncError):
    action: Action = "record"


class RunStopped(SyncError):
    action: Action = "stop"


class AdminNeeded(SyncError):
    action: Action = "admin"


def action(exc: BaseException) -> Action:
    """What the caller should do about ``exc``; an exception outside the taxonomy (a bug) stops."""
    return exc.action if isinstance(exc, SyncError) else "stop"


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
