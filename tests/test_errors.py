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
