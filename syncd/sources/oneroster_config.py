"""The ``[tenants.X.source]`` table of a OneRoster source (``type = "oneroster"``): its keys, its
dataclass and its checks, with config.py's collecting checker (every error with its key path)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from syncd.sources import SourceConfig, common_keys

if TYPE_CHECKING:
    from syncd.config import _Checker

KEYS = {"type", "base_url", "version", "auth", "client_id", "client_secret", "token_url", "scope",
        "page_size", "timeout_s", "concurrency", "max_pages", "delta", "full_every"}
VERSIONS = ("1.1", "1.2")
AUTH = ("oauth1", "oauth2")
DEFAULT_SCOPE = {
    "1.1": "https://purl.imsglobal.org/spec/or/v1p1/scope/roster-core.readonly",
    "1.2": "https://purl.imsglobal.org/spec/or/v1p2/scope/roster-core.readonly",
}
DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")


@dataclass(frozen=True, kw_only=True)
class OneRosterConfig(SourceConfig):
    type: str = "oneroster"
    version: str = "1.1"
    auth: str = ""  # "oauth1" | "oauth2"; "" picks by version (1.1: oauth1, 1.2: oauth2)
    token_url: str = ""
    scope: str = ""
    # GG4L districts: Privacy Shield's empty or random @gg4l.com e-mails count as no e-mail (syncd.gg4l).
    privacy_shield: bool = False
    # Delta runs (filter=dateLastModified>…): "auto" | "off"; a full run every full_every_s.
    delta: str = "off"
    full_every_s: float = 86_400.0


def parse(checker: _Checker, body: dict[str, Any], key: str) -> OneRosterConfig:
    from syncd import config as base  # config.py asks the registry, which asks this module

    base._unknown(checker, body, key, KEYS)
    common = common_keys(checker, body, key, page_size=1000)
    version = checker.choice(body, f"{key}.version", VERSIONS, "1.1")
    # The version picks the usual auth; some 1.1 servers (GG4L) use OAuth 2 all the same.
    auth = checker.choice(body, f"{key}.auth", AUTH, "oauth2" if version == "1.2" else "oauth1")
    token_url = checker.url(body, f"{key}.token_url", required=auth == "oauth2")
    if auth == "oauth1" and "token_url" in body:
        checker.error(f"{key}.token_url", "only used with OAuth 2 (auth = \"oauth2\", the default for version 1.2)")
    return OneRosterConfig(
        version=version or "1.1",
        auth=auth or "",
        concurrency=checker.number(body, f"{key}.concurrency", int, 4, 1, 32),
        delta=checker.choice(body, f"{key}.delta", ("auto", "off"), "off") or "off",
        full_every_s=_full_every(checker, body, f"{key}.full_every"),
        client_id=checker.get(body, f"{key}.client_id", str, None, required=True) or "",
        client_secret=checker.secret(body, f"{key}.client_secret", required=True),
        token_url=token_url,
        scope=_scope(checker.get(body, f"{key}.scope", str, None), version or "1.1"),
        **common,
    )


def _full_every(checker: _Checker, body: dict[str, Any], key: str) -> float:
    """``source.full_every``: how long delta runs may follow each other before a full run."""
    text = checker.get(body, key, str, "24h") or "24h"
    match = DURATION.match(text)
    if not match or int(match.group(1)) == 0:
        checker.error(key, f'must be a duration such as "24h", "90m" or "7d", not {text!r}')
        return 86_400.0
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86_400}[match.group(2)]


def _scope(value: str | None, version: str) -> str:
    """The OAuth 2 scope: the version's roster-core scope unless given; ``scope = ""`` sends none."""
    return DEFAULT_SCOPE.get(version, "") if value is None else value
