"""The daemon's HTTP listener (SPEC §8): waitress serving a small (method, path) router.

``syncd run`` serves HTTP only when ``[daemon.http] listen`` is set. waitress reads every request
whole in its asyncore front end (a slow client costs a socket, not a worker thread), rejects a body
over ``max_body_bytes`` with 413 before the application sees it, and drops a connection idle for
``channel_timeout_s``.

Adding an endpoint is one line::

    web.register("POST", "/webhooks/gg4l", gg4l.handle_webhook)

A handler is ``handler(request: web.Request) -> web.Response`` (``web.json_response(status, dict)``
builds the usual one). ``request.context`` is the running daemon (``syncd.daemon.Daemon``:
``.config``, ``.alerts``, ``.scheduler``, ``.running``); ``request.body`` is the whole body as bytes
(already capped at ``max_body_bytes``); ``request.query`` maps each parameter to its values;
``request.headers`` has lower-case names; ``request.remote`` is the peer address. A handler must
answer fast (it runs on one of ``threads`` workers): hand slow work to a daemon thread or a
scheduler job. An exception becomes a 500 and one ``http.handler_failed`` log line; its message is
never sent to the client. Routes are exact paths: no patterns, no trailing-slash folding.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from waitress.server import create_server

from syncd.config import HttpConfig, is_loopback

log = structlog.get_logger("syncd.web")

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
# How long /healthz waits for the state store's write lock before it calls the store unwritable.
HEALTH_LOCK_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    remote: str
    context: Any = field(repr=False, default=None)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Response]
ROUTES: dict[tuple[str, str], Handler] = {}


def register(method: str, path: str, handler: Handler) -> None:
    """Route ``method path`` (exact path, no pattern) to ``handler``; a GET also answers HEAD."""
    ROUTES[(method.upper(), path)] = handler


def json_response(status: int, data: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps(data, separators=(",", ":")).encode() + b"\n", "application/json", headers)


# --- the WSGI application --------------------------------------------------------------------


class App:
    """The WSGI callable: request -> route -> handler -> response, with 404/405/413/500 at the edge."""

    def __init__(self, context: Any, max_body_bytes: int):
        self.context = context
        self.max_body_bytes = max_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = environ.get("PATH_INFO", "") or "/"
        response = self._respond(environ, method, path)
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
                   ("Cache-Control", "no-store"), *response.headers]
        start_response(f"{response.status} {REASONS.get(response.status, 'Unknown')}", headers)
        # Debug below 500: a flood of bad requests must not become a flood of log lines.
        level = "warning" if response.status >= 500 else "debug"
        getattr(log, level)("http.request", method=method[:16], path=path[:200], status=response.status,
                            remote=environ.get("REMOTE_ADDR"))
        return [] if method == "HEAD" else [response.body]

    def _respond(self, environ: dict[str, Any], method: str, path: str) -> Response:
        handler = ROUTES.get((method, path)) or (ROUTES.get(("GET", path)) if method == "HEAD" else None)
        if handler is None:
            allowed = sorted({m for m, p in ROUTES if p == path} | ({"HEAD"} if ("GET", path) in ROUTES else set()))
            if not allowed:
                return json_response(404, {"error": "not found"})
            return json_response(405, {"error": "method not allowed", "allow": allowed},
                                 headers=(("Allow", ", ".join(allowed)),))
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return json_response(400, {"error": "bad Content-Length"})
        if length > self.max_body_bytes:  # waitress refuses these first; this guards any other server
            return json_response(413, {"error": f"body over {self.max_body_bytes} bytes"})
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        request = Request(method=method, path=path,
                          query=urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True),
                          headers={k[5:].replace("_", "-").lower(): v for k, v in environ.items()
                                   if k.startswith("HTTP_")} | _content_headers(environ),
                          body=body, remote=environ.get("REMOTE_ADDR", ""), context=self.context)
        try:
            return handler(request)
        except Exception:
            log.exception("http.handler_failed", method=method, path=path)
            return json_response(500, {"error": "internal error"})


def _content_headers(environ: dict[str, Any]) -> dict[str, str]:
    return {name: environ[key] for key, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length"))
            if environ.get(key)}


# --- the server ------------------------------------------------------------------------------


class Listener:
    """waitress on its own thread; :meth:`stop` lets in-flight requests finish, then closes."""

    def __init__(self, config: HttpConfig, context: Any):
        self.config = config
        try:
            self.server = create_server(
                App(context, config.max_body_bytes), host=config.host, port=config.port, threads=config.threads,
                max_request_body_size=config.max_body_bytes, channel_timeout=config.channel_timeout_s,
                # The channel sweep runs every cleanup_interval: keep it below the timeout.
                cleanup_interval=max(1, min(30, config.channel_timeout_s // 2)),
                connection_limit=100, ident="syncd", expose_tracebacks=False, clear_untrusted_proxy_headers=True)
        except OSError as exc:
            raise ListenError(f"daemon.http.listen: cannot listen on {config.host}:{config.port}: "
                              f"{exc.strerror or exc}") from None
        self.port: int = self.server.effective_port  # type: ignore[union-attr]
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("http.listening", address=f"{self.config.host}:{self.port}", routes=sorted(p for _, p in ROUTES),
                 max_body_bytes=self.config.max_body_bytes, channel_timeout_s=self.config.channel_timeout_s)
        if not is_loopback(self.config.host):
            log.warning("http.not_loopback", address=self.config.host,
                        hint="/metrics and /healthz are readable by anyone who can reach this address")

    def _serve(self) -> None:
        try:
            self.server.run()
        except Exception:  # the daemon goes on syncing without its listener
            log.exception("http.server_failed")

    def stop(self, timeout: float = 5.0) -> None:
        from waitress import wasyncore

        self.server.task_dispatcher.shutdown(cancel_pending=False, timeout=timeout)
        wasyncore.close_all(self.server._map)  # type: ignore[union-attr]
        self._thread.join(timeout)
        log.info("http.stopped")


class ListenError(Exception):
    """The listener could not bind (address in use, not an address of this host, no permission)."""


# --- /healthz -------------------------------------------------------------------------------


def healthz(request: Request) -> Response:
    """200 while the scheduler runs and the store takes a write; 503 with the reasons otherwise."""
    daemon = request.context
    problems = list(daemon.health_problems())
    store, problem = store_write_check(daemon.config.daemon.state_dir, daemon.config.state_url)
    if problem:
        problems.append(problem)
    body: dict[str, Any] = {"status": "ok" if not problems else "unavailable", "store": store,
                            "running": sorted(daemon.running), "tenants": len(daemon.config.tenants)}
    if problems:
        body["problems"] = problems
    return json_response(503 if problems else 200, body)


def store_write_check(state_dir: Path, url: str = "") -> tuple[str, str | None]:
    """("writable", None) when one small write transaction commits; ("busy", None) when another
    writer holds the lock (a run staging a page, a CLI sync: the store works, someone is using it);
    ("failed", why) when SQLite refuses the write (read-only, disk full, I/O error, corrupt file),
    or, with ``url``, when the shared PostgreSQL store cannot be reached or written."""
    if url:
        return shared_write_check(url)
    path = state_dir / "syncd.db"
    if not path.exists():
        return "failed", f"state store {path} does not exist"
    try:
        conn = sqlite3.connect(path, timeout=HEALTH_LOCK_TIMEOUT_S)
    except sqlite3.Error as exc:
        return "failed", f"state store cannot be opened: {exc}"
    try:
        conn.execute("PRAGMA synchronous=NORMAL")  # as the store itself: WAL, no fsync per commit
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO heartbeat (id, at) VALUES (1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) "
                     "ON CONFLICT (id) DO UPDATE SET at = excluded.at")
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return "busy", None
        return "failed", f"state store is not writable: {exc}"
    except sqlite3.Error as exc:
        return "failed", f"state store is not writable: {exc}"
    finally:
        conn.close()
    return "writable", None


def shared_write_check(url: str) -> tuple[str, str | None]:
    """:func:`store_write_check` on PostgreSQL: a session of its own (so the answer says whether a
    run could reach the database now), one upsert of the heartbeat row, each step bounded by
    ``HEALTH_LOCK_TIMEOUT_S`` (a statement, twice that); "busy" when another node's check holds the
    row past that."""
    import psycopg

    from syncd.lease import _reason
    from syncd.store import utcnow

    wait_ms = str(int(HEALTH_LOCK_TIMEOUT_S * 1000))
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(HEALTH_LOCK_TIMEOUT_S)),
                               application_name="syncd:healthz")
    except psycopg.Error as exc:
        return "failed", f"state store cannot be reached: {_reason(exc)}"
    try:
        with conn.transaction():
            conn.execute("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                         (wait_ms, str(2 * int(wait_ms))))
            conn.execute("INSERT INTO heartbeat (id, at) VALUES (1, %s) "
                         "ON CONFLICT (id) DO UPDATE SET at = excluded.at", (utcnow(),))
    except psycopg.errors.LockNotAvailable:
        return "busy", None
    except psycopg.Error as exc:
        return "failed", f"state store is not writable: {_reason(exc)}"
    finally:
        conn.close()
    return "writable", None


def metrics_endpoint(request: Request) -> Response:
    from syncd import metrics

    body, content_type = metrics.exposition(request.context, request.headers.get("accept", ""))
    return Response(200, body, content_type)


register("GET", "/healthz", healthz)
register("GET", "/metrics", metrics_endpoint)
