"""The [gg4l] config section (SPEC §9): parsed with the rest, errors with key paths, secrets resolved."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import syncd

from syncd import config as configuration

GG4L = """
[daemon]
state_dir = "{state}"

[gg4l]
partner_url = "https://partner.gg4l.example/"
client_id = "vendor-client"
client_secret = "env:GG4L_TEST_PARTNER"
webhook_headers = {{ "X-Syncd-Key" = "env:GG4L_TEST_HOOK", "X-Other" = "file:{hook_file}" }}
modes = ["standard", "trial"]
on_new_district = "dry_run"
discovery_interval = "15m"
purge_after_days = 7

[gg4l.tenant]
schedule = "every 2h"
roles = {{ student = "learner", teacher = "instructor" }}
[gg4l.tenant.target]
base_url = "https://api.smarterproctoring.com"
install_sid = "AI0123456789abcdef0123456789abcdef"
token = "env:GG4L_TEST_SP"
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("GG4L_TEST_PARTNER", "partner-secret-value")
    monkeypatch.setenv("GG4L_TEST_HOOK", "hook-key-value")
    monkeypatch.setenv("GG4L_TEST_SP", "sp-token-value")
    (tmp_path / "hook").write_text("other-hook-value\n")
    return {"state": str(tmp_path / "state"), "hook_file": str(tmp_path / "hook")}


def load(tmp_path: Path, text: str) -> configuration.Config:
    path = tmp_path / "syncd.toml"
    path.write_text(text, encoding="utf-8")
    return configuration.load(path)


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(configuration.ConfigError) as caught:
        load(tmp_path, text)
    return caught.value.errors


def test_a_gg4l_section_alone_is_a_valid_config(tmp_path, env):
    config = load(tmp_path, GG4L.format(**env))
    gg4l = config.gg4l
    assert config.tenants == {}
    assert (gg4l.partner_url, gg4l.client_id, gg4l.client_secret) == (
        "https://partner.gg4l.example", "vendor-client", "partner-secret-value")
    assert gg4l.webhook_headers == {"X-Syncd-Key": "hook-key-value", "X-Other": "other-hook-value"}
    assert (gg4l.modes, gg4l.on_new_district, gg4l.discovery_interval_s, gg4l.purge_after_days) == (
        ("standard", "trial"), "dry_run", 900, 7)
    template = gg4l.tenant
    assert (template.schedule, template.install_sid, template.token, template.page_size) == (
        "every 2h", "AI0123456789abcdef0123456789abcdef", "sp-token-value", 500)
    assert template.roles == {"student": "learner", "teacher": "instructor"}
    assert {"partner-secret-value", "hook-key-value", "other-hook-value", "sp-token-value"} <= config.secrets
    rules = gg4l.rules()
    assert (rules.modes, rules.on_new_district, rules.purge_after_days, rules.template_token) == (
        ("standard", "trial"), "dry_run", 7, True)


def test_defaults(tmp_path, env):
    text = GG4L.format(**env)
    for line in ('modes = ["standard", "trial"]\n', 'on_new_district = "dry_run"\n',
                 'discovery_interval = "15m"\n', "purge_after_days = 7\n"):
        text = text.replace(line, "")
    gg4l = load(tmp_path, text).gg4l
    assert (gg4l.modes, gg4l.on_new_district, gg4l.discovery_interval_s, gg4l.purge_after_days) == (
        ("standard",), "pending", 3600, 30)


def test_no_gg4l_section_is_none_and_a_tenant_is_still_required(tmp_path, env):
    text = f'[daemon]\nstate_dir = "{env["state"]}"\n'
    assert errors(tmp_path, text) == ["tenants: at least one tenant is required ([tenants.NAME])"]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('on_new_district = "dry_run"', 'on_new_district = "yes"',
     "gg4l.on_new_district: must be one of 'pending', 'dry_run', 'sync', not 'yes'"),
    ('modes = ["standard", "trial"]', 'modes = ["standard", "promo"]',
     "gg4l.modes[1]: must be one of 'test', 'trial', 'standard', not 'promo'"),
    ('discovery_interval = "15m"', 'discovery_interval = "soon"',
     "gg4l.discovery_interval: must be a duration like '1h' or '15m', between 10s and 7d, not 'soon'"),
    ("purge_after_days = 7", "purge_after_days = -1", "gg4l.purge_after_days: must be between 0 and 3650, not -1"),
    ('partner_url = "https://partner.gg4l.example/"', 'partner_url = "http://partner.gg4l.example"',
     "gg4l.partner_url: http:// is only allowed for loopback hosts (the sandbox); use https://"),
    ('client_secret = "env:GG4L_TEST_PARTNER"', 'client_secret = "env:GG4L_UNSET_VARIABLE"',
     "gg4l.client_secret: environment variable GG4L_UNSET_VARIABLE is not set"),
    ('"X-Syncd-Key" = "env:GG4L_TEST_HOOK"', '"X Bad" = "env:GG4L_TEST_HOOK"',
     'gg4l.webhook_headers."X Bad": is not a valid HTTP header name'),
    ('"X-Other" = "file:', '"x-syncd-key" = "file:', "gg4l.webhook_headers.x-syncd-key: is listed twice"),
    ('schedule = "every 2h"', 'schedule = "whenever"', "gg4l.tenant.schedule: 'whenever' is neither"),
    ('install_sid = "AI0123456789abcdef0123456789abcdef"', 'install_sid = "AI 0123"',
     "gg4l.tenant.target.install_sid: must be letters"),
    ("purge_after_days = 7", "purge_after_days = 7\nsurprise = 1", "gg4l.surprise: unknown key"),
    ('[gg4l.tenant.target]', '[gg4l.tenant.source]\nlimit = 1\n[gg4l.tenant.target]',
     "gg4l.tenant.source.limit: unknown key"),
    ('[gg4l.tenant.target]', '[gg4l.tenant.source]\npage_size = 1000\n[gg4l.tenant.target]',
     "gg4l.tenant.source.page_size: must be between 1 and 500, not 1000"),
])
def test_errors_name_their_key(tmp_path, env, old, new, expected):
    text = GG4L.format(**env)
    assert old in text
    found = errors(tmp_path, text.replace(old, new, 1))
    assert any(e.startswith(expected) for e in found), found


def test_the_template_needs_a_target(tmp_path, env):
    text = GG4L.format(**env)
    text = text[:text.index("[gg4l.tenant.target]")]
    assert "gg4l.tenant.target: required table is missing" in errors(tmp_path, text)


def test_config_validate_accepts_it_and_prints_no_secret(tmp_path, env, monkeypatch):
    path = tmp_path / "syncd.toml"
    path.write_text(GG4L.format(**env), encoding="utf-8")
    result = syncd(path, "config", "validate")
    assert result.returncode == 0, result.stderr
    for secret in ("partner-secret-value", "hook-key-value", "other-hook-value", "sp-token-value"):
        assert secret not in result.stdout + result.stderr
