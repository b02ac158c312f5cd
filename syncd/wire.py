"""One HTTP/1.1 exchange on a pooled urllib3 connection, its bytes written and parsed here.

Why: a provision call is a small JSON request and a small JSON answer, sent by the thousand with
8 in flight. Through ``http.client`` each answer's headers are parsed by the ``email`` package,
and with urllib3's and requests' wrappers that is ~0.4 ms of CPU per call, on the cores and the
GIL the other calls need: measured, a bare urllib3 client stays near 92 % of the latency bound at
concurrency 8, and the same calls written and read on the socket reach 95 %
(``bench/push_cpu.py --latency-ms 20``).

What stays urllib3's: the connection itself (TCP, TLS with the pool's verification, CA bundle,
SNI, hostname check and client certificate), the pool, and its check that an idle connection was
not dropped. A route through a proxy does not come here. What is done here is HTTP/1.1 framing
(RFC 9112): a request with a ``Content-Length``; an answer framed by ``Content-Length``, chunked,
or by the end of the connection; interim 1xx answers skipped; ``gzip`` and ``deflate`` decoded
with the decoded size capped, so a bomb stops at ``max_bytes``. A connection goes back to the
pool only after a complete, framed answer on HTTP/1.1 without ``Connection: close``.
"""

from __future__ import annotations

import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from urllib3.exceptions import ProtocolError

_READ = 1 << 16
MAX_HEAD_BYTES = 64 << 10  # status line and headers: a server sending more is not a provision API


class TooLarge(Exception):
    """The answer, once decoded, is larger than the cap."""


@dataclass
class Answer:
    status: int
    reason: str
    headers: list[tuple[str, str]]  # as received, in order (``Set-Cookie`` may repeat)
    body: bytes  # decoded


def host_header(pool: Any) -> str:
    """The ``Host`` value ``http.client`` would send for the pool's host and port."""
    host = pool.host
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    elif not host.isascii():
        host = host.encode("idna").decode("ascii")
    default = 443 if pool.scheme == "https" else 80
    return host if pool.port in (None, default) else f"{host}:{pool.port}"


