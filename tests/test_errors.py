"""The error taxonomy: every error syncd raises says what its caller should do."""

from __future__ import annotations

import pytest

from syncd import errors, http
from syncd.config import ConfigError
from syncd.sources import SourceError
from syncd.sources.canvas_auth import ReauthorizeNeeded
from syncd.target import InvalidResponse


@pytest.mark.parametrize(("error", "action"), [
    (http.TransientError("timed out"), "retry"),
    (http.HttpError("bad gateway", 502), "retry"),
    (http.HttpError("slow down", 429), "retry"),
    (http.RejectedError("email already taken", 422), "record"),
    (InvalidResponse("no JSON", 200), "record"),
    (http.AuthError("token refused", 401), "stop"),
    (SourceError("pagination loop"), "stop"),
    (ReauthorizeNeeded("run syncd auth stateu"), "admin"),
    (ConfigError(["tenants.x.source.base_url: required"]), "admin"),
    (RuntimeError("a bug"), "stop"),
], ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value)
def test_each_error_says_what_to_do(error: Exception, action: str):
    assert errors.action(error) == action


@pytest.mark.parametrize(("error", "kind"), [
    (http.TransientError("timed out after the deadline"), errors.RetryLater),
    (http.RejectedError("HTTP 404", 404), errors.RecordFailed),
    (http.AuthError("token refused", 401), errors.RunStopped),
    (SourceError("pagination loop detected"), errors.RunStopped),
    (ReauthorizeNeeded("run syncd auth stateu"), errors.AdminNeeded),
    (ConfigError(["tenants.x.source.base_url: required"]), errors.AdminNeeded),
], ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value.__name__)
def test_the_http_source_and_config_errors_are_classes_of_the_taxonomy(error: Exception, kind: type):
    """A caller catches errors.SyncError and asks errors.action: no list of HTTP classes to keep."""
    assert isinstance(error, kind) and isinstance(error, errors.SyncError)
    assert errors.action(error) == kind.action


def test_every_error_of_the_taxonomy_carries_a_status_and_a_detail_to_record():
    assert (SourceError("bad page").status, SourceError("bad page").detail) == (None, "bad page")
    rejected = http.RejectedError("POST /provision: HTTP 422", 422, detail="email taken")
    assert (rejected.status, rejected.detail, str(rejected)) == (422, "email taken", "POST /provision: HTTP 422")
