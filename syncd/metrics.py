"""Prometheus metrics for ``GET /metrics`` (SPEC §8).

Two kinds, by where the truth lives:

- **Counters of this process** (``*_total``, the run-duration histogram), fed from each daemon
  run's summary and from a metered source and provision client passed to ``engine.run``. They
  start at zero with the process, as Prometheus counters do (``rate()`` handles the reset).
- **State**, read from the state store at scrape time by :class:`StateCollector`: records per
  entity and state, escrow, held objects, last success, degraded. They survive a restart and
  count what ``syncd sync`` did from the CLI too; with ``[state] url`` they are the cluster's
  (every node's runs, read from the shared PostgreSQL store), while the counters stay this node's.

Every name starts with ``syncd_``; ``tenant`` is the only label whose values grow with the install.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from syncd import engine, http
from syncd.config import TenantConfig
from syncd.entities import Call
from syncd.model import ENTITIES, PLURAL
from syncd.sources import Source, open_source
from syncd.target import InvalidResponse, Outcome, ProvisionClient

log = structlog.get_logger("syncd.metrics")

RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
CHANGES = ("created", "updated", "removed", "failed")
SUCCESS = ("completed", "completed_with_errors")


class Metrics:
    """The daemon's registry: run counters, and the store read at each scrape."""

    def __init__(self, state_dir: Path, tenants: Callable[[], dict[str, TenantConfig]],
                 running: Callable[[], Iterator[str]], url: str = ""):
        disable_created_metrics()  # *_created series only double what a scraper sees anyway
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter("syncd_runs", "Runs finished, by status", ["tenant", "status"], registry=r)
        self.duration = Histogram("syncd_run_duration_seconds", "Wall time of a run", ["tenant"],
                                  buckets=RUN_BUCKETS, registry=r)
        self.calls = Counter("syncd_provision_calls", "Provision calls by outcome (acknowledged, partial: "
                             "some object not acknowledged, rejected: 4xx, refused: token refused, "
                             "failed: transient faults outlasted the retries, invalid: unusable answer)",
                             ["tenant", "outcome"], registry=r)
        self.requests = Counter("syncd_provision_requests", "Provision HTTP requests, retries included",
                                ["tenant"], registry=r)
        self.changes = Counter("syncd_record_changes", "Records created, updated, removed (tombstoned) or "
                               "failed by runs", ["tenant", "entity", "change"], registry=r)
        self.source_requests = Counter("syncd_source_requests", "Requests to the source (LMS / SIS)",
                                       ["tenant"], registry=r)
        self.throttles = Counter("syncd_source_throttles", "Throttled answers from the source (429, or "
                                 "Canvas's 403 Rate Limit Exceeded)", ["tenant"], registry=r)
        self.state = StateCollector(state_dir, tenants, running, url)
        r.register(self.state)

    def observe(self, tenant: str, summary: dict[str, Any] | None, probe: RunProbe | None) -> None:
        """One finished run (``summary`` None: the run raised; it is counted as failed)."""
        status = summary["status"] if summary else "failed"
        self.runs.labels(tenant, status).inc()
        if summary:
            self.duration.labels(tenant).observe(summary.get("duration_s", 0.0))
            self.requests.labels(tenant).inc(summary.get("calls", 0))
            for entity in ENTITIES:
                counts = summary.get("counts", {}).get(PLURAL[entity], {})
                for change in CHANGES:
                    if counts.get(change):
                        self.changes.labels(tenant, entity, change).inc(counts[change])
        if probe:
            for outcome, n in probe.client.outcomes.items():
                self.calls.labels(tenant, outcome).inc(n)
            self.source_requests.labels(tenant).inc(probe.source.requests)
            self.throttles.labels(tenant).inc(probe.source.throttles)


def exposition(daemon: Any, accept: str) -> tuple[bytes, str]:
    encoder, content_type = choose_encoder(accept)
    return encoder(daemon.metrics.registry), content_type


# --- state read at scrape time ---------------------------------------------------------------


