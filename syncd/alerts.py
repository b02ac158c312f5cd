"""Alerts through Apprise (SPEC §10): one message per state change of a tenant, and a daily digest.

A tenant's state is kept per *topic*, so that independent facts do not cancel each other:

- ``sync`` (set by the daemon after each real run): ``ok``, ``held``, ``failed``, ``degraded``
  (``safety.degraded_after`` failed runs in a row), ``credential_refused``;
- ``credential``: ``ok`` / ``expiring`` (a credential's known end is near);
- ``gg4l``: ``ok`` / ``expiring`` / ``revoked`` (a district's lifecycle).

Code outside a run (GG4L discovery, a credential check) reports through the running daemon's
dispatcher: ``daemon.alerts.notify_state("gg4l-abc", "revoked", "absent from 3 discoveries",
topic=alerts.GG4L)``, and ``notify_state(tenant, alerts.OK, "listed again", topic=alerts.GG4L)`` when it
is over (the "recovered" message).

:func:`notify_state` compares the new state with the last one alerted for (tenant, topic), kept
in the state store (table ``alert_state``; with ``[state] url`` the shared PostgreSQL one, so that
the nodes of a cluster alert once between them), and queues one message only when it changed: a tenant
that fails ten runs in a row gets one "failed" message (then one "degraded"), and one "recovered"
when a run completes again. Messages go out from one background thread, each channel tried up
to three times; a channel that fails is logged and never slows or fails a sync. The URLs may carry
passwords or webhook tokens: they are config secrets (redacted in logs), and channels are logged
by number and service name only.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from syncd import logs
from syncd.config import AlertsConfig
from syncd.store import utcnow

log = structlog.get_logger("syncd.alerts")

OK = "ok"
SYNC, CREDENTIAL, GG4L = "sync", "credential", "gg4l"
# Tries per channel and the pause before each retry.
RETRY_DELAYS_S = (2.0, 10.0)
QUEUE_LIMIT = 1000  # messages waiting; beyond, new ones are dropped (and logged), never blocking a run
# A failed run's message that says a credential was refused (not a network fault): the admin
# must act, and says so differently than for an outage.
AUTH_FAILURES = ("the target refused the token", "http 401", "http 403", "syncd auth", "invalid_client",
                 "invalid_grant")

TITLES = {
    "held": "{tenant} is held: a safety threshold stopped changes",
    "failed": "{tenant}: sync failed",
    "degraded": "{tenant} is degraded: its runs keep failing",
    "credential_refused": "{tenant}: credentials refused",
    "expiring": "{tenant}: {topic} expiring soon",
    "revoked": "{tenant}: district revoked",
    OK: "{tenant} recovered",
}


@dataclass(frozen=True)
class Message:
    title: str
    body: str


class Alerts:
    """The dispatcher: state changes -> queued messages -> every configured channel."""

    def __init__(self, config: Callable[[], AlertsConfig], state_dir: Path, url: str = ""):
        self.config = config
        self.path = state_dir / "syncd.db"
        self.url = url  # the PostgreSQL store shared by the cluster; "" for the SQLite file
        self._pg: Any = None  # (PgConnection, Reconnecting) on PostgreSQL, opened on first use
        self._pg_lock = threading.Lock()
        self.queue: queue.Queue[Message | None] = queue.Queue(QUEUE_LIMIT)
        self._thread = threading.Thread(target=self._worker, name="alerts", daemon=True)
        self.stopping = threading.Event()
        logging.getLogger("apprise").setLevel(logging.ERROR)  # our own line says which channel failed

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is queued (within ``timeout``), then end the thread."""
        self.stopping.set()
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(None)
        self._thread.join(timeout)

    # --- state changes ---------------------------------------------------------------------

    def after_run(self, tenant: str, summary: dict[str, Any] | None, message: str | None,
                  failed_in_a_row: int, degraded_after: int) -> bool:
        """The ``sync`` state of a tenant after one real run, alerted if it changed."""
        status = summary["status"] if summary else "failed"
        if status == "held":
            reasons = "; ".join(summary.get("held_because", [])) if summary else ""
            run = summary["run_id"] if summary else ""
            # Later runs stay held (and may hold more) until approved: point at the latest, not this one.
            return self.notify_state(tenant, "held", f"{reasons} (run {run}).\nReview with: syncd sync {tenant} "
                                                     f"--dry-run\nRelease once with: syncd approve {tenant}")
        if status == "failed":
            detail = message or "the run failed"
            if any(marker in detail.lower() for marker in AUTH_FAILURES):
                return self.notify_state(tenant, "credential_refused", detail)
            if failed_in_a_row >= degraded_after:
                return self.notify_state(tenant, "degraded", f"{failed_in_a_row} runs in a row failed; "
                                                             f"the last: {detail}")
            return self.notify_state(tenant, "failed", detail)
        return self.notify_state(tenant, OK, f"the latest run finished {status.replace('_', ' ')}")

    def notify_state(self, tenant: str, state: str, detail: str = "", topic: str = SYNC) -> bool:
        """Record ``state`` for (tenant, topic); queue one message if it differs from the last one.

        A first ``ok`` (nothing was ever wrong) is recorded silently. Returns whether a message
        was queued. Safe from any thread and any process (one write transaction).
        """
        previous = self._swap_state(tenant, topic, state, detail)
        if (previous[0] if previous else OK) == state:
            return False
        title = TITLES.get(state, "{tenant}: {topic} " + state).format(tenant=tenant, topic=topic)
        body = detail
        if state == OK and previous is not None:
            body = f"{detail}.\nIt was {previous[0].replace('_', ' ')} since {previous[1]}."
        log.info("alerts.state_changed", tenant=tenant, topic=topic, state=state,
                 previous=previous[0] if previous else None)
        return self.send(f"syncd: {title}", body)

    def _swap_state(self, tenant: str, topic: str, state: str, detail: str) -> tuple[str, str] | None:
        if self.url:
            return self._swap_shared(tenant, topic, state, detail)
        conn = sqlite3.connect(self.path, timeout=60)
        try:
            # The common case, the same state as last time, is one read and no write lock.
            row = conn.execute("SELECT state, changed_at FROM alert_state WHERE tenant = ? AND topic = ?",
                               (tenant, topic)).fetchone()
            if row and row[0] == state:
                return row[0], row[1]
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT state, changed_at FROM alert_state WHERE tenant = ? AND topic = ?",
                               (tenant, topic)).fetchone()
            if row is None or row[0] != state:
                conn.execute("INSERT INTO alert_state (tenant, topic, state, detail, changed_at) "
                             "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, topic) DO UPDATE SET state = excluded.state, "
                             "detail = excluded.detail, changed_at = excluded.changed_at",
                             (tenant, topic, state, logs.redact(detail)[:2000], utcnow()))
            conn.execute("COMMIT")
        finally:
            conn.close()
        return (row[0], row[1]) if row else None

    def _swap_shared(self, tenant: str, topic: str, state: str, detail: str) -> tuple[str, str] | None:
        """``_swap_state`` on PostgreSQL. Two nodes may report the same change at once (a GG4L
        district's state, read by every node): a transaction-scoped advisory lock on (tenant, topic)
        makes the read-compare-write atomic, so exactly one of them sees the change and alerts."""
        from syncd import lease
        from syncd.store import postgres

        with self._pg_lock:
            if self._pg is None:
                self._pg = postgres.side_connection(self.url)
            conn = self._pg[0]
            select = "SELECT state, changed_at FROM alert_state WHERE tenant = ? AND topic = ?"
            row = conn.execute(select, (tenant, topic)).fetchone()
            if row and row[0] == state:
                return row[0], row[1]
            conn.execute("BEGIN")
            try:
                conn.execute("SELECT pg_advisory_xact_lock(?, ?)",
                             (lease.CLUSTER_NS, lease.lock_key(f"alert:{topic}:{tenant}")))
                row = conn.execute(select, (tenant, topic)).fetchone()
                if row is None or row[0] != state:
                    conn.execute("INSERT INTO alert_state (tenant, topic, state, detail, changed_at) "
                                 "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, topic) DO UPDATE SET "
                                 "state = excluded.state, detail = excluded.detail, changed_at = excluded.changed_at",
                                 (tenant, topic, state, logs.redact(detail)[:2000], utcnow()))
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK")
                raise
        return (row[0], row[1]) if row else None

    def close(self) -> None:
        """Close the PostgreSQL session (the SQLite path opens one per change)."""
        with self._pg_lock:
            if self._pg is not None:
                self._pg[1].close()
                self._pg = None

    # --- sending ---------------------------------------------------------------------------

    def send(self, title: str, body: str) -> bool:
        """Queue one message for every channel; never blocks. False when there is no channel."""
        if not self.config().urls:
            return False
        try:
            self.queue.put_nowait(Message(logs.redact(title), logs.redact(body)))
        except queue.Full:
            log.error("alerts.dropped", title=title, reason=f"{QUEUE_LIMIT} messages already waiting")
            return False
        return True

    def _worker(self) -> None:
        while True:
            message = self.queue.get()
            if message is None:
                return
            try:
                deliver(self.config().urls, message, self.stopping)
            except Exception:  # a broken plugin must not end the dispatcher
                log.exception("alerts.worker_failed")


