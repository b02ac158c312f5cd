"""The one token cache both OAuth 2 sources use (syncd.sources.tokens)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from conftest import syncd

from syncd.sandbox import CanvasRoster, CanvasSandbox, Roster, Sandbox
from syncd.sources import tokens


def counting_grant(answers: list[dict[str, Any]]) -> tuple[list[int], Any]:
    calls = [0]

    def grant() -> dict[str, Any]:
        calls[0] += 1
        return answers[min(calls[0], len(answers)) - 1]

    return calls, grant


def test_a_token_is_cached_owner_only_and_reused_by_the_next_process(tmp_path: Path):
    cache = tokens.cache_path(tmp_path, "lincoln")
    calls, grant = counting_grant([{"access_token": "tok-1", "expires_in": 3600}])
    first = tokens.BearerToken(grant, for_=tokens.audience("https://sis/token", "id"), cache=cache)
    assert first.token() == "tok-1"
    assert cache.stat().st_mode & 0o777 == 0o600 and cache.parent.stat().st_mode & 0o777 == 0o700
    again = tokens.BearerToken(grant, for_=tokens.audience("https://sis/token", "id"), cache=cache)
    assert again.token() == "tok-1" and calls == [1]
    # Refreshed before it dies: used for its lifetime less two minutes, not longer.
    assert 3600 - 120 - 5 < json.loads(cache.read_text())["expires_at"] - time.time() <= 3600 - 120


def test_a_cached_token_of_other_credentials_is_never_sent(tmp_path: Path):
    cache = tokens.cache_path(tmp_path, "lincoln")
    _, grant = counting_grant([{"access_token": "old-client", "expires_in": 3600}])
    tokens.BearerToken(grant, for_=tokens.audience("https://sis/token", "old"), cache=cache).token()
    calls, grant = counting_grant([{"access_token": "new-client", "expires_in": 3600}])
    assert tokens.BearerToken(grant, for_=tokens.audience("https://sis/token", "new"), cache=cache).token() \
        == "new-client"
    assert calls == [1]


def test_a_cache_file_from_before_the_merge_is_still_read_where_it_was_written(tmp_path: Path):
    """Canvas's access.json of earlier syncd versions did not say what it was for: an upgrade must
    not make every Canvas tenant ask for a token (or, without a refresh token, fail)."""
    cache = tokens.cache_path(tmp_path, "stateu")
    tokens.credentials_dir(tmp_path)
    cache.write_text(json.dumps({"access_token": "legacy", "expires_at": time.time() + 3000}))
    calls, grant = counting_grant([{"access_token": "fresh", "expires_in": 3600}])
    assert tokens.BearerToken(grant, for_="canvas", cache=cache, legacy_cache=True).token() == "legacy"
    assert tokens.BearerToken(grant, for_="oneroster", cache=cache).token() == "fresh"  # no legacy here
    assert calls == [1]


def test_a_401_invalidates_the_token_once_and_an_expiry_from_a_wrong_clock_is_not_trusted(tmp_path: Path):
    cache = tokens.cache_path(tmp_path, "lincoln")
    tokens.credentials_dir(tmp_path)
    cache.write_text(json.dumps({"access_token": "years", "expires_at": time.time() + 10 * 365 * 86400, "for": "x"}))
    calls, grant = counting_grant([{"access_token": "a", "expires_in": 3600}, {"access_token": "b"}])
    token = tokens.BearerToken(grant, for_="x", cache=cache)
    assert token.token() == "a" and calls == [1]
    token._sent.token = "a"
    token.refresh()
    assert token.token() == "b" and calls == [2]
    token._sent.token = "a"  # a second request refused with the token already replaced
    token.refresh()
    assert calls == [2]


def test_canvas_reads_the_token_file_an_earlier_syncd_wrote_and_asks_for_no_new_token(tmp_path: Path):
    roster = CanvasRoster.generate(seed=5, users=40, courses=6, enrollments=120)
    with CanvasSandbox(roster) as box:
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state")
        assert syncd(config, "sync", "stateu").returncode == 0
        cached = tmp_path / "state" / "credentials" / "stateu.access.json"
        written = json.loads(cached.read_text())
        assert set(written) == {"access_token", "expires_at", "for"}
        # The file as syncd wrote it before the caches were merged: no "for".
        cached.write_text(json.dumps({"access_token": written["access_token"], "expires_at": written["expires_at"]}))
        result = syncd(config, "sync", "stateu")
        assert result.returncode == 0, result.stderr[-2000:]
        assert box.canvas.token_requests == 1
        assert written["access_token"] not in result.stdout + result.stderr


def test_a_oneroster_token_is_reused_within_a_run_and_written_nowhere(tmp_path: Path):
    with Sandbox(Roster.generate(seed=3, users=30, classes=4, enrollments=60), version="1.2") as box:
        config = box.write_config(tmp_path / "syncd.toml", tmp_path / "state", source_extra="page_size = 10")
        result = syncd(config, "sync", "lincoln")
        assert result.returncode == 0, result.stderr[-2000:]
        assert box.oneroster.token_requests == 1
        assert not (tmp_path / "state" / "credentials" / "lincoln.access.json").exists()
