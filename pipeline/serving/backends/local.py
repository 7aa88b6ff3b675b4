"""The local backend: the embedded TF-Serving-compatible server as a supervised process on this machine.

Everything an instance has lies in ``<serving_dir>/<instance>/``: ``models.config`` (what it serves),
``monitoring.config`` and ``server.json`` (host and ports of its server, so that a later process, the next
Airflow task or the CLI, reaches the server an earlier one started). The server is program ``server-<instance>``
of the pipeline home's supervisord (:func:`pipeline.util.supervisor.stack_supervisor`): restarted at once when it
dies, on the same ports, reading the same ``models.config`` (so it serves again what it served); its output goes to
the supervisor's ``logs/server-<instance>.log``, rotated. A file lock keeps two processes from starting two
servers for one instance.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import DeadlineExceeded, NotFound, PipelineError
from pipeline.serving.backends import validate_spec
from pipeline.serving.backends.base import Endpoint, ServingBackend
from pipeline.serving.client import ServingClient, ServingError
from pipeline.settings import Paths
from pipeline.util.files import file_lock, write_atomically
from pipeline.util.net import free_ports, port_in_use
from pipeline.util.polling import poll_until
from pipeline.util.supervisor import ALIVE_STATES, Program, Supervisor, python_env, stack_supervisor
from pipeline.wire.grpc_io import ENV_VAR as GRPC_EXPERIMENTS_VAR
from pipeline.wire.grpc_io import classic_io_env

_DEFAULT_STOP_GRACE_S = 10.0
_DEFAULT_POLL_S = 0.1
_SERVER_MODULE = "pipeline.embedded_server"
_PROGRAM_PREFIX = "server-"
# What the server reads from its environment besides the gRPC I/O path; the rest comes from supervisord's.
_PASSED_ENV = ("TF_CPP_MIN_LOG_LEVEL", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
               "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
PROMETHEUS_METRICS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's documented path


class LocalSpec(BaseModel):
    """A local instance's fields in the serving profile. Port 0 picks a free port at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["local"] = "local"
    host: str = "127.0.0.1"
    rest_port: int = Field(0, ge=0, le=65535)
    grpc_port: int = Field(0, ge=0, le=65535)
    # TF Serving's own defaults: version directories polled every second; models.config only reloaded through
    # gRPC (0 = never polled), so a half-written file is never read.
    file_system_poll_wait_seconds: int = Field(1, ge=0)
    model_config_file_poll_wait_seconds: int = Field(0, ge=0)
    # A models.config with version labels is refused at start otherwise: TF Serving checks labels against
    # versions that are still loading (FAILED_PRECONDITION "... not currently available for inference").
    # Our release code only moves a label to a version after it is AVAILABLE, so this only matters at start.
    allow_version_labels_for_unavailable_models: bool = True
    # TF Serving's Prometheus endpoint on the REST port (--monitoring_config_file), for the stack's Prometheus.
    prometheus_metrics: bool = True
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerState:
    """What ``server.json`` records of a server: where it answers (its process is supervisord's business)."""

    host: str
    rest_port: int
    grpc_port: int

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.rest_port, self.grpc_port)