class StateCollector:
    """Reads the state store (read-only, WAL: never blocks a run) each time Prometheus scrapes; with
    ``url``, the PostgreSQL store, on one session kept (and reopened after an outage) between scrapes."""

    def __init__(self, state_dir: Path, tenants: Callable[[], dict[str, TenantConfig]],
                 running: Callable[[], Iterator[str]], url: str = ""):
        self.path = state_dir / "syncd.db"
        self.url = url
        self._pg: Any = None  # (PgConnection, Reconnecting), opened at the first scrape
        self._pg_lock = threading.Lock()
        self.tenants = tenants
        self.running = running
        # Counting acknowledged records reads every row of the acked tables (~170 ms at 100k
        # enrollments). They change only in runs, so the counts are kept until a run finishes.
        self._records: tuple[Any, dict[str, dict[str, tuple[int, int, int]]]] | None = None

    def describe(self) -> list[Metric]:
        return []  # names vary with the store; skip the registry's dry-run collect()

    def collect(self) -> Iterator[Metric]:
        if self.url:
            yield from self._collect_shared()
            return
        up = GaugeMetricFamily("syncd_store_up", "1 when the state store could be read for this scrape")
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=2)
        except sqlite3.Error:
            up.add_metric([], 0)
            yield up
            return
        try:
            yield from self._state(conn)
            up.add_metric([], 1)
        except sqlite3.Error as exc:
            log.warning("metrics.store_unreadable", error=str(exc))
            up.add_metric([], 0)
        finally:
            conn.close()
        yield up

    def _collect_shared(self) -> Iterator[Metric]:
        """:meth:`collect` on PostgreSQL. The metrics are gathered whole before any is yielded, so
        that a scrape never holds the session's lock across the exposition."""
        import psycopg

        from syncd.lease import LeaseLost
        from syncd.store import postgres

        up = GaugeMetricFamily("syncd_store_up", "1 when the state store could be read for this scrape")
        gathered: list[Metric] = []
        with self._pg_lock:
            try:
                if self._pg is None:
                    self._pg = postgres.side_connection(self.url)
                gathered = list(self._state(self._pg[0]))
                up.add_metric([], 1)
            except (psycopg.Error, LeaseLost) as exc:
                log.warning("metrics.store_unreadable", error=str(exc).splitlines()[0] if str(exc) else repr(exc))
                gathered = []
                up.add_metric([], 0)
        yield from gathered
        yield up

    def _state(self, conn: Any) -> Iterator[Metric]:
        configured = self.tenants()
        names = set(configured) | {r[0] for r in conn.execute("SELECT DISTINCT tenant FROM runs")}
        records = GaugeMetricFamily("syncd_records", "Objects the target acknowledged, by state (synced, "
                                    "disabled users, removed: tombstones)", labels=["tenant", "entity", "state"])
        counted = self._record_counts(conn)
        for entity in ENTITIES:
            rows = counted[entity]
            for tenant in sorted(names | set(rows)):
                synced, off, removed = rows.get(tenant, (0, 0, 0))
                records.add_metric([tenant, entity, "synced"], synced - off)
                if entity == "user":
                    records.add_metric([tenant, entity, "disabled"], off)
                records.add_metric([tenant, entity, "removed"], removed)
        yield records

        escrow = GaugeMetricFamily("syncd_escrow_records", "Records the target keeps rejecting, waiting "
                                   "for their next try", labels=["tenant", "entity"])
        rows = {(r[0], r[1]): r[2] for r in conn.execute(
            "SELECT tenant, entity, count(*) FROM escrow GROUP BY 1, 2")}
        for tenant in sorted(names | {t for t, _ in rows}):
            for entity in ENTITIES:
                escrow.add_metric([tenant, entity], rows.get((tenant, entity), 0))
        yield escrow

        last = {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT r.tenant, r.run_id, r.status FROM runs r WHERE r.dry_run = 0 AND r.status != 'running' "
            "AND r.started_at = (SELECT max(started_at) FROM runs x WHERE x.tenant = r.tenant AND x.dry_run = 0 "
            "AND x.status != 'running')")}
        held = GaugeMetricFamily("syncd_held_records", "Objects the latest run held back for an admin's "
                                 "approval (syncd approve)", labels=["tenant", "entity", "kind"])
        tenant_held = GaugeMetricFamily("syncd_tenant_held", "1 when the latest run is held by a safety "
                                        "threshold", labels=["tenant"])
        for tenant in sorted(names):
            run_id, status = last.get(tenant, ("", ""))
            tenant_held.add_metric([tenant], int(status == "held"))
            counts = {(r[0], r[1]): r[2] for r in conn.execute(
                "SELECT entity, kind, count(*) FROM held WHERE run_id = ? GROUP BY 1, 2", (run_id,))}
            for entity in ENTITIES:
                for kind in ("update", "remove"):
                    held.add_metric([tenant, entity, kind], counts.get((entity, kind), 0))
        yield held
        yield tenant_held

        success = GaugeMetricFamily("syncd_last_success_timestamp_seconds", "When the latest run that "
                                    "completed (with or without record errors) finished", labels=["tenant"])
        for tenant, finished in conn.execute(
                "SELECT tenant, max(finished_at) FROM runs WHERE dry_run = 0 AND status IN (?, ?) GROUP BY tenant",
                SUCCESS):
            if finished:
                success.add_metric([tenant], datetime.fromisoformat(finished.replace("Z", "+00:00")).timestamp())
        yield success

        degraded = GaugeMetricFamily("syncd_tenant_degraded", "1 when the tenant's latest runs all failed "
                                     "(safety.degraded_after in a row)", labels=["tenant"])
        for tenant in sorted(names):
            limit = configured[tenant].safety.degraded_after if tenant in configured else 3
            statuses = [r[0] for r in conn.execute(
                "SELECT status FROM runs WHERE tenant = ? AND dry_run = 0 AND status != 'running' "
                "ORDER BY started_at DESC LIMIT ?", (tenant, limit))]
            degraded.add_metric([tenant], int(len(statuses) == limit and set(statuses) == {"failed"}))
        yield degraded

        running = GaugeMetricFamily("syncd_tenant_running", "1 while the daemon runs the tenant", labels=["tenant"])
        now = set(self.running())
        for tenant in sorted(set(configured)):
            running.add_metric([tenant], int(tenant in now))
        yield running


    def _record_counts(self, conn: Any) -> dict[str, dict[str, tuple[int, int, int]]]:
        """Per entity and tenant: (acknowledged, disabled, tombstoned), recounted after each run."""
        fingerprint = conn.execute("SELECT count(*), max(finished_at) FROM runs").fetchone()
        if self._records and self._records[0] == fingerprint:
            return self._records[1]
        counted = {}
        for entity in ENTITIES:
            disabled = "count(*) FILTER (WHERE removed_at IS NULL AND disabled_at IS NOT NULL)" \
                if entity == "user" else "0"
            counted[entity] = {r[0]: tuple(r[1:]) for r in conn.execute(
                f"SELECT tenant, count(*) FILTER (WHERE removed_at IS NULL), {disabled}, "  # noqa: S608
                f"count(*) FILTER (WHERE removed_at IS NOT NULL) FROM acked_{PLURAL[entity]} GROUP BY tenant")}
        self._records = (fingerprint, counted)
        return counted


