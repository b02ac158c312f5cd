"""A provision call written and read by syncd.wire (http._lean without a proxy): HTTP/1.1
framing as servers really send it, connections reused only after a complete answer, TLS verified
by urllib3's connection, and every malformed answer a failed attempt that leaves no broken
connection in the pool."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import threading
import zlib
from collections.abc import Iterator

import pytest
import requests
import trustme

from syncd import http

BODY = {"course": {"ids": {"external": "c1"}, "title": "Art"}}
OK = b'{"course": {"sid": "CU1", "result": "Created"}}'
ONCE = http.RetryPolicy(attempts=1)


class Closing(bytes):
    """An answer after which the server closes the connection."""


class Scripted:
    """A raw HTTP/1.1 server on loopback: each request read off a kept-alive connection gets the
    next scripted bytes (then the connection closes if they are :class:`Closing`)."""

    def __init__(self, answers: list[bytes], tls: ssl.SSLContext | None = None):
        self.answers = list(answers)
        self.connections = 0
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/v2/installs/IS1/provision"
        self.tls = tls
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            if self.tls:
                sock = self.tls.wrap_socket(sock, server_side=True)
            sock.settimeout(10)
            reader = sock.makefile("rb")
            while self.answers:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length")), b"0"))
                self.requests.append(head + reader.read(length))
                answer = self.answers.pop(0)
                sock.sendall(answer)
                if isinstance(answer, Closing):
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            sock.close()

    def __enter__(self) -> Scripted:
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()


def framed(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{h}\r\n" for h in (*headers, "Content-Type: application/json", f"Content-Length: {len(body)}"))
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


def chunked(body: bytes) -> bytes:
    middle = len(body) // 2
    return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{middle:x};ext=1\r\n".encode() + body[:middle] + b"\r\n"
            + f"{len(body) - middle:X}\r\n".encode() + body[middle:] + b"\r\n"
            + b"0\r\nX-Trailer: yes\r\n\r\n")


def post(session: requests.Session, url: str, **kwargs: object) -> requests.Response:
    return http.send(session, "POST", url, timeout=5, policy=ONCE, json=BODY, headers={"token": "T0ken-abc"},
                     **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def session() -> Iterator[requests.Session]:
    session = http.new_session()
    yield session
    session.close()


def test_answers_framed_by_length_or_chunks_keep_the_connection(session):
    with Scripted([framed(OK), chunked(OK), framed(b"", status="204 No Content")]) as server:
        answers = [post(session, server.url) for _ in range(3)]
    assert [a.json() for a in answers[:2]] == [json.loads(OK)] * 2
    assert answers[2].status_code == 204 and answers[2].content == b""
    assert server.connections == 1
    assert session._routes and all(route.wire for route in session._routes.values())  # type: ignore[attr-defined]


def test_the_request_carries_the_body_with_its_length_and_the_host(session):
    with Scripted([framed(OK)]) as server:
        post(session, server.url)
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v2/installs/IS1/provision HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}" in lines and f"Content-Length: {len(body)}" in lines
    assert json.loads(body) == BODY


@pytest.mark.parametrize("answer", [
    framed(OK, "Connection: close"),
    framed(OK).replace(b"HTTP/1.1", b"HTTP/1.0"),
    Closing(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + OK),  # framed by the connection's end
], ids=["Connection: close", "HTTP/1.0", "no length"])
def test_an_answer_that_ends_its_connection_is_read_whole_and_the_next_call_connects_again(session, answer):
    # The server keeps the first two kinds open: the client alone must not send on them again.
    with Scripted([answer, framed(OK), framed(OK)]) as server:
        first = post(session, server.url)
        second = post(session, server.url)
    assert first.json() == second.json() == json.loads(OK)
    assert server.connections == 2


def test_interim_answers_are_skipped_and_folded_headers_joined(session):
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    folded = framed(OK, "X-Note: one", "\ttwo")
    with Scripted([interim + folded]) as server:
        answer = post(session, server.url)
    assert answer.json() == json.loads(OK) and answer.headers["X-Note"] == "one two"


def test_repeated_set_cookie_headers_all_reach_the_sessions_jar(session):
    with Scripted([framed(OK, "Set-Cookie: a=1; Path=/", "Set-Cookie: b=2; Path=/")]) as server:
        post(session, server.url)
    assert session.cookies.get_dict() == {"a": "1", "b": "2"}


@pytest.mark.parametrize("encoding,encode", [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some servers send it
], ids=["gzip", "deflate", "raw deflate"])
def test_compressed_answers_are_decoded(session, encoding, encode):
    with Scripted([framed(encode(OK), f"Content-Encoding: {encoding}")]) as server:
        assert post(session, server.url).json() == json.loads(OK)


def test_a_bomb_stops_at_the_cap(session):
    bomb = gzip.compress(b"\0" * (8 << 20))
    with Scripted([framed(bomb, "Content-Encoding: gzip")]) as server, \
            pytest.raises(http.RejectedError, match="larger than 1 MiB"):
        post(session, server.url, max_bytes=1 << 20)


@pytest.mark.parametrize("answer", [
    b"ICY 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n" + OK,  # then the connection ends
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nBad header line\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 9\r\n\r\nnot gzip!",
], ids=["not HTTP", "two lengths", "short body", "bad chunk", "bad header", "corrupt gzip"])
def test_a_malformed_answer_fails_the_attempt_and_leaves_no_connection_behind(session, answer):
    with Scripted([Closing(answer), framed(OK)]) as server:
        with pytest.raises(http.TransientError, match="connection failed"):
            post(session, server.url)
        assert post(session, server.url).json() == json.loads(OK)
    assert server.connections == 2


def test_bytes_after_an_answer_keep_its_connection_out_of_the_pool(session):
    with Scripted([Closing(framed(OK) + b"HTTP/1.1 200 OK\r\n"), framed(OK)]) as server:
        assert post(session, server.url).json() == json.loads(OK)
        assert post(session, server.url).json() == json.loads(OK)
    assert server.connections == 2


def get(session: requests.Session, url: str, **kwargs: object) -> requests.Response:
    """Through session.request (not lean: no JSON body), whose plain bodies http reads in one call."""
    return http.send(session, "GET", url, timeout=5, policy=ONCE, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("send", [post, get], ids=["wire", "session.request"])
def test_a_body_shorter_than_its_length_fails_and_is_never_taken_for_the_answer(session, send):
    with Scripted([Closing(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n" + OK)]) as server, \
            pytest.raises(http.TransientError, match="connection failed"):
        send(session, server.url)


@pytest.mark.parametrize("send", [post, get], ids=["wire", "session.request"])
def test_a_length_over_the_cap_is_refused(session, send):
    with Scripted([framed(b" " * (2 << 20))]) as server, pytest.raises(http.RejectedError, match="larger than 1 MiB"):
        send(session, server.url, max_bytes=1 << 20)


def test_a_plain_body_through_session_request_is_read_whole(session):
    body = json.dumps({"users": [{"sourcedId": f"u{i}"} for i in range(20_000)]}).encode()
    with Scripted([framed(body), chunked(body)]) as server:
        assert get(session, server.url).content == get(session, server.url).content == body


# --- TLS: the connection is urllib3's, with the environment's CA bundle -----------------------


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


def tls_server(authority: trustme.CA, answers: list[bytes]) -> Scripted:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    return Scripted(answers, tls=context)


def test_tls_to_a_server_the_ca_bundle_trusts(session, authority, tmp_path, monkeypatch):
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    with tls_server(authority, [framed(OK), chunked(OK)]) as server:
        assert post(session, server.url).json() == post(session, server.url).json() == json.loads(OK)
    assert server.connections == 1 and all(route.wire for route in session._routes.values())  # type: ignore[attr-defined]


def test_tls_to_a_server_nobody_vouches_for_is_refused_before_the_body_leaves(session, authority):
    with tls_server(authority, [framed(OK)]) as server, pytest.raises(http.TransientError, match="connection failed"):
        post(session, server.url)
    assert server.requests == []


def test_tls_to_a_certificate_for_another_name_is_refused(session, tmp_path, monkeypatch):
    other = trustme.CA()
    bundle = tmp_path / "ca.pem"
    other.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    other.issue_cert("provision.example.org").configure_cert(context)
    with Scripted([framed(OK)], tls=context) as server, pytest.raises(http.TransientError, match="connection failed"):
        post(session, server.url)
    assert server.requests == []
