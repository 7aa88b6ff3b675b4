"""The production endpoint: nginx in front of TF Serving, splitting live traffic between stable and canary.

Clients reach production only through this proxy. It speaks TF Serving's REST and gRPC APIs unchanged and
forwards inference (predict, classify, regress, MultiInference), model status and metadata, nothing else: any
other REST request gets 403 with TF Serving's ``{"error": ...}``, any other RPC (``HandleReloadConfigRequest``
above all) gRPC ``PERMISSION_DENIED``. Behind it, requests go to the stable upstream (the production TF Serving)
or the canary upstream (a second TF Serving serving both versions with labels ``{stable: S, canary: N}``, so an
unlabeled request there gets N and a ``stable`` one still S) by ``canary_percent``, split on a hash of the
request id. nginx cannot read a gRPC request's label, hence a separate canary instance (as KServe does it).

Every answer carries the request id (REST header ``X-Request-Id``, gRPC initial metadata ``x-request-id``): the
client's own when it sent one, else a fresh one. Feedback refers to it; the access log (JSON lines,
:attr:`NginxProxy.access_log_path`) records per request its id, variant, upstream, HTTP and gRPC status and
times, for the live analysis. A sampled share (``mirror_percent``) of inference requests is copied to the
capture service (``mirror_url``): ``POST <original path>`` with the original body (for gRPC: the
length-prefixed message, ``Content-Type: application/grpc``) and headers ``X-Request-Id``, ``X-Variant``
(``stable``/``canary``: the upstream that answered the client) and ``X-Proxy-Api`` (``rest``/``grpc``). The
copy's answer is dropped.

The config is rendered from ``configs/proxy/nginx.conf.template`` (the template is data; this module fills it),
checked with ``nginx -t``, written atomically and applied with ``nginx -s reload``: old workers finish their
requests and kept-alive connections while new ones take new requests, so a weight change fails no request of a
client that reopens a connection the server closed (as :mod:`pipeline.serving.http_transport` and gRPC do).
Each config has a generation, served in the ``X-Proxy-Config`` header, which :meth:`NginxProxy.apply` polls.

Everything lies in the runtime directory: ``nginx.conf``, ``proxy.json`` (generation and spec of the running proxy
and the supervisord that runs it, so that another process can apply to or stop it), logs, pid file and nginx's temp
directories. The master is program ``proxy`` of a supervisord (the stack's, :mod:`pipeline.live.services`; else
one of its own in ``<runtime dir>/supervisor``), restarted when it dies: its command (``python -m
pipeline.live.proxy``) first ends the workers a killed master left behind (they keep its listening sockets, so a
new master could not bind), then becomes nginx.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import psutil
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.errors import ConfigError, DeadlineExceeded, NotFound, PipelineError, SourceUnavailable
from pipeline.serving.backends.base import Endpoint
from pipeline.settings import config_dir
from pipeline.util.files import file_lock, write_atomically
from pipeline.util.net import free_ports, port_in_use
from pipeline.util.polling import poll_until
from pipeline.util.supervisor import ALIVE_STATES, RUNNING, STARTING, Program, Supervisor, python_env

CANARY_LABEL = "canary"
TEMPLATE = Path("proxy") / "nginx.conf.template"  # under the config directory
INSTALL_HINT = "apt-get install nginx-light"
_NGINX_FALLBACK = "/usr/sbin/nginx"  # Debian's; /usr/sbin is not on every user's PATH
_MAX_BODY = "256m"  # what pipeline.serving.client sends at most over gRPC
_UPSTREAM_KEEPALIVE = 32  # idle upstream connections each worker keeps
_DEFAULT_STOP_GRACE_S = 10.0
_LEFTOVER_GRACE_S = 5.0  # a killed master's workers: time to finish their requests before SIGKILL
PROGRAM = "proxy"  # the master's program in supervisord
_POLL_S = 0.05
_HEALTH_PATH = "/_proxy/health"
_GENERATION_HEADER = "X-Proxy-Config"
# Stands in quoted nginx strings: no quotes, no backslash, no dollar sign.
_FORBIDDEN = ("Forbidden: this endpoint serves only the TF Serving predict, classify, regress, model status and "
              "metadata APIs")
_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
# What may stand unquoted in nginx's config: nothing that ends a directive, opens a block or names a variable.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./@+,=:-]*$")
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
_ADDRESS = re.compile(rf"^{_HOST}:(\d{{1,5}})$")
_SAFE_PREFIX = re.compile(r"^(/[A-Za-z0-9_.-]+)*$")


class ProxyError(PipelineError):
    """nginx refused a config, or exited while starting."""


# ---- the spec -------------------------------------------------------------------------------------------------


def _check_address(value: str) -> str:
    match = _ADDRESS.match(value)
    if not match or not 0 < int(match.group(1)) < 65536:
        raise ValueError(f"expected host:port (e.g. 127.0.0.1:8501), got {value!r}")
    return value


class UpstreamSpec(BaseModel):
    """One TF Serving behind the proxy: where its REST and gRPC APIs answer (``host:port`` each)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rest: str
    grpc: str

    @field_validator("rest", "grpc")
    @classmethod
    def _valid_address(cls, value: str) -> str:
        return _check_address(value)

    @classmethod
    def of(cls, endpoint: Endpoint) -> UpstreamSpec:
        """The upstream of a running serving backend."""
        return cls(rest=f"{endpoint.host}:{endpoint.rest_port}", grpc=endpoint.grpc_target)