# --- metering one run ----------------------------------------------------------------------


class RunProbe:
    """A source and a provision client for ``engine.run`` that count what they did."""

    def __init__(self, tenant: TenantConfig, state_dir: Path):
        self.source = MeteredSource(lambda: open_source(tenant, state_dir, engine._today(tenant)))
        self.client = MeteredClient(tenant.target)


class MeteredSource:
    """The tenant's source, opened on first use (inside the engine's run, as it would open it)."""

    def __init__(self, opener: Callable[[], Source]):
        self._opener = opener
        self._source: Source | None = None

    def _open(self) -> Source:
        if self._source is None:
            self._source = self._opener()
        return self._source

    def check(self) -> None:
        self._open().check()

    def extract(self) -> Any:
        return self._open().extract()

    @property
    def complete(self) -> bool:
        return bool(self._source and self._source.complete)

    @property
    def requests(self) -> int:
        return self._source.requests if self._source else 0

    @property
    def throttles(self) -> int:
        # Canvas's budget counts its throttles (403 "Rate Limit Exceeded" too); any other source's
        # session counts the 429s it was answered.
        budget = getattr(self._source, "budget", None)
        if budget is not None:
            return int(getattr(budget, "throttles", 0))
        return int(getattr(getattr(self._source, "session", None), "throttles", 0))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._open(), name)


class MeteredClient(ProvisionClient):
    """A provision client that tallies each call's outcome (pool threads: under a lock)."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.outcomes: dict[str, int] = {}
        self._tally_lock = threading.Lock()

    def _tally(self, outcome: str) -> None:
        with self._tally_lock:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def provision(self, call: Call) -> Outcome:
        try:
            result = super().provision(call)
        except http.AuthError:
            self._tally("refused")
            raise
        except http.RejectedError:
            self._tally("rejected")
            raise
        except InvalidResponse:
            self._tally("invalid")
            raise
        except http.HttpError:
            self._tally("failed")
            raise
        self._tally("partial" if result.problems else "acknowledged")
        return result
