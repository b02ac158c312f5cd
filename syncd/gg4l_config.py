"""The ``[gg4l]`` config section (SPEC §9): the Partner API, the webhook, and the district template.

Parsed with config.py's checker, so that its errors come with their key paths, together with every
other error of the file. ``config.parse`` calls :func:`parse_gg4l`; the result is ``Config.gg4l``
(None when the section is absent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from syncd import config as base
from syncd.gg4l import MODES
from syncd.gg4l.lifecycle import POLICIES, Rules

if TYPE_CHECKING:
    from syncd.config import SafetyConfig, _Checker

GG4L_KEYS = {"partner_url", "client_id", "client_secret", "webhook_headers", "modes", "on_new_district",
             "discovery_interval", "purge_after_days", "timeout_s", "tenant"}
TEMPLATE_KEYS = {"schedule", "time_zone", "roles", "enabled", "safety", "deprovision", "source", "target"}
TEMPLATE_SOURCE_KEYS = {"page_size", "timeout_s", "privacy_shield"}
TEMPLATE_TARGET_KEYS = {"base_url", "install_sid", "token", "concurrency", "timeout_s"}
# RFC 9110 token characters: what a header name may be made of.
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
INTERVAL = re.compile(r"^(?:every\s+)?(\d+)\s*([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# GG4L's Data API serves at most 500 records a page (gg4l.md §3).
MAX_PAGE = 500


@dataclass(frozen=True)
class TenantTemplate:
    """What every district's tenant inherits; its source comes from discovery."""

    target_base_url: str
    install_sid: str = ""
    token: str = field(default="", repr=False)
    target_concurrency: int = 4
    target_timeout_s: float = 30.0
    schedule: str = "every 1h"
    time_zone: str | None = None
    roles: dict[str, str] = field(default_factory=lambda: {"student": "learner"})
    enabled: bool = True
    safety: SafetyConfig | None = None
    deprovision: str = "report"
    page_size: int = MAX_PAGE
    source_timeout_s: float = 60.0
    privacy_shield: bool = True  # masked e-mails are no e-mail (OneRosterConfig.privacy_shield)


@dataclass(frozen=True)
class Gg4lConfig:
    partner_url: str
    client_id: str
    client_secret: str = field(repr=False)
    tenant: TenantTemplate
    webhook_headers: dict[str, str] = field(default_factory=dict, repr=False)
    modes: tuple[str, ...] = ("standard",)
    on_new_district: str = "pending"
    discovery_interval_s: int = 3600
    purge_after_days: int = 30
    timeout_s: float = 30.0

    def rules(self) -> Rules:
        return Rules(modes=self.modes, on_new_district=self.on_new_district, purge_after_days=self.purge_after_days,
                     template_install_sid=self.tenant.install_sid, template_token=bool(self.tenant.token))


def parse_gg4l(checker: _Checker, raw: dict[str, Any], defaults: dict[str, Any]) -> Gg4lConfig | None:
    """The ``[gg4l]`` table, or None when there is none; errors go to ``checker``."""
    body = base._table(checker, raw, "gg4l")
    if not body:
        return None
    base._unknown(checker, body, "gg4l", GG4L_KEYS)
    template = _template(checker, base._table(checker, body, "tenant", "gg4l", required=True), defaults)
    result = Gg4lConfig(
        partner_url=checker.url(body, "gg4l.partner_url", required=True),
        client_id=checker.get(body, "gg4l.client_id", str, None, required=True) or "",
        client_secret=checker.secret(body, "gg4l.client_secret", required=True),
        tenant=template or TenantTemplate(target_base_url=""),
        webhook_headers=_headers(checker, body),
        modes=_modes(checker, body),
        on_new_district=checker.choice(body, "gg4l.on_new_district", POLICIES, "pending"),
        discovery_interval_s=_interval(checker, body, "gg4l.discovery_interval", 3600),
        purge_after_days=checker.number(body, "gg4l.purge_after_days", int, 30, 0, 3650),
        timeout_s=checker.number(body, "gg4l.timeout_s", float, 30.0, 1, 600),
    )
    return result


