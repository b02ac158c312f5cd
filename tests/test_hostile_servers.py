"""Hostile servers on loopback (issue 11): each run ends within the bound stated in the test,
with a clean status and no traceback; nothing is lost (the next run against a healthy server
converges, without duplicates); no secret reaches any output, log or file.

Bounds follow from the limits in syncd/http.py with ``timeout_s = 1``: an attempt ends within
4 s, a request (retries and waits) within 12 s, and after 8 requests that failed for good a run
stops calling that server.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest
from conftest import log_events, summary, syncd

from syncd.sandbox import CanvasSandbox, Roster, Sandbox
from syncd.sandbox.hostile import (
    Hostile,
    drip,
    echo_credentials,
    endless_body,
    files_holding,
    gzip_bomb,
    only,
    redirect,
    respond,
)

FAST = "timeout_s = 1\n"


def _config(box, tmp_path: Path, *, source: Hostile | None = None, target: Hostile | None = None,
            source_extra: str = FAST, **tenant) -> Path:
    path = box.write_config(tmp_path / "syncd.toml", tmp_path / "state", source_extra=source_extra,
                            target_extra=FAST, **tenant)
    text = path.read_text()
    if source:
        text = text.replace(box.source_root, source.url)
    if target:
        text = text.replace(box.target_url, target.url)
    path.write_text(text)
    return path


def _clean(result, *secrets: str, within: float | None = None, started: float = 0.0) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert all(e.get("exception") is None for e in log_events(result))
    for secret in secrets:
        assert secret not in result.stdout and secret not in result.stderr
    if within is not None:
        assert time.monotonic() - started < within


def _sync(config: Path, *args: str):
    started = time.monotonic()
    result = syncd(config, "sync", "--all", "--json", *args, timeout=300)
    return result, started


def _converges(box, config: Path, *secrets: str) -> None:
    """Nothing lost: a healthy server now, and the run reaches it all, once."""
    result, _ = _sync(config)
    _clean(result, *secrets)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(result)["status"] == "completed"
    assert box.provision.duplicates() == 0
    assert box.provision.users and box.provision.enrollments


def _roster() -> Roster:
    return Roster.generate(seed=23, users=60, classes=6, enrollments=200)


# --- 1. credentials never leave their origin ------------------------------------------------


@pytest.mark.parametrize("status", [307, 302, 308])
def test_a_target_redirect_to_another_origin_never_receives_the_token(tmp_path, status):
    with Sandbox(_roster()) as box, Hostile(box.target_url) as target, Hostile() as thief:
        config = _config(box, tmp_path, target=target)
        token = box.provision.token
        target.fault = redirect(thief.url, status)
        result, started = _sync(config)
        _clean(result, token, within=60, started=started)
        assert thief.seen == []  # not the token, not the body: nothing went there
        assert result.returncode == 1 and "another origin" in result.stderr
        assert files_holding(tmp_path, token) == []
        target.fault = None
        _converges(box, config, token)


def test_a_redirect_within_the_origin_is_followed(tmp_path):
    with Sandbox(_roster()) as box, Hostile(box.target_url) as target:
        config = _config(box, tmp_path, target=target)
        target.fault = lambda r: respond(307, b"", {"Location": r.path + "?moved=1"}) if "moved" not in r.path else None
        _converges(box, config)


def test_the_canvas_token_endpoint_never_reposts_the_secret_elsewhere(tmp_path):
    with CanvasSandbox() as box, Hostile(box.source_root) as canvas, Hostile() as thief:
        config = _config(box, tmp_path, source=canvas, source_extra="")
        secret, refresh = box.canvas.client_secret, box.refresh_token
        canvas.fault = only("POST", "/login/oauth2/token", redirect(thief.url, 307))
        result, started = _sync(config)
        _clean(result, secret, refresh, within=60, started=started)
        assert thief.seen == []
        assert result.returncode == 1
        assert files_holding(tmp_path, secret) == files_holding(tmp_path, refresh) == []
        canvas.fault = None
        _converges(box, config, secret, refresh)


@pytest.mark.parametrize("file_url", ["file:///etc/passwd", "http://files.example.invalid/report.zip",
                                      "ftp://127.0.0.1/report.zip"])
def test_a_report_file_url_that_is_not_https_is_refused(tmp_path, file_url):
    with CanvasSandbox() as box:
        original = box.canvas._report_json

        def report_json(request, report):
            body = original(request, report)
            if body.get("file_url"):
                body["file_url"] = body["attachment"]["url"] = file_url
            return body

        box.canvas._report_json = report_json
        config = _config(box, tmp_path, source_extra='mode = "report"\n')
        result, started = _sync(config)
        _clean(result, within=60, started=started)
        assert result.returncode == 1 and "only https" in result.stderr
        box.canvas._report_json = original
        _converges(box, config)


def test_a_report_file_elsewhere_is_fetched_without_the_canvas_token(tmp_path):
    with CanvasSandbox() as box, Hostile(box.source_root) as front, Hostile(box.source_root) as storage:
        # Canvas answers the file URL with a 302 to file storage on another origin, as hosted Canvas does.
        front.fault = lambda r: (respond(302, b"", {"Location": storage.url + r.path})
                                 if r.path.startswith("/files/") else None)
        config = _config(box, tmp_path, source=front, source_extra='mode = "report"\n')
        _converges(box, config)
        downloads = [r for r in storage.seen if r.path.startswith("/files/")]
        assert downloads and all("authorization" not in r.headers for r in downloads)
        assert any("authorization" in r.headers for r in front.seen)


# --- 2. deadlines and bounds ----------------------------------------------------------------


def test_a_dripping_target_is_cut_by_the_deadline(tmp_path):
    with Sandbox(_roster()) as box, Hostile(box.target_url) as target:
        config = _config(box, tmp_path, target=target)
        target.fault = drip()
        result, started = _sync(config)
        # 8 requests that failed for good at 4 s per attempt and 12 s per request, 4 at a time.
        _clean(result, within=90, started=started)
        assert result.returncode == 1 and summary(result)["status"] != "completed"
        assert "deadline" in result.stderr
        target.fault = None
        _converges(box, config)


def test_a_source_dripping_its_status_line_is_cut_by_the_deadline(tmp_path):
    with Sandbox(_roster()) as box, Hostile(box.source_root) as source:
        config = _config(box, tmp_path, source=source)
        source.fault = only("GET", "/users", drip(head=True))
        result, started = _sync(config)
        _clean(result, within=45, started=started)
        outcome = summary(result)
        assert result.returncode == 1 and outcome["status"] == "failed"
        assert all(c["removed"] == 0 for c in outcome["counts"].values())
        source.fault = None
        _converges(box, config)


def test_a_retry_after_far_away_fails_the_call_now_instead_of_holding_the_run(tmp_path):
    with Sandbox(_roster()) as box, Hostile(box.target_url) as target:
        config = _config(box, tmp_path, target=target)
        target.fault = lambda r: respond(503, b'{"message": "come back next year"}', {"Retry-After": "999999"})
        result, started = _sync(config)
        _clean(result, within=30, started=started)
        assert result.returncode == 1 and "asked to wait 999999 s" in result.stderr
        target.fault = None
        _converges(box, config)


def test_endless_pages_of_new_ids_stop_at_max_pages(tmp_path):
    with Sandbox(_roster()) as box:
        original = box.oneroster._page
        template = next(iter(box.roster.users.values()))

        def page(request, name, limit, offset):
            if name != "users":
                return original(request, name, limit, offset)
            records = [{**template, "sourcedId": f"endless-{offset + i}", "username": f"u{offset + i}",
                        "email": f"u{offset + i}@example.org"} for i in range(limit)]
            return type(original(request, name, 1, 0))(200, {"users": records})

        config = _config(box, tmp_path, source_extra=FAST + "page_size = 50\nmax_pages = 40\n")
        box.oneroster._page = page
        result, started = _sync(config)
        _clean(result, within=60, started=started)
        assert result.returncode == 1 and "more than 40 pages" in result.stderr
        assert all(c["removed"] == 0 for c in summary(result)["counts"].values())
        box.oneroster._page = original
        _converges(box, config)


def test_a_server_that_ignores_offset_and_shuffles_is_stopped_with_few_error_rows(tmp_path):
    import random

    with Sandbox(_roster()) as box:
        original = box.oneroster._page
        shuffler = random.Random(5)

        def page(request, name, limit, offset):
            if name != "users":
                return original(request, name, limit, offset)
            response = original(request, name, 10_000, 0)  # the whole collection, whatever the offset
            response.body[name] = shuffler.sample(response.body[name], limit)  # a new order each time
            return response

        config = _config(box, tmp_path, source_extra=FAST + "page_size = 20\n")
        box.oneroster._page = page
        result, started = _sync(config)
        _clean(result, within=60, started=started)
        assert result.returncode == 1 and "records already read" in result.stderr, result.stderr[-1500:]
        errors = syncd(config, "errors", "--json")
        import json

        assert len(json.loads(errors.stdout)) < 200
        box.oneroster._page = original
        _converges(box, config)


# --- 3. bounded bodies ----------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["gzip bomb", "endless body"])
def test_a_body_past_the_cap_fails_the_run_and_memory_stays_bounded(tmp_path, fault):
    with Sandbox(_roster()) as box, Hostile(box.source_root) as source:
        config = _config(box, tmp_path, source=source)
        source.fault = only("GET", "/users", gzip_bomb() if fault == "gzip bomb" else endless_body())
        result, started = _sync(config)
        _clean(result, within=60, started=started)
        assert result.returncode == 1 and "larger than 64 MiB" in result.stderr
        # ru_maxrss: the largest child this test process has waited for, in KiB.
        assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 400 * 1024
        source.fault = None
        _converges(box, config)


# --- 4. echoed secrets ----------------------------------------------------------------------


def test_a_target_echoing_its_token_never_shows_or_stores_it(tmp_path):
    with Sandbox(_roster()) as box, Hostile(box.target_url) as target:
        config = _config(box, tmp_path, target=target)
        token = box.provision.token
        target.fault = echo_credentials(400)
        result, _ = _sync(config)
        _clean(result, token)
        assert result.returncode in (1, 3) and "is not valid" in result.stderr
        shown = [syncd(config, *args) for args in (("errors",), ("errors", "--json"), ("errors", "--csv"),
                                                     ("status",), ("status", "--json"))]
        assert "is not valid" in shown[0].stdout
        for output in shown:
            _clean(output, token)
        assert files_holding(tmp_path, token) == []
        target.fault = None


def test_runtime_oneroster_tokens_are_redacted_when_echoed(tmp_path):
    with Sandbox(_roster(), version="1.2") as box, Hostile(box.source_root) as source:
        config = _config(box, tmp_path, source=source)
        source.fault = only("GET", "/classes", echo_credentials(400))
        result, _ = _sync(config)
        assert result.returncode == 1 and "is not valid" in result.stderr
        issued = [r for r in source.seen if r.method == "GET" and "authorization" in r.headers]
        bearer = issued[0].headers["authorization"].partition(" ")[2]
        assert len(bearer) > 8
        status = syncd(config, "status", "--json")
        for output in (result, status):
            _clean(output, bearer, box.oneroster.client_secret)
        assert files_holding(tmp_path, bearer) == []
        source.fault = None
        _converges(box, config, bearer)


# --- 8. text in another encoding --------------------------------------------------------------


@pytest.mark.parametrize("declared", [False, True])
def test_latin1_bytes_are_decoded_by_their_charset_or_refused_never_garbled(tmp_path, declared):
    import json

    from syncd.sandbox.server import Response

    with Sandbox(_roster()) as box:
        victim = next(iter(box.roster.users.values()))
        victim["givenName"] = "José"
        original = box.oneroster._page

        def page(request, name, limit, offset):
            response = original(request, name, limit, offset)
            if name != "users":
                return response
            kind = "application/json; charset=iso-8859-1" if declared else "application/json"
            return Response(200, raw=json.dumps(response.body, ensure_ascii=False).encode("latin-1"),
                            headers={**response.headers, "Content-Type": kind})

        box.oneroster._page = page
        config = _config(box, tmp_path)
        result, started = _sync(config)
        _clean(result, within=60, started=started)
        names = {u["firstName"] for u in box.provision.users.values()}
        assert "\ufffd" not in "".join(names) and "Jos\ufffd" not in result.stdout + result.stderr
        if declared:
            assert result.returncode == 0 and "José" in names
        else:
            assert result.returncode == 1 and "not UTF-8" in result.stderr
            box.oneroster._page = original
            _converges(box, config)
