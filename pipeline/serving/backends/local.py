"""The local backend: the embedded TF-Serving-compatible server as a child process on this machine.

Everything an instance has lies in ``<serving_dir>/<instance>/``: ``models.config`` (what it serves),
``server.log`` and ``server.json`` (pid, process group and ports of the running server). The state file lets a
later process (the next Airflow task, the CLI) attach to or stop the server an earlier one started; a file lock
keeps two processes from starting two servers for one instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import DeadlineExceeded, NotFound
from pipeline.serving.backends import validate_spec
from pipeline.serving.backends.base import Endpoint, ServingBackend
from pipeline.serving.client import ServingClient, ServingError
from pipeline.settings import Paths
from pipeline.util.files import file_lock, write_atomically
from pipeline.util.net import free_ports, port_in_use
from pipeline.util.polling import poll_until
from pipeline.wire.grpc_io import classic_io_env

_DEFAULT_STOP_GRACE_S = 10.0
_DEFAULT_POLL_S = 0.1
_SERVER_MODULE = "pipeline.embedded_server"

# Servers this process started, so that it reaps them (an unreaped child stays a zombie).
_CHILDREN: dict[int, subprocess.Popen] = {}
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
    """What ``server.json`` records of a running server."""

    pid: int
    pgid: int
    create_time: float  # tells our server from a later process that got the same pid
    host: str
    rest_port: int
    grpc_port: int

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.rest_port, self.grpc_port)


class LocalBackend(ServingBackend):
    """Starts ``python -m pipeline.embedded_server`` in its own process group and reaches it on 127.0.0.1.

    Args:
        name: the instance (``staging``, ``production``).
        spec: its profile entry (see :class:`LocalSpec`).
        paths: the pipeline's directories.
    """

    def __init__(self, name: str, spec: dict[str, Any], paths: Paths):
        self.name = name
        self.spec = validate_spec(LocalSpec, name, spec)
        self.paths = paths

    @property
    def instance_dir(self) -> Path:
        return self.paths.serving_dir / self.name

    @property
    def config_path(self) -> Path:
        return self.instance_dir / "models.config"

    @property
    def log_path(self) -> Path:
        return self.instance_dir / "server.log"

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
            if state is not None:  # started earlier, maybe by another process: attach
                # Both ports were checked when it started; its process lives, so its REST port answering is
                # enough (a gRPC channel costs ~0.2 s to close, paid before every change of what it serves).
                self._wait_until_ready(state, timeout_s, check_grpc=False)
                return state.endpoint
            self.ensure_config_file()
            auto_ports = not (self.spec.rest_port and self.spec.grpc_port)
            for attempt in (1, 2):
                state = self._spawn()
                try:
                    self._wait_until_ready(state, timeout_s)
                    self._wait_until_serving(max(deadline - time.monotonic(), 0.1))
                    return state.endpoint
                except ServingError as exc:
                    self._terminate(state)  # leave no half-started server behind; its log stays
                    # A port we picked was taken before the server bound it: pick again, once.
                    if not (auto_ports and attempt == 1 and "Address already in use" in str(exc)):
                        raise
                except BaseException:
                    self._terminate(state)
                    raise
            raise AssertionError("unreachable")

    def endpoint(self) -> Endpoint:
        """Where the running server answers.

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

    def stop(self, grace_s: float = _DEFAULT_STOP_GRACE_S) -> None:
        """SIGTERM the server's process group, SIGKILL what is left after ``grace_s``; idempotent."""
        with self._locked():
            state = self._read_state()
            if state is not None:
                self._terminate(state, grace_s)

    # ---- process management -------------------------------------------------------------------------------

    def _spawn(self) -> ServerState:
        for port in (self.spec.rest_port, self.spec.grpc_port):
            # Something else answering there would pass our readiness check; refuse rather than attach to it.
            if port and port_in_use(self.spec.host, port):
                raise ServingError("UNAVAILABLE", f"cannot start local TF Serving {self.name!r}: {self.spec.host}:{port} "
                                   "is already in use (another pipeline home's server? stop it with `pipeline down`)")
        picked = iter(free_ports(2, self.spec.host))
        rest_port = self.spec.rest_port or next(picked)
        grpc_port = self.spec.grpc_port or next(picked)
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                self._command(rest_port, grpc_port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=classic_io_env(),
                start_new_session=True,  # its own process group: stop() ends it and anything it started
            )
        _CHILDREN[process.pid] = process
        state = ServerState(
            pid=process.pid,
            pgid=process.pid,
            create_time=psutil.Process(process.pid).create_time(),
            host=self.spec.host,
            rest_port=rest_port,
            grpc_port=grpc_port,
        )
        write_atomically(self.state_path, json.dumps(asdict(state), indent=2))
        return state

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

    def _wait_until_ready(self, state: ServerState, timeout_s: float, check_grpc: bool = True) -> None:
        """Wait until the server's ports answer (REST only, unless ``check_grpc``).

        Raises:
            ServingError: the server exited while starting (at once, with the end of its log).
            DeadlineExceeded: it did not answer within ``timeout_s``; the message ends with its log.
        """
        deadline = time.monotonic() + timeout_s
        grpc_target = state.endpoint.grpc_target if check_grpc else None
        with ServingClient(state.endpoint.rest_url, grpc_target, timeout_s=1.0) as client:

            def check() -> tuple[bool | None, str]:
                if not _is_our_process(state):  # it will never answer: fail now, not at the deadline
                    raise ServingError(
                        "UNAVAILABLE", f"local TF Serving {self.name!r} exited while starting: {self._log_tail()}"
                    )
                if client.is_ready(timeout_s=min(1.0, max(deadline - time.monotonic(), 0.05))):
                    return True, "answering"
                return None, f"process {state.pid} running, ports not answering"

            what = f"local TF Serving {self.name!r} did not answer on {state.endpoint.rest_url}"
            try:
                poll_until(check, timeout_s, what, interval_s=_DEFAULT_POLL_S, hint=f"See {self.log_path}")
            except DeadlineExceeded as exc:
                # The log's end is read once, at the deadline, rather than on every poll.
                raise DeadlineExceeded(f"{exc}: {self._log_tail()}") from None

    def _wait_until_serving(self, timeout_s: float) -> None:
        self.wait_until_served(self.read_config(), timeout_s)

    def _terminate(self, state: ServerState, grace_s: float = _DEFAULT_STOP_GRACE_S) -> None:
        """End the server's process group (if it is still ours) and forget its state."""
        if _is_our_process(state) or _leader_gone_group_left(state):
            _signal_group(state.pgid, signal.SIGTERM)
            if not _wait_group_gone(state, grace_s):
                _signal_group(state.pgid, signal.SIGKILL)
                _wait_group_gone(state, 5.0)
        _CHILDREN.pop(state.pid, None)
        self.state_path.unlink(missing_ok=True)

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
        """The recorded server if its process still runs, else None."""
        state = self._read_state()
        return state if state is not None and _is_our_process(state) else None

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold ``<instance>/.lock`` so that start/stop of one instance never run at once."""
        return file_lock(self.instance_dir / ".lock")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)


def _is_our_process(state: ServerState) -> bool:
    """Whether ``state.pid`` is still the server we started (alive, not a zombie, same start time)."""
    _reap(state.pid)
    try:
        process = psutil.Process(state.pid)
        return abs(process.create_time() - state.create_time) < 0.5 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _leader_gone_group_left(state: ServerState) -> bool:
    """Whether the server itself is gone but processes of its group live on.

    Linux hands out no pid that is still some group's id, so while our group exists its pid is unused or
    a zombie; a pid that belongs to another live process means our group is gone (and its pgid is not ours).
    """
    try:
        if psutil.Process(state.pid).status() != psutil.STATUS_ZOMBIE:
            return False  # alive but not ours (_is_our_process said so): the pid was reused
    except psutil.Error:
        pass
    return _group_exists(state.pgid)


def _group_exists(pgid: int) -> bool:
    """Whether a live (non-zombie) process is in group ``pgid``.

    A pid is never handed out while a group of that id exists, so a surviving group is still ours.
    """
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _wait_group_gone(state: ServerState, timeout_s: float) -> bool:
    """Whether the server's process group is gone within ``timeout_s``.

    False is an expected answer here, not an error (the caller escalates SIGTERM to SIGKILL), so this keeps
    its own loop rather than raising through ``poll_until``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        _reap(state.pid)
        if not _group_exists(state.pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_DEFAULT_POLL_S)
