"""TOML -> typed, validated configuration.

Every problem is collected with its key path (``tenants.lincoln.source.base_url: ...``) and
reported at once; nothing here touches the state directory, so a bad config changes nothing.
Secret references (``env:``, ``file:``, ``credential:``) are resolved here, and every resolved
secret is remembered so that logs can redact it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import tomllib
import urllib.parse
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from syncd import exams_config
from syncd.errors import AdminNeeded
from syncd.sources import SOURCES, SourceConfig  # each source's own config: sources/<type>_config.py

DEFAULT_PATH = Path("/etc/syncd/syncd.toml")
DEPROVISION = ("report", "disable")
SAFETY_KEYS = {"max_removals_percent", "max_removals", "max_updates_percent", "freeze", "degraded_after"}
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_.@-]+$")
INSTALL_SID = re.compile(r"^[A-Za-z0-9_-]+$")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
SECRET_KEYS = ("client_secret", "token", "refresh_token", "access_token")


class ConfigError(AdminNeeded):
    """A config that cannot be used; ``errors`` holds one ``key.path: message`` per problem."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class HttpConfig:
    """``[daemon.http]``: the daemon's listener (SPEC §8); absent = no listener."""

    host: str
    port: int
    max_body_bytes: int = 16 * 1024
    # A client that sends nothing for this long is disconnected (slowloris).
    channel_timeout_s: int = 30
    threads: int = 4


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path
    log_level: str = "info"
    log_format: str = "auto"
    retention_days: int = 30
    stop_timeout_s: float = 60.0
    max_run_s: float = 21_600.0  # a run longer than this is stuck: the watchdog stops pinging
    http: HttpConfig | None = None


@dataclass(frozen=True)
class AlertsConfig:
    """``[alerts]``: Apprise notification URLs (resolved secrets) and the daily digest time."""

    urls: tuple[str, ...] = field(default=(), repr=False)
    digest: tuple[int, int] | None = None  # (hour, minute) in ``time_zone``
    time_zone: str | None = None  # None: the machine's local time zone


@dataclass(frozen=True)
class TargetConfig:
    base_url: str
    install_sid: str
    token: str = field(repr=False)
    concurrency: int = 4
    timeout_s: float = 30.0


@dataclass(frozen=True)
class SafetyConfig:
    """Guard rails, on by default (reference/anchors.md §0, §7): what a run may do unattended."""

    max_removals_percent: float = 10.0
    max_removals: int = 500
    max_updates_percent: float = 75.0
    # Date ranges (inclusive, the tenant's calendar) in which runs remove nothing.
    freeze: tuple[tuple[date, date], ...] = ()
    # Runs that fail outright this many times in a row mark the tenant degraded.
    degraded_after: int = 3


@dataclass(frozen=True)
class TenantConfig:
    name: str
    source: SourceConfig
    target: TargetConfig
    schedule: str = "every 1h"
    time_zone: str | None = None
    roles: dict[str, str] = field(default_factory=lambda: {"student": "learner"})
    enabled: bool = True
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    deprovision: str = "report"  # report | disable
    exams: exams_config.ExamsConfig | None = None  # SPEC §7; None: exams are off


@dataclass(frozen=True)
class Config:
    path: Path
    daemon: DaemonConfig
    tenants: dict[str, TenantConfig]
    secrets: frozenset[str] = field(default=frozenset(), repr=False)
    # Key paths whose secret is written in the file itself (no env:, file: or credential:).
    plain_secrets: tuple[str, ...] = ()
    gg4l: Any = None  # syncd.gg4l_config.Gg4lConfig when [gg4l] is set
    state_url: str = field(default="", repr=False)  # [state] url: PostgreSQL, shared by every node (SPEC §11)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)


# --- loading -------------------------------------------------------------------------------


def config_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("SYNCD_CONFIG") or DEFAULT_PATH)


MAX_CONFIG_BYTES = 1 << 20
MAX_SECRET_BYTES = 64 << 10


