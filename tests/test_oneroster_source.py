"""The OneRoster source over real HTTP against the fake server's quirks."""

from __future__ import annotations

from datetime import date

import pytest

from syncd import http
from syncd.model import Course, Enrollment, RecordError, User
from syncd.sandbox import Fault, Roster, Sandbox
from syncd.sources.oneroster import OneRosterSource, SourceError
from syncd.sources.oneroster_config import OneRosterConfig

TODAY = date.today()  # noqa: DTZ011


def source_for(box: Sandbox, page_size: int = 50, secret: str | None = None, concurrency: int = 4) -> OneRosterSource:
    app = box.oneroster
    config = OneRosterConfig(type="oneroster", base_url=box.source_url, version=app.version,
                          client_id=app.client_id, client_secret=secret or app.client_secret,
                          token_url=box.token_url if app.version == "1.2" else "", page_size=page_size,
                          timeout_s=5, concurrency=concurrency)
    return OneRosterSource(config, TODAY)


def read_all(source: OneRosterSource) -> list:
    return [record for page in source.extract() for record in page]


@pytest.fixture
def roster() -> Roster:
    return Roster.generate(seed=2, users=120, classes=10, enrollments=400)


def ids(records: list, kind: type) -> list[str]:
    return [r.source_id for r in records if isinstance(r, kind)]


def test_every_record_is_read_once_and_the_extract_is_complete(roster):
    with Sandbox(roster) as box:
        source = source_for(box)
        records = read_all(source)
    assert source.complete
    assert sorted(ids(records, User)) == sorted(roster.users)
    assert sorted(ids(records, Enrollment)) == sorted(roster.enrollments)
    assert sorted(ids(records, Course)) == sorted(roster.classes)


def test_a_server_that_clamps_limit_silently_is_read_to_the_end(roster):
    with Sandbox(roster, max_limit=30, total_count=False, link=False) as box:
        source = source_for(box, page_size=1000)
        records = read_all(source)
    assert source.complete and sorted(ids(records, Enrollment)) == sorted(roster.enrollments)


def test_paging_without_count_or_link_headers_stops_on_a_short_page(roster):
    with Sandbox(roster, total_count=False, link=False) as box:
        # One request at a time: with several, pages asked ahead of an unannounced end are
        # spent (tests/test_oneroster_parallel.py bounds those).
        source = source_for(box, page_size=100, concurrency=1)
        records = read_all(source)
        requests = box.oneroster.requests
    assert len(ids(records, Enrollment)) == 400
    # 4 collections; enrollments are 400 = 4 full pages and a confirming empty one.
    assert requests <= 5 + 2 + 3 + 3


def test_a_server_that_ignores_offset_is_a_pagination_loop_error(roster):
    with Sandbox(roster, ignore_offset=True) as box:
        source = source_for(box, page_size=20)
        with pytest.raises(SourceError, match="pagination loop"):
            read_all(source)
    assert not source.complete


def test_an_html_page_with_status_200_stops_the_extract(roster):
    with Sandbox(roster) as box:
        box.oneroster.faults.append(Fault(200, collection="users", offset=50, html=True))
        source = source_for(box)
        with pytest.raises(SourceError, match="not JSON"):
            read_all(source)
    assert not source.complete


def test_transient_faults_are_retried_honouring_retry_after(roster):
    with Sandbox(roster) as box:
        box.oneroster.faults += [Fault(429, times=1, retry_after="0", collection="users"),
                                 Fault(503, times=1, collection="classes"),
                                 Fault(200, times=1, drop=True, collection="enrollments")]
        source = source_for(box)
        records = read_all(source)
    assert source.complete and len(ids(records, User)) == 120


def test_a_wrong_secret_fails_signature_verification(roster):
    with Sandbox(roster) as box:
        source = source_for(box, secret="not-the-secret")
        with pytest.raises(http.AuthError) as caught:
            read_all(source)
        assert box.oneroster.rejected_auth == 1
    assert "not-the-secret" not in str(caught.value)


def test_oneroster_12_formats_map_like_11(roster):
    with Sandbox(roster, version="1.2") as v12, Sandbox(roster) as v11:
        assert sorted(map(repr, read_all(source_for(v12)))) == sorted(map(repr, read_all(source_for(v11))))


