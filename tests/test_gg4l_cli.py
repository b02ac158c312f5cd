"""`syncd gg4l discover`, `syncd tenants` and `syncd tenants map|pause|resume`, with the real command."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import syncd

from syncd.sandbox.gg4l import WEBHOOK_KEY, Gg4lSandbox

G1 = "6F9619FF-8B86-D011-B42D-00C04FC964FF"
G2 = "0f8fad5b-d9cb-469f-a165-70867728950e"
T1 = "gg4l-6f9619ff8b86d011b42d00c04fc964ff"
T2 = "gg4l-0f8fad5bd9cb469fa16570867728950e"


@pytest.fixture
def box() -> Iterator[Gg4lSandbox]:
    with Gg4lSandbox(list_shape="doc", time_style="spaced") as sandbox:
        yield sandbox


@pytest.fixture
def config(box: Gg4lSandbox, tmp_path: Path) -> Path:
    return box.write_config(tmp_path / "syncd.toml", tmp_path / "state", on_new_district="pending")


def discover(config: Path) -> dict:
    result = syncd(config, "gg4l", "discover", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def tenants(config: Path) -> dict[str, dict]:
    result = syncd(config, "tenants", "--json")
    assert result.returncode == 0, result.stderr
    return {row["tenant"]: row for row in json.loads(result.stdout)}


def test_discover_then_map_pause_resume(box, config, tmp_path, monkeypatch):
    d1 = box.gg4l.add_district(G1, name="Lincoln USD")
    d2 = box.gg4l.add_district(G2, ready=False)
    found = discover(config)
    assert found["listed"] == 2
    assert {row["tenant"]: row["state"] for row in found["districts"]} == {T1: "pending_mapping",
                                                                           T2: "awaiting_data"}
    assert tenants(config)[T1]["state"] == "pending_mapping"

    monkeypatch.setenv("LINCOLN_SP_TOKEN", "lincoln-token-value")
    mapped = syncd(config, "tenants", "map", T1, "--install-sid", "AIlincoln01", "--token", "env:LINCOLN_SP_TOKEN")
    assert mapped.returncode == 0, mapped.stderr
    assert "state active" in mapped.stdout
    row = tenants(config)[T1]
    assert (row["state"], row["install_sid"], row["token_ref"], row["policy"]) == (
        "active", "AIlincoln01", "env:LINCOLN_SP_TOKEN", "sync")

    assert "state paused" in syncd(config, "tenants", "pause", T1).stdout
    assert tenants(config)[T1]["state"] == "paused"
    discover(config)
    assert tenants(config)[T1]["state"] == "paused"  # discovery keeps the admin's pause
    assert "state active" in syncd(config, "tenants", "resume", G1).stdout  # by GUID too

    table = syncd(config, "tenants")
    assert table.returncode == 0 and T1 in table.stdout and "pending_mapping" not in table.stdout

    everything = "".join(path.read_bytes().decode("latin-1") for path in (tmp_path / "state").rglob("*")
                         if path.is_file())
    outputs = [discover(config)]
    for secret in (d1.client_secret, d2.client_secret, box.gg4l.client_secret, "lincoln-token-value", WEBHOOK_KEY):
        assert secret not in everything
        assert secret not in json.dumps(outputs)


@pytest.mark.parametrize(("args", "message"), [
    (["tenants", "map", "gg4l-nope", "--install-sid", "AI1"], "unknown GG4L tenant 'gg4l-nope'"),
    (["tenants", "map", T1, "--install-sid", "AI 1"], "--install-sid must be"),
    (["tenants", "map", T1, "--install-sid", "AI1", "--token", "plain-token-value"], "--token must be a reference"),
    (["tenants", "map", T1, "--install-sid", "AI1", "--token", "env:GG4L_UNSET_X"],
     "--token: environment variable GG4L_UNSET_X is not set"),
    (["tenants", "pause", "lincoln"], "unknown GG4L tenant 'lincoln'"),
])
def test_bad_tenant_commands_exit_2_with_a_message(box, config, args, message):
    box.gg4l.add_district(G1)
    discover(config)
    result = syncd(config, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "plain-token-value" not in result.stdout + result.stderr


def test_discover_fails_cleanly_when_the_partner_refuses(box, tmp_path):
    box.gg4l.client_secret = "rotated-partner-secret"
    config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    box.gg4l.client_secret = "another-one-entirely"
    result = syncd(config, "gg4l", "discover")
    assert result.returncode == 1
    assert "refused the client credentials" in result.stderr
    assert "rotated-partner-secret" not in result.stderr + result.stdout


def test_without_a_gg4l_section_map_is_a_usage_error(sandbox, tmp_path):
    config = sandbox.write_config(tmp_path / "syncd.toml", tmp_path / "state")
    result = syncd(config, "tenants", "map", "lincoln", "--install-sid", "AI1")
    assert result.returncode == 2 and "no [gg4l] section" in result.stderr
    listed = syncd(config, "tenants", "--json")
    assert json.loads(listed.stdout)[0]["tenant"] == "lincoln"
