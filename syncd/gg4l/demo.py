"""`syncd demo --source gg4l`: a district activates, the webhook, discovery, the first sync; a second waits.

Everything is real except GG4L and SmarterProctoring, which are the sandbox's fakes on loopback:
the webhook goes over HTTP to the daemon's own listener (waitress, ``syncd.web``), discovery asks
the fake Partner API, and the district's tenant is synced by the engine from its OneRoster 1.1
Data API (OAuth 2, GG4L's malformed ``Link`` headers, Privacy Shield on).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from syncd import config as configuration
from syncd import engine, logs, render, web
from syncd.config import HttpConfig
from syncd.gg4l import tenant_name
from syncd.gg4l.service import Gg4lService
from syncd.gg4l_store import DistrictStore
from syncd.sandbox import Roster, expected_mapping
from syncd.sandbox.gg4l import Gg4lSandbox, send_webhook
from syncd.store import DB_NAME, Store

FIRST = "6f9619ff-8b86-d011-b42d-00c04fc964ff"
SECOND = "0b5e9a2c-1111-4222-8333-944455556666"


class _Context:
    """What /healthz asks of the daemon; the demo has no scheduler."""

    def __init__(self, config: configuration.Config):
        self.config = config
        self.running: dict[str, str] = {}

    def health_problems(self) -> list[str]:
        return []


def main(directory: str) -> int:
    base = Path(directory).resolve()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    logs.configure("error", "console")
    with Gg4lSandbox() as box:
        roster = Roster.generate(seed=21, users=60, classes=6, enrollments=200)
        path = box.write_config(base / "syncd.toml", base / "state", on_new_district="sync")
        config = configuration.load(path)
        logs.register_secrets(config.secrets)
        Store.open(config.daemon.state_dir).close()
        districts = DistrictStore.open(str(config.daemon.state_dir / DB_NAME))
        service = Gg4lService(config.gg4l, districts)  # no discovery thread: the demo polls when it says so
        service.mount()
        listener = web.Listener(HttpConfig(host="127.0.0.1", port=0), _Context(config))
        listener.start()
        store = Store.open(config.daemon.state_dir)
        try:
            code = _story(box, roster, service, store, f"http://127.0.0.1:{listener.port}/webhooks/gg4l", path)
        finally:
            store.close()
            listener.stop()
            service.stop()
            districts.close()
    _tell(f"\nwhere to look next (the config and state stay in {base}; the fake GG4L is gone, so a sync now "
          "would say the Partner API does not answer):\n"
          f"  syncd --config {path} tenants          every tenant, from the TOML and from GG4L, with its state\n"
          f"  syncd --config {path} status           the districts' state and expiry, the last runs\n"
          "  README, section GG4L                  the [gg4l] keys, the webhook, the district states")
    return code


def _story(box: Gg4lSandbox, roster: Roster, service: Gg4lService, store: Store, url: str, path: Path) -> int:
    first = box.gg4l.add_district(FIRST, roster, name="Riverside Unified", privacy_shield=True,
                                  email_mode="random_each")
    _tell(f"sandbox: GG4L Partner API and Data API at {box.partner_url}, provision API at {box.target_url}\n"
          f"config:  {path} ([gg4l] with on_new_district = \"sync\" and a template install)\n")
    _tell("1. Riverside Unified clicks \"activate\" in GG4L School Passport: GG4L POSTs the webhook")
    sent = send_webhook(url, FIRST, "standard")
    _tell(f"   POST /webhooks/gg4l {{\"districtGUID\": \"{FIRST}\", \"mode\": \"standard\"}} -> {sent.status} "
          f"in {sent.latency_s * 1000:.0f} ms (recorded; a webhook alone never creates a tenant)\n")
    _tell("2. discovery: the Partner API's credentials list is the truth")
    result = service.poll()
    record = service.store.district(FIRST)
    if result is None or record is None:
        _tell("   the Partner API did not answer")
        return 1
    _tell(f"   listed {len(result.listings)} district(s); {record.tenant} is {record.state.upper()} "
          f"(data ready {record.last_data_ts:%Y-%m-%d %H:%M} UTC, access until {record.expiry:%Y-%m-%d})\n")
    runnable = service.runnable()
    if not runnable:
        _tell("   nothing to sync")
        return 1
    tenant, dry_run = runnable[0]
    _tell(f"3. first sync of {tenant.name} (OneRoster 1.1 + OAuth 2 at the district's apiUrl; Privacy Shield on)")
    summary = engine.run(tenant, store, engine.Options(dry_run=dry_run))
    _tell(render.render_summary(summary))
    service.synced(tenant.name, record.last_data_ts)
    expected = expected_mapping(_unshielded(roster), tenant.roles)
    target = box.provision.snapshot()
    same = target == expected
    _tell(f"   the target holds {len(target['courses'])} courses, {len(target['users'])} users, "
          f"{len(target['enrollments'])} enrollments: {'as the district says' if same else 'NOT as expected'} "
          "(masked names as GG4L sends them, random @gg4l.com e-mails left out)\n")
    first.data_ts = record.last_data_ts + timedelta(minutes=1)  # GG4L finishes another import
    service.poll()
    again = engine.run(tenant, store)
    _tell(f"4. GG4L finishes another import (new random e-mails, nothing else): the resync sends "
          f"{again['calls']} calls\n")

    _tell("5. a second district activates, with on_new_district = \"pending\" (the default)")
    service.settings = dataclasses.replace(service.settings, on_new_district="pending")
    path.write_text(path.read_text().replace('on_new_district = "sync"', 'on_new_district = "pending"'))
    service.discovery.rules = service.settings.rules()
    box.gg4l.add_district(SECOND, Roster.generate(seed=22, users=30, classes=3, enrollments=90), name="Lakeview ISD")
    sent = send_webhook(url, SECOND, "standard")
    time.sleep(0.05)
    service.poll()
    waiting = service.store.district(SECOND)
    state = waiting.state if waiting else "unknown"
    _tell(f"   webhook -> {sent.status}; discovery: {tenant_name(SECOND)} is {state.upper()}: nothing is sent "
          "until an admin gives it an install:\n"
          f"   syncd --config {path} tenants map {tenant_name(SECOND)} --install-sid AI… [--token credential:…]")
    ok = same and again["calls"] == 0 and state == "pending_mapping" and summary["status"] == engine.COMPLETED
    return 0 if ok else 1


def _unshielded(roster: Roster) -> Any:
    """The roster as Privacy Shield serves it: names masked, e-mails none (what the target must hold)."""
    shielded = copy.copy(roster)
    users = {}
    for key, user in roster.users.items():
        masked = dict(user)
        for name in ("givenName", "familyName", "middleName"):
            if masked.get(name):
                masked[name] = masked[name][0] + "***"
        masked.pop("email", None)
        users[key] = masked
    shielded.users = users
    return shielded


def _tell(text: str) -> None:
    print(text, flush=True)  # noqa: T201 - the demo's output is its point
