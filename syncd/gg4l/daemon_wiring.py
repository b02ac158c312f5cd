"""GG4L in `syncd run`: the service started, the webhook mounted, discovery and district runs scheduled.

``daemon.py`` calls this with a few lines (:meth:`Gg4lDaemon.start`, ``lookup`` in its job,
``reload``, ``stop``). District tenants run through the daemon's own ``_job``, so they take the same
per-tenant lock and go through the same engine (breakers, escrow, freeze, metrics, alerts) as the
tenants of the TOML.

- Discovery runs at start, every ``discovery_interval``, and after each webhook (coalesced on the
  service's trigger thread). After each successful discovery, :meth:`_on_discovered` gives every
  district that may sync a job ``district:<tenant>`` on the template's schedule (a district never
  synced runs within seconds: a webhook's activation does not wait an hour), removes the jobs of
  districts that stopped syncing, and raises the GG4L alerts (expiring, expired, revoked, purged:
  one message per change, through ``alerts.notify_state``).
- A run is gated at its start (:meth:`lookup`): the district must still be syncing, GG4L must
  have finished an import since the last completed sync, and the secret of a fresh discovery must
  be in memory (a discovery older than ``SECRET_MAX_AGE_S`` is redone first, so that a rotated
  secret is picked up). ``on_new_district = "dry_run"`` districts run with ``Options(dry_run=True)``.
- With ``[state] url`` (a cluster, SPEC §11) the districts live in the shared PostgreSQL store and
  :class:`ClusterService` reconciles them once per cluster: a discovery takes the cluster's
  ``gg4l-discovery`` job (:func:`syncd.lease.cluster_job`) and runs once per discovery interval on
  whichever node comes first (states, events, purges, alerts), or at once for a webhook that node
  received. The other nodes only list the districts, because a district's secret lives in the
  memory of each node that runs it and nowhere else, and schedule the districts from the shared store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.triggers.interval import IntervalTrigger

from syncd import alerts as alerting
from syncd import engine, lease, lock, schedule
from syncd.config import TenantConfig
from syncd.gg4l.discovery import Result
from syncd.gg4l.lifecycle import District, data_changed
from syncd.gg4l.partner import PartnerError, iso
from syncd.gg4l.service import Gg4lService
from syncd.gg4l.webhook import Webhook
from syncd.gg4l_store import DistrictStore
from syncd.store import Store

log = structlog.get_logger("syncd.gg4l")

JOB_PREFIX = "district:"
# A run uses the secrets of a discovery at most this old; an older one is redone before the run.
SECRET_MAX_AGE_S = 60.0
# Discoveries after a burst of webhooks are this far apart at least (the trigger coalesces).
MIN_DISCOVERY_GAP_S = 2.0
# Districts due at once start this far apart, so that fifty activations are not fifty runs at once.
SPREAD_S = 0.5
# The district states that are an alert (one message when entered, "ok" when left).
ALERT_STATES = ("expiring", "expired", "revoked", "purged", "listing_invalid")

Lookup = tuple[TenantConfig | None, engine.Options, Callable[[dict[str, Any] | None], None] | None]
# The cluster-wide job of the discovery's reconcile (SPEC §11).
DISCOVERY_JOB = "gg4l-discovery"


def period_start(now: datetime, interval_s: float) -> datetime:
    """The start of the discovery period ``now`` falls in (periods counted from the epoch, so that
    every node computes the same one whenever it started)."""
    epoch = now.timestamp()
    return datetime.fromtimestamp(epoch - epoch % max(1.0, interval_s), UTC)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ClusterService(Gg4lService):
    """GG4L on a cluster: one node reconciles per discovery period (or per webhook it received)."""

    def __init__(self, settings: Any, store: DistrictStore, url: str, stopping: threading.Event, **options: Any):
        super().__init__(settings, store, **options)
        self.url = url
        self.stopping = stopping
        self._urgent = threading.Event()
        # A webhook asks for a discovery now, not "once this period" (the new district must not wait).
        self._webhook = Webhook(settings.webhook_headers, self.recorder, self._asked_now)

    def _asked_now(self) -> None:
        self._urgent.set()
        self.trigger()

    def poll(self) -> Result | None:
        """The reconcile on the node that takes the cluster's discovery job first in this period (or
        after this webhook); on the others, a listing for their own secrets (:meth:`refresh`)."""
        urgent = self._urgent.is_set()
        self._urgent.clear()
        now = datetime.now(UTC)
        since = now if urgent else period_start(now, self.settings.discovery_interval_s)
        from syncd.store import postgres

        try:
            with lease.cluster_job(self.url, DISCOVERY_JOB, _stamp(since), node=postgres.this_node(),
                                   stop=self.stopping) as held:
                if held is not None:
                    return super().poll()
        except (lock.Busy, lease.LeaseLost) as exc:
            log.warning("gg4l.discovery_deferred", reason=str(exc))
            return None
        return self.refresh()

    def refresh(self) -> Result | None:
        """Another node reconciled this period: list the districts for their secrets (kept in memory
        only), and hand the listeners the districts as the shared store holds them."""
        try:
            listings, warnings = self.discovery.client.list_districts()
        except PartnerError as exc:
            log.error("gg4l.discovery_failed", error=str(exc))
            return None
        for event in self.discovery.secrets.replace(listings):
            log.info(event.event, guid=event.guid)
        result = Result(listings, self.store.districts(), [], warnings)
        log.info("gg4l.listed", reconciled_by="another node", **result.summary())
        for listener in list(self.listeners):
            try:
                listener(result)
            except Exception:
                log.exception("gg4l.listener_failed")
        return result


class Gg4lDaemon:
    def __init__(self, daemon: Any, service: Gg4lService, store: DistrictStore):
        self.daemon = daemon  # syncd.daemon.Daemon
        self.service = service
        self.store = store
        self._discovered_at = 0.0  # time.monotonic() of the last successful discovery
        self._alerted: dict[str, str] = {}  # tenant -> alert state last handed to notify_state

    @classmethod
    def start(cls, daemon: Any) -> Gg4lDaemon:
        """Start discovery (a first one now), mount the webhook, schedule the periodic discovery."""
        settings = daemon.config.gg4l
        url = daemon.config.state_url
        store = DistrictStore.for_state(daemon.config.daemon.state_dir, url)  # migrated (owner-only file)
        service = ClusterService(settings, store, url, daemon.stopping, min_gap_s=MIN_DISCOVERY_GAP_S) if url \
            else Gg4lService(settings, store, min_gap_s=MIN_DISCOVERY_GAP_S)
        wiring = cls(daemon, service, store)
        service.listeners.append(wiring._on_discovered)
        service.mount()
        service.trigger.start()
        service.trigger()
        daemon.scheduler.add_job(service.trigger, IntervalTrigger(seconds=settings.discovery_interval_s),
                                 id="gg4l:discover", executor="housekeeping", replace_existing=True)
        log.info("gg4l.started", discovery_interval_s=settings.discovery_interval_s,
                 webhook="POST /webhooks/gg4l" if daemon.config.daemon.http else "off (no [daemon.http])")
        return wiring

    def stop(self) -> None:
        self.service.stop()
        self.store.close()

    def reload(self, fresh: Any) -> Any:
        """SIGHUP: a new district template applies; a new Partner API or webhook needs a restart.

        Returns the config the daemon keeps (``fresh`` with the running ``[gg4l]`` when it was
        removed or its connection changed).
        """
        import dataclasses

        old = self.service.settings
        new = fresh.gg4l
        if new is None or (new.partner_url, new.client_id, new.client_secret, new.webhook_headers) != (
                old.partner_url, old.client_id, old.client_secret, old.webhook_headers):
            log.warning("gg4l.settings_unchanged",
                        reason="removing [gg4l] or changing its Partner API or webhook takes effect on restart")
            new = dataclasses.replace(new, partner_url=old.partner_url, client_id=old.client_id,
                                      client_secret=old.client_secret,
                                      webhook_headers=old.webhook_headers) if new is not None else old
            fresh = dataclasses.replace(fresh, gg4l=new)
        self.service.settings = new
        self.service.discovery.rules = new.rules()
        self.service.trigger()  # reschedule the districts under the new template
        return fresh

    # --- after each discovery -----------------------------------------------------------

    def _on_discovered(self, result: Result) -> None:
        self._discovered_at = time.monotonic()
        if self.daemon.stopping.is_set():
            return
        self._alert(result.districts.values())
        self._schedule(result.districts.values())

    def _schedule(self, records: Any) -> None:
        scheduler = self.daemon.scheduler
        wanted = {r.tenant: r for r in records if r.syncing and self.service.tenant(r) is not None}
        for job in scheduler.get_jobs():
            if job.id.startswith(JOB_PREFIX) and job.name not in wanted:
                job.remove()
                log.info("gg4l.unscheduled", tenant=job.name)
        new = [name for name in sorted(wanted) if scheduler.get_job(JOB_PREFIX + name) is None]
        if not new:
            return  # the common case under a webhook storm: no store to open
        now = datetime.now(UTC)
        template = self.service.settings.tenant
        store = Store.open(self.daemon.config.daemon.state_dir, self.daemon.config.state_url)
        try:
            due = 0
            for name in new:
                trigger = schedule.trigger(template.schedule, now)
                first = None
                if schedule.overdue(template.schedule, store.last_started(name), now):
                    first = now + timedelta(seconds=min(30.0, SPREAD_S * due))
                    due += 1
                scheduler.add_job(self.daemon._job, trigger, args=[name], id=JOB_PREFIX + name, name=name,
                                  replace_existing=True, **({"next_run_time": first} if first else {}))
                log.info("gg4l.scheduled", tenant=name, schedule=template.schedule, dry_run=wanted[name].policy ==
                         "dry_run", next_run=iso(first or trigger.get_next_fire_time(None, now)))
        finally:
            store.close()

    def _alert(self, records: Any) -> None:
        """One alert per change of a district's alerting state (the store remembers the last one)."""
        for record in records:
            state = record.state if record.state in ALERT_STATES else alerting.OK
            if self._alerted.get(record.tenant) == state:
                continue  # unchanged since the last discovery of this process: nothing to ask the store
            self._alerted[record.tenant] = state
            try:
                self.daemon.alerts.notify_state(record.tenant, state, _detail(record), topic=alerting.GG4L)
            except Exception:
                log.exception("gg4l.alert_failed", tenant=record.tenant)

    # --- one run ------------------------------------------------------------------------

    def tenants(self) -> list[str]:
        """The district tenants scheduled now (for SIGUSR1)."""
        return [job.name for job in self.daemon.scheduler.get_jobs() if job.id.startswith(JOB_PREFIX)]

    def lookup(self, name: str) -> Lookup:
        """The district tenant to run now, its options and what to do after; (None, …) to skip."""
        skip: Lookup = (None, engine.Options(), None)
        record = self.service.store.district(name)
        if record is None:
            return skip
        if not record.syncing:
            log.info("gg4l.run_skipped", reason=f"the district is {record.state}")
            return skip
        if not data_changed(record):
            log.info("gg4l.run_skipped", reason="GG4L finished no import since the last sync",
                     data_ts=iso(record.last_data_ts))
            return skip
        if time.monotonic() - self._discovered_at > SECRET_MAX_AGE_S:
            self.service.poll()  # the district's secret as GG4L lists it now (it may have rotated)
            record = self.service.store.district(name) or record
        tenant = self.service.tenant(record)
        if tenant is None:
            log.warning("gg4l.run_skipped", reason="no current listing of the district (discovery down, or it "
                        f"is {record.state})")
            return skip
        dry_run = record.policy == "dry_run"
        return tenant, engine.Options(dry_run=dry_run), self._after(record, dry_run)

    def _after(self, record: District, dry_run: bool) -> Callable[[dict[str, Any] | None], None]:
        data_ts = record.last_data_ts  # what GG4L had ready when the run started

        def after(summary: dict[str, Any] | None) -> None:
            # Only a complete real run covers the data; anything else runs again on the next slot.
            if summary and not dry_run and summary.get("status") == engine.COMPLETED:
                self.service.synced(record.tenant, data_ts)

        return after


def _detail(record: District) -> str:
    label = f"GG4L district {record.name or record.guid} ({record.guid})"
    if record.state == "expiring":
        return f"{label}: data access ends {iso(record.expiry)}; ask the district to extend it. Still syncing."
    if record.state == "expired":
        return f"{label}: data access ended {iso(record.expiry)}. Not syncing; nothing removed."
    if record.state == "revoked":
        return (f"{label}: absent from GG4L's list since {iso(record.first_missing_at)}. Not syncing; nothing "
                "removed in the target; its local roster is purged after purge_after_days.")
    if record.state == "purged":
        return f"{label}: local roster deleted {iso(record.purged_at)} (revoked {iso(record.revoked_at)})."
    if record.state == "listing_invalid":
        return f"{label}: GG4L lists it but its entry cannot be used: {record.problem}"
    return f"{label} is {record.state}"
