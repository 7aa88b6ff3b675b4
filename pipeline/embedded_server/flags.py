"""The command line of ``tensorflow_model_server``, as far as this server implements it.

Flags use TF Serving's names and defaults (``--port=8500``, ``--rest_api_port=0`` meaning REST off,
``--file_system_poll_wait_seconds=1``, ``--rest_api_timeout_in_ms=30000``, ``--max_num_load_retries=5``...).
Deviation: ``--bind_address`` defaults to 127.0.0.1 where TF Serving binds every interface. Additions (TF Serving
has no such limits): ``--max_request_bytes``, ``--max_tensor_elements`` (see :mod:`limits`), ``--log_file``
with its rotation, and ``--serving_processes`` (see :mod:`processes`: TF Serving is one multi-threaded C++
process; a Python server uses more cores with more processes).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

_DEFAULT_GRPC_PORT = 8500
_DEFAULT_BIND_ADDRESS = "127.0.0.1"
_DEFAULT_FS_POLL_S = 1.0
_DEFAULT_REST_THREADS = 16
_DEFAULT_GRPC_THREADS = 16
_DEFAULT_REST_TIMEOUT_MS = 30_000  # TF Serving's
_DEFAULT_LOAD_RETRIES = 5  # TF Serving's
_DEFAULT_LOAD_RETRY_INTERVAL_US = 60_000_000  # TF Serving's: one minute
_DEFAULT_MAX_REQUEST_BYTES = 64 << 20
_DEFAULT_MAX_TENSOR_ELEMENTS = 1 << 24
_DEFAULT_LOG_FILE_BYTES = 10 << 20
_DEFAULT_LOG_FILE_BACKUPS = 3


@dataclass
class ServerOptions:
    """How one server runs.

    ``rest_api_port`` is None for no REST API and 0 for any free port (the CLI maps TF Serving's
    ``--rest_api_port=0`` to None). ``port`` 0 picks a free gRPC port. Poll intervals <= 0 turn polling off.
    """

    port: int = _DEFAULT_GRPC_PORT
    rest_api_port: int | None = None
    bind_address: str = _DEFAULT_BIND_ADDRESS
    model_name: str | None = None
    model_base_path: str | None = None
    model_config_file: str | None = None
    model_config_file_poll_wait_seconds: float = 0.0
    file_system_poll_wait_seconds: float = _DEFAULT_FS_POLL_S
    allow_version_labels_for_unavailable_models: bool = False
    rest_api_num_threads: int = _DEFAULT_REST_THREADS
    rest_api_timeout_in_ms: int = _DEFAULT_REST_TIMEOUT_MS
    grpc_max_threads: int = _DEFAULT_GRPC_THREADS
    max_num_load_retries: int = _DEFAULT_LOAD_RETRIES
    load_retry_interval_micros: int = _DEFAULT_LOAD_RETRY_INTERVAL_US
    max_request_bytes: int = _DEFAULT_MAX_REQUEST_BYTES
    max_tensor_elements: int = _DEFAULT_MAX_TENSOR_ELEMENTS
    tensorflow_intra_op_parallelism: int = 0  # 0: TensorFlow picks (one thread per core)
    tensorflow_inter_op_parallelism: int = 0
    monitoring_config_file: str | None = None  # MonitoringConfig text proto: Prometheus metrics on the REST port
    enable_batching: bool = False  # batch concurrent requests (pipeline.embedded_server.batching)
    batching_parameters_file: str | None = None  # BatchingParameters text proto; needs enable_batching
    log_file: str | None = None  # log here, rotated, instead of stderr
    log_file_max_bytes: int = _DEFAULT_LOG_FILE_BYTES
    serving_processes: int = 1  # processes serving the same ports; the first one starts and watches the others
    serving_process_of: str | None = None  # set in the others: the first process's private admin address
    pin_serving_processes: bool = False  # process i runs on the i-th CPU this server may use (round robin)
    serving_process_cpu: int | None = None  # set in the others by the first one when pinning
    argv: tuple[str, ...] = ()  # the command line these came from (the other processes are started with it)
    log_file_backups: int = _DEFAULT_LOG_FILE_BACKUPS


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "t", "y"):
        return True
    if value in ("0", "false", "no", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; accepts ``--flag=value`` and ``--flag value`` like TF Serving's absl flags."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.embedded_server",
        description="A TensorFlow Serving compatible model server (REST + gRPC) for SavedModels.",
    )
    add = parser.add_argument
    add("--port", type=int, default=_DEFAULT_GRPC_PORT, help="gRPC port (0: any free port)")
    add("--rest_api_port", type=int, default=0, help="REST port; 0 turns REST off (as in TF Serving)")
    add("--bind_address", default=_DEFAULT_BIND_ADDRESS, help="interface both APIs bind to")
    add("--model_name", default="default", help="name of the single model (with --model_base_path)")
    add("--model_base_path", default="", help="base path of the single model served")
    add("--model_config_file", default="", help="models.config (ModelServerConfig text proto)")
    add("--model_config_file_poll_wait_seconds", type=float, default=0.0,
        help="re-read --model_config_file this often; 0 reads it once")
    add("--file_system_poll_wait_seconds", type=float, default=_DEFAULT_FS_POLL_S,
        help="look for new versions under the base paths this often; 0 looks once")
    add("--allow_version_labels_for_unavailable_models", type=_bool, nargs="?", const=True, default=False,
        help="let labels point at versions that are not AVAILABLE yet")
    add("--rest_api_num_threads", type=_positive, default=_DEFAULT_REST_THREADS,
        help="REST worker threads (a fixed pool shared by all connections)")
    add("--rest_api_timeout_in_ms", type=_positive, default=_DEFAULT_REST_TIMEOUT_MS,
        help="a REST connection that takes longer to send a request, stays idle that long, or does not read "
             "its answer for that long is closed")
    add("--grpc_max_threads", type=_positive, default=_DEFAULT_GRPC_THREADS, help="gRPC worker threads")
    add("--max_num_load_retries", type=_non_negative, default=_DEFAULT_LOAD_RETRIES,
        help="retry a version that failed to load this many times (e.g. one still being copied)")
    add("--load_retry_interval_micros", type=_non_negative, default=_DEFAULT_LOAD_RETRY_INTERVAL_US,
        help="wait this long between load retries")
    add("--max_request_bytes", type=_positive, default=_DEFAULT_MAX_REQUEST_BYTES,
        help="largest REST body (413 before it is read); a gRPC message may be half of it (RESOURCE_EXHAUSTED); "
             "REST JSON may hold one value per 48 bytes of it and strings of half of it in all")
    add("--max_tensor_elements", type=_positive, default=_DEFAULT_MAX_TENSOR_ELEMENTS,
        help="most elements of one input tensor, REST or gRPC (INVALID_ARGUMENT before it is allocated)")
    add("--tensorflow_intra_op_parallelism", type=_non_negative, default=0,
        help="threads one op may use (0: one per core); 1 is fastest for small models on few cores")
    add("--tensorflow_inter_op_parallelism", type=_non_negative, default=0,
        help="ops run at once (0: one per core)")
    add("--monitoring_config_file", default="",
        help="MonitoringConfig text proto; prometheus_config { enable: true } serves metrics on the REST port")
    add("--enable_batching", type=_bool, nargs="?", const=True, default=False,
        help="batch concurrent requests to one signature into one model call")
    add("--batching_parameters_file", default="",
        help="BatchingParameters text proto (max_batch_size, batch_timeout_micros...); needs --enable_batching")
    add("--log_file", default="", help="write the log here (rotated by size) instead of stderr")
    add("--log_file_max_bytes", type=_positive, default=_DEFAULT_LOG_FILE_BYTES,
        help="rotate --log_file when it reaches this size")
    add("--log_file_backups", type=_non_negative, default=_DEFAULT_LOG_FILE_BACKUPS,
        help="rotated log files kept (log.1 ... log.N)")
    add("--serving_processes", type=_positive, default=1,
        help="processes serving the same ports (SO_REUSEPORT), each with its own copy of the models; the first "
             "one applies every reload to all of them and sums their metrics (default 1, as TF Serving)")
    add("--pin_serving_processes", type=_bool, nargs="?", const=True, default=False,
        help="with --serving_processes: run process i on the i-th CPU the server may use, round robin (as "
             "nginx's worker_cpu_affinity auto); fewer migrations and cache misses where the machine is the server's")
    add("--serving_process_of", default="", help=argparse.SUPPRESS)  # internal: the first process's admin address
    add("--serving_process_cpu", type=int, default=-1, help=argparse.SUPPRESS)  # internal: the CPU to pin to
    # Accepted for command-line compatibility with tensorflow_model_server; no effect here.
    for flag in ("--enable_model_warmup", "--grpc_channel_arguments"):
        add(flag, default=None, nargs="?", const="true", help=argparse.SUPPRESS)
    return parser


def parse_flags(argv: Sequence[str] | None) -> ServerOptions:
    """ServerOptions from a command line (without the program name).

    Raises:
        SystemExit: bad flags (argparse prints why), or neither/both of a model and a config file.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model_config_file and args.model_base_path:
        parser.error("give either --model_config_file or --model_base_path, not both")
    if not args.model_config_file and not args.model_base_path:
        parser.error("give --model_base_path (with --model_name) or --model_config_file")
    return ServerOptions(
        port=args.port,
        rest_api_port=args.rest_api_port or None,
        bind_address=args.bind_address,
        model_name=args.model_name if args.model_base_path else None,
        model_base_path=args.model_base_path or None,
        model_config_file=args.model_config_file or None,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        rest_api_num_threads=args.rest_api_num_threads,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
        grpc_max_threads=args.grpc_max_threads,
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_micros=args.load_retry_interval_micros,
        max_request_bytes=args.max_request_bytes,
        max_tensor_elements=args.max_tensor_elements,
        tensorflow_intra_op_parallelism=args.tensorflow_intra_op_parallelism,
        tensorflow_inter_op_parallelism=args.tensorflow_inter_op_parallelism,
        monitoring_config_file=args.monitoring_config_file or None,
        enable_batching=args.enable_batching,
        batching_parameters_file=args.batching_parameters_file or None,
        log_file=args.log_file or None,
        log_file_max_bytes=args.log_file_max_bytes,
        log_file_backups=args.log_file_backups,
        serving_processes=args.serving_processes,
        serving_process_of=args.serving_process_of or None,
        pin_serving_processes=args.pin_serving_processes,
        serving_process_cpu=args.serving_process_cpu if args.serving_process_cpu >= 0 else None,
        argv=tuple(argv if argv is not None else sys.argv[1:]),
    )