class LocalBackend(ServingBackend):
    """Runs ``python -m pipeline.embedded_server`` under the stack's supervisord and reaches it on its host.

    Args:
        name: the instance (``staging``, ``production``, ``canary``).
        spec: its profile entry (see :class:`LocalSpec`).
        paths: the pipeline's directories; the supervisord is the one of ``paths.home``.
    """

    def __init__(self, name: str, spec: dict[str, Any], paths: Paths):
        self.name = name
        self.spec = validate_spec(LocalSpec, name, spec)
        self.paths = paths
        self.supervisor: Supervisor = stack_supervisor(paths.home)

    @property
    def program_name(self) -> str:
        """The server's program in supervisord."""
        return f"{_PROGRAM_PREFIX}{self.name}"

    @property
    def instance_dir(self) -> Path:
        return self.paths.serving_dir / self.name

    @property
    def config_path(self) -> Path:
        return self.instance_dir / "models.config"

    @property
    def log_path(self) -> Path:
        """The server's output (rotated by supervisord)."""
        return self.supervisor.log_path(self.program_name)

    @property
    def state_path(self) -> Path:
        return self.instance_dir / "server.json"

    def start(self, timeout_s: float = 60.0) -> Endpoint:
        """Start the server, or attach to the one already running; return once it answers and serves its config.

        Raises:
            ServingError: the server exited while starting, or a version in models.config failed to load.
            DeadlineExceeded: it did not answer, or serve its config, within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        with self._locked():
            state = self._live_state()
            if state is not None:  # started earlier, maybe by another process, maybe being restarted: attach
                # Both ports were checked when it started; its process lives, so its REST port answering is
                # enough (a gRPC channel costs ~0.2 s to close, paid before every change of what it serves).
                self._wait_until_ready(state, timeout_s, started_pid=None, check_grpc=False)
                return state.endpoint
            self.ensure_config_file()
            auto_ports = not (self.spec.rest_port and self.spec.grpc_port)
            for attempt in (1, 2):
                state = self._pick_ports()
                try:
                    pid = self._spawn(state, max(deadline - time.monotonic(), 0.1))
                    self._wait_until_ready(state, max(deadline - time.monotonic(), 0.1), started_pid=pid)
                    self._wait_until_serving(max(deadline - time.monotonic(), 0.1))
                    return state.endpoint
                except ServingError as exc:
                    self._terminate()  # leave no half-started server behind; its log stays
                    # A port we picked was taken before the server bound it: pick again, once.
                    if not (auto_ports and attempt == 1 and "Address already in use" in str(exc)):
                        raise
                except BaseException:
                    self._terminate()
                    raise
            raise AssertionError("unreachable")

    def endpoint(self) -> Endpoint:
        """Where the running server answers (also while supervisord restarts it).

        Raises:
            NotFound: no server of this instance is running.
        """
        state = self._live_state()
        if state is None:
            raise NotFound(f"local TF Serving {self.name!r} is not running; start it first (see {self.log_path})")
        return state.endpoint

    def is_running(self) -> bool:
        state = self._live_state()
        if state is None:
            return False
        with ServingClient.for_endpoint(state.endpoint) as client:
            return client.is_ready(timeout_s=1.0)

    def pid(self) -> int | None:
        """The server's process id now (None while it has none, e.g. between a crash and its restart)."""
        return self.supervisor.pid(self.program_name) if self._read_state() is not None else None

    def stop(self) -> None:
        """Stop the server and its process group (SIGTERM, SIGKILL after 10 s) and forget it; idempotent.

        The stack's supervisord exits with the last program it ran.
        """
        with self._locked():
            self._terminate()

    # ---- the program --------------------------------------------------------------------------------------

    def _pick_ports(self) -> ServerState:
        for port in (self.spec.rest_port, self.spec.grpc_port):
            # Something else answering there would pass our readiness check; refuse rather than attach to it.
            if port and port_in_use(self.spec.host, port):
                raise ServingError("UNAVAILABLE", f"cannot start local TF Serving {self.name!r}: {self.spec.host}:{port} "
                                   "is already in use (another pipeline home's server? stop it with `pipeline down`)")
        picked = iter(free_ports(2, self.spec.host))
        return ServerState(self.spec.host, self.spec.rest_port or next(picked), self.spec.grpc_port or next(picked))

    def _spawn(self, state: ServerState, timeout_s: float) -> int | None:
        """Record ``state`` and have supervisord run the server on its ports; the server's pid."""
        write_atomically(self.state_path, json.dumps(asdict(state), indent=2))
        try:
            self.supervisor.run(self._program(state), timeout_s)
        except DeadlineExceeded:
            raise
        except PipelineError as exc:  # it exited at once, or could not be spawned
            raise ServingError("UNAVAILABLE", f"local TF Serving {self.name!r} exited while starting: {exc}") from None
        return self.supervisor.pid(self.program_name)

    def _program(self, state: ServerState) -> Program:
        return Program(name=self.program_name, command=tuple(self._command(state.rest_port, state.grpc_port)),
                       env=_server_env(), stop_wait_s=_DEFAULT_STOP_GRACE_S)

    @property
    def monitoring_config_path(self) -> Path:
        return self.instance_dir / "monitoring.config"

    def _monitoring_args(self) -> list[str]:
        """``--monitoring_config_file`` with TF Serving's Prometheus path, written next to models.config."""
        if not self.spec.prometheus_metrics:
            return []
        text = f'prometheus_config {{\n  enable: true\n  path: "{PROMETHEUS_METRICS_PATH}"\n}}\n'
        write_atomically(self.monitoring_config_path, text.encode())
        return [f"--monitoring_config_file={self.monitoring_config_path}"]

    def _command(self, rest_port: int, grpc_port: int) -> list[str]:
        spec = self.spec
        allow_labels = str(spec.allow_version_labels_for_unavailable_models).lower()
        return [
            sys.executable, "-m", _SERVER_MODULE,
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            f"--bind_address={spec.host}",
            f"--model_config_file={self.config_path}",
            f"--model_config_file_poll_wait_seconds={spec.model_config_file_poll_wait_seconds}",
            f"--file_system_poll_wait_seconds={spec.file_system_poll_wait_seconds}",
            f"--allow_version_labels_for_unavailable_models={allow_labels}",
            *self._monitoring_args(),
            *spec.extra_args,
        ]  # fmt: skip

    def _wait_until_ready(self, state: ServerState, timeout_s: float, started_pid: int | None,
                          check_grpc: bool = True) -> None:
        """Wait until the server's ports answer (REST only, unless ``check_grpc``).

        ``started_pid``: the process just started; its exit fails the wait at once (supervisord would start
        another, on the same ports, which would fail the same way). None: attaching to a server that may be
        restarting after a crash; only supervisord giving up fails the wait before the deadline.

        Raises:
            ServingError: the server exited while starting (at once, with the end of its log).
            DeadlineExceeded: it did not answer within ``timeout_s``; the message ends with its log.
        """
        deadline = time.monotonic() + timeout_s
        grpc_target = state.endpoint.grpc_target if check_grpc else None
        with ServingClient(state.endpoint.rest_url, grpc_target, timeout_s=1.0) as client:

            def check() -> tuple[bool | None, str]:
                status = self.supervisor.status(self.program_name)
                exited = status not in ALIVE_STATES or (
                    started_pid is not None and (status != "RUNNING" or self.supervisor.pid(self.program_name) != started_pid))
                if exited:  # it will never answer: fail now, not at the deadline
                    raise ServingError("UNAVAILABLE", f"local TF Serving {self.name!r} exited while starting "
                                       f"({status}): {self.supervisor.log_tail(self.program_name)}")
                if client.is_ready(timeout_s=min(1.0, max(deadline - time.monotonic(), 0.05))):
                    return True, "answering"
                return None, f"{status}, ports not answering"

            what = f"local TF Serving {self.name!r} did not answer on {state.endpoint.rest_url}"
            try:
                poll_until(check, timeout_s, what, interval_s=_DEFAULT_POLL_S, hint=f"See {self.log_path}")
            except DeadlineExceeded as exc:
                # The log's end is read once, at the deadline, rather than on every poll.
                raise DeadlineExceeded(f"{exc}: {self.supervisor.log_tail(self.program_name)}") from None

    def _wait_until_serving(self, timeout_s: float) -> None:
        self.wait_until_served(self.read_config(), timeout_s)

    def _terminate(self) -> None:
        """Stop and forget the server's program and its state; supervisord exits if nothing else runs."""
        self.supervisor.remove(self.program_name)
        self.state_path.unlink(missing_ok=True)
        self.supervisor.shutdown_if_idle()

    # ---- state and files ----------------------------------------------------------------------------------

    def _read_state(self) -> ServerState | None:
        try:
            return ServerState(**json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            self.state_path.unlink(missing_ok=True)  # unreadable: no server can be found through it anyway
            return None

    def _live_state(self) -> ServerState | None:
        """The recorded server if supervisord runs it (or is restarting it), else None."""
        state = self._read_state()
        if state is None or self.supervisor.status(self.program_name) not in ALIVE_STATES:
            return None
        return state

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold ``<instance>/.lock`` so that start/stop of one instance never run at once."""
        return file_lock(self.instance_dir / ".lock")


def _server_env() -> dict[str, str]:
    """What the server's environment adds to supervisord's: the gRPC I/O path this process chose and the variables
    of :data:`_PASSED_ENV` set here (supervisord may have been started by another process)."""
    return {GRPC_EXPERIMENTS_VAR: classic_io_env()[GRPC_EXPERIMENTS_VAR], **python_env(_PASSED_ENV)}
