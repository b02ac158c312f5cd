"""Bugs of the engine found in review (issue 10), each pinned by the test that found it."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd import config as configuration
from syncd import engine
from syncd.sandbox import Sandbox
from syncd.store import Store


class _ExplodingSource:
    """A source whose extract fails with an error no layer expects (a bug, not an HTTP fault)."""

    complete = False
    requests = 0

    def check(self) -> None:
        return None

    def extract(self):
        raise RuntimeError("the unexpected happened")
        yield  # a generator, as every source's extract is


def test_an_unexpected_error_leaves_the_run_failed_with_its_message(sandbox: Sandbox, config: Path):
    tenant = configuration.load(config).tenants["lincoln"]
    store = Store.open(config.parent / "state")
    try:
        with pytest.raises(RuntimeError, match="the unexpected happened"):
            engine.run(tenant, store, source=_ExplodingSource())
        [last] = store.runs("lincoln", limit=1)
        assert last["status"] == "failed"
        assert last["message"] == "RuntimeError: the unexpected happened"
        assert last["finished_at"] is not None
    finally:
        store.close()
