"""Client CPU per provision call (issue 15): ``ProvisionClient.provision`` one at a time and at
concurrency 8 against the sandbox provision server in another process, so only the client's CPU is
counted; beside it, two floors without any of syncd's guarantees (deadline, body cap, retries,
redirects, TLS): the same request and body through a bare urllib3 pool and ``json.loads``, and
the same bytes written and read on a plain socket with no HTTP library at all.

    .venv/bin/python bench/push_cpu.py [calls] [--rounds N]    # default 3000 calls, 3 rounds
    .venv/bin/python bench/push_cpu.py --latency-ms 20          # throughput at 8 threads instead

Each figure is the median of the rounds (the machine may be shared: the rounds interleave the
measures, so a noisy neighbour slows each alike). ``--latency-ms``: the server answers that long
after each request arrived, and the client and the floor are timed at 8 threads against the bound
(8 / latency): what the floor reaches is what this machine allows any Python client, now; and,
below all three, the raw client against a raw server in its own process (no Python work per
request beyond reading it and waiting out the latency): what the machine allows with this sandbox
server out of the way. Both servers end their waits early by what their answers were late
(``syncd.sandbox.server.Timing``), so they answer at the latency on average.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import urllib3

from syncd.config import TargetConfig
from syncd.entities import Call, Part
from syncd.sandbox.server import Timing
from syncd.target import ProvisionClient, payload


def serve(queue: Any, latency_s: float = 0.0) -> None:
    from syncd.sandbox import Roster, Sandbox

    box = Sandbox(Roster.generate(users=10, classes=2, enrollments=20))
    box.provision.latency_s = latency_s
    box.__enter__()
    queue.put((box.target_url, box.provision.install_sid, box.provision.token))
    time.sleep(3600)  # the parent ends this daemon process when it is done


def serve_raw(queue: Any, latency_s: float) -> None:
    """The machine's floor: a server with no Python work per request beyond reading it, waiting
    out the latency from its arrival and writing a fixed answer (a thread per connection)."""
    answer = json.dumps({"course": {"sid": "CU1", "result": "Created"}}).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(answer)}\r\n\r\n"
    reply = head.encode() + answer
    listener = socket.create_server(("127.0.0.1", 0))
    queue.put(listener.getsockname()[1])
    timing = Timing()  # as the sandbox's: the answers leave at their due time on average

    def handle(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            arrived = time.monotonic()
            head_bytes, _, rest = buffer.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head_bytes.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(rest) < length:
                rest += conn.recv(65536)
            buffer = rest[length:]
            due = arrived + latency_s
            if (wait := due - timing.lead - time.monotonic()) > 0:
                time.sleep(wait)
            conn.sendall(reply)
            timing.left(arrived, due, time.monotonic())

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def call(i: int) -> Call:
    course, user = f"c{i % 50}", f"u{i}"
    return Call(i, {"course": Part((course,), {"code": "X", "ids": {"external": course}, "title": "T"}),
                    "user": Part((user,), {"email": f"{user}@example.org", "firstName": "A",
                                           "ids": {"external": user}, "lastName": "B"}),
                    "enrollment": Part((course, user), {"role": "learner"})})


def bare(url: str, token: str) -> Callable[[Call], Any]:
    """The floor: one urllib3 pool, the body encoded and the answer decoded, nothing else."""
    pool = urllib3.connection_from_url(url, maxsize=8)
    path = urllib3.util.parse_url(url).request_uri
    headers = {"token": token, "Accept": "application/json", "Content-Type": "application/json"}

    def send(one: Call) -> Any:
        answer = pool.urlopen("POST", path, body=json.dumps(payload(one)).encode(), headers=headers,
                              retries=False, timeout=30)
        return json.loads(answer.data)
    return send


def raw(url: str, token: str) -> Callable[[Call], Any]:
    """The lowest floor: one kept-alive socket per thread, the request's bytes written by hand and
    the answer read up to its Content-Length (the sandbox always sends one)."""
    parts = urllib.parse.urlsplit(url)
    local = threading.local()

    def send(one: Call) -> Any:
        if getattr(local, "sock", None) is None:
            local.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
            local.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local.buffer = b""
        body = json.dumps(payload(one)).encode()
        local.sock.sendall(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\ntoken: {token}\r\n"
                           f"Accept: application/json\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        buffer = local.buffer
        while b"\r\n\r\n" not in buffer:
            buffer += local.sock.recv(65536)
        head, _, rest = buffer.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(rest) < length:
            rest += local.sock.recv(65536)
        local.buffer = rest[length:]
        return json.loads(rest[:length])
    return send


def cpu_per_call(send: Callable[[Call], Any], calls: int, threads: int) -> tuple[float, float]:
    """(client CPU ms per call, calls/s)."""
    cpu, wall = time.process_time(), time.perf_counter()
    if threads == 1:
        for i in range(calls):
            send(call(i))
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(send, (call(i) for i in range(calls))))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / calls * 1000, calls / wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("calls", nargs="?", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    latency_s = args.latency_ms / 1000
    queue: Any = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(queue, latency_s), daemon=True)
    server.start()
    url, install_sid, token = queue.get(timeout=30)
    client = ProvisionClient(TargetConfig(base_url=url, install_sid=install_sid, token=token, concurrency=8))
    floor, lowest = bare(client.url, token), raw(client.url, token)
    measures = {"ProvisionClient.provision, 1 thread": (client.provision, 1),
                "ProvisionClient.provision, 8 threads": (client.provision, 8),
                "bare urllib3 + json (the floor), 1 thread": (floor, 1),
                "raw socket + json (no HTTP library), 1 thread": (lowest, 1)}
    if latency_s:
        raw_port: Any = multiprocessing.Queue()
        multiprocessing.Process(target=serve_raw, args=(raw_port, latency_s), daemon=True).start()
        machine = raw(f"http://127.0.0.1:{raw_port.get(timeout=30)}/v2/installs/x/provision", token)
        measures = {"ProvisionClient.provision, 8 threads": (client.provision, 8),
                    "bare urllib3 + json (the floor), 8 threads": (floor, 8),
                    "raw socket + json (no HTTP library), 8 threads": (lowest, 8),
                    "raw socket client against a raw socket server (the machine's floor), 8 threads": (machine, 8)}
    for send, _ in measures.values():  # warm the connections
        for i in range(50):
            send(call(i))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in measures}
    for _ in range(args.rounds):
        for name, (send, threads) in measures.items():
            results[name].append(cpu_per_call(send, args.calls, threads))
    for name, figures in results.items():
        cpu = statistics.median(f[0] for f in figures)
        rate = statistics.median(f[1] for f in figures)
        bound = f" = {rate / (8 / latency_s):.1%} of the bound ({8 / latency_s:.0f})" if latency_s else ""
        print(f"{name}: {cpu:.3f} ms of client CPU per call, {rate:.0f} calls/s{bound} "
              f"(median of {args.rounds} x {args.calls} calls)")
    server.terminate()


if __name__ == "__main__":
    main()
