"""``--serving_processes=N``: N processes serve the same REST and gRPC ports as one server.

TF Serving is one multi-threaded C++ process. This server's request path is Python, and one interpreter runs
Python on one core at a time: on 2 cores a single process tops out near one core of request handling. With N
processes, each with its own copy of the models, the kernel spreads client connections over them (SO_REUSEPORT).

To clients and to the pipeline the processes are one server:

* The first process (the one started) loads the initial config, then starts the others and waits until each has
  joined. Joining = the first process hands it the config in effect (:data:`APPLY`), and the process loaded it.
* Every admin request, on any process's public ports, is answered by the first process through its private peer
  port: a config reload is applied there and then in every other process, one after the other, under one lock, so
  it returns once all of them serve it (a late joiner gets the config in effect); model status is the first
  process's, held back where another process has not caught up (a version AVAILABLE in one and still loading in
  another is LOADING); the metrics page is the sum of every process's cells.
* ``--model_config_file_poll_wait_seconds`` runs in the first process only (through the same reload); each
  process polls the version directories itself, as it serves from them.
* The first process restarts another that exits (it rejoins with the config in effect); one that fails a reload
  is stopped and restarted the same way; the others stop when the first one goes.

The peer ports listen on 127.0.0.1 only. Like TF Serving's own admin API they have no authentication: only the
pipeline's host may reach them (see the README on keeping the serving ports private).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from pipeline.embedded_server import api
from pipeline.embedded_server.metrics import snapshot_from_json, snapshot_to_json
from pipeline.errors import DeadlineExceeded
from pipeline.util.polling import poll_until
from pipeline.wire.status import ServingError

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.embedded_server.flags import ServerOptions
    from pipeline.embedded_server.manager import ModelManager
    from pipeline.embedded_server.metrics import ServerMetrics

log = logging.getLogger(__name__)

PEER_SERVICE = "pipeline.embedded_server.Peer"
JOIN, METRICS = "Join", "Metrics"  # on the first process: a process joins; the summed metrics page
APPLY, STATUS, SNAPSHOT = "Apply", "Status", "Snapshot"  # on the others: load a config; own status; own metrics
_PEER_HOST = "127.0.0.1"
_PEER_THREADS = 4
_JOIN_TIMEOUT_S = 600.0  # a joiner loads every model first (seconds each; minutes on a busy 2-core machine)
_APPLY_TIMEOUT_S = 600.0
_ADMIN_TIMEOUT_S = 60.0
_WATCH_S = 0.5
_RESTART_BACKOFF_S = (1.0, 30.0)  # first wait, most
_STOP_GRACE_S = 10.0


# ------------------------------------------------------------------ the private peer port


def start_peer_server(methods: dict[str, Callable[[bytes], bytes]], services: Callable[[grpc.Server], None] | None
                      = None) -> tuple[grpc.Server, str]:
    """A gRPC server on 127.0.0.1 (any free port) with ``methods`` (raw bytes in and out) under
    :data:`PEER_SERVICE`, plus whatever ``services`` adds; the server and its address."""
    from pipeline.embedded_server.grpc_services import answer_rpc

    def handler(function: Callable[[bytes], bytes]) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: answer_rpc(context, lambda: function(request)))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=_PEER_THREADS, thread_name_prefix="peer"))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        PEER_SERVICE, {name: handler(function) for name, function in methods.items()}),))
    if services is not None:
        services(server)
    port = server.add_insecure_port(f"{_PEER_HOST}:0")
    if not port:
        raise OSError(f"could not bind a peer port on {_PEER_HOST}")
    server.start()
    return server, f"{_PEER_HOST}:{port}"


def call_peer(channel: grpc.Channel, method: str, request: bytes, timeout_s: float) -> bytes:
    """One raw call to a peer port.

    Raises:
        ServingError: the peer's status (UNAVAILABLE when it cannot be reached).
    """
    try:
        return channel.unary_unary(f"/{PEER_SERVICE}/{method}")(request, timeout=timeout_s)
    except grpc.RpcError as exc:
        raise _error_of(exc, f"serving process at {method}: ") from None


def _error_of(exc: grpc.RpcError, prefix: str = "") -> ServingError:
    """A failed call to another serving process as a ServingError of the same status."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return ServingError(code.name, prefix + (details or ""))


