"""The local stack the demo and ``make up`` run: embedded staging/production TF Serving, Airflow, and, where the
serving profile has a live traffic path, the canary instance, the nginx proxy in front of production, the capture
service and Prometheus (:mod:`pipeline.live.services`).

Every long-running process of it runs under the pipeline home's one supervisord
(:func:`pipeline.util.supervisor.stack_supervisor`): restarted when it dies, its output in
``$PIPELINE_HOME/supervisor/logs/<program>.log``, rotated. ``down`` stops them all, and supervisord with them.

Airflow runs what ``airflow standalone`` would (API server, scheduler, DAG processor, triggerer), as four programs,
with SQLite and the LocalExecutor sized for a 2-core machine. Nothing of it listens beyond 127.0.0.1: the API server
binds there, and the scheduler's and triggerer's log servers, which Airflow binds to every interface, are not
started (the LocalExecutor's task logs are files the API server reads itself). The admin password is generated here
into a 0600 file before Airflow starts, so Airflow never prints it; ``up`` says where the file is.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

import requests

from pipeline.airflow_rest import admin_password, admin_password_file, airflow_home  # noqa: F401 (re-exported)
from pipeline.errors import DeadlineExceeded, PipelineError
from pipeline.live.services import live_path_in_profile, start_live_path, stop_live_path
from pipeline.serving.backends import get_backend
from pipeline.settings import REPO_ROOT, Paths, config_dir, get_paths
from pipeline.util.files import write_atomically
from pipeline.util.polling import poll_until
from pipeline.util.supervisor import ALIVE_STATES, Program, python_env, stack_supervisor
from pipeline.wire.grpc_io import ENV_VAR as GRPC_EXPERIMENTS
from pipeline.wire.grpc_io import classic_io_env

_DEFAULT_API_PORT = 8080
_DEFAULT_START_TIMEOUT_S = 240.0
_STOP_GRACE_S = 20.0
_HTTP_PROBE_TIMEOUT_S = 2.0
_HTTP_POLL_S = 1.0
_INSTANCES = ("staging", "production")
_LOOPBACK = "127.0.0.1"
_ADMIN = "admin"
_SECRET_MODE = 0o600
# What `airflow standalone` runs, each its own program; the log servers stay off (they would bind 0.0.0.0).
_AIRFLOW_COMPONENTS = {
    "airflow-api-server": ("api-server", "--host", _LOOPBACK),
    "airflow-scheduler": ("scheduler", "--skip-serve-logs"),
    "airflow-dag-processor": ("dag-processor",),
    "airflow-triggerer": ("triggerer", "--skip-serve-logs"),
}
_API_SERVER = "airflow-api-server"


def api_port() -> int:
    """Airflow's API/UI port (``$PIPELINE_AIRFLOW_PORT``, default 8080)."""
    return int(os.environ.get("PIPELINE_AIRFLOW_PORT", _DEFAULT_API_PORT))


def airflow_env(paths: Paths, port: int | None = None) -> dict[str, str]:
    """Environment for every Airflow process of the stack (its components, CLI calls, task processes)."""
    env = classic_io_env()  # task processes start gRPC clients: grpc's classic I/O path (pipeline.wire.grpc_io)
    env.update(_airflow_settings(paths, port or api_port()))
    return env


def _airflow_settings(paths: Paths, port: int) -> dict[str, str]:
    """What :func:`airflow_env` sets on top of the caller's environment."""
    return {
        "AIRFLOW_HOME": str(airflow_home(paths)),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),  # the models pages and the reports' links
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "3",  # LocalExecutor workers: enough for 2 cores, not 32
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",  # a trigger must run, not queue
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{_ADMIN}:admin",  # user admin, role admin
        "AIRFLOW__API__HOST": _LOOPBACK,
        "AIRFLOW__API__PORT": str(port),
        # Task processes report to this API; its default assumes port 8080.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{_LOOPBACK}:{port}/execution/",
        # Log servers' ports (not started here: see the module's doc), next to the API port, as Airflow's other
        # commands expect them, so two stacks can run side by side.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(port + 1),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(port + 2),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",  # hand the next task over quickly
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "PIPELINE_HOME": str(paths.home),
        "PIPELINE_CONFIG_DIR": str(config_dir()),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PIPELINE_SCHEDULES": os.environ.get("PIPELINE_SCHEDULES", "off"),  # the demo triggers releases by hand
        # canary_monitor probes production on its schedule (dags/canary_monitor.py); PIPELINE_MONITOR_MINUTES=off,
        # or PIPELINE_SCHEDULES=off set by the caller (a bench's sandbox: only its own triggers), stops it.
        "PIPELINE_MONITOR_MINUTES": os.environ.get(
            "PIPELINE_MONITOR_MINUTES", "off" if os.environ.get("PIPELINE_SCHEDULES") == "off" else "5"),
        "GX_ANALYTICS_ENABLED": "false",
    }


def airflow_programs(paths: Paths, port: int | None = None) -> list[Program]:
    """Airflow's components as supervised programs (their environment: supervisord's plus :func:`airflow_env`'s
    own settings, so that no other variable of the caller lands in their config files)."""
    port = port or api_port()
    env = {GRPC_EXPERIMENTS: classic_io_env()[GRPC_EXPERIMENTS], **python_env(), **_airflow_settings(paths, port)}
    programs = []
    for name, args in _AIRFLOW_COMPONENTS.items():
        command = (sys.executable, "-m", "airflow", *args)
        if name == _API_SERVER:
            command += ("--port", str(port))
        programs.append(Program(name, command, env=env, cwd=airflow_home(paths), stop_wait_s=_STOP_GRACE_S))
    return programs


