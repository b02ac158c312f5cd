"""A GG4L district's lifecycle (SPEC §9) as pure functions, with time passed in."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from syncd.gg4l import tenant_name, valid_guid
from syncd.gg4l.lifecycle import District, Rules, data_changed, map_district, reconcile, set_paused, step, synced
from syncd.gg4l.partner import Listing

T0 = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)
GUID = "6F9619FF-8B86-D011-B42D-00C04FC964FF"
SYNC = Rules(on_new_district="sync", template_install_sid="AI0123", template_token=True)


def listing(guid: str = GUID, *, expiry: datetime | None = T0 + timedelta(days=365),
            data: datetime | None = T0 - timedelta(hours=1), client_id: str = "c1", problem: str = "") -> Listing:
    return Listing(guid=guid, name="Lincoln USD", api_url="https://d.example/v1p1", token_url="https://d.example/t",
                   client_id=client_id, client_secret="s3cr3t-value", expiry=expiry, data_ts=data, problem=problem)


def new(rules: Rules = SYNC, mode: str | None = None, **kw) -> District:
    record, _ = step(None, listing(**kw), T0, rules, mode)
    assert record is not None
    return record


class TestNaming:
    @pytest.mark.parametrize(("guid", "tenant"), [
        ("6F9619FF-8B86-D011-B42D-00C04FC964FF", "gg4l-6f9619ff8b86d011b42d00c04fc964ff"),
        ("{ABC_def-12}", "gg4l-abcdef12"),
        ("a" * 64, "gg4l-" + "a" * 58),
    ])
    def test_tenant_name_is_the_guid_lowercased_cleaned_and_cut_to_58(self, guid, tenant):
        assert tenant_name(guid) == tenant
        assert len(tenant) <= 63

    @pytest.mark.parametrize("guid", ["", "-", "a" * 65, "abc def", "abc;drop", "../x", "é", None, 12])
    def test_guid_like_values_only(self, guid):
        assert not valid_guid(guid)


class TestNewDistrict:
    @pytest.mark.parametrize(("rules", "kw", "mode", "state"), [
        (SYNC, {}, None, "active"),
        (SYNC, {"data": None}, None, "awaiting_data"),
        (Rules(on_new_district="pending", template_install_sid="AI0123", template_token=True), {}, None,
         "pending_mapping"),
        (Rules(on_new_district="sync"), {}, None, "pending_mapping"),  # no install sid anywhere
        (Rules(on_new_district="dry_run", template_install_sid="AI0123", template_token=True), {}, None, "active"),
        (SYNC, {"expiry": T0 + timedelta(days=29)}, None, "expiring"),
        (SYNC, {"expiry": T0 - timedelta(seconds=1)}, None, "expired"),
        (SYNC, {"problem": "apiUrl is missing"}, None, "listing_invalid"),
        (SYNC, {}, "test", "recorded"),
        (SYNC, {}, "trial", "recorded"),
        (replace(SYNC, modes=("standard", "trial")), {}, "trial", "active"),
    ])
    def test_state_of_a_new_district(self, rules, kw, mode, state):
        record = new(rules, mode, **kw)
        assert record.state == state
        assert record.tenant == tenant_name(GUID)

    def test_no_secret_in_the_record(self):
        record = new()
        assert "s3cr3t-value" not in repr(record)
        assert not hasattr(record, "client_secret")

    def test_an_absent_district_never_seen_is_nothing(self):
        assert step(None, None, T0, SYNC) == (None, [])


class TestMissingRevokedPurged:
    def poll_absent(self, record: District, at: datetime, rules: Rules = SYNC) -> tuple[District, list]:
        out, events = step(record, None, at, rules)
        assert out is not None
        return out, events

    @pytest.mark.parametrize(("gaps_h", "states"), [
        # 3 polls but within 3 hours: still missing, then revoked once 3 h have passed.
        ((0, 1, 1, 2), ["missing", "missing", "missing", "revoked"]),
        # 3 h have passed after 2 polls: still missing until the third poll.
        ((0, 4, 1), ["missing", "missing", "revoked"]),
        ((0, 1.5, 1.5), ["missing", "missing", "revoked"]),
    ])
    def test_revoked_after_3_polls_in_a_row_and_3_hours(self, gaps_h, states):
        record, at, seen = new(), T0, []
        for gap in gaps_h:
            at += timedelta(hours=gap)
            record, _ = self.poll_absent(record, at)
            seen.append(record.state)
        assert seen == states
        assert record.revoked_at == at

    def test_a_listing_in_between_resets_the_count(self):
        record = new()
        record, _ = self.poll_absent(record, T0)
        record, _ = self.poll_absent(record, T0 + timedelta(hours=2))
        record, _ = step(record, listing(), T0 + timedelta(hours=3), SYNC)
        assert record.state == "active" and record.missing_polls == 0 and record.first_missing_at is None
        record, _ = self.poll_absent(record, T0 + timedelta(hours=4))
        record, _ = self.poll_absent(record, T0 + timedelta(hours=8))
        assert record.state == "missing"

    def test_revocation_is_logged_once_as_an_alert(self):
        record, events_all = new(), []
        for hours in (0, 2, 4, 6, 8, 10):
            record, events = self.poll_absent(record, T0 + timedelta(hours=hours))
            events_all += events
        names = [e.event for e in events_all]
        assert names == ["gg4l.district_missing", "gg4l.district_revoked"]
        assert [e.alert for e in events_all] == [False, True]

    def revoked(self, rules: Rules = SYNC) -> District:
        record = new(rules)
        for hours in (0, 2, 4):
            record, _ = self.poll_absent(record, T0 + timedelta(hours=hours), rules)
        assert record.state == "revoked"
        return record

    @pytest.mark.parametrize(("days", "state"), [(0, "revoked"), (29.9, "revoked"), (30, "purged"), (90, "purged")])
    def test_purged_purge_after_days_after_revocation(self, days, state):
        record = self.revoked()
        assert record.revoked_at is not None
        out, events = self.poll_absent(record, record.revoked_at + timedelta(days=days))
        assert out.state == state
        assert [e.event for e in events] == (["gg4l.district_purged"] if state == "purged" else [])

    def test_purge_after_days_is_the_config_value(self):
        rules = replace(SYNC, purge_after_days=3)
        record = self.revoked(rules)
        out, _ = self.poll_absent(record, record.revoked_at + timedelta(days=3), rules)
        assert out.state == "purged" and out.purged_at == record.revoked_at + timedelta(days=3)
        again, events = self.poll_absent(out, out.purged_at + timedelta(days=10), rules)
        assert again == out and events == []

    @pytest.mark.parametrize("gone", ["missing", "revoked", "purged"])
    def test_listed_again_is_restored_with_its_mapping(self, gone):
        record, _ = map_district(new(Rules()), T0, Rules(), "AI-own-sid", "credential:lincoln-token")
        record = replace(record, state=gone, missing_polls=5, first_missing_at=T0, revoked_at=T0,
                         purged_at=T0 if gone == "purged" else None)
        out, events = step(record, listing(), T0 + timedelta(days=40), Rules())
        assert out is not None
        assert out.state == "active"
        assert (out.install_sid, out.token_ref, out.policy) == ("AI-own-sid", "credential:lincoln-token", "sync")
        assert (out.missing_polls, out.first_missing_at, out.revoked_at) == (0, None, None)
        assert events[0].event == "gg4l.district_restored"
        assert events[0].alert is (gone != "missing")


class TestListedChanges:
    def test_expiring_then_expired_then_extended(self):
        record = new(expiry=T0 + timedelta(days=45))
        assert record.state == "active"
        seen = []
        for days, expiry in ((20, T0 + timedelta(days=45)), (21, T0 + timedelta(days=45)),
                             (46, T0 + timedelta(days=45)), (47, T0 + timedelta(days=45 + 365))):
            record, events = step(record, listing(expiry=expiry), T0 + timedelta(days=days), SYNC)
            seen.append((record.state, [e.event for e in events]))
        assert seen == [
            ("expiring", ["gg4l.district_expiring"]),
            ("expiring", []),  # logged once
            ("expired", ["gg4l.district_expired"]),
            ("active", ["gg4l.expiry_changed", "gg4l.district_state"]),
        ]

    def test_a_rotated_client_id_is_an_event(self):
        record, events = step(new(), listing(client_id="c2"), T0 + timedelta(hours=1), SYNC)
        assert record.client_id == "c2"
        assert "gg4l.credentials_rotated" in [e.event for e in events]

    def test_data_becoming_ready_activates(self):
        record = new(data=None)
        record, _events = step(record, listing(data=T0), T0 + timedelta(hours=1), SYNC)
        assert record.state == "active" and record.last_data_ts == T0

    def test_pause_and_resume(self):
        record, _ = set_paused(new(), T0, SYNC, True)
        assert record.state == "paused"
        record, _ = step(record, listing(), T0 + timedelta(hours=1), SYNC)
        assert record.state == "paused"  # discovery does not undo the admin's pause
        record, _ = set_paused(record, T0, SYNC, False)
        assert record.state == "active"

    def test_map_ends_pending_mapping(self):
        rules = Rules()
        record = new(rules)
        assert record.state == "pending_mapping"
        record, events = map_district(record, T0, rules, "AI-sid", "env:TOKEN")
        assert record.state == "active" and events[0].event == "gg4l.district_mapped"

    def test_a_later_test_webhook_never_demotes_a_standard_district(self):
        record, _ = step(new(), listing(), T0 + timedelta(hours=1), SYNC, mode="test")
        assert (record.mode, record.state) == ("standard", "active")


class TestReconcile:
    def test_tenant_name_collisions_are_refused_not_merged(self):
        records, events = reconcile({}, [listing("abc-1"), listing("ABC1")], T0, SYNC)
        assert list(records) == ["abc-1"]
        assert [e.event for e in events if e.event == "gg4l.district_refused"] == ["gg4l.district_refused"]

    def test_modes_come_from_webhooks_by_lowercased_guid(self):
        records, _ = reconcile({}, [listing()], T0, SYNC, {GUID.lower(): "test"})
        assert records[GUID.lower()].state == "recorded"

    def test_an_empty_list_makes_every_district_missing_and_nothing_else(self):
        records, _ = reconcile({}, [listing("a1"), listing("b2")], T0, SYNC)
        out, _ = reconcile(records, [], T0 + timedelta(hours=1), SYNC)
        assert {r.state for r in out.values()} == {"missing"}


class TestDataGate:
    def test_a_sync_waits_for_new_data(self):
        record = new()
        assert data_changed(record)  # never synced
        record = synced(record, record.last_data_ts)
        assert not data_changed(record)
        record, events = step(record, listing(data=T0 + timedelta(hours=2)), T0 + timedelta(hours=3), SYNC)
        assert data_changed(record) and "gg4l.data_ready" in [e.event for e in events]
        assert not data_changed(new(data=None))

    def test_the_store_keeps_the_synced_stamp(self, tmp_path):
        from syncd.gg4l_store import DistrictStore

        store = DistrictStore.open(str(tmp_path / "s.db"))
        record = new()
        store.save([record])
        store.mark_synced(GUID.lower(), T0)
        again = store.district(record.tenant)
        store.close()
        assert again is not None and again.synced_data_ts == T0 and not data_changed(again)
        assert again == synced(record, T0)  # every other field round-trips

    def test_a_tenant_name_clash_in_the_store_fails_loudly(self, tmp_path):
        import sqlite3

        from syncd.gg4l_store import DistrictStore

        store = DistrictStore.open(str(tmp_path / "s.db"))
        first = new()
        store.save([first])
        with pytest.raises(sqlite3.IntegrityError):
            store.save([replace(first, guid=GUID.replace("-", ""))])
        assert list(store.districts()) == [GUID.lower()]
        store.close()