# ------------------------------------------------------------------ the first process


class _Member:
    """Another serving process, as the first one sees it."""

    def __init__(self, index: int, process: subprocess.Popen):
        self.index = index
        self.process = process
        self.channel: grpc.Channel | None = None  # set when it joined
        self.failures = 0
        self.restart_at = 0.0


class ProcessGroup:
    """The first process's side: starts the others, keeps them serving its config, answers admin for all.

    Implements :class:`pipeline.embedded_server.admin.Admin`.

    Example::

        group = ProcessGroup(options, manager, metrics)
        ... public servers built with admin=group, reuse_port=True, started ...
        group.start(grpc_port, rest_port)   # returns once every process serves
        group.stop()
    """

    def __init__(self, options: ServerOptions, manager: ModelManager, metrics: ServerMetrics | None):
        if not options.argv:
            raise ServingError("INVALID_ARGUMENT", "--serving_processes above 1 needs the server's command line "
                                                   "(start it with python -m pipeline.embedded_server)")
        self.options = options
        self.manager = manager
        self.metrics = metrics
        self._lock = threading.RLock()  # one reload or join at a time, across every process
        self._members: dict[int, _Member] = {}  # by index, 1..N-1
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._server: grpc.Server | None = None
        self.address = ""
        self._ports = (0, 0)
        self._cpus: list[int] = []  # with --pin_serving_processes: the CPUs to hand out, round robin

    # ---- lifecycle

    def start(self, grpc_port: int, rest_port: int | None, timeout_s: float = _JOIN_TIMEOUT_S) -> None:
        """Start the other processes on these ports; return once all of them joined.

        Raises:
            ServingError: UNAVAILABLE when one exits or does not join in time.
        """
        from tensorflow_serving.apis import model_service_pb2_grpc

        from pipeline.embedded_server.grpc_services import ModelService

        self._ports = (grpc_port, rest_port or 0)
        self._cpus = sorted(os.sched_getaffinity(0)) if self.options.pin_serving_processes else []
        self._server, self.address = start_peer_server(
            {JOIN: self._join, METRICS: lambda _: self.metrics_page()},
            lambda server: model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self), server))
        for index in range(1, self.options.serving_processes):
            self._members[index] = _Member(index, self._spawn(index))
        try:
            poll_until(self._all_joined, timeout_s, "the serving processes did not all join", interval_s=0.1)
        except DeadlineExceeded as exc:
            raise ServingError("UNAVAILABLE", str(exc)) from None
        if self._cpus:  # every thread this process has, and those they start from now on
            pin_to_cpu(self._cpus[0])
        self._watcher = threading.Thread(target=self._watch, name="serving-processes", daemon=True)
        self._watcher.start()
        log.info("%d serving processes share gRPC port %d and REST port %s", self.options.serving_processes,
                 grpc_port, rest_port or "off")

    def _all_joined(self) -> tuple[bool | None, str]:
        for member in self._members.values():
            if member.process.poll() is not None:
                raise ServingError("UNAVAILABLE", f"serving process {member.index} exited with "
                                                  f"{member.process.returncode} while starting (see its log)")
        waiting = [member.index for member in self._members.values() if member.channel is None]
        return (None if waiting else True), f"waiting for process(es) {waiting}"

    def stop(self) -> None:
        """Stop the others (SIGTERM, then SIGKILL after a grace period) and the peer port; idempotent."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        for member in self._members.values():
            if member.process.poll() is None:
                member.process.terminate()
        deadline = time.monotonic() + _STOP_GRACE_S
        for member in self._members.values():
            try:
                member.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait(timeout=5)
            if member.channel is not None:
                member.channel.close()
        if self._server is not None:
            self._server.stop(1.0)
            self._server = None

    def _spawn(self, index: int) -> subprocess.Popen:
        grpc_port, rest_port = self._ports
        argv = [sys.executable, "-m", "pipeline.embedded_server", *self.options.argv,
                f"--port={grpc_port}", f"--rest_api_port={rest_port}", f"--serving_process_of={index}@{self.address}",
                "--model_config_file_poll_wait_seconds=0"]  # the config file is polled by the first process only
        if self._cpus:
            argv.append(f"--serving_process_cpu={self._cpus[index % len(self._cpus)]}")
        if self.options.log_file:
            log_file = Path(self.options.log_file)
            argv.append(f"--log_file={log_file.with_name(f'{log_file.stem}-process{index}{log_file.suffix}')}")
        log.info("starting serving process %d", index)
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def _watch(self) -> None:
        """Restart a process that exited (with a growing wait when it keeps failing)."""
        while not self._stopping.wait(_WATCH_S):
            for member in list(self._members.values()):
                if member.process.poll() is None:
                    continue
                now = time.monotonic()
                if member.restart_at == 0.0:
                    with self._lock:
                        channel, member.channel = member.channel, None
                    if channel is not None:
                        channel.close()
                    first, most = _RESTART_BACKOFF_S
                    wait_s = min(most, first * 2 ** member.failures)
                    member.failures += 1
                    member.restart_at = now + wait_s
                    log.error("serving process %d exited with %s; restarting it in %.0fs", member.index,
                              member.process.returncode, wait_s)
                elif now >= member.restart_at and not self._stopping.is_set():
                    member.process = self._spawn(member.index)
                    member.restart_at = 0.0

    # ---- joining

    def _join(self, request: bytes) -> bytes:
        """A process asks to join: it gets the config in effect, and every reload from now on."""
        index_text, address = request.decode().split(" ", 1)
        member = self._members.get(int(index_text))
        if member is None:
            raise ServingError("INVALID_ARGUMENT", f"no serving process {index_text}")
        channel = grpc.insecure_channel(address)
        with self._lock:
            try:
                call_peer(channel, APPLY, self.manager.config.SerializeToString(), _APPLY_TIMEOUT_S)
            except ServingError:
                channel.close()
                raise
            member.channel = channel
            member.failures = 0
        log.info("serving process %d joined (pid %d)", member.index, member.process.pid)
        return b""

    def _joined(self) -> list[_Member]:
        return [member for member in self._members.values() if member.channel is not None]

    # ---- admin, for every process

    def reload_config(self, config: Any) -> None:
        """Apply ``config`` here, then in each other process; this process's error (if any) is raised.

        A process that fails to apply it is stopped (and restarted with the config in effect): no process keeps
        serving an old config.
        """
        with self._lock:
            error: Exception | None = None
            try:
                self.manager.apply_config(config)
            except Exception as exc:  # the others still get what this one now serves
                error = exc
            payload = self.manager.config.SerializeToString()
            for member in self._joined():
                assert member.channel is not None
                try:
                    call_peer(member.channel, APPLY, payload, _APPLY_TIMEOUT_S)
                except ServingError as exc:
                    log.error("serving process %d failed to apply the config (%s); restarting it", member.index,
                              exc.message)
                    member.process.terminate()
            if error is not None:
                raise error

    def model_status(self, request: Any) -> Any:
        """This process's status, with a version held back where another process has not caught up with it."""
        from tensorflow_serving.apis import get_model_status_pb2

        response = api.get_model_status(self.manager, request)
        payload = request.SerializeToString()
        for member in self._joined():
            assert member.channel is not None
            try:
                theirs = get_model_status_pb2.GetModelStatusResponse.FromString(
                    call_peer(member.channel, STATUS, payload, _ADMIN_TIMEOUT_S))
            except ServingError as exc:
                if exc.code == "UNAVAILABLE":  # it is gone (and restarting): it serves nothing meanwhile
                    continue
                theirs = get_model_status_pb2.GetModelStatusResponse()  # it has none of these versions yet
            merge_status(response, theirs)
        return response

    def metrics_page(self) -> bytes:
        if self.metrics is None:
            return b""
        snapshots = []
        for member in self._joined():
            assert member.channel is not None
            try:
                snapshots.append(snapshot_from_json(call_peer(member.channel, SNAPSHOT, b"", _ADMIN_TIMEOUT_S)))
            except ServingError as exc:
                log.warning("no metrics from serving process %d: %s", member.index, exc.message)
        return self.metrics.render(snapshots)


