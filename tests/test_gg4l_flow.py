"""Webhook -> discovery -> district, over loopback HTTP: the hint never creates, the list does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from test_gg4l_webhook import _Quiet, _Threaded, wsgi

from syncd import http
from syncd.gg4l.discovery import Discovery
from syncd.gg4l.lifecycle import Rules
from syncd.gg4l.partner import PartnerClient
from syncd.gg4l.webhook import Trigger, Webhook
from syncd.gg4l_config import TenantTemplate
from syncd.gg4l_store import DistrictStore
from syncd.sandbox.gg4l import WEBHOOK_KEY, Gg4lSandbox, send_webhook

G1 = "6f9619ff-8b86-d011-b42d-00c04fc964ff"


class Flow:
    def __init__(self, box: Gg4lSandbox, store: DistrictStore):
        from wsgiref.simple_server import make_server

        client = PartnerClient(box.partner_url, box.gg4l.client_id, box.gg4l.client_secret, timeout_s=5,
                               policy=http.RetryPolicy(attempts=3, base_s=0.01))
        self.discovery = Discovery(client, store, Rules(on_new_district="sync", template_install_sid="AI1",
                                                        template_token=True))
        self.trigger = Trigger(self.discovery.run, min_gap_s=0.5).start()
        hook = Webhook({"X-Syncd-Key": WEBHOOK_KEY}, store.record_webhook, self.trigger)
        self.server = make_server("127.0.0.1", 0, wsgi(hook), server_class=_Threaded, handler_class=_Quiet)
        import threading
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhooks/gg4l"

    def stop(self) -> None:
        self.trigger.stop()
        self.server.shutdown()
        self.server.server_close()

    def wait_runs(self, n: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.trigger.runs < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.trigger.runs >= n


@pytest.fixture
def flow(tmp_path: Path) -> Iterator[tuple[Gg4lSandbox, DistrictStore, Flow]]:
    with Gg4lSandbox() as box:
        store = DistrictStore.open(str(tmp_path / "state.db"))
        flow = Flow(box, store)
        yield box, store, flow
        flow.stop()
        store.close()


def test_a_signed_webhook_makes_a_listed_district_active(flow):
    box, store, flow_ = flow
    box.gg4l.add_district(G1)
    sent = send_webhook(flow_.url, G1)
    assert sent.ok and sent.latency_s < 1.0
    flow_.wait_runs(1)
    record = store.district(G1)
    assert record is not None and record.state == "active"
    assert store.webhooks()[0]["outcome"] == "listed"
    template = TenantTemplate(target_base_url=box.target_url, install_sid="AI1", token="t0k3n")
    from syncd.gg4l.discovery import tenant_config

    tenant = tenant_config(record, flow_.discovery.secrets.get(G1), template)
    assert tenant is not None
    token = requests.post(tenant.source.token_url, data={"grant_type": "client_credentials"},
                          auth=(tenant.source.client_id, tenant.source.client_secret), timeout=5)
    assert token.status_code == 200  # the credentials from discovery open the district's Data API


def test_a_guid_never_listed_creates_nothing(flow):
    _box, store, flow_ = flow
    assert send_webhook(flow_.url, "f00dbabe-0000-0000-0000-000000000000").ok
    flow_.wait_runs(1)
    assert store.districts() == {}
    assert store.webhooks()[0]["outcome"] == "not_listed"


def test_a_webhook_before_the_listing_is_picked_up_by_a_later_discovery(flow):
    box, store, flow_ = flow
    box.gg4l.add_district(G1, appear_after_s=0.5)
    assert send_webhook(flow_.url, G1, mode="standard").ok
    flow_.wait_runs(1)
    assert store.districts() == {}
    time.sleep(0.5)
    flow_.discovery.run()  # the periodic poll
    assert store.district(G1).state == "active"


def test_50_concurrent_duplicates_create_one_district_and_few_discoveries(flow):
    box, store, flow_ = flow
    box.gg4l.add_district(G1)
    session = requests.Session()
    with ThreadPoolExecutor(50) as pool:
        sent = list(pool.map(lambda _: send_webhook(flow_.url, G1, session=session), range(50)))
    assert all(s.ok for s in sent)
    flow_.wait_runs(1)
    time.sleep(0.2)
    assert len(store.districts()) == 1 and len(store.webhooks()) == 1
    assert [e["event"] for e in store.events(G1)] == ["gg4l.district_new"]
    assert box.gg4l.partner_requests <= 5  # coalesced, not one discovery per delivery


def test_test_mode_records_connectivity_and_creates_no_tenant(flow):
    box, store, flow_ = flow
    box.gg4l.add_district(G1)
    assert send_webhook(flow_.url, G1, mode="test").ok
    flow_.wait_runs(1)
    assert store.district(G1).state == "recorded"
    assert store.webhooks()[0]["outcome"] == "listed"
    assert box.provision.calls == 0