class ProxySpec(BaseModel):
    """What the proxy listens on, where it sends requests, and how it splits and mirrors them.

    Attributes:
        host: the address both servers listen on.
        rest_port: the REST port; 0 keeps the running proxy's, or picks a free one at start.
        grpc_port: the gRPC port; likewise.
        stable: the production TF Serving.
        canary: the canary TF Serving (labels ``stable`` and ``canary``); None when there is no canary.
        canary_percent: the share of requests (0-100, two decimals) sent to the canary, on a hash of the id.
        mirror_percent: the share of inference requests (0-100, two decimals) copied to ``mirror_url``.
        mirror_url: the capture service, ``http://host:port[/prefix]``; None for no mirror.
        workers: nginx worker processes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    rest_port: int = Field(0, ge=0, le=65535)
    grpc_port: int = Field(0, ge=0, le=65535)
    stable: UpstreamSpec
    canary: UpstreamSpec | None = None
    canary_percent: float = Field(0.0, ge=0, le=100)
    mirror_percent: float = Field(0.0, ge=0, le=100)
    mirror_url: str | None = None
    workers: int = Field(1, ge=1, le=64)

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str) -> str:
        if not re.fullmatch(_HOST, value):
            raise ValueError(f"expected a host name or address, got {value!r}")
        return value

    @field_validator("canary_percent", "mirror_percent")
    @classmethod
    def _two_decimals(cls, value: float) -> float:
        return round(value, 2)  # nginx's split_clients resolution

    @field_validator("mirror_url")
    @classmethod
    def _valid_mirror_url(cls, value: str | None) -> str | None:
        if value is not None:
            _mirror_target(value)
        return value

    @model_validator(mode="after")
    def _targets_exist(self) -> ProxySpec:
        if self.canary_percent > 0 and self.canary is None:
            raise ValueError("canary_percent > 0 needs a canary upstream")
        if self.mirror_percent > 0 and self.mirror_url is None:
            raise ValueError("mirror_percent > 0 needs a mirror_url")
        return self


@dataclass(frozen=True)
class _MirrorTarget:
    address: str  # host:port, for the upstream block
    host: str  # the Host header
    prefix: str  # a path before the original one, or ""


def _mirror_target(url: str) -> _MirrorTarget:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"mirror_url: expected http://host:port[/prefix], got {url!r}")
    port = parts.port or 80
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    address = _check_address(f"{host}:{port}")
    prefix = parts.path.rstrip("/")
    if not _SAFE_PREFIX.match(prefix):
        raise ValueError(f"mirror_url: the path may hold only letters, digits, '_', '.', '-' and '/', got {prefix!r}")
    return _MirrorTarget(address=address, host=address, prefix=prefix)


# ---- rendering ------------------------------------------------------------------------------------------------


def _percent_text(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _worker_user() -> str | None:
    """The user nginx's workers run as: ours when we are root (nginx would pick ``nobody``), else nginx's choice."""
    return pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None


def render_config(spec: ProxySpec, generation: int, runtime_dir: Path, template: Path | None = None) -> str:
    """The nginx config of ``spec`` (its ports must be set), from the template.

    Raises:
        ConfigError: a port is 0, or the runtime directory's path cannot stand in nginx's config.
    """
    import jinja2  # installed with Airflow; only rendering needs it

    if not (spec.rest_port and spec.grpc_port):
        raise ConfigError("render_config needs the ports set; NginxProxy picks free ones for port 0")
    runtime_dir = runtime_dir.resolve()
    if not _SAFE_PATH.match(str(runtime_dir)):
        raise ConfigError(f"runtime directory {runtime_dir} has characters nginx's config cannot hold unquoted; "
                          "use letters, digits and _ . / @ + , = : -")
    template = template or config_dir() / TEMPLATE
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                     keep_trailing_newline=True, autoescape=False)
    mirror = None
    if spec.mirror_url and spec.mirror_percent > 0:
        mirror = {**asdict(_mirror_target(spec.mirror_url)), "percent": spec.mirror_percent,
                  "percent_text": _percent_text(spec.mirror_percent)}
    return environment.from_string(template.read_text()).render(
        generation=generation,
        paths=_RuntimePaths(runtime_dir),
        workers=spec.workers,
        user=_worker_user(),
        listen={"host": spec.host, "rest_port": spec.rest_port, "grpc_port": spec.grpc_port},
        stable=spec.stable,
        canary=spec.canary,
        canary_percent=spec.canary_percent,
        canary_percent_text=_percent_text(spec.canary_percent),
        canary_label=CANARY_LABEL,
        mirror=mirror,
        max_body=_MAX_BODY,
        upstream_keepalive=_UPSTREAM_KEEPALIVE,
        forbidden_rest=_FORBIDDEN,
        forbidden_grpc=_FORBIDDEN,
    )


@dataclass(frozen=True)
class _RuntimePaths:
    """Where nginx writes, all inside the runtime directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "nginx.conf"

    @property
    def candidate(self) -> Path:
        return self.root / "nginx.conf.next"

    @property
    def pid(self) -> Path:
        return self.root / "nginx.pid"

    @property
    def error_log(self) -> Path:
        return self.root / "error.log"

    @property
    def access_log(self) -> Path:
        return self.root / "access.log"

    @property
    def state(self) -> Path:
        return self.root / "proxy.json"

    @property
    def group(self) -> Path:
        return self.root / "nginx.pgid"  # the process group of the latest master

    @property
    def temp(self) -> Path:
        return self.root / "temp"