def merge_status(response: Any, theirs: Any) -> None:
    """Hold back, in ``response`` (the first process's ``GetModelStatusResponse``), each version that another
    process (``theirs``) has not caught up with: AVAILABLE here but not there is LOADING; gone here but still
    AVAILABLE there is UNLOADING. Their error, if any, is kept."""
    from tensorflow_serving.apis import get_model_status_pb2

    state_name = get_model_status_pb2.ModelVersionStatus.State.Name
    state_value = get_model_status_pb2.ModelVersionStatus.State.Value
    other = {entry.version: entry for entry in theirs.model_version_status}
    for entry in response.model_version_status:
        mine = state_name(entry.state)
        seen = other.get(entry.version)
        there = state_name(seen.state) if seen is not None else "START"
        if mine == "AVAILABLE" and there in ("START", "LOADING"):
            entry.state = state_value("LOADING")
        elif mine in ("UNLOADING", "END") and there == "AVAILABLE":
            entry.state = state_value("UNLOADING")
        if seen is not None and seen.status.error_code and not entry.status.error_code:
            entry.status.CopyFrom(seen.status)


# ------------------------------------------------------------------ the other processes


class MemberPeer:
    """Another process's private port: the first process loads configs and reads status and metrics here."""

    def __init__(self, manager: ModelManager, metrics: ServerMetrics | None):
        self.manager = manager
        self.metrics = metrics
        self._server, self.address = start_peer_server({APPLY: self._apply, STATUS: self._status,
                                                         SNAPSHOT: self._snapshot})

    def _apply(self, request: bytes) -> bytes:
        from tensorflow_serving.config import model_server_config_pb2

        config = model_server_config_pb2.ModelServerConfig.FromString(request)
        if self.manager.config is None:  # joining: labels may only name loaded versions (TF Serving's rule)
            unlabelled = model_server_config_pb2.ModelServerConfig()
            unlabelled.CopyFrom(config)
            for model in unlabelled.model_config_list.config:
                model.ClearField("version_labels")
            self.manager.apply_config(unlabelled)
        self.manager.apply_config(config)
        return b""

    def _status(self, request: bytes) -> bytes:
        from tensorflow_serving.apis import get_model_status_pb2

        status_request = get_model_status_pb2.GetModelStatusRequest.FromString(request)
        return api.get_model_status(self.manager, status_request).SerializeToString()

    def _snapshot(self, _: bytes) -> bytes:
        return snapshot_to_json(self.metrics.snapshot()) if self.metrics is not None else b"{}"

    def stop(self) -> None:
        self._server.stop(1.0)


