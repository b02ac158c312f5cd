"""The short, seeded form of the fault-injection soak (bench/soak.py): faults, kills and source
changes at random, the invariants checked after every step."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from soak import soak


def test_a_seeded_soak_of_faults_and_kills_keeps_every_invariant(tmp_path):
    report = soak(steps=30, seed=7, workdir=tmp_path, check_every=10)
    assert report.failures == [], report.markdown()
    assert report.kills > 0 and sum(report.faults.values()) > 30
    hostile = {k: v for k, v in report.faults.items()
               if k in ("provision redirect elsewhere", "provision drip", "provision echoed token")}
    assert sum(hostile.values()) >= 2, report.markdown()
    assert report.checks["nothing reached the origin a redirect pointed to"] > 30
    assert report.checks["one clean run makes the target equal the expected mapping"] == 3
