"""The keep-alive REST transport: one write per request, reuse, reconnects, and requests-style errors."""

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from pipeline.serving.http_transport import KeepAliveSession


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: set = set()

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Echo.connections.add(self.client_address)
        reply = b'{"echo": ' + body + b"}"
        self.send_response(200 if self.path != "/missing" else 404)
        self.send_header("Content-Length", str(len(reply)))
        self.send_header("X-Request-Id", self.headers.get("X-Request-Id", "none"))
        if self.path == "/close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Echo.connections = set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_requests_reuse_one_connection(server):
    session = KeepAliveSession(server)
    for i in range(5):
        answer = session.request("POST", f"{server}/x", data=str(i), timeout=5)
        assert answer.status_code == 200 and answer.json() == {"echo": i}
    assert len(_Echo.connections) == 1
    session.close()


def test_a_closed_connection_is_reopened(server):
    session = KeepAliveSession(server)
    assert session.request("POST", f"{server}/close", data="1", timeout=5).json() == {"echo": 1}
    assert session.request("POST", f"{server}/x", data="2", timeout=5).json() == {"echo": 2}
    assert len(_Echo.connections) == 2


def test_answer_headers_are_kept(server):
    session = KeepAliveSession(server)
    answer = session.request("POST", f"{server}/x", data="1", headers={"X-Request-Id": "abc-1"}, timeout=5)
    assert answer.headers["X-Request-Id"] == "abc-1"
    session.close()


def test_error_status_is_returned_not_raised(server):
    answer = KeepAliveSession(server).request("POST", f"{server}/missing", data="3", timeout=5)
    assert answer.status_code == 404 and answer.text == '{"echo": 3}'


def test_refused_connection_is_a_connection_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(requests.ConnectionError):
        KeepAliveSession(f"http://127.0.0.1:{port}").get(f"http://127.0.0.1:{port}/v1/models/x", timeout=1)


def test_silent_server_is_a_timeout():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(requests.Timeout):
            KeepAliveSession(url).get(f"{url}/v1/models/x", timeout=0.3)


def test_only_plain_http_urls():
    with pytest.raises(ValueError, match="http://host:port"):
        KeepAliveSession("https://example.invalid")
