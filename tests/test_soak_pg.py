"""The seeded fault-injection soak (bench/soak.py) with the state in PostgreSQL (SPEC §11): the same
schedule of faults, kills and source changes as tests/test_soak.py, the same invariants, read from
the PostgreSQL store (integrity through amcheck, no secret in any row)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from soak import soak

pytestmark = [pytest.mark.postgresql, pytest.mark.slow]


def test_the_seeded_soak_keeps_every_invariant_on_postgresql(tmp_path, pg_database):
    report = soak(steps=30, seed=7, workdir=tmp_path, check_every=10, state_url=pg_database)
    print(report.markdown())
    assert report.failures == [], report.markdown()
    assert report.kills > 0 and sum(report.faults.values()) > 30
    assert report.checks["integrity_check"] > 30
    assert report.checks["no secret in the state file"] > 30
    assert report.checks["every acknowledged record is in the target"] > 30
    assert report.checks["one clean run makes the target equal the expected mapping"] == 3
