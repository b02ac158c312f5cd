"""Hostile input to the GG4L parsers: any body, any list, any timestamp gives an answer, never a crash."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.gg4l.partner import PartnerError, parse_listing, parse_time
from syncd.gg4l.webhook import Webhook

KEY = {"X-Key": "k" * 24}
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=12)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(body=st.binary(max_size=2048) | st.text(max_size=512).map(str.encode), query=st.text(max_size=100),
       content_type=st.sampled_from(["application/json", "application/x-www-form-urlencoded", "", "text/plain"]))
def test_the_webhook_answers_any_body(body, query, content_type):
    recorded = []
    hook = Webhook(KEY, lambda d: recorded.append(d) or True, lambda: None)
    status, answer = hook("POST", KEY, query, body, content_type)
    assert status in (200, 400) and isinstance(answer, dict)
    assert all(len(d.guid) <= 64 for d in recorded)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(["districtGUID", "districtguid", "mode", "x"]),
                              json_values, max_size=4))
def test_the_webhook_answers_any_json_object(fields):
    hook = Webhook(KEY, lambda d: True, lambda: None)
    status, _ = hook("POST", KEY, "", json.dumps(fields).encode(), "application/json")
    assert status in (200, 400)


entry = st.fixed_dictionaries({}, optional={
    name: json_values for name in ("districtGuid", "apiUrl", "tokenUrl", "clientId", "clientSecret", "expiryDate",
                                   "lastDataProcessingCompletedTimestamp", "createdTimestamp", "districtName")})


@settings(max_examples=300, derandomize=True, deadline=None)
@given(data=st.lists(entry, max_size=4) | json_values)
def test_any_partner_list_is_read_or_refused_clearly(data):
    try:
        listings, _warnings = parse_listing(json.dumps(data), "https://partner.example")
    except PartnerError:
        return
    for listing in listings:
        assert listing.guid and (listing.api_url == "" or listing.api_url.startswith("https://"))


@settings(max_examples=300, derandomize=True, deadline=None)
@given(value=json_values | st.text(alphabet="0123456789-:TZ+. ²", max_size=40))
def test_any_timestamp_is_a_date_or_none(value):
    stamp = parse_time(value)
    assert stamp is None or stamp.tzinfo is not None
