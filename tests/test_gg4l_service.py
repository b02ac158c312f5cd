"""Gg4lService: the few calls the daemon makes (webhook, poll, runnable, synced), against the fake GG4L."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from syncd import config as configuration
from syncd import http
from syncd.gg4l.partner import PartnerClient
from syncd.gg4l.service import Gg4lService
from syncd.sandbox.gg4l import WEBHOOK_KEY, Gg4lSandbox

G1 = "6f9619ff-8b86-d011-b42d-00c04fc964ff"
TENANT = "gg4l-6f9619ff8b86d011b42d00c04fc964ff"


@pytest.fixture
def box() -> Iterator[Gg4lSandbox]:
    with Gg4lSandbox() as sandbox:
        yield sandbox


def service_for(box: Gg4lSandbox, tmp_path: Path, **toml) -> Gg4lService:
    config = configuration.load(box.write_config(tmp_path / "syncd.toml", tmp_path / "state", **toml))
    conn = sqlite3.connect(tmp_path / "state.db", check_same_thread=False, isolation_level=None)
    client = PartnerClient(box.partner_url, config.gg4l.client_id, config.gg4l.client_secret, timeout_s=5,
                           policy=http.RetryPolicy(attempts=2, base_s=0.01))
    return Gg4lService.start(config.gg4l, conn, client=client, min_gap_s=0.1)


def wait_for(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_webhook_then_runnable_then_synced(box, tmp_path):
    fake = box.gg4l.add_district(G1)
    service = service_for(box, tmp_path)
    try:
        status, _ = service.webhook("POST", {"X-Syncd-Key": WEBHOOK_KEY}, "",
                                    json.dumps({"districtGUID": G1, "mode": "standard"}).encode(), "application/json")
        assert status == 200
        (tenant, dry_run), = wait_for(service.runnable)
        assert (tenant.name, dry_run) == (TENANT, False)
        assert tenant.source.client_secret == fake.client_secret
        assert tenant.target.install_sid == box.provision.install_sid
        service.synced(TENANT, fake.data_ts)
        assert service.runnable() == []  # nothing new from GG4L: no run
        assert len(service.runnable(only_changed=False)) == 1
        fake.data_ts += timedelta(hours=1)
        service.poll()
        assert len(service.runnable()) == 1
        fake.expiry = box.gg4l.clock() - timedelta(seconds=1)
        service.poll()
        assert service.runnable(only_changed=False) == []  # expired: not synced
    finally:
        service.stop()


def test_dry_run_policy_and_pending(box, tmp_path):
    box.gg4l.add_district(G1)
    service = service_for(box, tmp_path, on_new_district="dry_run")
    try:
        (_tenant, dry_run), = wait_for(service.runnable)
        assert dry_run is True
    finally:
        service.stop()
    (tmp_path / "p").mkdir()
    pending = service_for(box, tmp_path / "p", on_new_district="pending")
    try:
        wait_for(lambda: pending.store.district(G1))
        assert pending.runnable(only_changed=False) == []
        assert pending.store.district(G1).state == "pending_mapping"
    finally:
        pending.stop()


def test_a_failed_poll_is_logged_not_raised(box, tmp_path):
    service = service_for(box, tmp_path)
    try:
        wait_for(lambda: service.trigger.runs >= 1)
        box.gg4l.fault("/datahub/services/vendor", 500, times=10)
        assert service.poll() is None
    finally:
        service.stop()


def test_mount_registers_the_webhook_on_the_router(box, tmp_path, monkeypatch):
    import sys
    import types
    from dataclasses import dataclass, field

    routes = {}

    @dataclass
    class Request:  # syncd.web.Request's shape
        method: str
        query: dict
        headers: dict
        body: bytes
        remote: str = "127.0.0.1"
        context: object = field(default=None)

    stub = types.SimpleNamespace(register=lambda method, path, handler: routes.update({(method, path): handler}),
                                 json_response=lambda status, data: (status, data))
    monkeypatch.setitem(sys.modules, "syncd.web", stub)
    monkeypatch.setattr("syncd.web", stub, raising=False)
    service = service_for(box, tmp_path)
    try:
        service.mount()
        handler = routes[("POST", "/webhooks/gg4l")]
        body = json.dumps({"mode": "standard"}).encode()
        ok = handler(Request("POST", {"districtGUID": [G1]}, {"x-syncd-key": WEBHOOK_KEY,
                                                              "content-type": "application/json"}, body))
        assert ok == (200, {"status": "accepted"})
        assert handler(Request("POST", {}, {"x-syncd-key": "no"}, body))[0] == 401
        assert service.recorder.flush()
        assert [w["guid"] for w in service.store.webhooks()] == [G1]
    finally:
        service.stop()