def exchange(pool: Any, attach: Callable[[Any], None], method: str, target: str, headers: dict[str, str],
             body: bytes, timeout: float, max_bytes: int) -> Answer:
    """Send one request on a connection of ``pool`` and read its whole answer.

    ``attach`` is given the connection before it is used (the attempt's deadline shuts it).
    Raises what urllib3 raises for the connection (timeouts, refused, TLS), ``TimeoutError`` on a
    read that times out, :class:`ProtocolError` for an answer that is not HTTP/1.1, and
    :class:`TooLarge`."""
    head = [f"{method} {target} HTTP/1.1", f"Host: {host_header(pool)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
    conn = pool._get_conn()  # an idle connection (checked not dropped) or a new one
    reusable = False
    try:
        attach(conn)
        if conn.sock is None:
            conn.timeout = timeout
            conn.connect()
        conn.sock.settimeout(timeout)
        conn.sock.sendall(request)
        answer, reusable = _Reader(conn.sock).answer(max_bytes)
        return answer
    finally:
        if not reusable:
            conn.close()
        pool._put_conn(conn if reusable else None)  # None keeps the pool's count of connections


class _Reader:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray()
        self.eof = False

    def _fill(self) -> None:
        data = self.sock.recv(_READ)
        if not data:
            self.eof = True
        self.buffer += data

    def _line_block(self, end: bytes, limit: int) -> bytes:
        """Bytes up to ``end`` (consumed, not returned)."""
        while (at := self.buffer.find(end)) < 0:
            if len(self.buffer) > limit:
                raise ProtocolError("the answer's headers are too long")
            if self.eof:
                raise ProtocolError("the connection closed before a complete answer")
            self._fill()
        block = bytes(self.buffer[:at])
        del self.buffer[:at + len(end)]
        return block

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if self.eof:
                raise ProtocolError("the connection closed before the whole body")
            self._fill()
        block = bytes(self.buffer[:size])
        del self.buffer[:size]
        return block

    def answer(self, max_bytes: int) -> tuple[Answer, bool]:
        """(the final answer, whether the connection may carry another request)."""
        while True:
            version, status, reason, headers = self._head()
            if not 100 <= status < 200:
                break  # 1xx answers (100 Continue, 103 Early Hints) precede the real one
        fields = {}
        for name, value in headers:
            key = name.lower()
            fields[key] = f"{fields[key]}, {value}" if key in fields else value
        decoder = _Decoder(fields.get("content-encoding", ""), max_bytes)
        keep = version == "HTTP/1.1" and "close" not in fields.get("connection", "").lower()
        if status in (204, 304):
            pass
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            self._chunked(decoder)
        elif "content-length" in fields:
            lengths = {v.strip() for v in fields["content-length"].split(",")}
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise ProtocolError(f"invalid Content-Length {fields['content-length']!r}")
            remaining = int(lengths.pop())
            while remaining:
                if not self.buffer:
                    if self.eof:
                        raise ProtocolError("the connection closed before the whole body")
                    self._fill()
                take = min(remaining, len(self.buffer))
                decoder.feed(bytes(self.buffer[:take]))
                del self.buffer[:take]
                remaining -= take
        else:  # framed by the end of the connection
            keep = False
            while not self.eof:
                decoder.feed(bytes(self.buffer))
                self.buffer.clear()
                self._fill()
            decoder.feed(bytes(self.buffer))
        # Bytes after the answer would be an answer to nothing: the connection is not reused.
        keep = keep and not self.buffer and not self.eof
        return Answer(status, reason, headers, decoder.finish()), keep

    def _head(self) -> tuple[str, int, str, list[tuple[str, str]]]:
        lines = self._line_block(b"\r\n\r\n", MAX_HEAD_BYTES).decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and headers:  # an obsolete folded line continues the last value
                name, value = headers[-1]
                headers[-1] = (name, f"{value} {line.strip()}")
                continue
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise ProtocolError(f"a malformed header line: {line[:80]!r}")
            headers.append((name, value.strip()))
        return version, int(code), reason.strip(), headers

    def _chunked(self, decoder: _Decoder) -> None:
        while True:
            size_line = self._line_block(b"\r\n", 1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise ProtocolError(f"an invalid chunk size {size_line[:20]!r}") from None
            if size == 0:
                while self._line_block(b"\r\n", MAX_HEAD_BYTES):  # trailer fields, then an empty line
                    pass
                return
            while size:
                take = min(size, _READ)
                decoder.feed(self._exactly(take))
                size -= take
            if self._exactly(2) != b"\r\n":
                raise ProtocolError("a chunk does not end with CRLF")


class _Decoder:
    """The body, decoded by its Content-Encoding as it arrives, its decoded size capped."""

    def __init__(self, encoding: str, max_bytes: int):
        self.max_bytes = max_bytes
        self.parts: list[bytes] = []
        self.size = 0
        codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
        self.zlib: Any = None
        self.deflate = False
        if codings in (["gzip"], ["x-gzip"]):
            self.zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif codings == ["deflate"]:
            self.zlib, self.deflate = zlib.decompressobj(), True
        # Other codings are not asked for (Accept-Encoding: gzip, deflate): left as sent, as urllib3 does.

    def feed(self, data: bytes) -> None:
        if self.zlib is None:
            self._keep(data)
            return
        try:
            while data:
                out = self.zlib.decompress(data, self.max_bytes - self.size + 1)
                self._keep(out)
                data = self.zlib.unconsumed_tail
        except zlib.error:
            if not (self.deflate and not self.parts and not self.size):
                raise ProtocolError("the answer's compressed body is corrupt") from None
            # "deflate" sent as a raw stream, without its zlib header (as urllib3 also accepts)
            self.zlib, self.deflate = zlib.decompressobj(-zlib.MAX_WBITS), False
            self.feed(data)

    def _keep(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise TooLarge()
        if data:
            self.parts.append(data)

    def finish(self) -> bytes:
        if self.zlib is not None:
            self._keep(self.zlib.flush())
        return b"".join(self.parts)
