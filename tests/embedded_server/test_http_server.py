"""The REST API's HTTP layer under abuse: sizes, framing, smuggling shapes, timeouts, connection and thread bounds.

A trivial handler stands in for the REST API (no TensorFlow here); raw sockets send what well-behaved clients never
would. Deadlines are generous and only bound a wait: nothing asserts on how fast the server is.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from pipeline.embedded_server.http_server import HttpLimits, HttpRequest, HttpResponse, HttpServer
from pipeline.util.polling import poll_until

_LIMIT = 1 << 20
_TIMEOUT_S = 1.0
_WAIT_S = 30.0


def _handler(request: HttpRequest) -> HttpResponse:
    if request.path == "/boom":
        raise RuntimeError("a bug in the handler")
    if request.path.startswith("/big-answer"):
        return HttpResponse(200, b"x" * (8 << 20), "text/plain")
    body = {"method": request.method, "path": request.path, "size": len(request.body)}
    return HttpResponse(200, json.dumps(body).encode())


def _start(**limits: Any) -> HttpServer:
    limits.setdefault("max_body_bytes", _LIMIT)
    limits.setdefault("timeout_s", _TIMEOUT_S)
    server = HttpServer("127.0.0.1", 0, _handler, threads=4, limits=HttpLimits(**limits),
                        error_body=lambda message: json.dumps({"error": message}).encode(), name="test-http")
    server.start()
    return server


@pytest.fixture
def server() -> Iterator[HttpServer]:
    server = _start()
    yield server
    server.stop()


def _connect(server: HttpServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=_WAIT_S)
    return sock


def _exchange(server: HttpServer, data: bytes, responses: int = 1) -> bytes:
    """Send raw bytes; what the server answers until it closes (or ``responses`` complete answers came)."""
    with _connect(server) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return received
            received += chunk
            if _complete_answers(received) >= responses and b"Connection: keep-alive" in received:
                return received


def _complete_answers(data: bytes) -> int:
    count, rest = 0, data
    while b"\r\n\r\n" in rest:
        head, rest = rest.split(b"\r\n\r\n", 1)
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        if head.startswith(b"HTTP/1.1 100"):
            continue
        if len(rest) < length:
            break
        rest = rest[length:]
        count += 1
    return count


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(_WAIT_S)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _url(server: HttpServer, path: str = "/v1/x") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


# ------------------------------------------------------------------ sizes


def test_a_body_over_the_limit_is_refused_from_its_content_length_before_it_is_sent(server: HttpServer) -> None:
    answer = _exchange(server, b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 209715200\r\n\r\n")
    assert _status(answer) == 413  # answered with no byte of the 200 MB body sent
    assert b"209715200 bytes is larger than the limit of 1048576 bytes (--max_request_bytes)" in answer
    assert b"Connection: close" in answer


def test_expect_100_continue_gets_its_100_only_for_a_body_that_will_be_taken(server: HttpServer) -> None:
    refused = _exchange(server, b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 209715200\r\n"
                                b"Expect: 100-continue\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 413") and b"100 Continue" not in refused
    with _connect(server) as sock:
        sock.sendall(b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        assert b'"size": 5' in sock.recv(1000)


def test_a_client_still_sending_a_refused_body_reads_the_refusal(server: HttpServer) -> None:
    response = requests.post(_url(server), data=b"x" * (4 * _LIMIT), timeout=_WAIT_S)  # no Expect: sends it all
    assert response.status_code == 413
    assert "--max_request_bytes" in response.json()["error"]


def test_chunked_bodies_are_decoded_and_bounded(server: HttpServer) -> None:
    answer = _exchange(server, b"POST /v1/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert _status(answer) == 200 and b'"size": 11' in answer

    def chunks(count: int) -> Iterator[bytes]:
        for _ in range(count):
            yield b"y" * (64 << 10)

    assert requests.post(_url(server), data=chunks(8), timeout=_WAIT_S).json()["size"] == 8 * (64 << 10)
    refused = requests.post(_url(server), data=chunks(64), timeout=_WAIT_S)
    assert refused.status_code == 413 and "larger than the limit" in refused.json()["error"]


def test_a_head_over_the_limit_is_431(server: HttpServer) -> None:
    answer = _exchange(server, b"GET /v1/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert _status(answer) == 431
    answer = _exchange(server, b"GET /v1/x HTTP/1.1\r\nHost: h\r\nX-Junk: " + b"j" * 200_000)  # head never ends
    assert _status(answer) == 431


# ------------------------------------------------------------------ framing


@pytest.mark.parametrize("head", [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked",  # the request smuggling shape
    b"Transfer-Encoding: chunked\r\nContent-Length: 5",
    b"Transfer-Encoding: gzip",
    b"Transfer-Encoding: gzip, chunked\r\nTransfer-Encoding: chunked",
    b"Content-Length: 5\r\nContent-Length: 6",
    b"Content-Length: -5",
    b"Content-Length: 99999999999999999999999999",
])
def test_ambiguous_framing_is_refused_400(server: HttpServer, head: bytes) -> None:
    answer = _exchange(server, b"POST /v1/x HTTP/1.1\r\nHost: h\r\n" + head + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert _status(answer) == 400
    assert b"Connection: close" in answer
    assert "Malformed HTTP request" in json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]


def test_garbage_is_one_log_line_and_the_server_goes_on(server: HttpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.embedded_server")
    answer = _exchange(server, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello\r\n\r\n")
    assert _status(answer) == 400
    records = [r for r in caplog.records if r.name.startswith("pipeline.embedded_server")]
    assert len(records) == 1 and records[0].exc_info is None
    assert requests.get(_url(server), timeout=_WAIT_S).status_code == 200


def test_pipelined_requests_are_answered_in_order_on_one_connection(server: HttpServer) -> None:
    answer = _exchange(server, b"GET /v1/a HTTP/1.1\r\nHost: h\r\n\r\nPOST /v1/b HTTP/1.1\r\nHost: h\r\n"
                               b"Content-Length: 3\r\n\r\nabcGET /v1/c HTTP/1.1\r\nHost: h\r\n\r\n", responses=3)
    paths = [json.loads(part.split(b"}")[0] + b"}")["path"] for part in answer.split(b"\r\n\r\n")[1:]]
    assert paths == ["/v1/a", "/v1/b", "/v1/c"]


def test_a_handler_bug_is_a_500_and_the_connection_goes_on(server: HttpServer) -> None:
    with requests.Session() as session:
        assert session.get(_url(server, "/boom"), timeout=_WAIT_S).status_code == 500
        assert session.get(_url(server), timeout=_WAIT_S).status_code == 200


# ------------------------------------------------------------------ time and connections


def test_idle_and_slow_connections_are_closed_after_the_timeout(server: HttpServer) -> None:
    idle = _connect(server)
    slow = _connect(server)
    slow.sendall(b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Le")  # and never the rest
    kept_alive = _connect(server)
    kept_alive.sendall(b"GET /v1/x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert kept_alive.recv(1000).startswith(b"HTTP/1.1 200")
    for sock in (idle, slow, kept_alive):
        assert _closed_by_server(sock)
        sock.close()
    poll_until(lambda: (True if server.connection_count == 0 else None, f"{server.connection_count} open"),
               _WAIT_S, "every connection closed")


def test_a_client_that_does_not_read_its_answer_is_closed(server: HttpServer) -> None:
    with _connect(server) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big-answer HTTP/1.1\r\nHost: h\r\n\r\n")
        time.sleep(0.2)  # the server sends what fits in the socket buffers, then waits for the reader
        poll_until(lambda: (True if server.connection_count == 0 else None, f"{server.connection_count} open"),
                   _WAIT_S, "the stalled reader closed")


def test_connections_share_a_fixed_pool_of_worker_threads(server: HttpServer) -> None:
    def workers() -> int:
        return sum(thread.name.startswith("test-http-") for thread in threading.enumerate())

    assert workers() == 4
    sockets = [_connect(server) for _ in range(200)]
    try:
        with requests.Session() as session:
            assert session.get(_url(server), timeout=_WAIT_S).status_code == 200
        assert workers() == 4  # not one thread per connection
    finally:
        for sock in sockets:
            sock.close()


def test_past_max_connections_the_idlest_is_closed_and_new_clients_are_served() -> None:
    server = _start(max_connections=10, timeout_s=600.0)
    try:
        hogs = [_connect(server) for _ in range(30)]
        for _ in range(5):
            assert requests.get(_url(server), timeout=_WAIT_S).status_code == 200
        assert server.connection_count <= 10
        assert _closed_by_server(hogs[0])  # the oldest idle ones went first
        for sock in hogs:
            sock.close()
    finally:
        server.stop()