def test_bad_records_fail_alone_with_a_reason():
    roster = Roster.generate(seed=3, users=10, classes=2, enrollments=20)
    roster.users["usr-000003"]["givenName"] = None
    roster.users["usr-000004"]["status"] = "suspended"
    roster.users["bad"] = {"sourcedId": 42, "status": "active"}
    first_enrollment = next(iter(roster.enrollments.values()))
    first_enrollment["endDate"] = "next week"
    roster.classes["cls-00001"]["title"] = ""
    with Sandbox(roster) as box:
        source = source_for(box)
        records = read_all(source)
    errors = {(e.entity, e.source_id): e.message for e in records if isinstance(e, RecordError)}
    assert errors == {
        ("user", "usr-000003"): "user has no givenName",
        ("user", "usr-000004"): "unknown status 'suspended'",
        ("user", ""): "sourcedId is not a string",
        ("enrollment", first_enrollment["sourcedId"]): "endDate 'next week' is not a date (YYYY-MM-DD)",
        ("course", "cls-00001"): "class has no title",
    }
    assert source.complete and len(ids(records, User)) == 10 - 2  # 11 read, 3 bad


def test_legacy_inactive_and_past_end_dates_are_out_of_scope():
    roster = Roster.generate(seed=3, users=10, classes=2, enrollments=20)
    roster.users["usr-000005"]["status"] = "inactive"
    enrollments = list(roster.enrollments.values())
    enrollments[0]["endDate"] = TODAY.isoformat()  # exclusive: over today
    enrollments[1]["endDate"] = "2999-01-01T00:00:00Z"
    with Sandbox(roster) as box:
        records = {r.source_id: r for r in read_all(source_for(box)) if not isinstance(r, RecordError)}
    assert records["usr-000005"].active is False
    assert records[enrollments[0]["sourcedId"]].active is False
    assert records[enrollments[1]["sourcedId"]].active is True


def test_a_collection_that_ends_short_of_its_total_count_is_not_complete():
    roster = Roster.generate(seed=2, users=60, classes=6, enrollments=200)
    with Sandbox(roster) as box:
        original = box.oneroster._page

        def lying(request, collection, limit, offset):
            response = original(request, collection, limit, offset)
            if collection == "users":
                response.headers["X-Total-Count"] = str(len(roster.users) + 50)
            return response

        box.oneroster._page = lying
        source = source_for(box)
        records = [r for page in source.extract() for r in page]
        assert len(records) > len(roster.users)  # everything there was is read
        assert source.complete is False and source.short == ["users"]


def test_the_text_fast_path_cleans_exactly_like_the_slow_path():
    """text_field returns most values untouched without cleaning them; a seeded fuzz of the
    characters that cleaning changes proves the shortcut never skips a needed change."""
    import random
    import unicodedata

    from syncd.sources import CONTROL, MAX_TEXT, text_field

    def slow(value: str) -> str | None:
        text = " ".join(unicodedata.normalize("NFC", CONTROL.sub(" ", value)).split())
        if len(text) > MAX_TEXT:
            return "too long"
        return text or None

    def fast(value: str) -> str | None:
        try:
            return text_field({"k": value}, "k")
        except ValueError:
            return "too long"

    pieces = ["a", "B", " ", "  ", "\t", "\n", "\x00", "\x7f", "\x85", "\xa0", "é", "e\u0301", "\u2028", "\u3000",
              "\u200b", "ß", "ﬁ", "\u1680", "\x1c", "\x9f", "\ufeff", "😀", "A\u030a", "O'Brien"]
    rng = random.Random(7)
    for _ in range(30_000):
        value = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        assert fast(value) == slow(value), repr(value)
    for value in ("x" * MAX_TEXT, "x" * (MAX_TEXT + 1), " " + "x" * MAX_TEXT):
        assert fast(value) == slow(value)


def test_numbers_in_text_fields_keep_every_digit_and_utf16_pages_are_read(roster):
    roster.classes["cls-00002"]["classCode"] = 123456789012345678901234567890
    with Sandbox(roster) as box:
        records = {r.source_id: r for r in read_all(source_for(box)) if isinstance(r, Course)}
    assert records["cls-00002"].code == "123456789012345678901234567890"
    from syncd.sources.oneroster import _envelope

    class Utf16:
        content = '{"users": [{"sourcedId": "\u00fc"}]}'.encode("utf-16")
        headers: dict = {}

    assert _envelope(Utf16(), "users") == [{"sourcedId": "\u00fc"}]
