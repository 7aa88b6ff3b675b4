"""HTTP/1.1 for the REST API: epoll, a fixed pool of worker threads, httptools to parse, a limit on everything.

TF Serving runs its REST API on libevent with ``--rest_api_num_threads`` workers; this server keeps that shape:

* ``threads`` workers wait on one epoll set. Each event goes to one worker (``EPOLLONESHOT``), which reads what
  the socket holds, parses it, runs the handler once a request is complete, and re-arms the socket. No thread per
  connection: an idle or slow connection costs a file descriptor, never a thread.
* A request head over ``max_header_bytes`` is answered 431; a body over ``max_body_bytes`` 413, from its
  Content-Length before any of the body is read (and before ``100 Continue``), or for a chunked body as soon as
  the decoded size passes the limit. Chunked bodies are decoded. Transfer-Encoding together with Content-Length,
  a Transfer-Encoding other than chunked, or two Content-Lengths are refused 400 (the request smuggling shapes;
  httptools' llhttp refuses them).
* A connection is closed when it takes longer than ``timeout_s`` to send a whole request, stays idle that long
  between requests, or does not read its answer for that long.
* At most ``max_connections`` are open (by default three quarters of the file-descriptor limit, which leaves the
  rest to gRPC, model loads and the file-system poller); one more closes the connection idle the longest.
  ``accept`` failing with EMFILE/ENFILE does the same and pauses accepting for a moment, so a full descriptor
  table delays new connections instead of breaking the server.

Client mistakes are logged in one line each, never with a traceback. Linux only (epoll), as TF Serving.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import resource
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

import httptools

log = logging.getLogger(__name__)

_RECV_BYTES = 256 << 10
_READS_PER_EVENT = 16  # then the socket goes back to epoll, so one fast uploader cannot hog a worker
_ACCEPTS_PER_EVENT = 64
_POLL_S = 0.25
_SWEEP_EVERY_S = 0.25
_ACCEPT_PAUSE_S = 0.1  # after EMFILE with nothing to evict
_DRAIN_S = 5.0  # how long a refused upload is read and dropped before the connection closes
_WARN_EVERY_S = 10.0
_BACKLOG = 1024
_DEFAULT_MAX_HEADER_BYTES = 64 << 10
_RESERVED_FDS_FRACTION = 4  # a quarter of the descriptor limit stays free for the rest of the process
_MIN_RESERVED_FDS = 64
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_IN = select.EPOLLIN | select.EPOLLONESHOT
_OUT = select.EPOLLOUT | select.EPOLLONESHOT


@dataclass(frozen=True)
class HttpRequest:
    """One complete request."""

    method: str
    path: str  # the request target as sent (query included)
    body: bytes | bytearray
    peer: str
    keep_alive: bool = True


@dataclass(frozen=True)
class HttpResponse:
    status: int
    payload: bytes
    content_type: str = "application/json"


Handler = Callable[[HttpRequest], HttpResponse]
ErrorBody = Callable[[str], bytes]  # an error message -> the body of a refusal (TF Serving's {"error": ...})


@dataclass(frozen=True)
class HttpLimits:
    """What one server takes. ``max_connections`` None: three quarters of the file-descriptor limit."""

    max_body_bytes: int
    timeout_s: float
    max_header_bytes: int = _DEFAULT_MAX_HEADER_BYTES
    max_connections: int | None = None


def default_max_connections() -> int:
    """Three quarters of this process's soft file-descriptor limit (at least 16)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 65536
    return max(16, soft - max(_MIN_RESERVED_FDS, soft // _RESERVED_FDS_FRACTION))


class _ClientError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _Connection:
    """One client connection: its socket, its parser and the request being received (httptools callbacks)."""

    def __init__(self, sock: socket.socket, peer: str, limits: HttpLimits, now: float):
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.limits = limits
        self.parser = httptools.HttpRequestParser(self)
        self.ready: collections.deque[HttpRequest] = collections.deque()
        self.out: memoryview | None = None
        self.close_after_write = False
        self.busy = False
        self.closed = False
        self.upgraded = False  # the client asked to switch protocols: answer, then close
        self.last_activity = now
        self.request_started: float | None = None  # when the request now arriving began
        self.send_continue = False
        self.draining_until: float | None = None  # refused: read and drop the rest of its upload until then
        self.shut = False  # our side is shut down (the refusal is sent)
        self._reset_message()

    def _reset_message(self) -> None:
        self._url = bytearray()
        self._head_bytes = 0
        self._received_in_head = 0
        self._body = bytearray()
        self._content_length = 0
        self._expect_continue = False
        self._keep_alive = True
        self._in_head = False
        self._error: _ClientError | None = None

    # ---- httptools callbacks

    def on_message_begin(self) -> None:
        self._reset_message()
        self._in_head = True
        self.request_started = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        name = name.lower()
        if name == b"content-length":  # llhttp has checked it: digits, no second one
            self._content_length = int(value.strip() or b"0")
        elif name == b"expect" and value.strip().lower() == b"100-continue":
            self._expect_continue = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._keep_alive = self.parser.should_keep_alive()
        length = self._content_length
        if length > self.limits.max_body_bytes:
            self._fail(413, f"Request body of {length} bytes is larger than the limit of "
                            f"{self.limits.max_body_bytes} bytes (--max_request_bytes)")
        if self._expect_continue:
            self.send_continue = True

    def on_body(self, body: bytes) -> None:
        if len(self._body) + len(body) > self.limits.max_body_bytes:
            self._fail(413, f"Request body is larger than the limit of {self.limits.max_body_bytes} bytes "
                            "(--max_request_bytes)")
        self._body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("ascii", "replace")
        self.ready.append(HttpRequest(method, self._url.decode("latin-1"), self._body, self.peer, self._keep_alive))
        self.request_started = None
        self._body = bytearray()

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.limits.max_header_bytes:
            self._fail(431, f"Request head is larger than {self.limits.max_header_bytes} bytes")

    def _fail(self, status: int, message: str) -> None:
        self._error = _ClientError(status, message)
        raise self._error

    # ---- input

    def feed(self, data: bytes) -> None:
        """Parse received bytes; complete requests land in :attr:`ready`.

        Raises:
            _ClientError: the request is refused (status and message).
        """
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgraded = True  # the request before the switch is in `ready`; we do not switch
        except httptools.HttpParserCallbackError:
            if self._error is not None:
                raise self._error from None
            raise
        except httptools.HttpParserError as exc:
            raise _ClientError(400, f"Malformed HTTP request: {exc}") from None
        if self._in_head:  # a head still incomplete: httptools holds its pieces, so count what it was given
            self._count_head_bytes_received(len(data))

    def _count_head_bytes_received(self, size: int) -> None:
        self._received_in_head += size
        if self._received_in_head > self.limits.max_header_bytes:
            raise _ClientError(431, f"Request head is larger than {self.limits.max_header_bytes} bytes")


class HttpServer:
    """Serves ``handler`` on ``host:port`` (port 0: any free port) with ``threads`` workers.

    Example::

        server = HttpServer("127.0.0.1", 0, handler, threads=16, limits=HttpLimits(64 << 20, 30.0),
                            error_body=lambda message: b'{"error": "..."}')
        server.start(); ... server.port ...; server.stop()
    """

    def __init__(self, host: str, port: int, handler: Handler, *, threads: int, limits: HttpLimits,
                 error_body: ErrorBody, name: str = "rest", reuse_port: bool = False):
        self._handler = handler
        self._limits = limits
        self._error_body = error_body
        self._name = name
        self._threads_wanted = max(1, threads)
        self._max_connections = limits.max_connections or default_max_connections()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # reuse_port: other processes serve the same port (--serving_processes); the kernel spreads connections
        self._listener = socket.create_server((host, port), family=family, backlog=_BACKLOG, reuse_port=reuse_port)
        self._listener.setblocking(False)
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe()
        self._epoll.register(self._wake_r, select.EPOLLIN)  # level-triggered: wakes every worker at stop
        self._epoll.register(self._listener.fileno(), _IN)
        self._lock = threading.RLock()  # guards the connection table and each connection's busy/closed flags
        self._connections: collections.OrderedDict[int, _Connection] = collections.OrderedDict()  # oldest first
        self._workers: list[threading.Thread] = []
        self._stopping = False
        self._accept_paused_until = 0.0
        self._next_sweep = 0.0
        self._sweeping = threading.Lock()
        self._last_warning = 0.0
        self._suppressed_warnings = 0

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def start(self) -> None:
        for index in range(self._threads_wanted):
            worker = threading.Thread(target=self._work, name=f"{self._name}-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, let the workers finish the request they are on, close every connection."""
        self._stopping = True
        os.write(self._wake_w, b"x")
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            for connection in list(self._connections.values()):
                self._close(connection)
        self._listener.close()
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ---- the worker loop

    def _work(self) -> None:
        while not self._stopping:
            try:
                events = self._epoll.poll(_POLL_S, 1)  # one event at a time: work spreads over the workers
            except InterruptedError:
                continue
            except (OSError, ValueError):  # the epoll set was closed by stop()
                return
            for fd, mask in events:
                if self._stopping:
                    return
                if fd == self._listener.fileno():
                    self._accept()
                elif fd != self._wake_r:
                    self._serve(fd, mask)
            self._maybe_sweep()

    def _serve(self, fd: int, mask: int) -> None:
        with self._lock:
            connection = self._connections.get(fd)
            if connection is None or connection.busy or connection.closed:
                return  # a stale event (closed, or being served: its worker re-arms it)
            connection.busy = True
            self._connections.move_to_end(fd)
        try:
            self._process(connection, mask)
        except Exception:  # a bug here must cost one connection, never a worker
            log.exception("%s: error serving %s", self._name, connection.peer)
            self._close(connection)
        finally:
            with self._lock:
                connection.busy = False
                if not connection.closed:
                    self._rearm(connection)

    def _rearm(self, connection: _Connection) -> None:
        try:
            self._epoll.modify(connection.fd, _OUT if connection.out is not None else _IN)
        except OSError:
            self._close(connection)

    def _process(self, connection: _Connection, mask: int) -> None:
        if connection.out is not None:
            if not self._flush(connection):
                return
            if connection.close_after_write:
                self._finish(connection)
                return
        elif mask & select.EPOLLIN or mask & (select.EPOLLHUP | select.EPOLLERR):
            if not self._read(connection):
                return
        self._answer(connection)

    def _read(self, connection: _Connection) -> bool:
        """Read what the socket holds (a bounded amount); False when the connection is done with."""
        for _ in range(_READS_PER_EVENT):
            try:
                data = connection.sock.recv(_RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self._close(connection)
                return False
            if not data:  # the client closed its side
                self._close(connection)
                return False
            connection.last_activity = time.monotonic()
            if connection.draining_until is not None:
                continue  # the rest of a refused upload: dropped
            try:
                connection.feed(data)
            except _ClientError as exc:
                self._refuse(connection, exc.status, exc.message)
                return False
            if connection.send_continue:
                connection.send_continue = False
                self._send(connection, _CONTINUE)
                if connection.out is not None:
                    return False
            if connection.ready or connection.upgraded:
                return True
        return True

    def _answer(self, connection: _Connection) -> None:
        """Answer the complete requests in order (one at a time: the next waits until the answer is sent)."""
        while connection.ready and connection.out is None and not connection.closed:
            request = connection.ready.popleft()
            response = self._respond(request)
            keep_alive = request.keep_alive and not connection.upgraded and not self._stopping
            if not keep_alive:
                connection.ready.clear()
                connection.close_after_write = True
            self._send(connection, _response_bytes(response, keep_alive))
        if connection.close_after_write and connection.out is None and not connection.closed:
            self._finish(connection)

    def _finish(self, connection: _Connection) -> None:
        """Close after the last answer; a refused request's unread upload is drained first (lingering close),
        so that the client, still sending, reads the refusal instead of a connection reset."""
        if connection.draining_until is None:
            self._close(connection)
            return
        if connection.shut:
            return
        connection.shut = True
        try:
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(connection)

    def _respond(self, request: HttpRequest) -> HttpResponse:
        try:
            return self._handler(request)
        except Exception:  # the handler should never raise; if it does, the client gets a 500
            log.exception("%s: handler failed for %s %s", self._name, request.method, request.path[:200])
            return HttpResponse(500, self._error_body("Internal error"))

    def _refuse(self, connection: _Connection, status: int, message: str) -> None:
        log.info("%s: %s %d %s", self._name, connection.peer, status, message[:300])
        connection.ready.clear()
        connection.close_after_write = True
        connection.draining_until = time.monotonic() + min(self._limits.timeout_s, _DRAIN_S)
        self._send(connection, _response_bytes(HttpResponse(status, self._error_body(message)), keep_alive=False))
        if connection.out is None:
            self._finish(connection)

    # ---- output

    def _send(self, connection: _Connection, data: bytes) -> None:
        connection.out = memoryview(data)
        self._flush(connection)

    def _flush(self, connection: _Connection) -> bool:
        """Send what is pending; True when all of it went (False: wait for EPOLLOUT, or the connection is closed)."""
        while connection.out is not None:
            try:
                sent = connection.sock.send(connection.out)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                self._close(connection)
                return False
            connection.last_activity = time.monotonic()
            connection.out = connection.out[sent:] if sent < len(connection.out) else None
        return True

    # ---- connections

    def _accept(self) -> None:
        paused = False
        try:
            for _ in range(_ACCEPTS_PER_EVENT):
                try:
                    sock, address = self._listener.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if exc.errno in _EXHAUSTED:
                        paused = not self._evict_idlest()
                        self._warn(f"accept() failed: {os.strerror(exc.errno or 0)}; "
                                   f"{len(self._connections)} connections open")
                        if paused:
                            return
                        continue
                    continue  # ECONNABORTED and the like: that client is gone
                self._add(sock, address)
        finally:
            with self._lock:
                if paused:
                    self._accept_paused_until = time.monotonic() + _ACCEPT_PAUSE_S
                elif not self._stopping:
                    self._arm_listener()

    def _arm_listener(self) -> None:
        try:
            self._epoll.modify(self._listener.fileno(), _IN)
        except (OSError, ValueError):
            pass  # closed by stop()

    def _add(self, sock: socket.socket, address: object) -> None:
        peer = _peer_name(address)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()
            return
        with self._lock:
            if len(self._connections) >= self._max_connections and not self._evict_idlest():
                self._warn(f"{len(self._connections)} connections open, all busy; refusing {peer}")
                sock.close()
                return
            connection = _Connection(sock, peer, self._limits, time.monotonic())
            self._connections[connection.fd] = connection
            try:
                self._epoll.register(connection.fd, _IN)
            except OSError:
                self._close(connection)

    def _evict_idlest(self) -> bool:
        """Close the connection idle the longest (not one being served); whether there was one."""
        with self._lock:
            for connection in self._connections.values():
                if not connection.busy:
                    self._close(connection)
                    return True
        return False

    def _close(self, connection: _Connection) -> None:
        with self._lock:
            if connection.closed:
                return
            connection.closed = True
            if self._connections.get(connection.fd) is connection:
                del self._connections[connection.fd]
            try:
                self._epoll.unregister(connection.fd)
            except (OSError, ValueError):
                pass
        try:
            connection.sock.close()
        except OSError:
            pass

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep or not self._sweeping.acquire(blocking=False):
            return
        try:
            self._next_sweep = now + _SWEEP_EVERY_S
            self._sweep(now)
        finally:
            self._sweeping.release()

    def _sweep(self, now: float) -> None:
        """Close connections past their timeout; resume accepting after a pause."""
        timeout = self._limits.timeout_s
        with self._lock:
            for connection in list(self._connections.values()):
                if connection.busy:
                    continue
                if connection.draining_until is not None:
                    if now > connection.draining_until:
                        self._close(connection)
                elif connection.request_started is not None and now - connection.request_started > timeout:
                    log.info("%s: %s sent no complete request within %gs; closing", self._name, connection.peer,
                             timeout)
                    self._close(connection)
                elif now - connection.last_activity > timeout:
                    self._close(connection)  # idle between requests, or not reading its answer
            if self._accept_paused_until and now >= self._accept_paused_until:
                self._accept_paused_until = 0.0
                self._arm_listener()

    def _warn(self, message: str) -> None:
        """A warning at most every few seconds (a full descriptor table must not flood the log)."""
        now = time.monotonic()
        if now - self._last_warning < _WARN_EVERY_S:
            self._suppressed_warnings += 1
            return
        suppressed, self._suppressed_warnings, self._last_warning = self._suppressed_warnings, 0, now
        log.warning("%s: %s%s", self._name, message, f" ({suppressed} more since the last warning)" if suppressed else "")


def _peer_name(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def _response_bytes(response: HttpResponse, keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = ""
    head = (f"HTTP/1.1 {response.status} {reason}\r\nContent-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.payload)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    return head.encode("latin-1") + response.payload  # one send: no Nagle/delayed-ACK stall