def _headers(checker: _Checker, body: dict[str, Any]) -> dict[str, str]:
    table = checker.get(body, "gg4l.webhook_headers", dict, {})
    headers: dict[str, str] = {}
    for name in table:
        key = f"gg4l.webhook_headers.{base.key_name(name)}"
        if not HEADER_NAME.match(name):
            checker.error(key, "is not a valid HTTP header name")
            continue
        if name.lower() in {n.lower() for n in headers}:
            checker.error(key, "is listed twice (header names ignore case)")
            continue
        value = checker.secret(table, key, required=True)
        if value:
            headers[name] = value
    return headers


def _modes(checker: _Checker, body: dict[str, Any]) -> tuple[str, ...]:
    values = checker.get(body, "gg4l.modes", list, ["standard"])
    modes = []
    for i, value in enumerate(values):
        if value not in MODES:
            checker.error(f"gg4l.modes[{i}]", f"must be one of {', '.join(repr(m) for m in MODES)}, not {value!r}")
        elif value not in modes:
            modes.append(value)
    return tuple(modes)


def _interval(checker: _Checker, body: dict[str, Any], key: str, default: int) -> int:
    value = checker.get(body, key, str, None)
    if value is None:
        return default
    match = INTERVAL.match(value.strip())
    seconds = int(match.group(1)) * UNITS[match.group(2)] if match else 0
    if not match or not 10 <= seconds <= 7 * 86400:
        checker.error(key, f"must be a duration like '1h' or '15m', between 10s and 7d, not {value!r}")
        return default
    return seconds


def _template(checker: _Checker, body: dict[str, Any], defaults: dict[str, Any]) -> TenantTemplate | None:
    if not body:
        return None
    key = "gg4l.tenant"
    base._unknown(checker, body, key, TEMPLATE_KEYS)
    schedule = checker.get(body, f"{key}.schedule", str, "every 1h")
    problem = base.schedule_problem(schedule) if schedule else None
    if problem:
        checker.error(f"{key}.schedule", problem)
    time_zone = base.tenant_time_zone(checker, body, key)
    source = base._table(checker, body, "source", key)
    base._unknown(checker, source, f"{key}.source", TEMPLATE_SOURCE_KEYS)
    target = base._table(checker, body, "target", key, required=True)
    base._unknown(checker, target, f"{key}.target", TEMPLATE_TARGET_KEYS)
    install_sid = checker.get(target, f"{key}.target.install_sid", str, "") or ""
    if install_sid and not base.INSTALL_SID.match(install_sid):
        checker.error(f"{key}.target.install_sid", "must be letters, digits, '_' or '-' (e.g. AI0123…)")
    own = base._table(checker, body, "safety", key)
    return TenantTemplate(
        target_base_url=checker.url(target, f"{key}.target.base_url", required=True),
        install_sid=install_sid,
        token=checker.secret(target, f"{key}.target.token"),
        target_concurrency=checker.number(target, f"{key}.target.concurrency", int, 4, 1, 64),
        target_timeout_s=checker.number(target, f"{key}.target.timeout_s", float, 30.0, 1, 600),
        schedule=schedule or "every 1h",
        time_zone=time_zone,
        roles=base._roles(checker, body.get("roles", {"student": "learner"}), f"{key}.roles"),
        enabled=bool(checker.get(body, f"{key}.enabled", bool, True)),
        safety=base._safety(checker, {**defaults, **own}, f"{key}.safety", own_keys=set(own)),
        deprovision=checker.choice(body, f"{key}.deprovision", base.DEPROVISION, "report"),
        page_size=checker.number(source, f"{key}.source.page_size", int, MAX_PAGE, 1, MAX_PAGE),
        source_timeout_s=checker.number(source, f"{key}.source.timeout_s", float, 60.0, 1, 3600),
        privacy_shield=bool(checker.get(source, f"{key}.source.privacy_shield", bool, True)),
    )