@dataclass(frozen=True)
class ProxyState:
    """What ``proxy.json`` records of a running proxy."""

    generation: int
    spec: dict[str, Any]
    supervisor_dir: str  # the supervisord whose program ``proxy`` the master is

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor(Path(self.supervisor_dir))

    @property
    def proxy_spec(self) -> ProxySpec:
        return ProxySpec.model_validate(self.spec)


# ---- the proxy ------------------------------------------------------------------------------------------------


def find_nginx() -> str:
    """The nginx binary.

    Raises:
        SourceUnavailable: nginx is not installed.
    """
    found = shutil.which("nginx") or (_NGINX_FALLBACK if os.access(_NGINX_FALLBACK, os.X_OK) else None)
    if found is None:
        raise SourceUnavailable(f"nginx not found (PATH or {_NGINX_FALLBACK}): install it with `{INSTALL_HINT}`")
    return found


class NginxProxy:
    """Starts, reconfigures and stops one nginx proxy whose files all lie in ``runtime_dir``.

    Args:
        runtime_dir: the proxy's directory (created if missing).
        template: the config template (default ``<config dir>/proxy/nginx.conf.template``).
        supervisor: the supervisord a proxy started here runs under (default: one in ``<runtime_dir>/supervisor``);
            a running proxy is reached through the one recorded in ``proxy.json``, whatever this says.
    """

    def __init__(self, runtime_dir: str | Path, template: Path | None = None, supervisor: Supervisor | None = None):
        self.paths = _RuntimePaths(Path(runtime_dir).resolve())
        self.template = template
        self._supervisor = supervisor or Supervisor(self.paths.root / "supervisor")

    @property
    def runtime_dir(self) -> Path:
        return self.paths.root

    @property
    def config_path(self) -> Path:
        return self.paths.config

    @property
    def access_log_path(self) -> Path:
        """The JSON-lines access log (one object per client request)."""
        return self.paths.access_log

    @property
    def error_log_path(self) -> Path:
        return self.paths.error_log

    def start(self, spec: ProxySpec, timeout_s: float = 30.0) -> Endpoint:
        """Start the proxy on ``spec`` (or, when it runs, apply ``spec`` to it); return once it answers.

        Raises:
            SourceUnavailable: nginx is not installed.
            ConfigError: ``nginx -t`` refused the rendered config (its message is in this one).
            ProxyError: nginx exited while starting (the end of its error log is in the message).
            DeadlineExceeded: it did not answer within ``timeout_s``.
        """
        binary = find_nginx()
        with self._locked():
            state = self._live_state()
            if state is not None:  # started earlier, maybe by another process: attach, reloading only on a change
                running = state.proxy_spec
                if _with_ports(spec, running) == running:
                    return Endpoint(running.host, running.rest_port, running.grpc_port)
                return self._apply(binary, spec, timeout_s)
            self._prepare_dirs()
            auto_ports = not (spec.rest_port and spec.grpc_port)
            for attempt in (1, 2):
                resolved = _with_ports(spec, None)
                try:
                    return self._spawn(binary, resolved, timeout_s)
                except ProxyError as exc:
                    # A port we picked was taken before nginx bound it: pick again, once.
                    if not (auto_ports and attempt == 1 and "Address already in use" in str(exc)):
                        raise
            raise AssertionError("unreachable")

    def apply(self, spec: ProxySpec, timeout_s: float = 30.0) -> Endpoint:
        """Reload the running proxy with ``spec``; return once new requests are served by it.

        Ports 0 keep the running proxy's. In-flight requests and kept-alive connections finish on the old
        workers, so no request is lost.

        Raises:
            NotFound: the proxy is not running.
            ConfigError: ``nginx -t`` refused the rendered config; the running proxy is unchanged.
            DeadlineExceeded: the new config was not served within ``timeout_s`` (nginx's master refused it, e.g.
                a port in use: the running proxy keeps the old one, and the error log says why).
        """
        binary = find_nginx()
        with self._locked():
            return self._apply(binary, spec, timeout_s)

    def stop(self) -> None:
        """Stop gracefully (SIGQUIT: requests in flight finish), SIGKILL what is left after 10 s; idempotent.

        Workers a killed master left behind are ended too; the supervisord exits if nothing else runs under it.
        """
        with self._locked():
            state = self._read_state()
            self._terminate(state.supervisor if state is not None else self._supervisor)
            self.paths.state.unlink(missing_ok=True)

    def master_pid(self) -> int | None:
        """The nginx master's process id now (None when it has none, e.g. while supervisord restarts it)."""
        state = self._read_state()
        return state.supervisor.pid(PROGRAM) if state is not None else None

    def is_running(self) -> bool:
        """Whether the proxy's master runs and its REST server answers now."""
        state = self._live_state()
        if state is None:
            return False
        spec = state.proxy_spec
        return _served_generation(spec.host, spec.rest_port) is not None

    def endpoint(self) -> Endpoint:
        """Where clients reach production (TF Serving's REST and gRPC APIs).

        Raises:
            NotFound: the proxy is not running.
        """
        spec = self._require_state().proxy_spec
        return Endpoint(spec.host, spec.rest_port, spec.grpc_port)

    def spec(self) -> ProxySpec:
        """The running proxy's spec, ports filled in (``spec().model_copy(update=...)`` changes one field).

        Raises:
            NotFound: the proxy is not running.
        """
        return self._require_state().proxy_spec

    def reopen_logs(self, timeout_s: float = 30.0) -> None:
        """Make nginx reopen its logs (``nginx -s reopen``): rename ``access.log`` first to rotate it.

        Returns once the master has opened the new ``access.log``. Its workers reopen when the master tells them,
        a moment later: until then a request may still be logged in the renamed file (nothing is lost).

        Raises:
            NotFound: the proxy is not running.
            ProxyError: nginx could not be signalled.
            DeadlineExceeded: no new ``access.log`` within ``timeout_s``.
        """
        binary = find_nginx()
        with self._locked():
            self._require_state()
            _run_nginx(binary, [*self._nginx_args(), "-s", "reopen"], "log reopen")
        log_path = self.access_log_path
        poll_until(lambda: (True if log_path.exists() else None, f"no {log_path.name} yet"), timeout_s,
                   f"nginx reopened no {log_path}", interval_s=_POLL_S)

    def generation(self) -> int:
        """The running config's generation (1 at start, one more each apply)."""
        return self._require_state().generation

    # ---- start and reload -------------------------------------------------------------------------------------

    def _spawn(self, binary: str, spec: ProxySpec, timeout_s: float) -> Endpoint:
        generation = 1
        self._install_config(binary, spec, generation)
        supervisor = self._supervisor
        state = ProxyState(generation, spec.model_dump(mode="json"), str(supervisor.runtime_dir))
        program = Program(PROGRAM, (sys.executable, "-m", __name__, "--nginx", binary, str(self.paths.root)),
                          env=python_env(), stop_signal="QUIT", stop_wait_s=_DEFAULT_STOP_GRACE_S)
        try:
            try:
                supervisor.run(program, timeout_s)
            except DeadlineExceeded:
                raise
            except PipelineError as exc:
                raise ProxyError(f"nginx exited while starting: {exc}") from None
            self._wait_serving(state, timeout_s, starting=True)
        except BaseException:
            self._terminate(supervisor)  # leave no half-started proxy behind; its logs stay
            raise
        write_atomically(self.paths.state, json.dumps(asdict(state), indent=2))
        return Endpoint(spec.host, spec.rest_port, spec.grpc_port)

    def _terminate(self, supervisor: Supervisor) -> None:
        """Stop the master's program, end the workers of a master killed earlier, and let an idle supervisord go."""
        supervisor.remove(PROGRAM)
        _end_leftover_workers(self.paths)
        supervisor.shutdown_if_idle()

    def _apply(self, binary: str, spec: ProxySpec, timeout_s: float) -> Endpoint:
        state = self._require_state()
        resolved = _with_ports(spec, state.proxy_spec)
        generation = state.generation + 1
        previous = self.paths.config.read_text()
        self._install_config(binary, resolved, generation)
        new_state = ProxyState(generation, resolved.model_dump(mode="json"), state.supervisor_dir)
        # The workers of the old config: after the reload they must stop accepting.
        leaving = _workers(state.supervisor.pid(PROGRAM))
        try:
            _run_nginx(binary, [*self._nginx_args(), "-s", "reload"], "reload")
            self._wait_serving(new_state, timeout_s, starting=False, leaving=leaving)
        except BaseException:
            # The master keeps its old config when it refuses the new one: keep the file saying what runs.
            write_atomically(self.paths.config, previous)
            raise
        write_atomically(self.paths.state, json.dumps(asdict(new_state), indent=2))
        return Endpoint(resolved.host, resolved.rest_port, resolved.grpc_port)

    def _install_config(self, binary: str, spec: ProxySpec, generation: int) -> None:
        """Render, check with ``nginx -t`` and write ``nginx.conf`` atomically.

        Raises:
            ConfigError: nginx refused the config (nginx.conf is unchanged).
        """
        text = render_config(spec, generation, self.paths.root, self.template)
        candidate = self.paths.candidate
        write_atomically(candidate, text)
        try:
            _run_nginx(binary, ["-t", "-q", *self._nginx_args(candidate)], "config check", error=ConfigError)
            write_atomically(self.paths.config, text)
        finally:
            candidate.unlink(missing_ok=True)

    def _nginx_args(self, config: Path | None = None) -> list[str]:
        return _nginx_args(self.paths, config)

    def _wait_serving(self, state: ProxyState, timeout_s: float, starting: bool,
                      leaving: list[psutil.Process] | None = None) -> None:
        """Poll (new connections each time) until the proxy serves ``state``'s generation on both ports.

        After a reload, the old workers (``leaving``) must also have closed their listening sockets: until they
        handle the master's signal, a new connection may still land on one of them and get the old config.

        Raises:
            ProxyError: the master exited (supervisord would start another, which would fail the same way).
            DeadlineExceeded: not served within ``timeout_s``; the message ends with the error log's tail.
        """
        spec = state.proxy_spec
        supervisor = state.supervisor
        master = supervisor.pid(PROGRAM)  # another one (supervisord restarting it) means this one exited

        def check() -> tuple[bool | None, str]:
            if supervisor.status(PROGRAM) not in (RUNNING, STARTING) or supervisor.pid(PROGRAM) != master:
                raise ProxyError(f"nginx exited {'while starting' if starting else 'during a reload'}: "
                                 f"{self._log_tail()}")
            served = _served_generation(spec.host, spec.rest_port)
            if served != state.generation:
                return None, f"generation {served} served" if served is not None else "REST port not answering"
            if not port_in_use(spec.host, spec.grpc_port):
                return None, "gRPC port not answering"
            if accepting := [worker.pid for worker in leaving or () if _still_accepting(worker)]:
                return None, f"old workers {accepting} still accept connections"
            return True, "serving"

        what = f"nginx proxy generation {state.generation} not served on {spec.host}:{spec.rest_port}"
        try:
            poll_until(check, timeout_s, what, interval_s=_POLL_S)
        except DeadlineExceeded as exc:
            raise DeadlineExceeded(f"{exc}; {self.paths.error_log}: {self._log_tail()}") from None

    # ---- state and files --------------------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        for name in _TEMP_DIRS:
            (self.paths.temp / name).mkdir(parents=True, exist_ok=True)

    def _read_state(self) -> ProxyState | None:
        try:
            return ProxyState(**json.loads(self.paths.state.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            self.paths.state.unlink(missing_ok=True)  # unreadable: no proxy can be found through it anyway
            return None

    def _live_state(self) -> ProxyState | None:
        """The recorded proxy if its supervisord runs the master (or is restarting it), else None."""
        state = self._read_state()
        return state if state is not None and state.supervisor.status(PROGRAM) in ALIVE_STATES else None

    def _require_state(self) -> ProxyState:
        state = self._live_state()
        if state is None:
            raise NotFound(f"the nginx proxy in {self.paths.root} is not running; start it first")
        return state

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        return file_lock(self.paths.root / ".lock")

    def _log_tail(self, lines: int = 10) -> str:
        texts = []
        state = self._read_state()
        output = (state.supervisor if state is not None else self._supervisor).log_path(PROGRAM)
        for path in (self.paths.error_log, output):
            with contextlib.suppress(FileNotFoundError):
                texts.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(texts[-lines:]) or "(empty log)"


def _with_ports(spec: ProxySpec, running: ProxySpec | None) -> ProxySpec:
    """``spec`` with its 0 ports replaced: by the running proxy's, else by free ones."""
    if running is None and not (spec.rest_port and spec.grpc_port):
        picked = iter(free_ports(2, spec.host))
        rest, grpc = spec.rest_port or next(picked), spec.grpc_port or next(picked)
    else:
        rest = spec.rest_port or (running.rest_port if running else 0)
        grpc = spec.grpc_port or (running.grpc_port if running else 0)
    return spec.model_copy(update={"rest_port": rest, "grpc_port": grpc})


def _run_nginx(binary: str, args: list[str], what: str, error: type[PipelineError] = ProxyError) -> None:
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise error(f"nginx {what} failed: {(result.stderr or result.stdout).strip()}")


def _workers(master_pid: int | None) -> list[psutil.Process]:
    """The worker processes of an nginx master now (none when it is gone)."""
    if master_pid is None:
        return []
    try:
        return psutil.Process(master_pid).children()
    except psutil.Error:
        return []


def _still_accepting(worker: psutil.Process) -> bool:
    """Whether a worker still holds a listening socket (a leaving worker closes them when it handles SIGQUIT)."""
    try:
        if worker.status() == psutil.STATUS_ZOMBIE:
            return False
        return any(c.status == psutil.CONN_LISTEN for c in worker.net_connections(kind="tcp"))
    except psutil.Error:  # gone
        return False


def _served_generation(host: str, port: int) -> int | None:
    """The config generation the proxy answers with on a new connection, None when it does not answer."""
    connection = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        connection.request("GET", _HEALTH_PATH, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        value = response.getheader(_GENERATION_HEADER)
        return int(value) if response.status == 200 and value and value.isdigit() else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


# ---- processes ------------------------------------------------------------------------------------------------


def _end_leftover_workers(paths: _RuntimePaths) -> None:
    """End the nginx processes left in the latest master's process group (its workers, when it was killed): SIGQUIT
    (a worker finishes its requests, then exits), SIGKILL after a grace period."""
    try:
        pgid = int(paths.group.read_text())
    except (OSError, ValueError):
        return
    leftover = [p for p in _group_nginx(pgid) if p.pid != os.getpid()]
    for process in leftover:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGQUIT)
    _, alive = psutil.wait_procs(leftover, timeout=_LEFTOVER_GRACE_S)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5.0)


def _group_nginx(pgid: int) -> list[psutil.Process]:
    """The nginx processes in process group ``pgid`` (by name: a reused group id is not ours to end)."""
    found = []
    for process in psutil.process_iter(["name"]):
        try:
            if process.info["name"] == "nginx" and os.getpgid(process.pid) == pgid:
                found.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def _exec_master(binary: str, runtime_dir: Path) -> NoReturn:
    """The proxy program's command: end what an earlier master left, record this process group, become nginx.

    supervisord starts each program in a process group of its own, so nginx's master and workers share this one.
    """
    paths = _RuntimePaths(runtime_dir.resolve())
    _end_leftover_workers(paths)
    write_atomically(paths.group, str(os.getpgrp()))
    os.execv(binary, [binary, *_nginx_args(paths)])


def _nginx_args(paths: _RuntimePaths, config: Path | None = None) -> list[str]:
    return ["-p", f"{paths.root}/", "-c", str(config or paths.config), "-e", str(paths.error_log)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the proxy's nginx master (supervisord's command for it).")
    parser.add_argument("--nginx", required=True, help="the nginx binary")
    parser.add_argument("runtime_dir", type=Path)
    args = parser.parse_args(argv)
    _exec_master(args.nginx, args.runtime_dir)


if __name__ == "__main__":
    main()
