"""One discovery pass: ask the Partner API, reconcile every district, store, log, remember secrets.

The district secrets from the last successful pass live in :class:`Secrets`, in memory only: a run
that needs one and finds none (the daemon just started, discovery is down) waits for the next
discovery rather than using a stale secret (gg4l.md §9).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from syncd.config import TargetConfig, TenantConfig
from syncd.gg4l import higher_mode
from syncd.gg4l.lifecycle import District, Event, Rules, reconcile
from syncd.gg4l.partner import Listing, PartnerClient
from syncd.gg4l_store import DistrictStore
from syncd.sources.oneroster_config import OneRosterConfig

log = structlog.get_logger("syncd.gg4l")


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str = field(repr=False)
    token_url: str
    api_url: str


class Secrets:
    """The district credentials of the last discovery, by lowercased GUID. Never written anywhere."""

    def __init__(self) -> None:
        self._by_guid: dict[str, Credentials] = {}
        self._lock = threading.Lock()

    def replace(self, listings: Iterable[Listing]) -> list[Event]:
        """Keep the credentials of this listing; say which districts' secrets changed (not to what)."""
        fresh = {item.guid.lower(): Credentials(item.client_id, item.client_secret, item.token_url, item.api_url)
                 for item in listings if item.client_secret}
        events = []
        with self._lock:
            for key, new in fresh.items():
                old = self._by_guid.get(key)
                if old is not None and old.client_id == new.client_id and old.client_secret != new.client_secret:
                    events.append(Event(key, "gg4l.secret_rotated", {}))
            self._by_guid = fresh
        return events

    def get(self, guid: str) -> Credentials | None:
        with self._lock:
            return self._by_guid.get(guid.lower())


@dataclass
class Result:
    listings: list[Listing]
    districts: dict[str, District]
    events: list[Event]
    warnings: list[str]

    def summary(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for record in self.districts.values():
            states[record.state] = states.get(record.state, 0) + 1
        return {"listed": len(self.listings), "districts": len(self.districts), "states": states,
                "events": len(self.events), "warnings": len(self.warnings)}


class Discovery:
    """Partner API -> lifecycle -> store, one pass at a time."""

    def __init__(self, client: PartnerClient, store: DistrictStore, rules: Rules,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), secrets: Secrets | None = None):
        self.client = client
        self.store = store
        self.rules = rules
        self.clock = clock
        self.secrets = secrets or Secrets()
        self._lock = threading.Lock()

    def run(self) -> Result:
        """One pass. A failed list (PartnerError) changes nothing: no district counts as missing."""
        with self._lock:
            listings, warnings = self.client.list_districts()
            for warning in warnings:
                log.warning("gg4l.listing_skipped", problem=warning)
            now = self.clock()
            modes: dict[str, str] = {}
            for key, announced in self.store.webhook_modes().items():
                for mode in announced:
                    modes[key] = higher_mode(modes.get(key), mode)
            records, events = reconcile(self.store.districts(), listings, now, self.rules, modes)
            events += self.secrets.replace(listings)
            self.store.save(records.values(), events, now)
            self.store.set_webhook_outcomes({item.guid.lower() for item in listings})
            for event in events:
                (log.warning if event.alert else log.info)(event.event, guid=event.guid, **dict(event.detail))
            result = Result(listings, records, events, warnings)
            log.info("gg4l.discovered", **result.summary())
            return result


def tenant_config(record: District, credentials: Credentials | None, template: Any) -> TenantConfig | None:
    """The tenant a syncing district runs as; None when it must not run now (or has no secret yet).

    ``template`` is the config's ``Gg4lConfig.tenant``. The source is the district's OneRoster 1.1
    Data API with OAuth 2 client credentials (``source.auth = "oauth2"``).
    """
    if not record.syncing or credentials is None:
        return None
    from syncd.config import resolve_secret

    token = resolve_secret(record.token_ref) if record.token_ref else template.token
    install_sid = record.install_sid or template.install_sid
    if not token or not install_sid:
        return None
    # GG4L serves OneRoster 1.1 behind OAuth 2 client credentials; Privacy Shield may blank or
    # randomise e-mails, which must then count as none (template ``source.privacy_shield``).
    source = OneRosterConfig(type="oneroster", base_url=credentials.api_url, version="1.1", auth="oauth2",
                          client_id=credentials.client_id, client_secret=credentials.client_secret,
                          token_url=credentials.token_url, page_size=template.page_size,
                          timeout_s=template.source_timeout_s, concurrency=4,  # OneRoster's default
                          privacy_shield=getattr(template, "privacy_shield", True))
    target = TargetConfig(base_url=template.target_base_url, install_sid=install_sid, token=token,
                          concurrency=template.target_concurrency, timeout_s=template.target_timeout_s)
    extra = {"safety": template.safety} if template.safety is not None else {}
    return TenantConfig(name=record.tenant, source=source, target=target, schedule=template.schedule,
                        time_zone=template.time_zone, roles=dict(template.roles), enabled=template.enabled,
                        deprovision=template.deprovision, **extra)
