"""A tiny threaded HTTP/1.1 server on loopback for the sandbox apps (stdlib only).

Each :class:`Request` carries ``received``, the monotonic time its request line arrived (the
kernel's receive stamp on Linux, else the time the line was read); an app
that simulates latency answers that long after arrival (:meth:`Request.wait_latency`), not that
long after this server has parsed the request: a real server's "20 ms" is the client's round trip
less the network, and this process's scheduling and the stdlib's parsing (headers, body) are the
instrument's cost, not the simulated server's.

The same holds for what comes after the wait: a sleep here ends ~0.2 ms late (a virtual machine's
timers), and the app's work after its wait (applying the call, building the answer) and the write
take as long again. :class:`Timing` measures, on each answer, how late it left against its due
time and ends later waits that much earlier (a feedback loop on the mean, at most
``Timing.MAX_LEAD_S``), so answers leave at ``received + latency`` on average: with 20 ms per
provision call, those 0.5 ms would otherwise be 2.5 % of the latency bound the benchmark reports,
charged to the client. ``Timing`` also keeps the measured latency, which the benchmark prints.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DROP = object()  # a handler result: close the connection without answering (a lost response)


class Timing:
    """A server's punctuality: how much earlier than due a latency wait ends (``lead``), learnt
    from how late the answers left, and the mean latency the answers had (arrival to written)."""

    GAIN = 0.05  # of each answer's lateness taken into the lead: ~50 answers to settle, little jitter
    MAX_LEAD_S = 0.002

    def __init__(self) -> None:
        self.lead = 0.0
        self.answers = 0  # answers that waited out a latency
        self.latency_total = 0.0

    def left(self, received: float, due: float, now: float) -> None:
        """An answer that was due at ``due`` has just been written."""
        self.lead = min(max(self.lead + self.GAIN * (now - due), 0.0), self.MAX_LEAD_S)
        self.answers += 1
        self.latency_total += now - received

    @property
    def mean_latency_s(self) -> float | None:
        return self.latency_total / self.answers if self.answers else None


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    url: str
    received: float = field(default_factory=time.monotonic)  # when the request line arrived (monotonic)
    timing: Timing | None = None  # the server's, when served
    due: float | None = None  # when the answer is to leave, once an app waited for it

    def wait_latency(self, seconds: float) -> None:
        """Sleep until ``seconds`` after the request arrived (at once if that time has passed), less
        the server's learnt lead, so the answer leaves then. Apps call it before they apply a
        request, so a client killed during the wait left nothing applied, as with a plain sleep."""
        self.due = self.received + seconds
        remaining = self.due - (self.timing.lead if self.timing else 0.0) - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


App = Callable[[Request], Response | object]


_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's value (asm-generic, x86, arm)


class _StampedReader(io.RawIOBase):
    """A socket's reads, each with the kernel's receive time (SO_TIMESTAMPNS), as a monotonic
    ``stamp``: the time the bytes of the latest read reached the socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.stamp: float | None = None

    @classmethod
    def of(cls, sock: socket.socket) -> _StampedReader | None:
        if sys.platform != "linux":
            return None
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError:
            return None
        return cls(sock)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size, ancillary, _flags, _address = self.sock.recvmsg_into([buffer], socket.CMSG_SPACE(16))
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
                seconds, nanoseconds = struct.unpack("qq", data[:16])
                self.stamp = seconds + nanoseconds / 1e9 - time.time() + time.monotonic()
        return size


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Buffered: status line, headers and a small body leave in one write when the handler flushes
    # (after each request), not three; between two writes another thread may take the GIL and
    # hold the rest of the answer back, time the latency would not account for.
    wbufsize = -1
    server: _Server

    def setup(self) -> None:
        super().setup()
        # A large body leaves in a write after the headers'; without this, Nagle's algorithm and
        # the client's delayed ACK would stall such a keep-alive response by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stamped = _StampedReader.of(self.connection)
        if stamped is not None:
            self.rfile = io.BufferedReader(stamped)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def parse_request(self) -> bool:
        # Called once the request line is read: the request has arrived (on a kept-alive
        # connection the line's read is what waited for it). Headers and body are parsed after.
        # Where the kernel stamps what it receives (Linux), the time is the stamp of that read:
        # when the bytes reached the socket, not when this thread got the CPU and the GIL.
        raw = getattr(self.rfile, "raw", None)
        self.received = raw.stamp if isinstance(raw, _StampedReader) and raw.stamp else time.monotonic()
        return super().parse_request()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urllib.parse.urlsplit(self.path)
        host = self.headers.get("Host", f"127.0.0.1:{self.server.server_port}")
        request = Request(self.command, parts.path, urllib.parse.parse_qs(parts.query, keep_blank_values=True),
                          {k.lower(): v for k, v in self.headers.items()}, body,
                          f"http://{host}{self.path}", self.received, self.server.timing)
        result = self.server.app(request)
        if result is DROP:
            self.close_connection = True
            return
        assert isinstance(result, Response)
        payload = result.raw if result.raw is not None else json.dumps(result.body).encode()
        self.send_response(result.status)
        headers = {"Content-Type": "application/json", **result.headers}
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()
        if request.due is not None:
            self.server.timing.left(request.received, request.due, time.monotonic())

    do_GET = do_POST = do_PUT = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, app: App, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.app = app
        self.timing = Timing()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (a killed sync, a timeout) is part of the game, not an error.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Serving:
    """An app served on 127.0.0.1 on a free port (or the one given), in a background thread."""

    def __init__(self, app: App, port: int = 0):
        self._server = _Server(app, port)
        self.port = self._server.server_port
        self.timing = self._server.timing
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True, name=f"sandbox-{self.port}")
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