def load(path: Path) -> Config:
    try:
        data = read_regular(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file ({exc.strerror})"]) from None
    except ValueError as exc:
        raise ConfigError([f"{path}: {exc}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (at byte {exc.start}); TOML files are UTF-8"]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: not valid TOML: arrays or tables nested too deeply"]) from None
    return parse(raw, path)


def read_regular(path: Path | str, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file. A FIFO, a device (``/dev/zero``) or a directory is
    refused at once (opened non-blocking, so a FIFO with no writer cannot hang us); a larger file is
    refused rather than read into memory. Raises OSError, or ValueError with a message that never
    quotes the content."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 16):
            size += len(chunk)
            if size > limit:
                raise ValueError(f"larger than {limit >> 10} KiB")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_secret(path: Path | str, what: str) -> str:
    try:
        data = read_regular(path, MAX_SECRET_BYTES)
    except OSError as exc:
        raise ValueError(f"cannot read {what}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"cannot read {what}: {exc}") from None
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        # Never the decoder's message: it quotes the offending byte, a byte of the secret.
        raise ValueError(f"{what} is not UTF-8 text") from None


def parse(raw: dict[str, Any], path: Path) -> Config:
    checker = _Checker()
    _unknown(checker, raw, "", {"daemon", "safety", "tenants", "gg4l", "alerts", "state"})
    daemon = _daemon(checker, _table(checker, raw, "daemon"), path)
    alerts = _alerts(checker, _table(checker, raw, "alerts"))
    state_url = _state_url(checker, _table(checker, raw, "state"))
    defaults = _table(checker, raw, "safety")
    gg4l = None
    if "gg4l" in raw:  # only then: the GG4L modules cost a `syncd sync` of any other tenant ~10 ms
        from syncd.gg4l_config import parse_gg4l  # here: syncd.gg4l_config imports this module
        gg4l = parse_gg4l(checker, raw, defaults)
    tenants_raw = _table(checker, raw, "tenants")
    if not tenants_raw and "tenants" not in checker.bad_tables and "gg4l" not in raw:
        checker.error("tenants", "at least one tenant is required ([tenants.NAME])")
    tenants = {}
    for name, body in tenants_raw.items():
        key = f"tenants.{key_name(name)}"
        if not TENANT_NAME.match(name):
            checker.error(key, "tenant name must match [a-z0-9][a-z0-9_-]{0,62}")
        if not isinstance(body, dict):
            checker.error(key, "must be a table")
            continue
        tenant = _tenant(checker, name, body, defaults)
        if tenant is not None:
            tenants[name] = tenant
    if checker.errors:
        raise ConfigError(checker.errors)
    return Config(path=path, daemon=daemon, tenants=tenants, secrets=frozenset(checker.secrets),
                  plain_secrets=tuple(checker.plain_secrets), gg4l=gg4l, alerts=alerts, state_url=state_url)


# --- sections ------------------------------------------------------------------------------


def _daemon(checker: _Checker, body: dict[str, Any], path: Path) -> DaemonConfig:
    _unknown(checker, body, "daemon", {"state_dir", "log_level", "log_format", "retention_days", "stop_timeout_s",
                                       "max_run_s", "http"})
    state = checker.get(body, "daemon.state_dir", str, None)
    if state:
        # A relative state_dir is taken from the config file's folder, so that the same file
        # means the same state whatever directory a command is started from.
        state_dir = (path.parent / Path(state).expanduser()).resolve()
    else:
        state_dir = Path(os.environ.get("STATE_DIRECTORY", "").split(":")[0] or "state").resolve()
    return DaemonConfig(
        state_dir=state_dir,
        log_level=checker.choice(body, "daemon.log_level", LOG_LEVELS, "info"),
        log_format=checker.choice(body, "daemon.log_format", LOG_FORMATS, "auto"),
        retention_days=checker.number(body, "daemon.retention_days", int, 30, 1, 3650),
        stop_timeout_s=checker.number(body, "daemon.stop_timeout_s", float, 60.0, 1, 3600),
        max_run_s=checker.number(body, "daemon.max_run_s", float, 21_600.0, 1, 7 * 86_400),
        http=_http(checker, _table(checker, body, "http", "daemon")),
    )


def _state_url(checker: _Checker, body: dict[str, Any]) -> str:
    """``[state] url``: a postgresql:// URL, or a secret reference to one (it may carry a password)."""
    _unknown(checker, body, "state", {"url"})
    if "url" not in body:
        return ""
    reference = checker.get(body, "state.url", str, None)
    if reference is None:
        return ""
    password = urllib.parse.urlsplit(reference).password if "://" in reference else None
    url = reference if "://" in reference and not password else checker.secret(body, "state.url")
    if url and urllib.parse.urlsplit(url).scheme not in ("postgresql", "postgres"):
        checker.error("state.url", "must be a postgresql://… URL (or env:, file:, credential: naming one)")
        return ""
    return url


HTTP_KEYS = {"listen", "max_body_bytes", "channel_timeout_s", "threads"}


def _http(checker: _Checker, body: dict[str, Any]) -> HttpConfig | None:
    """``[daemon.http]``: off unless ``listen`` is set; ``HOST:PORT``, ``[::1]:PORT`` for IPv6."""
    if not body:
        return None
    _unknown(checker, body, "daemon.http", HTTP_KEYS)
    listen = checker.get(body, "daemon.http.listen", str, None, required=True)
    address = listen_address(listen) if listen else None
    if listen and address is None:
        checker.error("daemon.http.listen", f'must be HOST:PORT, e.g. "127.0.0.1:8470", not {listen!r}')
    limits = {
        "max_body_bytes": checker.number(body, "daemon.http.max_body_bytes", int, 16 * 1024, 1024, 10 * 1024 * 1024),
        "channel_timeout_s": checker.number(body, "daemon.http.channel_timeout_s", int, 30, 1, 3600),
        "threads": checker.number(body, "daemon.http.threads", int, 4, 1, 64),
    }
    if address is None:
        return None
    return HttpConfig(host=address[0], port=address[1], **limits)


def listen_address(value: str) -> tuple[str, int] | None:
    """``127.0.0.1:8470`` / ``[::1]:8470`` / ``0.0.0.0:8470`` -> (host, port), else None.
    A bare port listens on loopback: another interface is only ever the admin's explicit choice."""
    value = value.strip()
    if value.isdigit():
        value = f"127.0.0.1:{value}"
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return "127.0.0.1", int(port)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None  # an address, not a name: the admin says exactly which interface listens
    return host, int(port)


def _apprise_accepts(url: str) -> bool:
    """Whether Apprise can build a channel from ``url``; its own log lines (which may quote the URL,
    a secret) are silenced meanwhile."""
    import logging

    import apprise

    logger = logging.getLogger("apprise")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        return apprise.Apprise.instantiate(url) is not None
    finally:
        logger.setLevel(level)


ALERT_KEYS = {"urls", "digest", "time_zone"}
DIGEST_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def _alerts(checker: _Checker, body: dict[str, Any]) -> AlertsConfig:
    """``[alerts]``: Apprise URLs (each a secret: it may carry a password or a webhook token)."""
    _unknown(checker, body, "alerts", ALERT_KEYS)
    urls = []
    for i, _value in enumerate(checker.get(body, "alerts.urls", list, [])):
        key = f"alerts.urls[{i}]"
        url = checker.secret({f"urls[{i}]": _value}, key) if isinstance(_value, str) else ""
        if not isinstance(_value, str):
            checker.error(key, f"must be a string, not {_kind_name(type(_value))}")
        elif url and "://" not in url:
            checker.error(key, "must be an Apprise URL such as mailtos://… or json://… (the value is not shown)")
        elif url:
            if not _apprise_accepts(url):
                checker.error(key, "Apprise cannot use this URL: unknown service or missing parts "
                                   "(the value is not shown; see the Apprise wiki for its form)")
            urls.append(url)
    digest = None
    text = checker.get(body, "alerts.digest", str, None)
    if text is not None:
        match = DIGEST_TIME.match(text.strip())
        if match:
            digest = (int(match.group(1)), int(match.group(2)))
        else:
            checker.error("alerts.digest", f'must be a time of day HH:MM, e.g. "07:00", not {text!r}')
    time_zone = checker.get(body, "alerts.time_zone", str, None)
    if time_zone is not None:
        try:
            zoneinfo.ZoneInfo(time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            checker.error("alerts.time_zone", f"unknown time zone {time_zone!r} (use an IANA name)")
    return AlertsConfig(urls=tuple(urls), digest=digest, time_zone=time_zone)


def _tenant(checker: _Checker, name: str, body: dict[str, Any], defaults: dict[str, Any]) -> TenantConfig | None:
    key = f"tenants.{key_name(name)}"
    _unknown(checker, body, key, {"schedule", "time_zone", "roles", "enabled", "source", "target", "safety",
                                  "deprovision", "exams"})
    schedule = checker.get(body, f"{key}.schedule", str, "every 1h")
    if schedule is not None:
        problem = schedule_problem(schedule)
        if problem:
            checker.error(f"{key}.schedule", problem)
    time_zone = tenant_time_zone(checker, body, key)
    roles = _roles(checker, body.get("roles", {"student": "learner"}), f"{key}.roles")
    enabled = checker.get(body, f"{key}.enabled", bool, True)
    source = _source(checker, _table(checker, body, "source", key, required=True), f"{key}.source")
    target = _target(checker, _table(checker, body, "target", key, required=True), f"{key}.target")
    own = _table(checker, body, "safety", key)
    safety = _safety(checker, {**defaults, **own}, f"{key}.safety", own_keys=set(own))
    deprovision = checker.choice(body, f"{key}.deprovision", DEPROVISION, "report")
    exams = exams_config.parse(checker, body, key, source and source.type)
    if source is None or target is None:
        return None
    return TenantConfig(
        name=name,
        source=source,
        target=target,
        schedule=schedule or "every 1h",
        time_zone=time_zone,
        roles=roles,
        enabled=bool(enabled),
        safety=safety,
        deprovision=deprovision,
        exams=exams,
    )


def _safety(checker: _Checker, body: dict[str, Any], key: str, own_keys: set[str]) -> SafetyConfig:
    """A tenant's [safety] table over the top-level [safety] defaults; errors name where the key is."""
    def where(name: str) -> str:
        return f"{key}.{name}" if name in own_keys else f"safety.{name}"

    for name in body:
        if name not in SAFETY_KEYS:
            checker.error(where(name), f"unknown key (expected one of: {', '.join(sorted(SAFETY_KEYS))})")
    values = {name: body[name] for name in SAFETY_KEYS if name in body}
    result = {
        "max_removals_percent": checker.number(values, where("max_removals_percent"), float, 10.0, 0, 100),
        "max_removals": checker.number(values, where("max_removals"), int, 500, 0, 100_000_000),
        "max_updates_percent": checker.number(values, where("max_updates_percent"), float, 75.0, 0, 100),
        "degraded_after": checker.number(values, where("degraded_after"), int, 3, 1, 1000),
    }
    freeze = []
    ranges = checker.get(values, where("freeze"), list, [])
    for i, pair in enumerate(ranges):
        spot = f"{where('freeze')}[{i}]"
        if not isinstance(pair, list) or len(pair) != 2:
            checker.error(spot, 'must be a pair of dates, e.g. ["2027-06-10", "2027-08-20"]')
            continue
        try:
            first, last = (v if isinstance(v, date) else date.fromisoformat(str(v)) for v in pair)
        except ValueError:
            checker.error(spot, f"dates must be YYYY-MM-DD, not {pair!r}")
            continue
        if last < first:
            checker.error(spot, f"ends ({last}) before it starts ({first})")
            continue
        freeze.append((first, last))
    return SafetyConfig(freeze=tuple(freeze), **result)


def _roles(checker: _Checker, value: Any, key: str) -> dict[str, str]:
    if not isinstance(value, dict):
        checker.error(key, "must be a table of source role = provision role")
        return {}
    roles = {}
    for source_role, target_role in value.items():
        if not isinstance(target_role, str) or not target_role:
            checker.error(f"{key}.{source_role}", "must be a non-empty string")
        else:
            roles[source_role] = target_role
    if not roles and isinstance(value, dict) and value == {}:
        checker.error(key, "maps no role: nothing would be provisioned")
    return roles


def _source(checker: _Checker, body: dict[str, Any], key: str) -> SourceConfig | None:
    """``[tenants.X.source]``: its ``type`` picks the source, whose own module reads the rest."""
    if not body:
        return None
    kind = checker.choice(body, f"{key}.type", tuple(SOURCES), None, required=True)
    if kind is None:
        return None
    return SOURCES[kind].parse(checker, body, key)


def _target(checker: _Checker, body: dict[str, Any], key: str) -> TargetConfig | None:
    if not body:
        return None
    _unknown(checker, body, key, {"base_url", "install_sid", "token", "concurrency", "timeout_s"})
    install_sid = checker.get(body, f"{key}.install_sid", str, None, required=True) or ""
    if install_sid and not INSTALL_SID.match(install_sid):
        checker.error(f"{key}.install_sid", "must be letters, digits, '_' or '-' (e.g. AI0123…)")
    return TargetConfig(
        base_url=checker.url(body, f"{key}.base_url", required=True),
        install_sid=install_sid,
        token=checker.secret(body, f"{key}.token", required=True),
        concurrency=checker.number(body, f"{key}.concurrency", int, 4, 1, 64),
        timeout_s=checker.number(body, f"{key}.timeout_s", float, 30.0, 1, 600),
    )


# --- helpers -------------------------------------------------------------------------------


def tenant_time_zone(checker: _Checker, body: dict[str, Any], key: str) -> str | None:
    """A tenant's (or the GG4L template's) optional ``time_zone``: an IANA name, checked here."""
    time_zone = checker.get(body, f"{key}.time_zone", str, None)
    if time_zone is not None:
        try:
            zoneinfo.ZoneInfo(time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            checker.error(f"{key}.time_zone", f"unknown time zone {time_zone!r} (use an IANA name)")
    return time_zone


def schedule_problem(schedule: str) -> str | None:
    """None when ``schedule`` is a 5-field cron or ``every N{s,m,h,d}``, else why not."""
    from syncd.schedule import EVERY

    match = EVERY.match(schedule.strip())
    if match:
        return None if int(match.group(1)) > 0 else "interval must be positive"
    if len(schedule.split()) != 5:
        return f"{schedule!r} is neither a 5-field cron expression nor 'every 15m' / 'every 2h'"
    from syncd.schedule import cron

    try:
        cron(schedule, None)
    except ValueError as exc:
        return f"invalid cron expression {schedule!r}: {exc}"
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _table(checker: _Checker, body: dict[str, Any], name: str, parent: str = "",
           required: bool = False) -> dict[str, Any]:
    key = f"{parent}.{name}" if parent else name
    value = body.get(name)
    if value is None:
        if required:
            checker.error(key, "required table is missing")
        return {}
    if not isinstance(value, dict):
        checker.error(key, "must be a table")
        checker.bad_tables.add(key)
        return {}
    return value


BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def key_name(name: str) -> str:
    """A key as TOML writes it in a dotted path: bare if it can be, else quoted."""
    return name if BARE_KEY.match(name) else json.dumps(name, ensure_ascii=False)


def _unknown(checker: _Checker, body: dict[str, Any], key: str, allowed: set[str]) -> None:
    for name in body:
        if name not in allowed:
            where = f"{key}.{key_name(name)}" if key else key_name(name)
            checker.error(where, f"unknown key (expected one of: {', '.join(sorted(allowed))})")


class _Checker:
    """Collects errors instead of raising, so that every problem is reported at once."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.secrets: set[str] = set()
        self.plain_secrets: list[str] = []
        self.bad_tables: set[str] = set()
        self._failed_secrets: set[str] = set()

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{key}: {message}")

    def get(self, body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any,
            required: bool = False) -> Any:
        name = key.rsplit(".", 1)[-1]
        if name not in body:
            if required:
                self.error(key, "required key is missing")
            return default
        value = body[name]
        # bool is an int in Python; a number key must not accept true/false.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            self.error(key, f"must be {_kind_name(kind)}, not {_kind_name(type(value))}")
            return default
        if isinstance(value, str) and required and not value.strip():
            self.error(key, "must not be empty")
            return default
        return value

    def choice(self, body: dict[str, Any], key: str, options: tuple[str, ...], default: Any,
               required: bool = False) -> Any:
        value = self.get(body, key, str, default, required=required)
        if value is not None and value not in options:
            self.error(key, f"must be one of {', '.join(repr(o) for o in options)}, not {value!r}")
            return default
        return value

    def number(self, body: dict[str, Any], key: str, kind: type, default: Any, low: float,
               high: float) -> Any:
        value = self.get(body, key, (int, float) if kind is float else int, default)
        if not low <= value <= high:
            self.error(key, f"must be between {low:g} and {high:g}, not {value}")
            return default
        return kind(value)

    def url(self, body: dict[str, Any], key: str, required: bool = False) -> str:
        value = self.get(body, key, str, None, required=required)
        if not value:
            return ""
        parsed = urllib.parse.urlsplit(value)
        if parsed.scheme not in ("https", "http") or not parsed.hostname:
            self.error(key, f"must be an https:// URL, not {value!r}")
            return ""
        if parsed.scheme == "http" and not is_loopback(parsed.hostname):
            self.error(key, "http:// is only allowed for loopback hosts (the sandbox); use https://")
            return ""
        if parsed.query or parsed.fragment:
            self.error(key, "must not carry a query string or fragment")
            return ""
        return value.rstrip("/")

    def secret(self, body: dict[str, Any], key: str, required: bool = False) -> str:
        reference = self.get(body, key, str, None, required=required)
        if not reference:
            return ""
        if reference.partition(":")[0] not in ("env", "file", "credential"):
            self.plain_secrets.append(key)
        try:
            value = resolve_secret(reference)
        except ValueError as exc:
            self.error(key, str(exc))
            self._failed_secrets.add(key.rsplit(".", 1)[0])
            return ""
        if not value:
            self.error(key, "resolves to an empty value")
            return ""
        self.secrets.add(value)
        return value

    def secret_failed(self, parent: str) -> bool:
        return parent in self._failed_secrets


def resolve_secret(reference: str) -> str:
    """The value behind ``env:NAME``, ``file:/path`` or ``credential:NAME``; a plain string as is.

    Error messages name the reference, never the value.
    """
    kind, _, name = reference.partition(":")
    resolvers: dict[str, Callable[[str], str]] = {
        "env": _from_env,
        "file": _from_file,
        "credential": _from_credential,
    }
    if kind in resolvers and name:
        return resolvers[kind](name)
    return reference


def _from_env(name: str) -> str:
    if name not in os.environ:
        raise ValueError(f"environment variable {name} is not set")
    return os.environ[name]


def _from_file(name: str) -> str:
    return _read_secret(name, f"secret file {name}")


def _from_credential(name: str) -> str:
    if not CREDENTIAL_NAME.match(name):
        raise ValueError(f"invalid credential name {name!r}")
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ValueError(f"credential {name}: $CREDENTIALS_DIRECTORY is not set "
                         "(use LoadCredential= in the systemd unit)")
    return _read_secret(Path(directory) / name, f"credential {name}")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             dict: "a table", list: "an array"}
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)
