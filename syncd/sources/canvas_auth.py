"""Canvas developer-key OAuth 2: access tokens from a refresh token, and the authorization flow.

Tokens that syncd obtains itself live only in owner-only files under ``state_dir/credentials/``
(SPEC §2): ``TENANT.refresh_token`` (from ``syncd auth``) and ``TENANT.access.json`` (the
current access token and when it expires, so that a run every few minutes does not pay Canvas's
+200 throttle cost of a token request each time). Never in SQLite, never in a log.
"""

from __future__ import annotations

import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import structlog

from syncd import http, logs
from syncd.errors import AdminNeeded
from syncd.sources import SourceError, tokens
from syncd.sources.canvas_config import CanvasConfig

log = structlog.get_logger("syncd.canvas")

# The endpoints the crawl and the report path call: what the admin enables on the developer key.
SCOPES = (
    "url:GET|/api/v1/accounts/:account_id/courses",
    "url:GET|/api/v1/accounts/:account_id/users",
    "url:GET|/api/v1/courses/:course_id/enrollments",
    "url:POST|/api/v1/accounts/:account_id/reports/:report",
    "url:GET|/api/v1/accounts/:account_id/reports/:report/:id",
)
LISTENER_READ_S = 5.0  # a connection to the redirect listener that sends no request within this is closed


class ReauthorizeNeeded(SourceError, AdminNeeded):
    """The refresh token is dead: only the admin, with ``syncd auth TENANT``, can fix it."""

    action = "admin"


class CanvasToken(tokens.BearerToken):
    """The bearer token of one tenant: static (``source.access_token``), or obtained with the
    refresh token (from the config, or from `syncd auth`) under syncd.sources.tokens's rules."""

    def __init__(self, tenant: str, config: CanvasConfig, state_dir: Path, session: requests.Session,
                 on_attempt: Callable[[], None]):
        self.tenant = tenant
        self.config = config
        self.session = session
        self.on_attempt = on_attempt
        self._dir = state_dir / "credentials"
        # The access.json files of syncd before the shared cache said nothing of what they were for.
        super().__init__(self._grant, for_=tokens.audience(config.base_url, config.client_id),
                         cache=None if config.access_token else tokens.cache_path(state_dir, tenant),
                         legacy_cache=True, name="canvas")
        if config.access_token:
            self._token, self._deadline = config.access_token, float("inf")

    def refresh(self) -> None:
        """Called on a 401 (once per request, by http.send)."""
        if self.config.access_token:
            raise http.AuthError("Canvas refused the configured access_token (expired or revoked): "
                                 "replace it, or use a developer key with `syncd auth "
                                 f"{self.tenant}`", 401)
        super().refresh()

    # --- the refresh_token grant -------------------------------------------------------------

    def _grant(self) -> dict[str, Any]:
        refresh_token = self.config.refresh_token or self._stored_refresh_token()
        if not refresh_token:
            raise ReauthorizeNeeded(f"no Canvas refresh token for tenant {self.tenant}: run `syncd auth "
                                    f"{self.tenant}` (or set source.refresh_token / source.access_token)")
        try:
            return exchange(self.config, self.session, self.on_attempt, grant_type="refresh_token",
                            refresh_token=refresh_token)
        except http.HttpError as exc:
            if exc.status in (400, 401):
                # invalid_grant "refresh_token not found": the integration was removed, the key
                # deleted or its scopes changed. Match on the status, never on the message text.
                raise ReauthorizeNeeded(
                    f"Canvas refused the refresh token ({exc.detail}): an admin must authorize the "
                    f"developer key again with `syncd auth {self.tenant}`") from None
            raise

    def _stored_refresh_token(self) -> str:
        try:
            token = (self._dir / f"{self.tenant}.refresh_token").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return ""
        logs.register_secrets([token])
        return token


def exchange(config: CanvasConfig, session: requests.Session, on_attempt: Callable[[], None] | None = None,
             **form: str) -> dict[str, Any]:
    """POST /login/oauth2/token; returns the JSON answer or raises http.HttpError."""
    body = {"client_id": config.client_id, "client_secret": config.client_secret,
            "redirect_uri": config.redirect_uri, **form}
    response = http.send(session, "POST", f"{config.base_url}/login/oauth2/token", timeout=config.timeout_s,
                         data=body, headers={"Accept": "application/json"}, on_attempt=on_attempt)
    try:
        payload = response.json()
        if not isinstance(payload, dict) or not payload.get("access_token"):
            raise ValueError
    except ValueError:
        raise SourceError("the Canvas token endpoint answered without an access_token") from None
    return payload


# --- the authorization-code flow (`syncd auth TENANT`) --------------------------------------


def authorize_url(config: CanvasConfig, state: str, extra_scopes: tuple[str, ...] = ()) -> str:
    query = urllib.parse.urlencode({
        "client_id": config.client_id, "response_type": "code", "redirect_uri": config.redirect_uri,
        "state": state, "scope": " ".join(SCOPES + extra_scopes),  # one space-separated parameter, as Canvas wants
    })
    return f"{config.base_url}/login/oauth2/auth?{query}"


