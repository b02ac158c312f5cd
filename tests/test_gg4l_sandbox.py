"""The fake GG4L Data API reproduces the documented quirks a client must survive (gg4l.md §3, §10)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import requests

from syncd.sandbox import Roster
from syncd.sandbox.gg4l import DATA_PREFIX, FakeDistrict, Gg4lSandbox

GUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.fixture
def box() -> Iterator[Gg4lSandbox]:
    with Gg4lSandbox() as sandbox:
        yield sandbox


def token(box: Gg4lSandbox, district: FakeDistrict) -> requests.Response:
    return requests.post(f"{box.partner_url}/d/{district.guid}/datahub/oauth/token",
                         data={"grant_type": "client_credentials"}, auth=(district.client_id, district.client_secret),
                         timeout=5)


def get(box: Gg4lSandbox, district: FakeDistrict, collection: str, **params: int) -> requests.Response:
    bearer = token(box, district).json()["access_token"]
    return requests.get(f"{box.partner_url}/d/{district.guid}{DATA_PREFIX}/{collection}", params=params,
                        headers={"Authorization": f"Bearer {bearer}"}, timeout=5)


def test_paging_has_the_documented_malformed_link_header(box):
    district = box.gg4l.add_district(GUID, Roster.generate(seed=2, users=250, classes=5, enrollments=300))
    first = get(box, district, "users", limit=100)
    assert len(first.json()["users"]) == 100
    # requests reads header bytes as latin-1: the UTF-8 smart quotes arrive as mojibake.
    link = first.headers["Link"].encode("latin-1").decode()
    assert "<" not in link and "\u201dnext\u201d" in link and "offset=101" in link  # off by one
    # What a stock parser makes of it: no usable rel (gg4l.md §3 [T]).
    assert "next" not in {item.get("rel") for item in requests.utils.parse_header_links(first.headers["Link"])}
    middle = get(box, district, "users", limit=100, offset=100)
    assert "\u201cprev\u201d" in middle.headers["Link"].encode("latin-1").decode()
    last = get(box, district, "users", limit=100, offset=200)
    assert len(last.json()["users"]) == 50 and "next" not in last.headers["Link"]


def test_limit_defaults_to_100_and_is_clamped_to_500(box):
    district = box.gg4l.add_district(GUID, Roster.generate(seed=2, users=700, classes=5, enrollments=300))
    assert len(get(box, district, "users").json()["users"]) == 100
    assert len(get(box, district, "users", limit=1000).json()["users"]) == 500


@pytest.mark.parametrize("email_mode", ["empty", "random", "random_each"])
def test_privacy_shield_masks_names_and_emails(box, email_mode):
    district = box.gg4l.add_district(GUID, privacy_shield=True, email_mode=email_mode)
    users = get(box, district, "users", limit=500).json()["users"]
    again = get(box, district, "users", limit=500).json()["users"]
    for user, source in zip(users, district.roster.users.values(), strict=True):
        assert user["givenName"] == source["givenName"][0] + "***"
        assert user["familyName"] == source["familyName"][0] + "***"
        if email_mode == "empty":
            assert user["email"] == ""
        else:
            assert user["email"].endswith("@gg4l.com") and user["email"] != source["email"]
    stable = [u["email"] for u in users] == [u["email"] for u in again]
    assert stable is (email_mode != "random_each")


def test_the_data_api_refuses_tokens_after_expiry_or_revocation(box):
    district = box.gg4l.add_district(GUID)
    assert token(box, district).status_code == 200
    assert token(box, district.__class__(**{**district.__dict__, "client_secret": "wrong"})).status_code == 401
    district.expiry = box.gg4l.clock() - timedelta(seconds=1)
    assert token(box, district).status_code == 401
    district.expiry = box.gg4l.clock() + timedelta(days=1)
    district.listed = False
    assert token(box, district).status_code == 401


def test_an_old_secret_stops_working_after_rotation(box):
    district = box.gg4l.add_district(GUID)
    old = district.client_secret
    district.rotate_secret()
    assert requests.post(f"{box.partner_url}/d/{GUID}/datahub/oauth/token", data={"grant_type": "client_credentials"},
                         auth=(district.client_id, old), timeout=5).status_code == 401
    assert token(box, district).status_code == 200


def test_the_partner_token_is_basic_only(box):
    url = f"{box.partner_url}/datahub/oauth/token"
    form = {"grant_type": "client_credentials", "client_id": box.gg4l.client_id,
            "client_secret": box.gg4l.client_secret}
    assert requests.post(url, data=form, timeout=5).status_code == 401
    basic = requests.post(url, data={"grant_type": "client_credentials"},
                          auth=(box.gg4l.client_id, box.gg4l.client_secret), timeout=5)
    assert basic.status_code == 200 and basic.json()["expires_in"] == 7199
