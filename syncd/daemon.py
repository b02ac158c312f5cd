"""`syncd run`: one scheduled job per enabled tenant, signals, sd_notify and the watchdog.

APScheduler's BlockingScheduler runs in the main thread. Signal handlers only put the signal on
a queue (the one thing that is safe inside a handler); a control thread acts on it:

- SIGTERM / SIGINT: stop scheduling, let in-flight provision calls finish and be acknowledged
  (bounded by ``daemon.stop_timeout_s``), exit 0;
- SIGHUP: reload and re-validate the config; an invalid one is logged and the old one kept;
- SIGUSR1: run every enabled tenant now (``systemctl kill -s USR1 syncd``).

With ``[daemon.http]`` it serves /healthz and /metrics (syncd.web, syncd.metrics) for its whole
life, across reloads; with ``[alerts] urls`` each run's outcome may raise an alert (syncd.alerts),
and ``alerts.digest`` schedules the daily summary.

Runs take the same per-tenant lock as ``syncd sync``, so a manual sync and a scheduled one
never overlap; two tenants sync in parallel.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from apscheduler.events import EVENT_SCHEDULER_START
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from syncd import alerts as alerting
from syncd import config as configuration
from syncd import engine, http, lease, lock, logs, schedule
from syncd.notify import notify, watchdog_interval_s
from syncd.startup import warn_if_exposed
from syncd.store import Store

log = structlog.get_logger("syncd.daemon")


def run_until_stopped(scheduler: BlockingScheduler, stopping: threading.Event) -> None:
    """``scheduler.start()``, which returns once the control thread shuts the scheduler down.

    APScheduler removes a one-off job (a retry after a lost lease, a run a signal asked for) right
    after handing it to its executor. Its ``shutdown`` marks the scheduler stopped before it takes
    the lock that job processing holds, so a SIGTERM at that moment makes the removal look for the
    job among the jobs of a stopped scheduler and raise ``JobLookupError`` here (seen in the
    30-tenant cluster test: a node that exited 1 on SIGTERM). Once stopping, that is no error: the
    job was started or refused, and the drain that follows waits for what runs."""
    try:
        scheduler.start()
    except JobLookupError:
        if not stopping.is_set():
            raise

# A run that could not start at its time (the host slept, the daemon was busy) still starts
# within this many seconds; later than that it waits for its next slot.
MISFIRE_GRACE_S = 600
# A tenant that is overdue at start runs within this many seconds (spread, not all at once).
CATCH_UP_SPREAD_S = 5.0


class Daemon:
    def __init__(self, config: configuration.Config):
        self.config = config
        self._wakeup = -1  # the read end of the signal pipe (run)
        self.running: dict[str, str] = {}  # tenant -> run_id ("" until the run has an id)
        self._started: dict[str, float] = {}  # tenant -> monotonic start of its run
        self._running_changed = threading.Condition()
        self.stopping = threading.Event()
        self._signals = 0  # SIGUSR1 runs so far: each gets a job id of its own
        # GG4L districts share a few more workers (their runs queue beyond that).
        workers = max(2, sum(t.enabled for t in config.tenants.values()) + (4 if config.gg4l else 0))
        self.scheduler = BlockingScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(workers), "housekeeping": ThreadPoolExecutor(1)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": MISFIRE_GRACE_S},
        )
        self.alerts = alerting.Alerts(lambda: self.config.alerts, config.daemon.state_dir, config.state_url)
        self.metrics: Any = None  # syncd.metrics.Metrics while the listener serves
        self.listener: Any = None
        self.gg4l: Any = None  # syncd.gg4l.daemon_wiring.Gg4lDaemon with [gg4l]

    # --- life cycle ------------------------------------------------------------------------

    def run(self) -> int:
        # Signals travel through a pipe that the interpreter's C handler writes at once, whichever
        # thread the kernel gave the signal to. A Python handler runs only when the main thread next
        # runs bytecode, and it sleeps in the scheduler until the next job (a tenant's interval, or
        # 30 s): a SIGTERM during a run waited that long. Signals sent before the control thread
        # starts wait in the pipe.
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        self._wakeup = read_end
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, _through_the_pipe)
        self._schedule_tenants(catch_up=True)
        if not self._listen():
            return 1
        if self.config.gg4l is not None:
            from syncd.gg4l.daemon_wiring import Gg4lDaemon

            self.gg4l = Gg4lDaemon.start(self)
        self.alerts.start()
        self._schedule_digest()
        interval = watchdog_interval_s()
        if interval:
            self.scheduler.add_job(self._watchdog, IntervalTrigger(seconds=interval), id="watchdog",
                                   executor="housekeeping", next_run_time=datetime.now(UTC))
        self.scheduler.add_job(self._prune, IntervalTrigger(hours=6), id="prune", executor="housekeeping",
                               next_run_time=datetime.now(UTC) + timedelta(seconds=30))
        # The control thread (signals: stop, reload, run now) starts once the scheduler runs: a
        # SIGTERM that arrives earlier waits in the queue, since shutting down a scheduler that has
        # not started fails and the start would then run forever.
        self.scheduler.add_listener(
            lambda _event: threading.Thread(target=self._control, name="control", daemon=True).start(),
            EVENT_SCHEDULER_START)
        log.info("daemon.started", tenants=[n for n, t in self.config.tenants.items() if t.enabled],
                 config=str(self.config.path), watchdog_s=interval)
        notify("READY=1", f"STATUS={self._status()}")
        run_until_stopped(self.scheduler, self.stopping)
        return self._drain()

    def _drain(self) -> int:
        """Wait for the runs in progress: their in-flight calls finish and are acknowledged."""
        deadline = time.monotonic() + self.config.daemon.stop_timeout_s
        with self._running_changed:
            while self.running and time.monotonic() < deadline:
                notify(f"STATUS=stopping: waiting for {', '.join(sorted(self.running))} to acknowledge its calls")
                self._running_changed.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            left = sorted(self.running)
        if left:
            log.error("daemon.stop_timeout", tenants=left, timeout_s=self.config.daemon.stop_timeout_s,
                      consequence="calls still in flight are not acknowledged; the next run re-sends them")
            self._close()
            log.info("daemon.stopped")
            logging.shutdown()
            os._exit(0)  # the pool threads would otherwise hold the exit until their runs end
        self._close()
        log.info("daemon.stopped")
        return 0

    def _listen(self) -> bool:
        """Start the HTTP listener if configured; False (logged) when it cannot bind."""
        settings = self.config.daemon.http
        if settings is None:
            return True
        from syncd import metrics, web

        self.metrics = metrics.Metrics(self.config.daemon.state_dir, lambda: self.config.tenants,
                                       lambda: iter(list(self.running)), self.config.state_url)
        try:
            self.listener = web.Listener(settings, self)
        except web.ListenError as exc:
            log.error("daemon.listen_failed", error=str(exc),
                      hint="another process holds the port, or the address is not one of this host's")
            return False
        self.listener.start()
        return True

    def _close(self) -> None:
        """After the runs: answer the last requests, send the queued alerts."""
        if self.listener is not None:
            self.listener.stop()
        if self.gg4l is not None:
            self.gg4l.stop()
        self.alerts.stop(timeout=min(10.0, self.config.daemon.stop_timeout_s))
        self.alerts.close()

    def health_problems(self) -> list[str]:
        """Why the daemon is not healthy (for /healthz), besides the state store."""
        if self.stopping.is_set():
            return ["the daemon is stopping"]
        if not self.scheduler.running:
            return ["the scheduler is not running"]
        return []

    def _control(self) -> None:
        while True:
            signum = os.read(self._wakeup, 1)[0]
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._stop(signal.Signals(signum).name)
                return
            if signum == signal.SIGHUP:
                self._reload()
            elif signum == signal.SIGUSR1:
                self._run_all_now()

    def _stop(self, why: str) -> None:
        log.info("daemon.stopping", signal=why, running=sorted(self.running))
        notify("STOPPING=1", "STATUS=stopping")
        self.stopping.set()
        http.stopping.set()  # backoff sleeps end; no new provision call starts
        self.scheduler.shutdown(wait=False)

    # --- jobs ------------------------------------------------------------------------------

    def _schedule_tenants(self, catch_up: bool) -> None:
        now = datetime.now(UTC)
        store = Store.open(self.config.daemon.state_dir, self.config.state_url)
        try:
            for i, (name, tenant) in enumerate(self.config.tenants.items()):
                if not tenant.enabled:
                    continue
                last = store.last_started(name, ended=True)
                first = None
                if catch_up and schedule.overdue(tenant.schedule, last, now):
                    first = now + timedelta(seconds=min(CATCH_UP_SPREAD_S, 0.5 * i))
                trigger = schedule.trigger(tenant.schedule, now)
                self.scheduler.add_job(self._job, trigger, args=[name], id=f"tenant:{name}", name=name,
                                       replace_existing=True, **({"next_run_time": first} if first else {}))
                log.info("daemon.scheduled", tenant=name, schedule=tenant.schedule,
                         next_run=_iso(first or trigger.get_next_fire_time(None, now)), overdue=first is not None)
        finally:
            store.close()

    def _job(self, name: str, slot: str | None = None, requested: bool = False) -> None:
        """One scheduled (or, ``requested``, signalled) run. Whatever it raises, the daemon lives on."""
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(tenant=name)
        tenant = self.config.tenants.get(name)
        options, after = engine.Options(), None
        if tenant is None and self.gg4l is not None and not self.stopping.is_set():
            tenant, options, after = self.gg4l.lookup(name)  # a GG4L district, gated on new data
        if tenant is None or self.stopping.is_set():
            return
        # This job's slot: on PostgreSQL every node schedules every tenant, and the first to hold the
        # tenant's lease runs the slot; a node that gets the lease after it skips it (SPEC §11).
        # A node that dies mid-run never marks its slot done, so a node waiting for the lease runs it.
        slot = slot or datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ")
        lost = False  # the run (or the wait for it) lost the database: try the slot again soon
        try:
            store = Store.open(self.config.daemon.state_dir, self.config.state_url)
            try:
                with store.hold(name, stop=self.stopping,
                                on_wait=lambda m: log.info("daemon.waiting_for_lock", message=m)) as held:
                    if self.stopping.is_set():
                        return
                    # A requested run (SIGUSR1, GG4L's new data) is asked of this node: never a slot's twin.
                    if held is not None and not requested and held.slot_done(slot):
                        log.info("daemon.slot_done_elsewhere", slot=slot)
                        return
                    self._mark(name, running=True)
                    probe = self._probe(tenant)
                    summary = None
                    try:
                        summary = engine.run(tenant, store, options, **(
                            {"source": probe.source, "client": probe.client} if probe else {}))
                    finally:
                        self._observe(tenant, store, summary, probe)
                        self._mark(name, running=False)
                        lost = held is not None and not self._slot_done(held, slot)
            finally:
                store.close()
            if after is not None:
                after(summary)
            log.info("daemon.run_done", status=summary["status"], run_id=summary["run_id"])
        except lock.Busy:
            return  # stopped while another process held the tenant
        except Exception as exc:
            lost = lost or _lost_database(exc)
            if lost:  # the lease's session ended under the run: its writes failed, nothing half-done
                log.warning("daemon.lease_lost", error=str(exc).splitlines()[0] if str(exc) else repr(exc))
            else:  # engine.run has already recorded its run as failed when it got that far.
                log.exception("daemon.job_failed")
        finally:
            if lost and not self.stopping.is_set():
                self._retry(name, slot)
            structlog.contextvars.clear_contextvars()

    @staticmethod
    def _slot_done(held: Any, slot: str) -> bool:
        """Mark the slot done on the lease's session; False when that session is gone (the run was
        cut short by a lost lease and must run again). A failed run is done too: no re-run elsewhere."""
        if not held.alive:
            return False
        try:
            held.mark_done(slot)
        except Exception:  # noqa: BLE001 - the session ended between the check and the write
            return False
        return True

    def _retry(self, name: str, slot: str) -> None:
        """Run the tenant's slot again soon on this node (SPEC §11: a database restart or failover ends
        every run): whichever node takes the lease first runs it, the others find it done."""
        import random

        delay = lease.Timeouts.configured().retry
        delay += random.uniform(0, delay / 2)  # spreading retries, not a secret
        log.info("daemon.retry_scheduled", slot=slot, in_s=round(delay, 1))
        self.scheduler.add_job(self._job, DateTrigger(datetime.now(UTC) + timedelta(seconds=delay)),
                               args=[name, slot], id=f"retry:{name}", replace_existing=True)

    def _probe(self, tenant: configuration.TenantConfig) -> Any:
        """With metrics on, a metered source and client for engine.run (they count what they did)."""
        if self.metrics is None:
            return None
        from syncd.metrics import RunProbe

        return RunProbe(tenant, self.config.daemon.state_dir)

    def _observe(self, tenant: configuration.TenantConfig, store: Store, summary: dict[str, Any] | None,
                 probe: Any) -> None:
        """Feed one finished run to the metrics and the alerts; never fails the job."""
        try:
            if self.metrics is not None:
                self.metrics.observe(tenant.name, summary, probe)
            # A run cut short by SIGTERM says nothing about the tenant: no "failed" then "recovered".
            if self.config.alerts.urls and not self.stopping.is_set():
                last = store.runs(tenant.name, limit=1)
                message = last[0]["message"] if last else None
                self.alerts.after_run(tenant.name, summary, message, store.failed_in_a_row(tenant.name),
                                      tenant.safety.degraded_after)
        except Exception:
            log.exception("daemon.observe_failed")

    def _schedule_digest(self) -> None:
        when = self.config.alerts.digest
        if self.scheduler.get_job("digest"):
            self.scheduler.remove_job("digest")
        if when is None or not self.config.alerts.urls:
            return
        from zoneinfo import ZoneInfo

        import tzlocal
        from apscheduler.triggers.cron import CronTrigger

        zone = ZoneInfo(self.config.alerts.time_zone) if self.config.alerts.time_zone else tzlocal.get_localzone()
        self.scheduler.add_job(self._digest, CronTrigger(hour=when[0], minute=when[1], timezone=zone), id="digest",
                               executor="housekeeping", misfire_grace_time=3600, args=[zone])
        log.info("alerts.digest_scheduled", at=f"{when[0]:02d}:{when[1]:02d}", time_zone=str(zone))

    def _digest(self, zone: Any = UTC) -> None:
        def build() -> alerting.Message:
            return alerting.digest(self.config.daemon.state_dir, list(self.config.tenants), url=self.config.state_url)

        if self.config.state_url:  # one node of the cluster sends the day's digest (SPEC §11)
            alerting.digest_once(self.config.state_url, datetime.now(zone).strftime("%Y-%m-%d"), build,
                                 self.alerts.send)
            return
        message = build()
        self.alerts.send(message.title, message.body)

    def _mark(self, name: str, running: bool) -> None:
        with self._running_changed:
            if running:
                self.running[name] = ""
                self._started[name] = time.monotonic()
            else:
                self.running.pop(name, None)
                self._started.pop(name, None)
            self._running_changed.notify_all()
        if not self.stopping.is_set():
            notify(f"STATUS={self._status()}")

    def _run_all_now(self) -> None:
        now = datetime.now(UTC)
        names = [n for n, t in self.config.tenants.items() if t.enabled]
        names += self.gg4l.tenants() if self.gg4l is not None else []
        log.info("daemon.run_all_now", tenants=names)
        for name in names:
            if name in self.running:
                log.info("daemon.already_running", tenant=name)
                continue
            # A fresh id each time: APScheduler counts instances per job id, and the previous signal's
            # job may still be returning (its run done) when this one arrives; the shared id made the
            # scheduler skip the new run. The tenant lock still keeps two runs of a tenant apart.
            for pending in self.scheduler.get_jobs():  # signals that have not fired yet make one run
                if pending.id.startswith(f"now:{name}:"):
                    pending.remove()
            self._signals += 1
            self.scheduler.add_job(self._job, DateTrigger(now), args=[name], kwargs={"requested": True},
                                   id=f"now:{name}:{self._signals}",
                                   misfire_grace_time=None)

    def _reload(self) -> None:
        path = self.config.path
        try:
            fresh = configuration.load(path)
        except configuration.ConfigError as exc:
            log.error("daemon.reload_rejected", config=str(path), errors=exc.errors,
                      consequence="still running on the previous configuration")
            return
        logs.configure(fresh.daemon.log_level, fresh.daemon.log_format)
        logs.register_secrets(fresh.secrets)
        if fresh.daemon.state_dir != self.config.daemon.state_dir:
            log.warning("daemon.state_dir_unchanged", reason="a new state_dir takes effect on restart")
            fresh = dataclasses.replace(fresh, daemon=self.config.daemon)
        if fresh.daemon.http != self.config.daemon.http:
            log.warning("daemon.http_unchanged", reason="a new [daemon.http] takes effect on restart")
            fresh = dataclasses.replace(fresh, daemon=dataclasses.replace(fresh.daemon, http=self.config.daemon.http))
        if self.gg4l is not None:
            fresh = self.gg4l.reload(fresh)
        if fresh.state_url != self.config.state_url:
            log.warning("daemon.state_url_unchanged", reason="a new [state] url takes effect on restart")
            fresh = dataclasses.replace(fresh, state_url=self.config.state_url)
        old = set(self.config.tenants)
        self.config = fresh
        for job in self.scheduler.get_jobs():
            if job.id.startswith("tenant:") and job.name not in fresh.tenants:
                job.remove()
        self._schedule_tenants(catch_up=True)  # a new tenant, never synced, runs now
        self._schedule_digest()
        log.info("daemon.reloaded", tenants=sorted(fresh.tenants), added=sorted(set(fresh.tenants) - old),
                 removed=sorted(old - set(fresh.tenants)))
        notify(f"STATUS={self._status()}")

    def _watchdog(self) -> None:
        # A run past daemon.max_run_s is stuck (every request and page is bounded, so this is a
        # bug or a hang): stop pinging, and systemd restarts the service.
        limit = self.config.daemon.max_run_s
        stuck = sorted(n for n, t in self._started.items() if time.monotonic() - t > limit)
        if stuck:
            log.error("daemon.run_stuck", tenants=stuck, max_run_s=limit, consequence="no watchdog ping")
            notify(f"STATUS=stuck: {', '.join(stuck)} running for more than {limit:g} s")
            return
        notify("WATCHDOG=1")

    def _prune(self) -> None:
        store = Store.open(self.config.daemon.state_dir, self.config.state_url)
        try:
            removed = store.prune(self.config.daemon.retention_days)
        finally:
            store.close()
        if removed:
            log.info("daemon.pruned", runs=removed, retention_days=self.config.daemon.retention_days)

    def _status(self) -> str:
        if self.running:
            return f"syncing {', '.join(sorted(self.running))}"
        # Before the scheduler starts, its jobs are pending and have no next_run_time yet.
        upcoming = [(job.next_run_time, job.name) for job in self.scheduler.get_jobs()
                    if job.id.startswith("tenant:") and getattr(job, "next_run_time", None)]
        if not upcoming:
            return "idle"
        when, name = min(upcoming)
        return f"idle; next: {name} at {when.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _lost_database(exc: BaseException) -> bool:
    """A run or a wait for the lease ended because the state database went away (cluster mode)."""
    if isinstance(exc, lease.LeaseLost):
        return True
    try:
        import psycopg
    except ImportError:  # no cluster extra: SQLite only
        return False
    return isinstance(exc, psycopg.OperationalError)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else None


def main(config_path: Path) -> int:
    config = configuration.load(config_path)
    logs.configure(config.daemon.log_level, config.daemon.log_format)
    logs.register_secrets(config.secrets)
    warn_if_exposed(config)
    return Daemon(config).run()


def _through_the_pipe(_signum: int, _frame: Any) -> None:
    """The Python-level handler has nothing to do: the signal's number is already in the wakeup
    pipe (Daemon.run), read by the control thread. It must be set, or the default action runs."""