def deliver(urls: tuple[str, ...], message: Message, stopping: threading.Event | None = None,
            delays: tuple[float, ...] = RETRY_DELAYS_S) -> list[bool]:
    """Send ``message`` to each channel, retrying each; one result per channel."""
    import apprise

    results = []
    for number, url in enumerate(urls, 1):
        channel = apprise.Apprise()
        if not channel.add(url):
            log.error("alerts.channel_invalid", channel=number)
            results.append(False)
            continue
        service = channel[0].service_name
        sent = False
        for attempt in range(len(delays) + 1):
            started = time.monotonic()
            sent = bool(channel.notify(title=message.title, body=message.body))
            if sent:
                log.info("alerts.sent", channel=number, service=service, title=message.title, attempt=attempt + 1)
                break
            log.warning("alerts.channel_failed", channel=number, service=service, attempt=attempt + 1,
                        took_s=round(time.monotonic() - started, 3),
                        retry_in_s=delays[attempt] if attempt < len(delays) else None)
            if attempt < len(delays) and stopping is not None and stopping.wait(delays[attempt]):
                break
            if attempt < len(delays) and stopping is None:
                time.sleep(delays[attempt])
        if not sent:
            log.error("alerts.channel_gave_up", channel=number, service=service, title=message.title)
        results.append(sent)
    return results


