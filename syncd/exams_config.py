"""``[tenants.X.exams]``: which assessments a tenant provisions as exams, and their defaults (SPEC §7).

Parsed with config.py's collecting checker, so that every problem is reported with its key path
together with the rest of the file's, and the default password is resolved and registered as a
secret like every other credential.
"""

from __future__ import annotations

import re
import string
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from syncd.config import _Checker

SELECT = ("access_code", "all", "title", "ids")
ON_REMOVED = ("report", "delete")
# Proctor type sids as the provision OpenAPI writes them (reference/exams.md §1.2).
PROCTOR_TYPE = re.compile(r"^TS[0-9a-f]{32}$")
KEYS = {"select", "title_pattern", "ids", "new_quizzes", "proctor_types", "default_duration_min",
        "default_password", "limited_scope", "on_removed", "window_guard", "url_template", "count_overrides"}
URL_FIELDS = ("id", "class_id")
MAX_DURATION_MIN = 10_080  # a week: Canvas's own cap on extra time


@dataclass(frozen=True)
class ExamsConfig:
    select: str = "access_code"
    title_pattern: re.Pattern[str] | None = None
    ids: frozenset[str] = frozenset()
    new_quizzes: bool = True
    proctor_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_duration_min: int | None = None
    default_password: str | None = field(default=None, repr=False)
    limited_scope: bool = False
    on_removed: str = "report"
    window_guard: bool = True
    url_template: str | None = None
    # Canvas: read each published exam's overrides (one or two requests more per exam) for the
    # accommodations `syncd exams` lists; off by default, for a nightly tenant rather than every run.
    count_overrides: bool = False


def parse(checker: _Checker, tenant: dict[str, Any], tenant_key: str, source_type: str | None) -> ExamsConfig | None:
    """The tenant's ``exams`` table, or None when it has none (exams are off). An empty table is on,
    and reports what it lacks."""
    from syncd.config import _table, _unknown

    if "exams" not in tenant:
        return None
    key = f"{tenant_key}.exams"
    body = _table(checker, tenant, "exams", tenant_key)
    if key in checker.bad_tables:
        return None
    _unknown(checker, body, key, KEYS)
    canvas = source_type == "canvas"
    select = checker.choice(body, f"{key}.select", SELECT, "access_code" if canvas else None,
                            required=source_type == "oneroster")
    if select == "access_code" and source_type == "oneroster":
        checker.error(f"{key}.select", 'lineItems carry no access code: use "all", "title" or "ids"')
    for name, usable in (("new_quizzes", canvas), ("count_overrides", canvas),
                         ("url_template", source_type == "oneroster")):
        if name in body and not usable and source_type:
            other = "OneRoster" if name == "url_template" else "Canvas"
            checker.error(f"{key}.{name}", f"only used with a {other} source")
    return ExamsConfig(
        select=select or "access_code",
        title_pattern=_pattern(checker, body, f"{key}.title_pattern", select),
        ids=_ids(checker, body, f"{key}.ids", select),
        new_quizzes=bool(checker.get(body, f"{key}.new_quizzes", bool, True)),
        proctor_types=_proctor_types(checker, body, f"{key}.proctor_types"),
        default_duration_min=_duration(checker, body, f"{key}.default_duration_min"),
        default_password=checker.secret(body, f"{key}.default_password") or None,
        limited_scope=bool(checker.get(body, f"{key}.limited_scope", bool, False)),
        on_removed=checker.choice(body, f"{key}.on_removed", ON_REMOVED, "report"),
        window_guard=bool(checker.get(body, f"{key}.window_guard", bool, True)),
        url_template=_url_template(checker, body, f"{key}.url_template"),
        count_overrides=bool(checker.get(body, f"{key}.count_overrides", bool, False)),
    )


def _pattern(checker: _Checker, body: dict[str, Any], key: str, select: str | None) -> re.Pattern[str] | None:
    text = checker.get(body, key, str, None, required=select == "title")
    if text is None:
        return None
    if select != "title":
        checker.error(key, 'only used with select = "title"')
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        checker.error(key, f"not a valid regular expression: {exc}")
        return None


def _ids(checker: _Checker, body: dict[str, Any], key: str, select: str | None) -> frozenset[str]:
    values = checker.get(body, key, list, None, required=select == "ids")
    if values is None:
        return frozenset()
    if select != "ids":
        checker.error(key, 'only used with select = "ids"')
        return frozenset()
    ids = set()
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
            checker.error(f"{key}[{i}]", f"must be a non-empty string or an integer, not {value!r}")
        else:
            ids.add(str(value).strip())
    if not values:
        checker.error(key, "lists no id: no exam would be provisioned")
    return frozenset(ids)


def _proctor_types(checker: _Checker, body: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    from syncd.config import key_name

    table = checker.get(body, key, dict, None, required=True)
    if table is None:
        return {}
    types: dict[str, dict[str, Any]] = {}
    for sid, value in table.items():
        spot = f"{key}.{key_name(sid)}"
        if not PROCTOR_TYPE.match(sid):
            checker.error(spot, "must be a proctor type sid: TS and 32 lowercase hex digits")
        elif not isinstance(value, dict):
            checker.error(spot, 'must be a table ({} or { options = { recordScreen = {} } })')
        elif set(value) - {"options"}:
            checker.error(spot, f"unknown key(s) {sorted(set(value) - {'options'})} (expected: options)")
        elif "options" in value and not (isinstance(value["options"], dict)
                                         and all(isinstance(v, dict) for v in value["options"].values())):
            checker.error(f"{spot}.options", "must be a table of option = {}")
        else:
            types[sid] = value
    if not table:
        checker.error(key, "names no proctor type: the target requires at least one")
    return types


def _url_template(checker: _Checker, body: dict[str, Any], key: str) -> str | None:
    template = checker.get(body, key, str, None)
    if template is None:
        return None
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        unknown = names - set(URL_FIELDS)
        if unknown:
            checker.error(key, f"unknown placeholder(s) {sorted(unknown)} (use {{id}} and {{class_id}})")
            return None
        sample = template.format(id="x", class_id="y")
    except (ValueError, IndexError) as exc:
        checker.error(key, f"not a valid template: {exc}")
        return None
    from syncd.config import is_loopback

    parts = urllib.parse.urlsplit(sample)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        checker.error(key, f"must make an https:// URL, not {template!r}")
        return None
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        checker.error(key, "http:// is only allowed for loopback hosts (the sandbox); use https://")
        return None
    return template


def _duration(checker: _Checker, body: dict[str, Any], key: str) -> int | None:
    value = checker.get(body, key, int, None)
    if value is not None and not 1 <= value <= MAX_DURATION_MIN:
        checker.error(key, f"must be between 1 and {MAX_DURATION_MIN} minutes, not {value}")
        return None
    return value
