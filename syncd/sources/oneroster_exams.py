"""OneRoster exams (SPEC §7): gradebook lineItems as mapped exams, a weak source (exams.md §3).

1.1 serves ``/lineItems`` beside the rostering collections; 1.2 serves it from the gradebook
service, ``…/gradebook/v1p2/lineItems``, a sibling of ``…/rostering/v1p2`` whose token needs the
gradebook scope too. Requests go through the source's own session and credentials
(:func:`getter`); paging is limit/offset as for the roster, with the same loop guard.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
import zoneinfo
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import requests

from syncd import exams, http
from syncd.exams import Exam
from syncd.exams_config import ExamsConfig
from syncd.model import RecordError
from syncd.sources import SourceError

if TYPE_CHECKING:
    from syncd.sources.oneroster import OneRosterSource

GRADEBOOK_SCOPE = "https://purl.imsglobal.org/spec/or/v1p2/scope/gradebook.readonly"
ROSTERING = re.compile(r"/rostering/v1p2$")

Get = Callable[[str], requests.Response]


class GradebookUnavailable(SourceError):
    """The provider serves no gradebook (404) or this client may not read it (401/403)."""


def line_items_url(base_url: str, version: str) -> str:
    """Where lineItems live for a roster ``base_url``: beside it (1.1), or the gradebook service (1.2)."""
    if version == "1.2":
        return ROSTERING.sub("/gradebook/v1p2", base_url) + "/lineItems"
    return base_url + "/lineItems"


def token_scope(configured: str, version: str, exams_on: bool) -> str:
    """The 1.2 token scope: the configured one, plus gradebook.readonly when exams read lineItems."""
    if version != "1.2" or not exams_on or GRADEBOOK_SCOPE in configured.split():
        return configured
    return f"{configured} {GRADEBOOK_SCOPE}".strip()


def getter(source: OneRosterSource) -> Get:
    """A GET on any URL of the provider, with the source's session, auth, retries and counter."""
    def get(url: str) -> requests.Response:
        auth: Any = source._auth or source._oauth1
        reauthorize = source._auth.refresh if source._auth else None
        return http.send(source.session, "GET", url, timeout=source.config.timeout_s, auth=auth,
                         headers={"Accept": "application/json"}, reauthorize=reauthorize,
                         on_attempt=source._count)

    return get


def pages(get: Get, url: str, page_size: int, key: str = "lineItems") -> Iterator[list[Any]]:
    """limit/offset pages until an empty page, or one shorter than an earlier one once
    ``X-Total-Count`` (when sent) is reached; a repeated page is a pagination loop."""
    offset, longest = 0, 0
    seen: set[str] = set()
    while True:
        query = urllib.parse.urlencode({"limit": page_size, "offset": offset})
        try:
            response = get(f"{url}?{query}")
        except (http.RejectedError, http.AuthError) as exc:
            if offset == 0 and exc.status in (401, 403, 404):
                raise GradebookUnavailable(f"{http.redact_url(url)}: HTTP {exc.status}: the provider does not "
                                           "serve gradebook lineItems to this client; exams cannot be read") from None
            raise
        try:
            body = response.json()
        except ValueError:
            raise SourceError(f"{http.redact_url(url)}: response is not JSON") from None
        records = body.get(key) if isinstance(body, dict) else None
        if not isinstance(records, list):
            raise SourceError(f"{http.redact_url(url)}: response has no '{key}' list")
        if not records:
            return
        fingerprint = hashlib.blake2b("\x1f".join(str(r.get("sourcedId")) if isinstance(r, dict) else "?"
                                                  for r in records).encode(), digest_size=16).hexdigest()
        if fingerprint in seen:
            raise SourceError(f"{http.redact_url(url)}: pagination loop at offset {offset}")
        seen.add(fingerprint)
        yield records
        offset += len(records)
        total = _int(response.headers.get("X-Total-Count"))
        shorter = len(records) < longest
        longest = max(longest, len(records))
        # A server may clamp limit silently: a short first page proves nothing, a shorter later one does.
        if shorter and not (total and offset < total):
            return


def line_items(get: Get, base_url: str, version: str, page_size: int, config: ExamsConfig,
               zone: zoneinfo.ZoneInfo | None = None) -> Iterator[list[Exam | RecordError]]:
    """Every selected lineItem, mapped, page by page."""
    for page in pages(get, line_items_url(base_url, version), page_size):
        yield [r for r in (exams.line_item(item, config, zone) for item in page) if r is not None]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class OneRosterWithExams:
    """A OneRoster source whose extract goes on with the tenant's lineItems after the roster.

    A provider without a readable gradebook does not stop the roster: ``exams_error`` says why and
    ``exams_complete`` stays False, so no exam is inferred removed."""

    def __init__(self, inner: OneRosterSource, config: ExamsConfig, zone: zoneinfo.ZoneInfo | None):
        self.inner = inner
        self.exams = config
        self.zone = zone
        self.exams_complete = False
        self.exams_error: str | None = None

    @property
    def complete(self) -> bool:
        return self.inner.complete

    @property
    def requests(self) -> int:
        return self.inner.requests

    def check(self) -> None:
        self.inner.check()

    def extract(self) -> Iterator[list[Any]]:
        yield from self.inner.extract()
        source = self.inner.config
        try:
            yield from line_items(getter(self.inner), source.base_url, source.version, source.page_size, self.exams,
                                  self.zone)
        except GradebookUnavailable as exc:
            self.exams_error = str(exc)
            return
        self.exams_complete = True
