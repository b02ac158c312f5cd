"""The GG4L webhook under load: 50 districts, 200 requests/s for 10 s, on the daemon's real listener.

    python bench/gg4l_webhook.py [--rate 200] [--seconds 10] [--districts 50] [--quick]

A fake GG4L lists ``--districts`` districts; the webhook is mounted on ``syncd.web`` (waitress, the
daemon's listener: needs the web branch merged) through ``Gg4lService.mount``. Every request is a
valid webhook for one of the districts (so most are duplicates), sent open-loop at ``--rate``;
``/healthz``-style probes (a trivial route on the same listener) run throughout. It reports
every status, p50/p99/max latency, how many districts exist at the end (must be exactly
``--districts``: none duplicated) and how many Partner API calls the coalescing let through.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
    args = parser.parse_args()
    seconds = 2.0 if args.quick else args.seconds
    from syncd import web  # the daemon's listener (the web branch)
    from syncd.config import HttpConfig

    logs.configure("warning", "json")
    tmp = Path(tempfile.mkdtemp(prefix="gg4l-bench-"))
    with Gg4lSandbox() as box:
        guids = [f"{i:08x}-0000-4000-8000-{i:012x}" for i in range(args.districts)]
        for i, guid in enumerate(guids):
            box.gg4l.add_district(guid, Roster.generate(seed=i, users=20, classes=2, enrollments=40))
        config = configuration.load(box.write_config(tmp / "syncd.toml", tmp / "state"))
        conn = sqlite3.connect(tmp / "state.db", check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        client = PartnerClient(box.partner_url, config.gg4l.client_id, config.gg4l.client_secret, timeout_s=10)
        service = Gg4lService.start(config.gg4l, conn, client=client, min_gap_s=1.0)
        service.mount()
        web.register("GET", "/bench-health", lambda request: web.json_response(200, {"status": "ok"}))
        listener = web.Listener(HttpConfig(host="127.0.0.1", port=0, threads=8), None)
        listener.start()
        base = f"http://127.0.0.1:{listener.port}"
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
                    health.append(probe_session.get(f"{base}/bench-health", timeout=2).status_code)
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
        time.sleep(1.5)  # the last coalesced discovery
        service.poll()
        districts = service.store.districts()
        listener.stop()
        service.stop()
        conn.close()
        partner_calls = box.gg4l.partner_requests
    text = "\n".join([
        f"# GG4L webhook load ({'quick' if args.quick else 'full'})", "",
        "| measure | value |", "| --- | --- |",
        f"| requests sent | {total} in {elapsed:.1f} s ({total / elapsed:.0f}/s, {args.districts} districts) |",
        f"| statuses | {', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))} |",
        f"| latency p50 / p99 / max | {percentile(latencies, 0.5) * 1e3:.1f} / {percentile(latencies, 0.99) * 1e3:.1f}"
        f" / {max(latencies) * 1e3:.1f} ms |",
        f"| health probes | {len(health)}, all 200: {all(s == 200 for s in health)} |",
        f"| districts at the end | {len(districts)} (distinct tenants: {len({d.tenant for d in districts.values()})})"
        " |",
        f"| Partner API list calls | {partner_calls} |",
    ])
    publish(text, "gg4l-webhook-results.md", args.quick)
    ok = (statuses.get(200, 0) == total and len(districts) == args.districts
          and percentile(latencies, 0.99) < 0.1 and all(s == 200 for s in health))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
