"""Client CPU per provision call (issue 15): ``ProvisionClient.provision`` at concurrency 8 against
the sandbox provision server in another process, so only the client's CPU is counted.

    .venv/bin/python bench/push_cpu.py [calls]    # default 3000
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from syncd.config import TargetConfig
from syncd.entities import Call, Part
from syncd.target import ProvisionClient


def serve(queue: Any) -> None:
    from syncd.sandbox import Roster, Sandbox

    box = Sandbox(Roster.generate(users=10, classes=2, enrollments=20))
    box.__enter__()
    queue.put((box.target_url, box.provision.install_sid, box.provision.token))
    time.sleep(600)  # the parent ends this daemon process when it is done


def call(i: int) -> Call:
    course, user = f"c{i % 50}", f"u{i}"
    return Call(i, {"course": Part((course,), {"code": "X", "ids": {"external": course}, "title": "T"}),
                    "user": Part((user,), {"email": f"{user}@example.org", "firstName": "A",
                                           "ids": {"external": user}, "lastName": "B"}),
                    "enrollment": Part((course, user), {"role": "learner"})})


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    queue: Any = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(queue,), daemon=True)
    server.start()
    url, install_sid, token = queue.get(timeout=30)
    client = ProvisionClient(TargetConfig(base_url=url, install_sid=install_sid, token=token, concurrency=8))
    for i in range(50):  # warm the connections
        client.provision(call(i))
    cpu, wall = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client.provision, (call(i) for i in range(calls))))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{cpu / calls * 1000:.3f} ms of client CPU per call, {calls / wall:.0f} calls/s ({calls} calls)")
    server.terminate()


if __name__ == "__main__":
    main()