class FirstProcessAdmin:
    """Admin in another process: every request is answered by the first process, for all of them.

    Implements :class:`pipeline.embedded_server.admin.Admin`.
    """

    def __init__(self, address: str):
        from tensorflow_serving.apis import model_service_pb2_grpc

        self.address = address
        self._channel = grpc.insecure_channel(address)
        self._stub = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def join(self, index: int, own_address: str, timeout_s: float = _JOIN_TIMEOUT_S) -> None:
        """Join the first process; it has loaded its config here (through :data:`APPLY`) when this returns."""
        call_peer(self._channel, JOIN, f"{index} {own_address}".encode(), timeout_s)

    def model_status(self, request: Any) -> Any:
        return self._forward(lambda: self._stub.GetModelStatus(request, timeout=_ADMIN_TIMEOUT_S))

    def reload_config(self, config: Any) -> None:
        from tensorflow_serving.apis import model_management_pb2

        request = model_management_pb2.ReloadConfigRequest(config=config)
        self._forward(lambda: self._stub.HandleReloadConfigRequest(request, timeout=_APPLY_TIMEOUT_S))

    def metrics_page(self) -> bytes:
        return call_peer(self._channel, METRICS, b"", _ADMIN_TIMEOUT_S)

    @staticmethod
    def _forward(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except grpc.RpcError as exc:
            raise _error_of(exc) from None


def pin_to_cpu(cpu: int) -> None:
    """Run every thread of this process on ``cpu`` (threads started later inherit it from their starter)."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for tid in threads:
        try:
            os.sched_setaffinity(tid, {cpu})
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
    log.info("serving process pinned to CPU %d", cpu)


def member_of(value: str) -> tuple[int, str]:
    """``--serving_process_of``'s ``<index>@<host:port>``: which process this is, and the first one's peer port."""
    index, _, address = value.partition("@")
    if not index.isdigit() or int(index) < 1 or not address:
        raise ServingError("INVALID_ARGUMENT", f"--serving_process_of must be <index>@<host:port>, not {value!r}")
    return int(index), address
