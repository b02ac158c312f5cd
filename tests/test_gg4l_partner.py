"""The Partner API client and a discovery pass, against the fake GG4L over loopback."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from syncd import http, logs
from syncd.gg4l.discovery import Discovery, tenant_config
from syncd.gg4l.lifecycle import Rules
from syncd.gg4l.partner import PartnerClient, PartnerError, parse_listing, parse_time
from syncd.gg4l_store import DistrictStore
from syncd.sandbox.gg4l import DATA_PREFIX, Gg4lSandbox

FAST = http.RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05)
RULES = Rules(on_new_district="sync", template_install_sid="AI0123", template_token=True)
G1 = "6F9619FF-8B86-D011-B42D-00C04FC964FF"
G2 = "0f8fad5b-d9cb-469f-a165-70867728950e"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def box(clock: Clock) -> Iterator[Gg4lSandbox]:
    with Gg4lSandbox(clock=clock) as sandbox:
        yield sandbox


@pytest.fixture
def client(box: Gg4lSandbox) -> PartnerClient:
    return PartnerClient(box.partner_url, box.gg4l.client_id, box.gg4l.client_secret, timeout_s=5, policy=FAST)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DistrictStore]:
    store = DistrictStore.open(str(tmp_path / "state.db"))
    yield store
    store.close()


class TestParsing:
    @pytest.mark.parametrize(("text", "expected"), [
        ("2027-06-30T00:00:00.000Z", datetime(2027, 6, 30, tzinfo=UTC)),
        ("2027-06-30T00:00:00Z", datetime(2027, 6, 30, tzinfo=UTC)),
        ("2027-06-30T02:00:00.000+02:00", datetime(2027, 6, 30, tzinfo=UTC)),
        ("2027 - 06 - 30T00:00:00.000+00:00", datetime(2027, 6, 30, tzinfo=UTC)),
        ("2027-06-30T00:00:00.000+0000", datetime(2027, 6, 30, tzinfo=UTC)),
        ("2027-06-30", datetime(2027, 6, 30, tzinfo=UTC)),
        ("2027-06-30T00:00:00", datetime(2027, 6, 30, tzinfo=UTC)),
        (1814313600000, datetime(2027, 6, 30, tzinfo=UTC)),
        (1814313600, datetime(2027, 6, 30, tzinfo=UTC)),
        (None, None), ("", None), ("next tuesday", None), (True, None),
    ])
    def test_timestamps_in_every_documented_shape(self, text, expected):
        assert parse_time(text) == expected

    def test_the_documentations_invalid_example_is_read(self):
        text = ('{ {\n "createdTimestamp": "2026-01-01T00:00:00.000Z",\n'
                ' "lastDataProcessingCompleteTimestamp": "2026-01-02T00:00:00.000Z",\n'
                ' "districtName": "Lincoln"\n "tokenUrl": "/t",\n "apiUrl": "https://d.example/v1p1",\n'
                ' "clientId": "c", "clientSecret": "s-secret", "districtGuid": "abc-123",\n'
                ' "expiryDate": "2027 - 06 - 30T00:00:00.000+00:00" } }')
        (listing,), warnings = parse_listing(text, "https://partner.example")
        assert warnings == []
        assert (listing.guid, listing.name, listing.token_url) == ("abc-123", "Lincoln", "https://partner.example/t")
        assert listing.data_ts == datetime(2026, 1, 2, tzinfo=UTC)
        assert listing.expiry == datetime(2027, 6, 30, tzinfo=UTC)

    @pytest.mark.parametrize(("entry", "problem"), [
        ({"apiUrl": "http://evil.example/x"}, "apiUrl must be an https:// URL"),
        ({"apiUrl": None}, "apiUrl is missing"),
        ({"clientSecret": ""}, "no clientId or clientSecret"),
        ({"expiryDate": "soon"}, "expiryDate 'soon' is not a date"),
    ])
    def test_an_unusable_entry_is_listed_with_its_problem(self, entry, problem):
        base = {"districtGuid": "abc", "apiUrl": "https://d/x", "tokenUrl": "https://d/t", "clientId": "c",
                "clientSecret": "s", "expiryDate": None}
        (listing,), _ = parse_listing(json.dumps([{**base, **entry}]), "https://p")
        assert listing.problem == problem

    def test_entries_without_a_guid_are_skipped_with_a_warning(self):
        listings, warnings = parse_listing(json.dumps([{"districtGuid": "a b"}, 3, {"districtGuid": "ok-1"},
                                                       {"districtGUID": "OK-1"}]), "https://p")
        assert [item.guid for item in listings] == ["ok-1"]
        assert len(warnings) == 3

    @pytest.mark.parametrize("text", ["<html>oops</html>", "", '"a string"'])
    def test_a_list_that_is_not_json_is_an_error(self, text):
        with pytest.raises(PartnerError):
            parse_listing(text, "https://p")


class TestClient:
    @pytest.mark.parametrize(("options", "expected_field"), [
        ({}, "lastDataProcessingCompletedTimestamp"),
        ({"list_shape": "object"}, None), ({"list_shape": "envelope"}, None), ({"list_shape": "doc"}, None),
        ({"time_style": "offset"}, None), ({"time_style": "seconds"}, None), ({"time_style": "spaced"}, None),
        ({"complete_field": "lastDataProcessingCompleteTimestamp"}, "lastDataProcessingCompleteTimestamp"),
        ({"relative_urls": True}, None),
    ])
    def test_the_list_is_read_in_every_odd_format(self, box, client, options, expected_field):
        for name, value in options.items():
            setattr(box.gg4l, name, value)
        fake = box.gg4l.add_district(G1, name="Lincoln USD")
        (listing,), warnings = client.list_districts()
        assert warnings == []
        assert (listing.guid, listing.name, listing.client_id) == (G1, "Lincoln USD", fake.client_id)
        assert listing.client_secret == fake.client_secret
        assert listing.token_url == f"{box.partner_url}/d/{G1}/datahub/oauth/token"
        assert listing.api_url == f"{box.partner_url}/d/{G1}{DATA_PREFIX}"
        assert abs((listing.expiry - fake.expiry).total_seconds()) < 1
        assert abs((listing.data_ts - fake.data_ts).total_seconds()) < 1
        assert listing.problem == ""

    def test_the_token_is_cached_and_refreshed_after_a_401(self, box, client):
        box.gg4l.add_district(G1)
        client.list_districts()
        client.list_districts()
        assert box.gg4l.partner_token_requests == 1
        box.gg4l.expire_tokens()
        client.list_districts()
        assert box.gg4l.partner_token_requests == 2

    def test_wrong_partner_credentials_are_a_clear_error(self, box):
        client = PartnerClient(box.partner_url, box.gg4l.client_id, "wrong-secret", timeout_s=5, policy=FAST)
        with pytest.raises(PartnerError, match="refused the client credentials"):
            client.list_districts()

    @pytest.mark.parametrize("status", [429, 500, 502, 503])
    def test_429_and_5xx_are_retried_with_backoff(self, box, client, status):
        box.gg4l.add_district(G1)
        box.gg4l.fault("/datahub/services/vendor", status, times=2)
        listings, _ = client.list_districts()
        assert len(listings) == 1
        assert box.gg4l.partner_requests == 1  # the two faults answered before the app counted

    def test_a_fault_that_outlasts_the_retries_is_a_partner_error(self, box, client):
        box.gg4l.fault("/datahub/services/vendor", 503, times=10)
        with pytest.raises(PartnerError, match="HTTP 503 after 4 attempt"):
            client.list_districts()


class TestDiscovery:
    def test_a_discovery_pass_creates_districts_and_keeps_their_secret_in_memory_only(self, box, client, store,
                                                                                       clock, tmp_path):
        fake = box.gg4l.add_district(G1)
        discovery = Discovery(client, store, RULES, clock=clock)
        result = discovery.run()
        assert result.summary()["states"] == {"active": 1}
        record = store.districts()[G1.lower()]
        assert (record.tenant, record.state) == ("gg4l-6f9619ff8b86d011b42d00c04fc964ff", "active")
        assert discovery.secrets.get(G1).client_secret == fake.client_secret
        store.conn.execute("PRAGMA wal_checkpoint(FULL)")
        for path in tmp_path.iterdir():
            assert fake.client_secret.encode() not in path.read_bytes(), path

    def test_a_failed_list_counts_nobody_missing(self, box, client, store, clock):
        box.gg4l.add_district(G1)
        discovery = Discovery(client, store, RULES, clock=clock)
        discovery.run()
        box.gg4l.fault("/datahub/services/vendor", 500, times=100)
        for _ in range(4):
            clock.now += timedelta(hours=2)
            with pytest.raises(PartnerError):
                discovery.run()
        assert store.districts()[G1.lower()].state == "active"

    def test_vanish_revoke_purge_restore_with_time_moved(self, box, client, store, clock):
        fake = box.gg4l.add_district(G1)
        discovery = Discovery(client, store, RULES, clock=clock)
        discovery.run()
        fake.listed = False
        states = []
        for _ in range(3):
            clock.now += timedelta(hours=1.5)
            discovery.run()
            states.append(store.districts()[G1.lower()].state)
        assert states == ["missing", "missing", "revoked"]
        clock.now += timedelta(days=30)
        discovery.run()
        assert store.districts()[G1.lower()].state == "purged"
        fake.listed = True
        discovery.run()
        assert store.districts()[G1.lower()].state == "active"
        names = [e["event"] for e in store.events(G1)]
        assert names == ["gg4l.district_new", "gg4l.district_missing", "gg4l.district_revoked",
                         "gg4l.district_purged", "gg4l.district_restored", "gg4l.district_state"]

    def test_a_rotated_secret_is_picked_up_at_the_next_discovery(self, box, client, store, clock):
        fake = box.gg4l.add_district(G1)
        discovery = Discovery(client, store, RULES, clock=clock)
        discovery.run()
        old = fake.client_secret
        new = fake.rotate_secret()
        result = discovery.run()
        assert discovery.secrets.get(G1).client_secret == new != old
        assert [e.event for e in result.events] == ["gg4l.secret_rotated"]
        token = requests.post(discovery.secrets.get(G1).token_url, data={"grant_type": "client_credentials"},
                              auth=(fake.client_id, new), timeout=5)
        assert token.status_code == 200

    def test_test_mode_and_unaccepted_trial_create_no_tenant(self, box, client, store, clock):
        from syncd.gg4l.webhook import Delivery

        box.gg4l.add_district(G1)
        box.gg4l.add_district(G2)
        store.record_webhook(Delivery(G1, "test", ""))
        store.record_webhook(Delivery(G2.upper(), "trial", ""))
        store.record_webhook(Delivery("never-listed-1", "standard", ""))
        Discovery(client, store, RULES, clock=clock).run()
        states = {r.guid: r.state for r in store.districts().values()}
        assert states == {G1: "recorded", G2: "recorded"}
        outcomes = {w["guid"]: w["outcome"] for w in store.webhooks()}
        assert outcomes == {G1: "listed", G2.upper(): "listed", "never-listed-1": "not_listed"}

    def test_a_district_listed_after_a_delay_appears_at_a_later_pass(self, box, client, store, clock):
        box.gg4l.add_district(G1, appear_after_s=0.3)
        discovery = Discovery(client, store, RULES, clock=clock)
        assert discovery.run().districts == {}
        import time
        time.sleep(0.35)
        assert list(discovery.run().districts) == [G1.lower()]

    def test_tenant_config_is_the_district_data_api_and_the_template_target(self, box, client, store, clock):
        from syncd.gg4l_config import TenantTemplate

        fake = box.gg4l.add_district(G1)
        discovery = Discovery(client, store, RULES, clock=clock)
        discovery.run()
        template = TenantTemplate(target_base_url=box.target_url, install_sid="AI0123", token="tok-en")
        record = store.districts()[G1.lower()]
        tenant = tenant_config(record, discovery.secrets.get(G1), template)
        assert tenant is not None
        assert (tenant.name, tenant.source.base_url, tenant.source.client_secret, tenant.source.page_size) == (
            record.tenant, f"{box.partner_url}/d/{G1}{DATA_PREFIX}", fake.client_secret, 500)
        assert tenant_config(record, None, template) is None  # no secret from discovery yet: no run


class TestNoSecretInLogs:
    def test_partner_and_district_secrets_never_reach_the_log(self, box, store, clock):
        stream = io.StringIO()
        logs.configure("debug", "json", stream)
        try:
            client = PartnerClient(box.partner_url, box.gg4l.client_id, box.gg4l.client_secret, timeout_s=5,
                                   policy=FAST)
            fake = box.gg4l.add_district(G1)
            discovery = Discovery(client, store, RULES, clock=clock)
            discovery.run()
            fake.rotate_secret()
            box.gg4l.fault("/datahub/services/vendor", 500, times=1)
            discovery.run()
            token = client.token()
            # Even a careless log line with the secrets in it comes out masked.
            logs.structlog.get_logger("t").error("oops", detail=f"{fake.client_secret} {token}")
            wrong = PartnerClient(box.partner_url, box.gg4l.client_id, "another-wrong-secret", timeout_s=5,
                                  policy=FAST)
            with pytest.raises(PartnerError) as caught:
                wrong.list_districts()
            logs.structlog.get_logger("t").error("failed", error=str(caught.value))
        finally:
            logs.configure("warning", "json")
        output = stream.getvalue()
        lines = [json.loads(line) for line in output.splitlines()]
        assert any(line["event"] == "gg4l.discovered" for line in lines)
        assert any(line["event"] == "gg4l.secret_rotated" for line in lines)
        for secret in (box.gg4l.client_secret, fake.client_secret, token, "another-wrong-secret"):
            assert secret not in output
        assert not re.search(r"dsec-[A-Za-z0-9_-]{10}", output)
