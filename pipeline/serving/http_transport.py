"""A small keep-alive HTTP transport for the TF Serving REST API, shaped like the slice of
``requests.Session`` the client uses (``request``, ``get``, ``close``; responses with ``status_code``,
``json()``, ``text``, ``reason``; errors as ``requests.Timeout`` / ``requests.ConnectionError``).

Why not requests itself: for a batch-1 predict, urllib3 sends the headers and the body in separate
writes, and the second waits on the first's delayed ACK: about 3 ms a call on loopback, five times what
the model takes. ``http.client`` sends a small request in one write. One connection per thread, reused;
a connection the server closed is reopened once. TF Serving endpoints are reached directly (no proxy).
"""

from __future__ import annotations

import http.client
import json
import threading
from typing import Any
from urllib.parse import urlsplit

import msgspec
import requests

_DECODER = msgspec.json.Decoder()


class Response:
    """What the client reads of an HTTP answer."""

    def __init__(self, status_code: int, reason: str, content: bytes, headers: dict[str, str] | None = None):
        self.status_code = status_code
        self.reason = reason
        self.content = content
        self.headers = headers or {}  # e.g. the proxy's X-Request-Id

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        try:
            return _DECODER.decode(self.content)  # fast; TF Serving may write NaN/Infinity, which json reads
        except msgspec.DecodeError:
            return json.loads(self.content)


class KeepAliveSession:
    """Per-thread persistent ``http.client`` connections to one ``http://host:port``."""

    def __init__(self, base_url: str):
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected http://host:port, got {base_url!r}")
        self._host, self._port = parts.hostname, parts.port or 80
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._guard = threading.Lock()

    def request(self, method: str, url: str, data: bytes | str | None = None, headers: dict | None = None,
                timeout: float | None = None) -> Response:
        path = url[url.index("/", len("http://")):] if url.startswith("http://") else url
        body = data.encode("utf-8") if isinstance(data, str) else data
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                conn.request(method, path, body=body, headers=headers or {})
                answer = conn.getresponse()
                return Response(answer.status, answer.reason, answer.read(), dict(answer.getheaders()))
            except TimeoutError as exc:
                self._drop(conn)
                raise requests.Timeout(f"no answer from {self._host}:{self._port} within {timeout}s") from exc
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop(conn)  # the server closed an idle keep-alive connection: reopen once
                if attempt == 2:
                    raise requests.ConnectionError(str(exc)) from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop(conn)
                raise requests.ConnectionError(f"{self._host}:{self._port}: {exc}") from exc
        raise AssertionError("unreachable")

    def get(self, url: str, timeout: float | None = None) -> Response:
        return self.request("GET", url, timeout=timeout)

    def close(self) -> None:
        with self._guard:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self._host, self._port)
            self._local.conn = conn
            with self._guard:
                self._all.append(conn)
        return conn

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        self._local.conn = None
        with self._guard:
            if conn in self._all:
                self._all.remove(conn)
