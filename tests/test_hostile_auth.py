"""`syncd auth`'s loopback listener against hostile clients (issue 11, class 7): an idle
connection cannot keep it open, a stray request with another ``state`` is ignored, and an
``error=`` parameter reaches the admin's terminal only as printable text."""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

from syncd.config import load
from syncd.sandbox import CanvasSandbox
from syncd.sources import SourceError
from syncd.sources.canvas_auth import authorize


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Flow:
    """``authorize`` in a thread, as `syncd auth` runs it; the URL it prints, and how it ended."""

    def __init__(self, box: CanvasSandbox, tmp_path: Path, timeout_s: float):
        self.port = _free_port()
        path = box.write_config(tmp_path / "syncd.toml", tmp_path / "state", auth="none",
                                source_extra=f'redirect_uri = "http://127.0.0.1:{self.port}/oauth/callback"\n')
        self.source = load(path).tenants["stateu"].source
        self.url = ""
        self.printed = threading.Event()
        self.result: Path | BaseException | None = None
        self.callback = f"http://127.0.0.1:{self.port}/oauth/callback"
        self.thread = threading.Thread(target=self._run, args=(tmp_path / "state", timeout_s), daemon=True)
        self.thread.start()
        assert self.printed.wait(10)

    def _run(self, state_dir: Path, timeout_s: float) -> None:
        def say(line: str) -> None:
            if "/login/oauth2/auth?" in line:
                self.url = line.strip()
                self.printed.set()
        try:
            self.result = authorize("stateu", self.source, state_dir, say, time.sleep, timeout_s)
        except BaseException as exc:
            self.result = exc

    @property
    def state(self) -> str:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.url).query)["state"][0]

    def ended_within(self, seconds: float) -> bool:
        self.thread.join(seconds)
        return not self.thread.is_alive()


@pytest.fixture
def box():
    with CanvasSandbox() as sandbox:
        yield sandbox


def test_an_idle_connection_does_not_keep_the_listener_past_its_timeout(box, tmp_path):
    flow = Flow(box, tmp_path, timeout_s=1.0)
    idle = socket.create_connection(("127.0.0.1", flow.port))  # connects, and never says a word
    try:
        assert flow.ended_within(10), "the listener is held open by an idle connection"
    finally:
        idle.close()
    assert isinstance(flow.result, SourceError) and "no authorization arrived" in str(flow.result)


def test_a_stray_request_with_another_state_is_ignored_and_the_real_redirect_still_works(box, tmp_path):
    flow = Flow(box, tmp_path, timeout_s=20.0)
    idle = socket.create_connection(("127.0.0.1", flow.port))  # an idle connection does not block others
    try:
        stray = requests.get(flow.callback, params={"state": "forged", "code": "stolen"}, timeout=5)
        assert stray.status_code == 400
        forged_error = requests.get(flow.callback, params={"state": "forged", "error": "access_denied"}, timeout=5)
        assert forged_error.status_code == 400
        page = requests.get(flow.url, timeout=10)  # the admin's browser: Canvas redirects to the listener
        assert "authorization received" in page.text
        assert flow.ended_within(15)
    finally:
        idle.close()
    assert isinstance(flow.result, Path) and flow.result.exists(), flow.result


def test_an_error_parameter_is_shown_without_control_characters(box, tmp_path):
    flow = Flow(box, tmp_path, timeout_s=20.0)
    evil = "access_denied\x1b[2J\x1b[31m\r\nsyncd: Authorized. Everything is fine\x07"
    requests.get(flow.callback, params={"state": flow.state, "error": evil, "error_description": "\x1b]0;pwned\x07"},
                 timeout=5)
    assert flow.ended_within(10)
    assert isinstance(flow.result, SourceError)
    message = str(flow.result)
    assert "access_denied" in message
    assert all(c.isprintable() for c in message), repr(message)
