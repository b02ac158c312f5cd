"""Benchmark: what metrics and alerts cost a sync (issue 14: within 2 % of them off).

    .venv/bin/python bench/overhead.py            # 20k users / 2k classes / 100k enrollments
    .venv/bin/python bench/overhead.py --quick    # 2k / 200 / 10k

Two real `syncd run` daemons on one sandbox, side by side in one run: "off" (no listener, no
alert channel) and "on" ([daemon.http] with /metrics scraped and /healthz probed every 5 s,
[alerts] with a JSON webhook receiver on loopback). After both have done their initial sync, each
no-change resync is triggered with SIGUSR1, one daemon at a time, in the order off, on, on, off, …
(so that drift on a shared machine falls on both alike). The CPU seconds each daemon process used
for the run are read from /proc (a shared, loaded machine moves wall time far more than CPU time),
and the added work is also timed in-process on the same store. The time of a run is from its
`sync.started` line to the daemon's `daemon.run_done` line, which comes after the metrics and alerts
bookkeeping (the scheduler's wake-up, the same for both, is left out: it only adds noise).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import publish

from syncd.sandbox import Roster, Sandbox

SYNCD = str(Path(sys.executable).with_name("syncd"))


class Receiver(BaseHTTPRequestHandler):
    received = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Receiver.received += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


class Daemon:
    def __init__(self, name: str, config: Path, workdir: Path):
        self.name = name
        self.log = workdir / f"{name}.log"
        self.process = subprocess.Popen([SYNCD, "--config", str(config), "run"], stdout=subprocess.DEVNULL,
                                        stderr=self.log.open("w"), stdin=subprocess.DEVNULL)

    def done(self) -> list[dict]:
        events = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [e for e in events if e["event"] == "daemon.run_done"]

    def wait_runs(self, n: int, timeout: float = 1800) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.done()
            if len(done) >= n:
                return done[n - 1]
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.01)
        raise SystemExit(f"{self.name}: timed out waiting for run {n}")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the daemon process has used: unlike wall time, barely moved
        by the other processes of a shared machine."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def resync(self) -> tuple[float, float, float]:
        """One no-change resync: seconds from the run's `sync.started` to the job's `daemon.run_done`
        (after the metrics and alerts bookkeeping), from `sync.finished` to `daemon.run_done`
        (the bookkeeping alone), as the daemon stamped them, and the CPU seconds it used."""
        n = len(self.done()) + 1
        cpu = self.cpu_s()
        self.process.send_signal(signal.SIGUSR1)
        event = self.wait_runs(n)
        cpu = self.cpu_s() - cpu
        assert event["status"] == "completed", event
        events = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        mine = {e["event"]: e for e in events if e.get("run_id") == event["run_id"]}
        return ((_when(event) - _when(mine["sync.started"])).total_seconds(),
                (_when(event) - _when(mine["sync.finished"])).total_seconds(), cpu)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)


def _when(event: dict) -> datetime:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_forever(port: int, stop: threading.Event, counts: dict[str, int]) -> None:
    while not stop.wait(5.0):
        for path in ("/metrics", "/healthz"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                    response.read()
                counts[path] = counts.get(path, 0) + 1
            except OSError as exc:  # a 503 is an answer too; count it, keep scraping
                counts[f"{path} {exc}"] = counts.get(f"{path} {exc}", 0) + 1


def in_process_costs(config_path: Path, hook_port: int) -> dict[str, float]:
    """Milliseconds per call of what the daemon adds to each run and each request."""
    from syncd import config as configuration
    from syncd import metrics, web
    from syncd.alerts import Alerts
    from syncd.config import AlertsConfig
    from syncd.store import Store

    config = configuration.load(config_path)
    state_dir = config.daemon.state_dir
    tenant = config.tenants["lincoln"]
    registry = metrics.Metrics(state_dir, lambda: config.tenants, lambda: iter([]))
    store = Store.open(state_dir)
    summary = json.loads(store.runs("lincoln", 1)[0]["summary"])
    probe = metrics.RunProbe(tenant, state_dir)
    dispatcher = Alerts(lambda: AlertsConfig(urls=(f"json://127.0.0.1:{hook_port}/",)), state_dir)

    def per_call(fn, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - started) / n * 1000

    holder = type("Daemon", (), {"metrics": registry})()

    def forget() -> None:  # as after a run: the record counts are read again
        registry.state._records = None

    def alert_check() -> None:  # what Daemon._observe does with alerts on
        last = store.runs("lincoln", limit=1)
        dispatcher.after_run("lincoln", summary, last[0]["message"], store.failed_in_a_row("lincoln"),
                             tenant.safety.degraded_after)

    costs = {"observe_ms": per_call(lambda: registry.observe("lincoln", summary, probe), 2000),
             "alert_ms": per_call(alert_check, 500),
             "scrape_ms": per_call(lambda: metrics.exposition(holder, ""), 20),
             "first_scrape_ms": per_call(lambda: (forget(), metrics.exposition(holder, "")), 5),
             "health_ms": per_call(lambda: web.store_write_check(state_dir), 50)}
    store.close()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=6, help="resyncs per daemon")
    args = parser.parse_args()
    users, classes, enrollments = (2_000, 200, 10_000) if args.quick else (20_000, 2_000, 100_000)
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    roster = Roster.generate(seed=5, users=users, classes=classes, enrollments=enrollments)
    with tempfile.TemporaryDirectory() as tmp, Sandbox(roster) as box:
        workdir = Path(tmp)
        port = free_port()
        configs = {}
        for name in ("off", "on"):
            extra = "" if name == "off" else (
                f'\n[daemon.http]\nlisten = "127.0.0.1:{port}"\n'
                f'\n[alerts]\nurls = ["json://127.0.0.1:{receiver.server_address[1]}/"]\ndigest = "07:00"\n')
            config = box.write_config(workdir / f"{name}.toml", workdir / f"state-{name}",
                                      target_extra="concurrency = 8")
            config.write_text(config.read_text().replace('schedule = "every 15m"', 'schedule = "0 0 1 1 *"') + extra)
            configs[name] = config
        daemons = {name: Daemon(name, config, workdir) for name, config in configs.items()}
        stop = threading.Event()
        scrapes: dict[str, int] = {}
        try:
            for daemon in daemons.values():  # both are overdue: their initial syncs run at start
                daemon.wait_runs(1)
            scraper = threading.Thread(target=scrape_forever, args=(port, stop, scrapes), daemon=True)
            scraper.start()
            times: dict[str, list[float]] = {"off": [], "on": []}
            after: dict[str, list[float]] = {"off": [], "on": []}
            cpu: dict[str, list[float]] = {"off": [], "on": []}
            order = ["off", "on", "on", "off"] * ((args.rounds + 1) // 2)
            for name in order[: 2 * args.rounds]:
                total, bookkeeping, used = daemons[name].resync()
                times[name].append(total)
                after[name].append(bookkeeping)
                cpu[name].append(used)
                print(f"{name}: {total:.3f} s, {used:.2f} s CPU (after the sync: {bookkeeping * 1000:.1f} ms)",
                      file=sys.stderr)
        finally:
            stop.set()
            for daemon in daemons.values():
                daemon.stop()
        costs = in_process_costs(configs["on"], receiver.server_address[1])
    receiver.shutdown()
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    delta = (on - off) / off * 100
    cpu_off, cpu_on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    lines = [
        f"# Metrics and alerts overhead ({datetime.now(UTC).date()}, {os.cpu_count()} cores)",
        "",
        f"`bench/overhead.py{' --quick' if args.quick else ''}`: {users:,} users, {classes:,} classes, "
        f"{enrollments:,} enrollments; no-change resync, {args.rounds} runs each, interleaved off/on/on/off; "
        f"/metrics and /healthz scraped every 5 s during the runs ({scrapes.get('/metrics', 0)} scrapes"
        f"{'; failures: ' + str({k: v for k, v in scrapes.items() if ' ' in k}) if len(scrapes) > 2 else ''}).",
        "",
        "| daemon | median | min | max |",
        "| --- | --- | --- | --- |",
        f"| metrics + alerts off | {off:.3f} s | {min(times['off']):.3f} s | {max(times['off']):.3f} s |",
        f"| metrics + alerts on | {on:.3f} s | {min(times['on']):.3f} s | {max(times['on']):.3f} s |",
        f"| CPU of the daemon, off | {cpu_off:.2f} s | {min(cpu['off']):.2f} s | {max(cpu['off']):.2f} s |",
        f"| CPU of the daemon, on (scrapes included) | {cpu_on:.2f} s | {min(cpu['on']):.2f} s | "
        f"{max(cpu['on']):.2f} s |",
        "",
        f"Difference of the medians: wall time {delta:+.1f} %, CPU {(cpu_on - cpu_off) / cpu_off * 100:+.1f} % "
        f"(budget: 2 %). Alert messages sent: {Receiver.received} (none expected: nothing changed state).",
        "",
        f"Measured in-process on the same store of {enrollments:,} enrollments (the work metrics and alerts add, "
        "without the machine's noise): "
        f"per run, observing the summary {costs['observe_ms']:.3f} ms and the alert state check "
        f"{costs['alert_ms']:.3f} ms ({(costs['observe_ms'] + costs['alert_ms']) / 1000 / off * 100:.3f} % of "
        f"a resync); per scrape of /metrics {costs['scrape_ms']:.1f} ms, the first after a run (records "
        f"recounted) {costs['first_scrape_ms']:.1f} ms; per /healthz {costs['health_ms']:.1f} ms.",
        "",
        "What the daemon does after `sync.finished` (metrics observed, alert state read and written) until "
        f"`daemon.run_done`: median {statistics.median(after['off']) * 1000:.1f} ms off, "
        f"{statistics.median(after['on']) * 1000:.1f} ms on, i.e. "
        f"{(statistics.median(after['on']) - statistics.median(after['off'])) / off * 100:+.2f} % of a resync. "
        f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
    ]
    publish("\n".join(lines) + "\n", "overhead-results.md", args.quick)


if __name__ == "__main__":
    main()
