"""The GG4L webhook under load: 50 districts, 200 requests/s for 10 s, on the daemon's listener.

    python bench/gg4l_webhook.py [--rate 200] [--seconds 10] [--districts 50] [--quick] [--in-process]

A fake GG4L lists ``--districts`` districts (small rosters). By default the target is one real
``syncd run`` (a subprocess, ``[gg4l]`` with ``on_new_district = "sync"`` and ``[daemon.http]``), so
the daemon discovers and syncs the 50 district tenants while the webhooks arrive, and ``GET /healthz``
(the real one: scheduler and a state-store write) is probed throughout. ``--in-process`` mounts the
webhook on ``syncd.web`` in this process instead, with a trivial health route. Every request is a
valid webhook for one of the districts (so most are duplicates), sent open-loop at ``--rate``. It
reports every status, p50/p99/max latency, how many districts exist at the end (must be exactly
``--districts``: none duplicated), the district syncs done, and the Partner API list calls that the
coalescing let through.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).parent))
from common import publish

from syncd import config as configuration
from syncd import logs
from syncd.gg4l.partner import PartnerClient
from syncd.gg4l.service import Gg4lService
from syncd.sandbox import Roster
from syncd.sandbox.gg4l import WEBHOOK_KEY, Gg4lSandbox


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--districts", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="2 s, print only")
    parser.add_argument("--in-process", action="store_true", help="the listener in this process, not syncd run")
    parser.add_argument("--during-first-syncs", action="store_true",
                        help="start the load at once, while the daemon runs the 50 first syncs (default: after)")
    args = parser.parse_args()
    seconds = 2.0 if args.quick else args.seconds
    logs.configure("warning", "json")
    tmp = Path(tempfile.mkdtemp(prefix="gg4l-bench-"))
    with Gg4lSandbox() as box:
        guids = [f"{i:08x}-0000-4000-8000-{i:012x}" for i in range(args.districts)]
        for i, guid in enumerate(guids):
            box.gg4l.add_district(guid, Roster.generate(seed=i, users=20, classes=2, enrollments=40))
        target = _in_process(box, tmp) if args.in_process else _daemon(box, tmp, args.districts,
                                                                        not args.during_first_syncs)
        with target as (base, health_path, count):
            latencies: list[float] = []
            statuses: dict[int, int] = {}
            health: list[int] = []
            lock = threading.Lock()
            local = threading.local()
            stop = threading.Event()

            def session() -> requests.Session:
                if not hasattr(local, "session"):
                    local.session = requests.Session()
                return local.session

            def one(i: int) -> None:
                started = time.perf_counter()
                try:
                    status = session().post(f"{base}/webhooks/gg4l", json={"districtGUID": guids[i % len(guids)],
                                                                           "mode": "standard"},
                                            headers={"X-Syncd-Key": WEBHOOK_KEY}, timeout=10).status_code
                except requests.RequestException:
                    status = 0
                with lock:
                    latencies.append(time.perf_counter() - started)
                    statuses[status] = statuses.get(status, 0) + 1

            def probe() -> None:
                probe_session = requests.Session()
                while not stop.is_set():
                    try:
                        health.append(probe_session.get(f"{base}{health_path}", timeout=2).status_code)
                    except requests.RequestException:
                        health.append(0)
                    stop.wait(0.2)

            prober = threading.Thread(target=probe, daemon=True)
            prober.start()
            total = int(args.rate * seconds)
            start = time.monotonic()
            with ThreadPoolExecutor(32) as pool:
                for i in range(total):
                    delay = start + i / args.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    pool.submit(one, i)
            elapsed = time.monotonic() - start
            stop.set()
            prober.join()
            time.sleep(2.5)  # the last coalesced discovery
            districts, synced = count()
            partner_calls = box.gg4l.partner_requests
    text = "\n".join([
        f"# GG4L webhook load ({'quick' if args.quick else 'full'})", "",
        "| measure | value |", "| --- | --- |",
        f"| requests sent | {total} in {elapsed:.1f} s ({total / elapsed:.0f}/s, {args.districts} districts) |",
        f"| statuses | {', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))} |",
        f"| latency p50 / p99 / max | {percentile(latencies, 0.5) * 1e3:.1f} / {percentile(latencies, 0.99) * 1e3:.1f}"
        f" / {max(latencies) * 1e3:.1f} ms |",
        f"| health probes | {len(health)}, all 200: {all(s == 200 for s in health)} |",
        f"| target | {_target(args)} |",
        f"| districts at the end | {len(districts)} (distinct tenants: {len(set(districts))}); "
        f"district syncs completed: {synced} |",
        f"| Partner API list calls | {partner_calls} |",
    ])
    publish(text, "gg4l-webhook-results.md", args.quick)
    ok = (statuses.get(200, 0) == total and len(districts) == args.districts
          and percentile(latencies, 0.99) < 0.1 and all(s == 200 for s in health))
    return 0 if ok else 1


def _target(args: argparse.Namespace) -> str:
    if args.in_process:
        return "in-process listener"
    when = "during the first syncs" if args.during_first_syncs else "after the first syncs"
    return f"syncd run, its /healthz, load {when}"


@contextlib.contextmanager
def _daemon(box: Gg4lSandbox, tmp: Path, districts: int, settle: bool) -> Any:
    """One real `syncd run` with [gg4l] and its listener; yields (base URL, health path, counter).

    With ``settle``, the load starts once every district's first sync is done (the steady state of
    a daemon with ``districts`` tenants); without, during those first syncs.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = box.write_config(tmp / "syncd.toml", tmp / "state", on_new_district="sync")
    config.write_text(config.read_text().replace('log_format = "json"', 'log_format = "json"\nlog_level = "warning"')
                      + f'\n[daemon.http]\nlisten = "127.0.0.1:{port}"\nthreads = 8\n')
    syncd = str(Path(sys.executable).with_name("syncd"))
    log = (tmp / "daemon.log").open("w")
    process = subprocess.Popen([syncd, "--config", str(config), "run"], stdout=subprocess.DEVNULL, stderr=log,
                               stdin=subprocess.DEVNULL, env=dict(os.environ))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        time.sleep(0.1)

    def count() -> tuple[list[str], int]:
        with sqlite3.connect(tmp / "state" / "syncd.db", timeout=30) as conn:
            tenants = [r[0] for r in conn.execute("SELECT tenant FROM districts")]
            synced = conn.execute("SELECT count(*) FROM runs WHERE tenant LIKE 'gg4l-%' AND status = 'completed'"
                                  ).fetchone()[0]
        return tenants, synced

    deadline = time.monotonic() + 300
    while settle and time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.Error):
            if count()[1] >= districts:
                break
        time.sleep(0.5)
    try:
        yield base, "/healthz", count
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@contextlib.contextmanager
def _in_process(box: Gg4lSandbox, tmp: Path) -> Any:
    """The webhook on syncd.web's listener in this process, with a trivial health route."""
    from syncd import web
    from syncd.config import HttpConfig

    config = configuration.load(box.write_config(tmp / "syncd.toml", tmp / "state"))
    conn = sqlite3.connect(tmp / "state.db", check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    client = PartnerClient(box.partner_url, config.gg4l.client_id, config.gg4l.client_secret, timeout_s=10)
    service = Gg4lService.start(config.gg4l, conn, client=client, min_gap_s=1.0)
    service.mount()
    web.register("GET", "/bench-health", lambda request: web.json_response(200, {"status": "ok"}))
    listener = web.Listener(HttpConfig(host="127.0.0.1", port=0, threads=8), None)
    listener.start()

    def count() -> tuple[list[str], int]:
        service.poll()
        return [d.tenant for d in service.store.districts().values()], 0

    try:
        yield f"http://127.0.0.1:{listener.port}", "/bench-health", count
    finally:
        listener.stop()
        service.stop()
        conn.close()


if __name__ == "__main__":
    raise SystemExit(main())