def code_from_redirect(url: str, state: str) -> str:
    """The ``code`` of the URL Canvas redirected to, after checking ``state`` (CSRF)."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url.strip()).query)
    if "error" in query:
        # Whoever sent the browser here wrote these: printed raw, an escape sequence or a newline
        # could forge lines on the admin's terminal.
        raise SourceError(f"Canvas did not authorize the key: {printable(query['error'][0])}"
                          + (f" ({printable(query['error_description'][0])})" if "error_description" in query else ""))
    if query.get("state", [""])[0] != state:
        raise SourceError("the redirect's state does not match this authorization (an old or forged link)")
    if not query.get("code"):
        raise SourceError("the redirect carries no code")
    return query["code"][0]


def printable(text: str, limit: int = 200) -> str:
    """``text`` with every control character (escape sequences, newlines) replaced, and shortened."""
    clean = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return clean + ("…" if len(text) > limit else "")


def store_refresh_token(tenant: str, config: CanvasConfig, state_dir: Path, payload: dict[str, Any]) -> Path:
    directory = tokens.credentials_dir(state_dir)
    path = directory / f"{tenant}.refresh_token"
    if not payload.get("refresh_token"):
        raise SourceError("Canvas answered without a refresh_token (is the key configured to issue one?)")
    tokens.write_private(path, str(payload["refresh_token"]) + "\n")
    tokens.save(tokens.cache_path(state_dir, tenant), str(payload["access_token"]),
                tokens.usable_for(tokens.lifetime(payload)), tokens.audience(config.base_url, config.client_id))
    return path


def authorize(tenant: str, config: CanvasConfig, state_dir: Path, say: Callable[[str], None],
              pasted: Callable[[float], str | None], timeout_s: float = 600.0,
              extra_scopes: tuple[str, ...] = ()) -> Path:
    """`syncd auth`: print the URL, take the redirect (loopback listener or pasted), store the token.

    ``pasted(wait)`` returns a line the admin pasted within ``wait`` seconds, or None;
    ``extra_scopes``: what exams add (canvas_exams.scopes), only when the tenant has exams.
    """
    state = secrets.token_urlsafe(24)
    # Listen before printing the URL: a fast browser (or admin) must never find the port closed.
    listener = _Listener.start(config.redirect_uri, state)
    try:
        say("Enable these scopes on the Canvas developer key (Enforce Scopes on, and tick "
            "'Allow Include Parameters'):")
        for scope in SCOPES + extra_scopes:
            say(f"  {scope}")
        say("")
        say("Open this URL in a browser, signed in as a Canvas admin, and authorize the key:")
        say(f"  {authorize_url(config, state, extra_scopes)}")
        if listener:
            say(f"Waiting for Canvas to redirect to {config.redirect_uri} ...")
            say("On a server without a browser, paste here the full URL the browser was sent to.")
        else:
            say("Then paste here the full URL the browser was sent to:")
        redirected = _await_redirect(listener, pasted, timeout_s)
    finally:
        if listener:
            listener.stop()
    code = code_from_redirect(redirected, state)
    with http.new_session() as session:
        try:
            payload = exchange(config, session, grant_type="authorization_code", code=code)
        except http.HttpError as exc:
            raise SourceError(f"Canvas refused the authorization code: {exc.detail}") from None
    path = store_refresh_token(tenant, config, state_dir, payload)
    say(f"Authorized. The refresh token is stored in {path} (owner-only); syncd sync {tenant} can run now.")
    return path


def _await_redirect(listener: _Listener | None, pasted: Callable[[float], str | None], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        redirected = (listener.result if listener else None) or pasted(0.2)
        if redirected:
            return redirected
        if time.monotonic() > deadline:
            raise SourceError(f"no authorization arrived within {timeout_s:g} s")


class _Listener:
    """A one-shot HTTP listener on the loopback redirect URI.

    Each connection is served on its own thread with a read timeout, so an idle or slow client
    can neither block the redirect nor keep the listener open; a request whose ``state`` is not
    this authorization's is answered 400 and ignored (a stray or forged request must not end the
    flow)."""

    def __init__(self, server: Any, path: str):
        self.server = server
        self.path = path
        self.result: str | None = None

    @classmethod
    def start(cls, redirect_uri: str, state: str) -> _Listener | None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from syncd.config import is_loopback

        parts = urllib.parse.urlsplit(redirect_uri)
        if parts.scheme != "http" or not parts.hostname or not is_loopback(parts.hostname):
            return None

        class Handler(BaseHTTPRequestHandler):
            timeout = LISTENER_READ_S

            def do_GET(self) -> None:
                target = urllib.parse.urlsplit(self.path)
                if target.path != listener.path:
                    self.send_error(404)
                    return
                if urllib.parse.parse_qs(target.query).get("state", [""])[0] != state:
                    self.send_error(400, "not the authorization syncd is waiting for")
                    return
                listener.result = f"{redirect_uri.split('?')[0]}?{target.query}"
                body = b"syncd: authorization received. You can close this window.\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        try:
            server = ThreadingHTTPServer((parts.hostname, parts.port or 80), Handler)
            server.daemon_threads = True
            server.block_on_close = False
        except OSError as exc:
            log.warning("canvas.auth_listener_unavailable", redirect_uri=redirect_uri, error=exc.strerror)
            return None
        listener = cls(server, parts.path or "/")
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return listener

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
