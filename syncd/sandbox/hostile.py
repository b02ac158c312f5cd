"""Hostile HTTP servers on loopback for the hardening tests: a proxy in front of a sandbox server
that forwards each request unless a fault is set, and the faults (redirect, drip, bomb, echo...).

Raw sockets, not the sandbox's http.server, because the faults need to write bytes the way a
broken or malicious server would: slowly, endlessly, or lying about their length.
"""

from __future__ import annotations

import gzip
import io
import json
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import requests

DRIP_S = 0.5  # one byte every half second: what a per-read timeout never notices


@dataclass
class Req:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Action = Callable[[BinaryIO], None]
Fault = Callable[[Req], Action | None]


def _read_request(rfile: BinaryIO) -> Req | None:
    line = rfile.readline(65537)
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        header = rfile.readline(65537).decode("latin-1")
        if header in ("\r\n", "\n", ""):
            break
        key, _, value = header.partition(":")
        headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length") or 0)
    return Req(method, path, headers, rfile.read(length) if length else b"")


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


class Hostile:
    """Listens on 127.0.0.1; forwards to ``upstream`` (keeping the Host header, so that the links
    the upstream builds point back here) unless ``fault`` returns an action for the request."""

    def __init__(self, upstream: str | None = None):
        self.upstream = upstream
        self.fault: Fault | None = None
        self.seen: list[Req] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 60

            def handle(self) -> None:
                try:
                    request = _read_request(self.rfile)
                    if request is None:
                        return
                    outer.seen.append(request)
                    action = outer.fault(request) if outer.fault else None
                    (action or outer._forward(request))(self.wfile)
                except (OSError, ValueError):
                    pass

        self._server = _TCPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def _forward(self, request: Req) -> Action:
        if self.upstream is None:
            return respond(404, b'{"message": "nothing here"}')
        headers = {k: v for k, v in request.headers.items()
                   if k not in ("content-length", "connection", "accept-encoding", "transfer-encoding")}
        answer = requests.request(request.method, self.upstream + request.path, headers=headers,
                                  data=request.body or None, allow_redirects=False, timeout=60)
        keep = {k: v for k, v in answer.headers.items()
                if k.lower() not in ("content-length", "connection", "transfer-encoding", "content-encoding",
                                     "date", "server")}
        return respond(answer.status_code, answer.content, keep)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Hostile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- faults ---------------------------------------------------------------------------------


def respond(status: int, body: bytes, headers: dict[str, str] | None = None) -> Action:
    def write(out: BinaryIO) -> None:
        head = {"Content-Type": "application/json", **(headers or {}), "Content-Length": str(len(body)),
                "Connection": "close"}
        out.write(f"HTTP/1.1 {status} X\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode()
                  + b"\r\n" + body)
        out.flush()
    return write


def redirect(to: str, status: int = 307) -> Fault:
    """Every request answered with a redirect to ``to`` (same path)."""
    return lambda request: respond(status, b"", {"Location": to + request.path})


def drip(head: bool = False, seconds: float = 120.0) -> Fault:
    """One byte every DRIP_S: of the body (headers sent at once), or of the status line itself."""
    def action(out: BinaryIO) -> None:
        if not head:
            out.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
        for byte in (b"HTTP/1.1 200 OK\r\nX-Slow: " if head else b"") + b"a" * int(seconds / DRIP_S):
            out.write(bytes([byte]))
            out.flush()
            time.sleep(DRIP_S)
    return lambda request: action


_BOMB: list[bytes] = []


def gzip_bomb(decoded_mib: int = 256) -> Fault:
    """A small gzip body (about 1 KiB per MiB) that decodes to ``decoded_mib`` MiB of zeros."""
    if not _BOMB:
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as archive:
            block = b"\0" * (1 << 20)
            for _ in range(decoded_mib):
                archive.write(block)
        _BOMB.append(buffer.getvalue())
    return lambda request: respond(200, _BOMB[0], {"Content-Encoding": "gzip"})


def endless_body(total: int = 1 << 30) -> Fault:
    """Says 1 GiB, and sends it as fast as the client reads."""
    def action(out: BinaryIO) -> None:
        out.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {total}\r\n\r\n".encode())
        block = b" " * (1 << 16)
        for _ in range(total // len(block)):
            out.write(block)
    return lambda request: action


def echo_credentials(status: int = 400) -> Fault:
    """A refusal that quotes back every credential the request carried."""
    def fault(request: Req) -> Action:
        said = [request.headers.get("token", ""), request.headers.get("authorization", ""),
                *urllib.parse.parse_qs(request.body.decode("latin-1")).get("client_secret", [])]
        message = " / ".join(f"token {v} is not valid" for v in said if v)
        return respond(status, json.dumps({"message": message, "errors": [message]}).encode())
    return fault


def only(method: str, path_part: str, fault: Fault) -> Fault:
    """``fault`` for the requests whose method and path match; the others are forwarded."""
    return lambda request: fault(request) if request.method == method and path_part in request.path else None


# --- checks ---------------------------------------------------------------------------------


def files_holding(root: Path, secret: str, skip: tuple[str, ...] = ("syncd.toml",)) -> list[str]:
    """Files under ``root`` (the state dir and anything written beside it) that hold ``secret``."""
    needle = secret.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and p.name not in skip and needle in p.read_bytes()]