def ensure_admin_password(paths: Paths) -> Path:
    """The admin password file (``{"admin": "<password>"}``, mode 0600), generated when missing; its path.

    Written before Airflow starts, so its simple auth manager finds the user and never prints a password.
    """
    path = admin_password_file(paths)
    if path.is_file():
        path.chmod(_SECRET_MODE)  # one an older stack (or Airflow) wrote 0644
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps({_ADMIN: secrets.token_urlsafe(18)}) + "\n", mode=_SECRET_MODE)
    return path


def start_servers(paths: Paths) -> dict[str, str]:
    """Start (or attach to) the staging and production TF Serving; returns their REST URLs."""
    urls = {}
    for name in _INSTANCES:
        backend = get_backend(name, paths=paths)
        urls[name] = backend.start().rest_url
    return urls


def start_airflow(paths: Paths, timeout_s: float = _DEFAULT_START_TIMEOUT_S) -> str:
    """Start (or attach to) Airflow's components under the stack's supervisord; return once its API answers.

    Raises:
        PipelineError: the database migration or a component failed (the message ends with its log).
        DeadlineExceeded: the API did not answer within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    home = airflow_home(paths)
    home.mkdir(parents=True, exist_ok=True)
    ensure_admin_password(paths)
    port = api_port()
    url = f"http://{_LOOPBACK}:{port}"
    supervisor = stack_supervisor(paths.home)
    programs = airflow_programs(paths, port)
    if not all(supervisor.status(program.name) in ALIVE_STATES for program in programs):
        _migrate_database(paths, port, max(deadline - time.monotonic(), 1.0))
        for program in programs:
            supervisor.run(program, max(deadline - time.monotonic(), 1.0))
    _wait_http(f"{url}/api/v2/monitor/health", max(deadline - time.monotonic(), 1.0),
               supervisor.log_path(_API_SERVER))
    return url


def _migrate_database(paths: Paths, port: int, timeout_s: float) -> None:
    """``airflow db migrate`` (what ``airflow standalone`` does first); its output goes to ``db-migrate.log``."""
    log_file = airflow_home(paths) / "db-migrate.log"
    with log_file.open("ab") as log:
        try:
            result = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=airflow_env(paths, port),
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=airflow_home(paths), timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise DeadlineExceeded(f"airflow db migrate did not finish within {timeout_s:.0f}s; see {log_file}") from None
    if result.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
        raise PipelineError(f"airflow db migrate failed (exit status {result.returncode}); {log_file}:\n{tail}")


def _wait_http(url: str, timeout_s: float, log_file: Path) -> None:
    """Wait until ``url`` answers HTTP 200.

    Raises:
        DeadlineExceeded: it did not within ``timeout_s``; the message names the last answer and the log.
    """

    def check() -> tuple[bool | None, str]:
        try:
            status = requests.get(url, timeout=_HTTP_PROBE_TIMEOUT_S).status_code
        except requests.RequestException as exc:  # not listening yet, or still starting up
            return None, f"no answer ({type(exc).__name__})"
        return (True if status == 200 else None), f"HTTP {status}"

    poll_until(check, timeout_s, f"{url} did not answer HTTP 200", interval_s=_HTTP_POLL_S, hint=f"See {log_file}")


def stop_airflow(paths: Paths) -> bool:
    """Stop Airflow's components (SIGTERM, SIGKILL after 20 s, each with its process group); whether any ran."""
    supervisor = stack_supervisor(paths.home)
    names = list(_AIRFLOW_COMPONENTS)
    running = any(supervisor.status(name) in ALIVE_STATES for name in names)
    supervisor.remove(*names)  # all at once: each takes a few seconds to stop
    supervisor.shutdown_if_idle()
    return running


def stop_servers(paths: Paths) -> None:
    for name in _INSTANCES:
        get_backend(name, paths=paths).stop()


def write_env_file(paths: Paths) -> Path:
    """``airflow/env.sh``: ``source`` it so ``airflow ...`` and ``pipeline ...`` in a shell talk to this stack.

    Only the stack's own settings: none of the caller's variables (a password among them) lands in the file.
    """
    keep = {k: v for k, v in _airflow_settings(paths, api_port()).items()
            if k.startswith(("AIRFLOW", "PIPELINE_")) or k == "PATH"}
    target = airflow_home(paths) / "env.sh"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(keep.items())))
    return target


def up(paths: Paths | None = None) -> dict[str, str]:
    """Start the whole stack; returns where to look (the password's file, never the password)."""
    paths = paths or get_paths()
    servers = start_servers(paths)
    live = start_live_path(paths) if live_path_in_profile() else {}
    url = start_airflow(paths)
    env_file = write_env_file(paths)
    return {"airflow_ui": url, "login": f"{_ADMIN} (password in {admin_password_file(paths)})",
            **{f"{k}_rest": v for k, v in servers.items()}, **live,
            "logs": str(airflow_home(paths) / "logs"),
            "service_logs": str(stack_supervisor(paths.home).runtime_dir / "logs"),
            "shell": f"source {env_file}"}


def down(paths: Paths | None = None) -> None:
    """Stop Airflow, the live traffic path and the servers, then the stack's supervisord: nothing is left running."""
    paths = paths or get_paths()
    errors = []
    stops = (stop_airflow, stop_live_path, stop_servers) if live_path_in_profile() else (stop_airflow, stop_servers)
    for stop in stops:
        try:
            stop(paths)
        except PipelineError as exc:
            errors.append(str(exc))
    stack_supervisor(paths.home).shutdown()  # whatever is left (a program of a profile no longer in use)
    if errors:
        raise PipelineError("; ".join(errors))
