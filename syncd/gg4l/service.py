"""Everything the daemon needs from GG4L, behind one object, so that wiring it in is a few lines.

    service = Gg4lService.start(config.gg4l, conn)        # a sqlite3 connection to the state store
    service.mount()                                       # POST /webhooks/gg4l on syncd.web's router
    scheduler.add_job(service.poll, "interval", seconds=config.gg4l.discovery_interval_s)
    for tenant, dry_run in service.runnable(): ...        # the district tenants to schedule or sync now
    service.stop()

A district tenant runs only when it is ``active`` or ``expiring``, a discovery of this process has
given it its secret, and (gg4l.md §9) GG4L has finished an import since its last completed sync;
after the run, :meth:`Gg4lService.synced` records the data stamp that run covered.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from syncd.config import TenantConfig
from syncd.gg4l.discovery import Discovery, Result, tenant_config
from syncd.gg4l.lifecycle import District, data_changed
from syncd.gg4l.partner import PartnerClient, PartnerError
from syncd.gg4l.webhook import BufferedRecorder, Trigger, Webhook
from syncd.gg4l_store import DistrictStore

log = structlog.get_logger("syncd.gg4l")


class Gg4lService:
    def __init__(self, settings: Any, store: DistrictStore, client: PartnerClient | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), min_gap_s: float = 5.0):
        self.settings = settings  # syncd.gg4l_config.Gg4lConfig
        self.store = store
        client = client or PartnerClient(settings.partner_url, settings.client_id, settings.client_secret,
                                         timeout_s=settings.timeout_s)
        self.discovery = Discovery(client, store, settings.rules(), clock=clock)
        self.trigger = Trigger(self.poll, min_gap_s=min_gap_s)
        self.recorder = BufferedRecorder(store.record_webhook)
        self._webhook = Webhook(settings.webhook_headers, self.recorder, self.trigger)
        # Called with each successful discovery's Result, on the discovery thread (the daemon schedules).
        self.listeners: list[Callable[[Result], None]] = []

    @classmethod
    def start(cls, settings: Any, conn: sqlite3.Connection, **options: Any) -> Gg4lService:
        """A running service: the discovery thread started and a first discovery asked for."""
        service = cls(settings, DistrictStore(conn), **options)
        service.trigger.start()
        service.trigger()
        return service

    def stop(self) -> None:
        self.trigger.stop()
        self.recorder.flush(2.0)
        self.recorder.stop()

    def webhook(self, method: str, headers: Mapping[str, str], query: str, body: bytes,
                content_type: str | None = None, remote_addr: str = "") -> tuple[int, dict[str, Any]]:
        return self._webhook(method, headers, query, body, content_type, remote_addr)

    def mount(self, path: str = "/webhooks/gg4l") -> None:
        """Register the webhook on the daemon's HTTP router (syncd.web: one registration per endpoint).

        The router answers other methods with 405 and caps the body (413) before this runs.
        """
        from syncd import web  # the listener module; imported here so that GG4L works without it

        def handle(request: Any) -> Any:
            query = urllib.parse.urlencode(request.query, doseq=True)
            status, body = self.webhook(request.method, request.headers, query, request.body,
                                        request.headers.get("content-type"), request.remote)
            return web.json_response(status, body)

        web.register("POST", path, handle)

    def poll(self) -> Result | None:
        """One discovery; a Partner API failure is logged and changes nothing.

        A district that became ``purged`` had its local roster deleted (keys and sids kept) in the
        transaction that saved it (``DistrictStore.save``); then every listener sees the result.
        """
        try:
            result = self.discovery.run()
        except PartnerError as exc:
            log.error("gg4l.discovery_failed", error=str(exc))
            return None
        for listener in list(self.listeners):
            try:
                listener(result)
            except Exception:  # a listener's bug must not stop discovery
                log.exception("gg4l.listener_failed")
        return result

    def runnable(self, only_changed: bool = True) -> list[tuple[TenantConfig, bool]]:
        """(tenant config, dry run?) for every district that may sync now."""
        out = []
        for record in self.store.districts().values():
            tenant = self.tenant(record)
            if tenant is not None and (data_changed(record) or not only_changed):
                out.append((tenant, record.policy == "dry_run"))
        return out

    def tenant(self, record: District | str) -> TenantConfig | None:
        if isinstance(record, str):
            found = self.store.district(record)
            if found is None:
                return None
            record = found
        return tenant_config(record, self.discovery.secrets.get(record.guid), self.settings.tenant)

    def synced(self, tenant: str, data_ts: datetime | None) -> None:
        """After a completed (not dry) run: the data GG4L had ready when the run started is synced."""
        record = self.store.district(tenant)
        if record is not None and data_ts is not None:
            self.store.mark_synced(record.guid, data_ts)
