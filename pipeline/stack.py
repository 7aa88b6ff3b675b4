"""The local stack the demo and ``make up`` run: embedded staging/production TF Serving + ``airflow standalone``,
and, where the serving profile has a live traffic path, the canary instance, the nginx proxy in front of
production, the capture service and Prometheus (:mod:`pipeline.live.services`).

Airflow runs with SQLite and the LocalExecutor, sized for a 2-core machine, in its own process group
(its children outlive a plain SIGTERM of the parent, so the whole group is stopped). Everything lives
under ``$PIPELINE_HOME`` (``airflow/`` for Airflow's home, logs and password).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from pipeline.airflow_rest import admin_password, airflow_home  # re-exported: release code reads them there
from pipeline.errors import PipelineError
from pipeline.live.services import live_path_in_profile, start_live_path, stop_live_path
from pipeline.serving.backends import get_backend
from pipeline.settings import REPO_ROOT, Paths, config_dir, get_paths
from pipeline.util.polling import poll_until
from pipeline.wire.grpc_io import classic_io_env

_DEFAULT_API_PORT = 8080
_DEFAULT_START_TIMEOUT_S = 240.0
_STOP_GRACE_S = 20.0
_HTTP_PROBE_TIMEOUT_S = 2.0
_HTTP_POLL_S = 1.0
_INSTANCES = ("staging", "production")


def api_port() -> int:
    """Airflow's API/UI port (``$PIPELINE_AIRFLOW_PORT``, default 8080)."""
    return int(os.environ.get("PIPELINE_AIRFLOW_PORT", _DEFAULT_API_PORT))


def airflow_env(paths: Paths, port: int | None = None) -> dict[str, str]:
    """Environment for every Airflow process of the stack (standalone, CLI calls, task processes)."""
    port = port or api_port()
    env = classic_io_env()  # task processes start gRPC clients: grpc's classic I/O path (pipeline.wire.grpc_io)
    env.update({
        "AIRFLOW_HOME": str(airflow_home(paths)),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),  # the models pages and the reports' links
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "3",  # LocalExecutor workers: enough for 2 cores, not 32
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",  # a trigger must run, not queue
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__PORT": str(port),
        # Task processes report to this API; its default assumes port 8080.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        # Log servers of the scheduler and triggerer: next to the API port, so two stacks can run side by side.
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
    })
    return env


def _pid_file(paths: Paths) -> Path:
    return airflow_home(paths) / "standalone.pid"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def airflow_pgid(paths: Paths) -> int | None:
    """The process group of a running ``airflow standalone`` of this home, if any."""
    pid_file = _pid_file(paths)
    if not pid_file.is_file():
        return None
    pgid = int(pid_file.read_text().strip())
    return pgid if _group_alive(pgid) else None


def start_servers(paths: Paths) -> dict[str, str]:
    """Start (or attach to) the staging and production TF Serving; returns their REST URLs."""
    urls = {}
    for name in _INSTANCES:
        backend = get_backend(name, paths=paths)
        urls[name] = backend.start().rest_url
    return urls


def start_airflow(paths: Paths, timeout_s: float = _DEFAULT_START_TIMEOUT_S) -> str:
    """Start ``airflow standalone`` in its own process group and wait until its API answers."""
    home = airflow_home(paths)
    home.mkdir(parents=True, exist_ok=True)
    port = api_port()
    url = f"http://127.0.0.1:{port}"
    if airflow_pgid(paths) is None:
        log_file = (home / "standalone.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "airflow", "standalone"], env=airflow_env(paths, port),
                                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=home)
        _pid_file(paths).write_text(str(proc.pid))
    _wait_http(f"{url}/api/v2/monitor/health", timeout_s, home / "standalone.log")
    return url


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
    """Stop the whole ``airflow standalone`` process group: SIGTERM, then SIGKILL after a grace period."""
    pgid = airflow_pgid(paths)
    if pgid is None:
        return False
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_S
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    _pid_file(paths).unlink(missing_ok=True)
    return True


def stop_servers(paths: Paths) -> None:
    for name in _INSTANCES:
        get_backend(name, paths=paths).stop()


def write_env_file(paths: Paths) -> Path:
    """``airflow/env.sh``: ``source`` it so ``airflow ...`` and ``pipeline ...`` in a shell talk to this stack."""
    keep = {k: v for k, v in airflow_env(paths).items() if k.startswith(("AIRFLOW", "PIPELINE_")) or k == "PATH"}
    target = airflow_home(paths) / "env.sh"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(keep.items())))
    return target


def up(paths: Paths | None = None) -> dict[str, str]:
    """Start the whole stack; returns where to look."""
    paths = paths or get_paths()
    servers = start_servers(paths)
    live = start_live_path(paths) if live_path_in_profile() else {}
    url = start_airflow(paths)
    env_file = write_env_file(paths)
    return {"airflow_ui": url, "login": f"admin / {admin_password(paths) or '(see standalone.log)'}",
            **{f"{k}_rest": v for k, v in servers.items()}, **live,
            "logs": str(airflow_home(paths) / "logs"), "standalone_log": str(airflow_home(paths) / "standalone.log"),
            "shell": f"source {env_file}"}


def down(paths: Paths | None = None) -> None:
    """Stop Airflow, the live traffic path and the servers; leaves nothing running."""
    paths = paths or get_paths()
    errors = []
    stops = (stop_airflow, stop_live_path, stop_servers) if live_path_in_profile() else (stop_airflow, stop_servers)
    for stop in stops:
        try:
            stop(paths)
        except PipelineError as exc:
            errors.append(str(exc))
    if errors:
        raise PipelineError("; ".join(errors))
