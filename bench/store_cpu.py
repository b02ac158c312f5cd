"""The store's CPU on a no-change run, without HTTP: stage 100k enrollments (20k users, 2k classes)
in pages of 1,000, build the desired state, classify it against an acknowledged state equal to it.

    .venv/bin/python bench/store_cpu.py

Prints the CPU seconds of each step for a first run and three no-change runs (issue 15: where the
CPU of a resync goes, without the source and the push).
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from syncd.model import Course, Enrollment, Record, User
from syncd.store import Store, TenantStore

ROLES = {"student": "learner", "teacher": "instructor"}


def roster(seed: int = 1) -> list[list[Record]]:
    rng = random.Random(seed)
    courses = [Course(f"c{i}", f"Class {i}", True, code=f"C{i}", external_id=f"c{i}") for i in range(2000)]
    users = [User(f"u{i}", f"First{i}", f"Last{i}", True, email=f"u{i}@example.org", external_id=f"u{i}",
                  lms_id=str(i)) for i in range(20000)]
    enrollments = [Enrollment(f"e{i}", f"c{rng.randrange(2000)}", f"u{rng.randrange(20000)}", "student", True)
                   for i in range(100000)]
    records: list[Record] = [*courses, *users, *enrollments]
    return [records[i:i + 1000] for i in range(0, len(records), 1000)]


def one_run(store: TenantStore, pages: list[list[Record]]) -> dict[str, float]:
    times: dict[str, float] = {}
    steps = (("reset", store.reset_stage), ("stage", lambda: [store.stage(p) for p in pages]),
             ("desired", lambda: store.build_desired(ROLES, "UTC")), ("classify", lambda: store.classify(False)))
    for name, step in steps:
        started = time.process_time()
        step()
        times[name] = round(time.process_time() - started, 2)
    return times


def acknowledge_all(store: TenantStore) -> None:
    """What a push would leave: every desired body acknowledged as it is."""
    with store.conn:
        for plural, keys in (("courses", "source_id"), ("users", "source_id"), ("enrollments", "course_id, user_id")):
            store.conn.execute(f"INSERT INTO acked_{plural} (tenant, {keys}, sid, hash, body, acked_at) "
                               f"SELECT tenant, {keys}, 'sid', hash, body, 'now' FROM desired_{plural}")


def main() -> None:
    pages = roster()
    with tempfile.TemporaryDirectory() as tmp:
        state = Store.open(Path(tmp))
        try:
            store = state.tenant("bench")
            print("first    ", one_run(store, pages))
            acknowledge_all(store)
            for _ in range(3):
                times = one_run(store, pages)
                print("no-change", times, "total", round(sum(times.values()), 2))
        finally:
            state.close()


if __name__ == "__main__":
    main()
