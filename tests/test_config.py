"""Config: every error at once with its key path, exit 2, no state touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import syncd

from syncd import config as configuration
from syncd.cli import example_config

GOOD = """
[daemon]
state_dir = "{state}"

[tenants.lincoln]
schedule = "*/30 * * * *"
[tenants.lincoln.source]
type = "oneroster"
base_url = "https://sis.example.org/ims/oneroster/v1p1/"
client_id = "id"
client_secret = "env:SYNCD_TEST_SECRET"
[tenants.lincoln.target]
base_url = "https://api.smarterproctoring.com"
install_sid = "AI0123456789abcdef0123456789abcdef"
token = "file:{token_file}"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "syncd.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def good(tmp_path, monkeypatch) -> Path:
    (tmp_path / "token").write_text("target-token-value\n")
    monkeypatch.setenv("SYNCD_TEST_SECRET", "source-secret-value")
    return write(tmp_path, GOOD.format(state=tmp_path / "state", token_file=tmp_path / "token"))


def test_a_good_config_resolves_secret_references(good):
    config = configuration.load(good)
    tenant = config.tenants["lincoln"]
    assert tenant.source.client_secret == "source-secret-value"
    assert tenant.target.token == "target-token-value"  # trailing newline stripped
    assert tenant.source.base_url == "https://sis.example.org/ims/oneroster/v1p1"
    assert tenant.roles == {"student": "learner"} and tenant.schedule == "*/30 * * * *"
    assert config.secrets == {"source-secret-value", "target-token-value"}


def test_credential_references_read_the_systemd_credentials_directory(good, tmp_path, monkeypatch):
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "sp-token").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    text = good.read_text().replace(f'token = "file:{tmp_path / "token"}"', 'token = "credential:sp-token"')
    assert configuration.load(write(tmp_path, text)).tenants["lincoln"].target.token == "from-systemd"


def test_every_error_is_reported_at_once_with_its_key_path(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_UNSET", raising=False)
    path = write(tmp_path, """
[daemon]
log_level = "loud"
colour = true
[tenants.Bad_Name]
[tenants.lincoln]
schedule = "sometimes"
time_zone = "Mars/Olympus"
[tenants.lincoln.source]
type = "oneroster"
base_url = "http://sis.example.org/ims"
version = "1.2"
client_id = "x"
client_secret = "env:NOPE_UNSET"
page_size = "many"
[tenants.lincoln.target]
base_url = "https://api.smarterproctoring.com"
install_sid = "AI/../x"
concurrency = 0
""")
    with pytest.raises(configuration.ConfigError) as caught:
        configuration.load(path)
    errors = "\n".join(caught.value.errors)
    for expected in (
        "daemon.log_level: must be one of",
        "daemon.colour: unknown key",
        "tenants.Bad_Name: tenant name must match",
        "tenants.lincoln.schedule: 'sometimes' is neither",
        "tenants.lincoln.time_zone: unknown time zone",
        "tenants.lincoln.source.base_url: http:// is only allowed for loopback hosts",
        "tenants.lincoln.source.token_url: required key is missing",
        "tenants.lincoln.source.client_secret: environment variable NOPE_UNSET is not set",
        "tenants.lincoln.source.page_size: must be an integer, not a string",
        "tenants.lincoln.target.install_sid: must be letters",
        "tenants.lincoln.target.token: required key is missing",
        "tenants.lincoln.target.concurrency: must be between 1 and 64",
    ):
        assert expected in errors


def test_http_is_accepted_for_loopback_hosts_only():
    assert configuration.is_loopback("127.0.0.1") and configuration.is_loopback("localhost")
    assert configuration.is_loopback("::1") and configuration.is_loopback("127.8.9.10")
    assert not configuration.is_loopback("10.0.0.1") and not configuration.is_loopback("example.org")


def test_schedules_are_cron_or_every():
    assert configuration.schedule_problem("every 15m") is None
    assert configuration.schedule_problem("every 2h") is None
    assert configuration.schedule_problem("*/30 * * * *") is None
    assert configuration.schedule_problem("61 * * * *") is not None
    assert configuration.schedule_problem("every 0m") is not None


def test_a_bad_config_exits_2_and_creates_no_state(tmp_path):
    state = tmp_path / "state"
    path = write(tmp_path, f'[daemon]\nstate_dir = "{state}"\n[tenants.x.source]\ntype = "ftp"\n')
    result = syncd(path, "sync", "x")
    assert result.returncode == 2
    assert "tenants.x.source.type: must be one of" in result.stderr
    assert "tenants.x.target: required table is missing" in result.stderr
    assert not state.exists()
    assert syncd(path, "config", "validate").returncode == 2


def test_a_missing_config_file_exits_2(tmp_path):
    result = syncd(tmp_path / "absent.toml", "status")
    assert result.returncode == 2 and "config file not found" in result.stderr


def test_unknown_tenant_is_a_usage_error(good, tmp_path):
    result = syncd(good, "sync", "nobody", env={"SYNCD_TEST_SECRET": "s"})
    assert result.returncode == 2 and "unknown tenant" in result.stderr
    assert not (tmp_path / "state").exists()


def test_the_annotated_example_is_valid_once_its_secrets_exist(tmp_path, monkeypatch):
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "sp-token").write_text("t")
    (tmp_path / "creds" / "sp-token-stateu").write_text("u")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    monkeypatch.setenv("LINCOLN_SECRET", "s")
    monkeypatch.setenv("CANVAS_KEY_SECRET", "k")
    config = configuration.parse(__import__("tomllib").loads(example_config()), tmp_path / "x.toml")
    assert list(config.tenants) == ["lincoln", "stateu"]
    assert config.tenants["stateu"].source.mode == "auto"
    repo_copy = Path(__file__).parent.parent / "config" / "syncd.example.toml"
    assert repo_copy.read_text() == example_config()
    assert syncd(None, "config", "example").stdout == example_config()


def test_config_validate_names_the_tenants(good):
    result = syncd(good, "config", "validate")
    assert result.returncode == 0 and "1 tenant(s): lincoln" in result.stdout
    assert "source-secret-value" not in result.stdout + result.stderr


def test_canvas_keys_are_checked_with_their_key_paths(tmp_path):
    path = tmp_path / "syncd.toml"
    path.write_text("""
[tenants.stateu.source]
type = "canvas"
base_url = "https://canvas.example.edu"
access_token = "a-token"
mode = "bulk"
term_id = "fall"
sub_accounts = ["12", true]
concurrency = 0
[tenants.stateu.target]
base_url = "https://api.smarterproctoring.com"
install_sid = "AI1"
token = "t"
""")
    result = syncd(path, "config", "validate")
    assert result.returncode == 2
    for key in ("source.mode", "source.term_id", "source.sub_accounts[1]", "source.concurrency"):
        assert f"tenants.stateu.{key}:" in result.stderr
    assert "a-token" not in result.stderr