# --- the daily digest ------------------------------------------------------------------------


def digest(state_dir: Path, tenants: list[str], now: datetime | None = None, url: str = "") -> Message:
    """Per tenant, the last 24 hours: runs by status, changes pushed, record errors; and now:
    records in escrow, objects held, and any alerted state that is not ok. Read from the SQLite
    file, or with ``url`` from the PostgreSQL store (every node's runs)."""
    now = now or datetime.now(UTC)
    since = (now - timedelta(days=1)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if url:
        from syncd.store import postgres

        session = postgres.connect(url)
        conn: Any = postgres.PgConnection(lambda: session)
    else:
        conn = sqlite3.connect(f"file:{state_dir / 'syncd.db'}?mode=ro", uri=True, timeout=10)
    try:
        names = sorted(set(tenants) | {r[0] for r in conn.execute(
            "SELECT DISTINCT tenant FROM runs WHERE started_at >= ?", (since,))})
        lines = []
        for tenant in names:
            lines.append(_tenant_digest(conn, tenant, since))
    finally:
        conn.close()
    return Message(f"syncd: daily summary, {len(names)} tenant(s)", "\n\n".join(lines) or "No tenant.")


def digest_once(url: str, slot: str, build: Callable[[], Message], send: Callable[[str, str], bool]) -> bool:
    """In a cluster, the digest of ``slot`` (its day) is sent by one node: the first to take the
    cluster's ``digest`` job; the others wait for it, find the day done and send nothing. A node that
    dies before it is sent leaves the day to the next one. True when this node sent it."""
    from syncd import lease
    from syncd.store import postgres

    with lease.cluster_job(url, "digest", slot, node=postgres.this_node(), done_as=slot) as held:
        if held is None:
            log.info("alerts.digest_sent_elsewhere", day=slot)
            return False
        message = build()
        send(message.title, message.body)
        return True


def _tenant_digest(conn: Any, tenant: str, since: str) -> str:
    import json

    statuses: dict[str, int] = {}
    pushed = 0
    for status, summary in conn.execute("SELECT status, summary FROM runs WHERE tenant = ? AND dry_run = 0 "
                                        "AND started_at >= ? AND status != 'running'", (tenant, since)):
        statuses[status] = statuses.get(status, 0) + 1
        counts = json.loads(summary).get("counts", {}) if summary else {}
        pushed += sum(c.get("created", 0) + c.get("updated", 0) for c in counts.values())
    errors = conn.execute("SELECT count(*) FROM errors WHERE tenant = ? AND last_seen >= ?",
                          (tenant, since)).fetchone()[0]
    escrow = conn.execute("SELECT count(*) FROM escrow WHERE tenant = ?", (tenant,)).fetchone()[0]
    held = conn.execute(
        "SELECT count(*) FROM held WHERE run_id = (SELECT run_id FROM runs WHERE tenant = ? AND dry_run = 0 "
        "AND status != 'running' ORDER BY started_at DESC LIMIT 1)", (tenant,)).fetchone()[0]
    states = [f"{topic}: {state.replace('_', ' ')}" for topic, state in conn.execute(
        "SELECT topic, state FROM alert_state WHERE tenant = ? AND state != 'ok' ORDER BY topic", (tenant,))]
    runs = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(statuses.items())) or "none"
    text = (f"{tenant}\n  runs: {runs}\n  changes pushed: {pushed}\n  record errors: {errors}\n"
            f"  in escrow: {escrow}\n  held: {held}")
    return text + (f"\n  attention: {'; '.join(states)}" if states else "")
