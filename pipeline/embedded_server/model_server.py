"""The server process: initial config, REST + gRPC front ends, config-file and file-system polling, signals."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.embedded_server.flags import ServerOptions, parse_flags
from pipeline.util.memory import pin_mmap_threshold
from pipeline.util.signals import stop_on_signals
from pipeline.wire.grpc_io import prefer_classic_io
from pipeline.wire.status import ServingError

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.embedded_server.admin import Admin
    from pipeline.embedded_server.batching import BatchScheduler
    from pipeline.embedded_server.metrics import ServerMetrics
    from pipeline.embedded_server.processes import MemberPeer, ProcessGroup
    from pipeline.embedded_server.servable import Servable

log = logging.getLogger(__name__)
_MMAP_THRESHOLD_BYTES = 1 << 20  # blocks this large are mmapped (pipeline.util.memory); batch-1 requests stay below

READY_PREFIX = "ModelServer ready:"  # launchers wait for this line on stdout


def single_model_server_config(name: str, base_path: str) -> Any:
    """The config of ``--model_name``/``--model_base_path``: one model, latest version (TF Serving's default)."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = name, base_path, "tensorflow"
    return config


def read_server_config(path: str) -> Any:
    """Parse a models.config file for the server (errors as INVALID_ARGUMENT / NOT_FOUND statuses)."""
    from pipeline.errors import ConfigError, NotFound
    from pipeline.wire.model_config import read_config

    try:
        return read_config(path)
    except NotFound as exc:
        raise ServingError("NOT_FOUND", str(exc)) from None
    except ConfigError as exc:
        raise ServingError("INVALID_ARGUMENT", str(exc)) from None


def set_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """TF Serving's ``--tensorflow_{intra,inter}_op_parallelism`` (0 leaves TensorFlow's choice).

    They only take effect before this process runs its first TensorFlow op; a server embedded in a process that
    already did (the tests) keeps the threads it has and says so.
    """
    if not intra_op and not inter_op:
        return
    import tensorflow as tf

    threading_config = tf.config.threading
    wanted = [(intra_op, threading_config.get_intra_op_parallelism_threads,
               threading_config.set_intra_op_parallelism_threads),
              (inter_op, threading_config.get_inter_op_parallelism_threads,
               threading_config.set_inter_op_parallelism_threads)]
    for value, get, put in wanted:
        if not value or get() == value:
            continue
        try:
            put(value)
        except RuntimeError:  # "... cannot be modified after initialization"
            log.warning("TensorFlow is already initialized in this process; %s stays %d (asked for %d)",
                        put.__name__, get(), value)


class ModelServer:
    """A TF Serving compatible server, in this process.

    Example::

        server = ModelServer(ServerOptions(port=0, rest_api_port=0, model_name="m", model_base_path="/models/m"))
        server.start()          # loads the initial config, then opens both ports
        ... server.rest_port, server.grpc_port ...
        server.stop()
    """

    def __init__(self, options: ServerOptions):
        from pipeline.embedded_server.admin import LocalAdmin
        from pipeline.embedded_server.manager import ModelManager

        self.options = options
        self.manager = ModelManager(
            allow_version_labels_for_unavailable_models=options.allow_version_labels_for_unavailable_models,
            loader=self._load_servable,
            max_num_load_retries=options.max_num_load_retries,
            load_retry_interval_s=options.load_retry_interval_micros / 1e6)
        self.batching: BatchScheduler | None = None  # set by start() with --enable_batching
        self.metrics: ServerMetrics | None = None  # set by start() when --monitoring_config_file enables Prometheus
        self.metrics_path: str | None = None
        self._grpc: Any = None
        self._rest: Any = None
        # this process's state; start() replaces it with every serving process's under --serving_processes
        self.admin: Admin = LocalAdmin(self.manager)
        self.group: ProcessGroup | None = None  # the first of several --serving_processes: the others
        self._peer: MemberPeer | None = None  # one of the others: its private port
        self._stop = threading.Event()
        self._pollers: list[threading.Thread] = []

    @property
    def grpc_port(self) -> int:
        return self._grpc.port

    @property
    def rest_port(self) -> int | None:
        return self._rest.port if self._rest else None

    def start(self) -> ModelServer:
        """Load the initial config (failing like TF Serving if a version does not load), then serve.

        Raises:
            ServingError: the config or the monitoring config is invalid, or a model failed to load.
            OSError: a port could not be bound.
        """
        from pipeline.embedded_server.grpc_services import GrpcServer
        from pipeline.embedded_server.limits import RequestLimits
        from pipeline.embedded_server.rest import RestServer

        self._start_monitoring()  # first: a bad monitoring file fails before anything loads
        self._start_batching()
        set_tensorflow_threads(self.options.tensorflow_intra_op_parallelism,
                               self.options.tensorflow_inter_op_parallelism)
        limits = RequestLimits(self.options.max_request_bytes, self.options.max_tensor_elements)
        shared = self.options.serving_processes > 1 or self.options.serving_process_of is not None
        try:
            self.admin = self._load_initial_config()
            self._grpc = GrpcServer(self.manager, self.options.bind_address, self.options.port,
                                    self.options.grpc_max_threads, metrics=self.metrics, limits=limits,
                                    admin=self.admin, reuse_port=shared)
            if self.options.rest_api_port is not None:
                self._rest = RestServer(self.manager, self.options.bind_address, self.options.rest_api_port,
                                        metrics=self.metrics, metrics_path=self.metrics_path,
                                        threads=self.options.rest_api_num_threads, limits=limits,
                                        timeout_s=self.options.rest_api_timeout_in_ms / 1000, admin=self.admin,
                                        reuse_port=shared)
            self._grpc.start()
            if self._rest:
                self._rest.start()
            if self.group is not None:
                self.group.start(self.grpc_port, self.rest_port)
        except BaseException:
            self.stop()
            raise
        self._start_pollers()
        return self

    def _load_initial_config(self) -> Admin:
        """Load what this process serves first; who answers its admin requests.

        One process: its own config and state. The first of several: the same, and it answers for all of them.
        One of the others: it joins the first, which hands it the config in effect.
        """
        from pipeline.embedded_server.admin import LocalAdmin
        from pipeline.embedded_server.processes import (
            FirstProcessAdmin,
            MemberPeer,
            ProcessGroup,
            member_of,
            pin_to_cpu,
        )

        if self.options.serving_process_of:
            index, address = member_of(self.options.serving_process_of)
            if self.options.serving_process_cpu is not None:
                pin_to_cpu(self.options.serving_process_cpu)
            self._peer = MemberPeer(self.manager, self.metrics)
            admin = FirstProcessAdmin(address)
            admin.join(index, self._peer.address)
            return admin
        self.manager.apply_config(self._initial_config())
        if self.options.serving_processes > 1:
            self.group = ProcessGroup(self.options, self.manager, self.metrics)
            return self.group
        return LocalAdmin(self.manager, self.metrics)

    def _start_monitoring(self) -> None:
        """Read ``--monitoring_config_file``; with Prometheus enabled, record metrics and serve them over REST."""
        if not self.options.monitoring_config_file:
            return
        from pipeline.embedded_server.metrics import ServerMetrics, prometheus_path, read_monitoring_config

        path = prometheus_path(read_monitoring_config(self.options.monitoring_config_file))
        if path is None:
            return
        if self.options.rest_api_port is None:
            # As in TF Serving, the metrics page lives on the REST port; without one, recording would be waste.
            log.warning("prometheus_config is enabled but the REST API is off (--rest_api_port); no metrics served")
            return
        self.metrics, self.metrics_path = ServerMetrics(), path
        self.manager.metrics = self.metrics

    def _start_batching(self) -> None:
        """``--enable_batching`` / ``--batching_parameters_file``: one scheduler shared by every loaded version."""
        from pipeline.embedded_server.batching import BatchScheduler, batching_options, describe

        options = batching_options(self.options.enable_batching, self.options.batching_parameters_file)
        if options is not None:
            self.batching = BatchScheduler(options)
            log.info("Batching requests: %s", describe(options))

    def _load_servable(self, name: str, version: int, path: Path) -> Servable:
        from pipeline.embedded_server.servable import Servable

        return Servable.load(name, version, path, batching=self.batching)

    def _initial_config(self) -> Any:
        if self.options.model_config_file:
            return read_server_config(self.options.model_config_file)
        if not self.options.model_base_path:
            raise ServingError("INVALID_ARGUMENT", "Both server_model_config_file and model_base_path are empty!")
        return single_model_server_config(self.options.model_name or "default", self.options.model_base_path)

    def _start_pollers(self) -> None:
        if self.options.file_system_poll_wait_seconds > 0:
            self._spawn("fs-poll", self.options.file_system_poll_wait_seconds, self.manager.poll_file_system)
        if self.options.model_config_file and self.options.model_config_file_poll_wait_seconds > 0:
            self._spawn("config-poll", self.options.model_config_file_poll_wait_seconds, self.poll_config_file)

    def _spawn(self, name: str, interval_s: float, action: Any) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    action()
                except OSError as exc:  # e.g. EMFILE with the descriptor table full: one line, try again later
                    log.error("%s failed: %s", name, exc)
                except Exception:  # a bad poll is logged; the server keeps serving what it has
                    log.exception("%s failed", name)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._pollers.append(thread)

    def poll_config_file(self) -> None:
        """Re-read ``--model_config_file`` and apply it when it differs from the config in effect.

        Like TF Serving, the file wins: a config applied through gRPC but not written to the file is undone here.
        """
        if not self.options.model_config_file:
            return
        try:
            config = read_server_config(self.options.model_config_file)
        except ServingError as exc:
            log.error("Failed to read model config file %s: %s", self.options.model_config_file, exc.message)
            return
        if config == self.manager.config:
            return
        log.info("Model config file %s changed; applying it", self.options.model_config_file)
        try:
            self.admin.reload_config(config)  # with --serving_processes: in every process
        except ServingError as exc:
            log.error("Failed to apply model config file: %s", exc)

    def stop(self) -> None:
        """Stop polling, close both ports and unload every model; idempotent."""
        self._stop.set()
        for thread in self._pollers:
            thread.join(timeout=5)
        self._pollers.clear()
        if self.group is not None:  # the others first: no process keeps serving once this one stops
            self.group.stop()
            self.group = None
        if self._rest:
            self._rest.stop()
            self._rest = None
        if self._grpc:
            self._grpc.stop()
        if self._peer is not None:
            self._peer.stop()
            self._peer = None
        self.manager.close()
        if self.batching:
            self.batching.stop()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _ready_lines(server: ModelServer) -> list[str]:
    host = server.options.bind_address
    lines = [f"Running gRPC ModelServer at {host}:{server.grpc_port} ..."]
    if server.rest_port:
        lines.append(f"Exporting HTTP/REST API at:{host}:{server.rest_port} ...")
    rest = f"{host}:{server.rest_port}" if server.rest_port else "off"
    lines.append(f"{READY_PREFIX} grpc={host}:{server.grpc_port} rest={rest}")
    return lines


def configure_logging(options: ServerOptions) -> None:
    """INFO and up to stderr, or with ``--log_file`` to that file, rotated at ``--log_file_max_bytes`` with
    ``--log_file_backups`` old files kept (the log stays bounded however many requests fail)."""
    handler: logging.Handler
    if options.log_file:
        handler = logging.handlers.RotatingFileHandler(options.log_file, maxBytes=options.log_file_max_bytes,
                                                       backupCount=options.log_file_backups, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True,
                        format="%(asctime)s %(levelname).1s %(name)s] %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; the exit status (0 clean, 1 failed to start)."""
    prefer_classic_io()  # before grpc loads (see pipeline.wire.grpc_io)
    pin_mmap_threshold(_MMAP_THRESHOLD_BYTES)  # a large request's buffers go back to the OS when it ends
    options = parse_flags(sys.argv[1:] if argv is None else list(argv))
    configure_logging(options)
    with stop_on_signals() as stop:
        return _serve_until(stop, options)


def _serve_until(stop: threading.Event, options: ServerOptions) -> int:
    server = ModelServer(options)
    try:
        server.start()
    except (ServingError, OSError, RuntimeError) as exc:
        print(f"Failed to start server. Error: {exc}", file=sys.stderr, flush=True)
        server.stop()
        return 1
    for line in _ready_lines(server):
        print(line, flush=True)
    parent = os.getppid()
    try:
        while not stop.wait(0.5):
            if options.serving_process_of and os.getppid() != parent:
                log.warning("The first serving process is gone; stopping")
                break
    finally:
        log.info("Shutting down")
        server.stop()
    return 0
