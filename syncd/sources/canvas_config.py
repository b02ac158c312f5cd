"""The ``[tenants.X.source]`` table of a Canvas source (``type = "canvas"``): its keys, its
dataclass and its checks, with config.py's collecting checker (every error with its key path)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from syncd.sources import SourceConfig, common_keys

if TYPE_CHECKING:
    from syncd.config import _Checker

KEYS = {"type", "base_url", "account_id", "client_id", "client_secret", "refresh_token",
        "access_token", "redirect_uri", "page_size", "timeout_s", "mode", "term_id", "sub_accounts",
        "concurrency", "report_min_courses", "report_timeout_s", "max_pages"}
MODES = ("auto", "api", "report")
CANVAS_ID = re.compile(r"^(\d+|sis_[a-z_]+_id:.+)$")
REDIRECT_URI = "http://127.0.0.1:8765/oauth/callback"


@dataclass(frozen=True, kw_only=True)
class CanvasConfig(SourceConfig):
    type: str = "canvas"
    page_size: int = 100  # Canvas caps per_page silently (100 hosted); asking for more only hides the cap
    concurrency: int = 8
    account_id: str = ""
    refresh_token: str = field(default="", repr=False)
    access_token: str = field(default="", repr=False)
    redirect_uri: str = REDIRECT_URI
    mode: str = "auto"  # auto | api | report
    term_id: str = ""
    sub_accounts: tuple[str, ...] = ()
    report_min_courses: int = 0  # 0: the measured default (syncd.sources.canvas.REPORT_MIN_COURSES)
    report_timeout_s: float = 1800.0


def parse(checker: _Checker, body: dict[str, Any], key: str) -> CanvasConfig:
    from syncd import config as base  # config.py asks the registry, which asks this module

    base._unknown(checker, body, key, KEYS)
    common = common_keys(checker, body, key, page_size=100)
    refresh = checker.secret(body, f"{key}.refresh_token")
    access = checker.secret(body, f"{key}.access_token")
    client_id = checker.get(body, f"{key}.client_id", str, None) or ""
    client_secret = checker.secret(body, f"{key}.client_secret")
    if not access and not (client_id and client_secret) and not checker.secret_failed(key):
        checker.error(key, "needs client_id and client_secret (developer key) or access_token")
    return CanvasConfig(
        account_id=_canvas_id(checker, body, f"{key}.account_id", "1"),
        client_id=client_id,
        client_secret=client_secret,
        refresh_token=refresh,
        access_token=access,
        redirect_uri=checker.url(body, f"{key}.redirect_uri") or REDIRECT_URI,
        mode=checker.choice(body, f"{key}.mode", MODES, "auto"),
        term_id=_canvas_id(checker, body, f"{key}.term_id", ""),
        sub_accounts=_canvas_ids(checker, body, f"{key}.sub_accounts"),
        concurrency=checker.number(body, f"{key}.concurrency", int, 8, 1, 32),
        report_min_courses=checker.number(body, f"{key}.report_min_courses", int, 0, 0, 10_000_000),
        report_timeout_s=checker.number(body, f"{key}.report_timeout_s", float, 1800.0, 10, 86_400),
        **common,
    )


def _canvas_id(checker: _Checker, body: dict[str, Any], key: str, default: str) -> str:
    """A Canvas id: digits, or an SIS reference such as ``sis_term_id:2026FA``."""
    return _canvas_id_value(checker, checker.get(body, key, (str, int), default), key, default)


def _canvas_id_value(checker: _Checker, value: Any, key: str, default: str) -> str:
    from syncd import config as base

    if isinstance(value, bool) or not isinstance(value, str | int):
        checker.error(key, f"must be a string or an integer, not {base._kind_name(type(value))}")
        return default
    text = str(value).strip()
    if text and not CANVAS_ID.match(text):
        checker.error(key, f"must be a Canvas id (digits) or an SIS reference like sis_account_id:X, not {value!r}")
        return default
    return text


def _canvas_ids(checker: _Checker, body: dict[str, Any], key: str) -> tuple[str, ...]:
    values = checker.get(body, key, list, [])
    ids = (_canvas_id_value(checker, value, f"{key}[{i}]", "") for i, value in enumerate(values))
    return tuple(i for i in ids if i)
