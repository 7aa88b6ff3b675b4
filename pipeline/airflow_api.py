"""Talk to the local Airflow: trigger DAGs with the ``airflow`` CLI, follow runs through the REST API (v2)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from typing import Any

import requests

from pipeline.errors import DeadlineExceeded, PipelineError
from pipeline.settings import Paths
from pipeline.stack import admin_password, airflow_env
from pipeline.util.polling import poll_until

log = logging.getLogger(__name__)

_FINISHED = {"success", "failed"}
_DEFAULT_TIMEOUT_S = 600.0
_DAG_POLL_S = 2.0
_RUN_POLL_S = 1.0
_CONNECT_TIMEOUT_S = 5.0
_READ_TIMEOUT_S = 10.0
_RETRY_FIRST_S = 1.0  # the first pause after a slow or failed answer; doubled each time up to _RETRY_MAX_S
_RETRY_MAX_S = 15.0
_STANDALONE_RETRY_S = 60.0  # a call outside any wait still rides out a short stall (2 busy cores)


class _Transient(Exception):
    """An answer worth asking again: a timeout, a refused or dropped connection, a 5xx."""


class AirflowApi:
    """A small client of Airflow 3's public REST API, logged in as the standalone admin.

    Every call rides out a slow or failing API (a read timeout, a dropped connection, a 5xx: Airflow's API server
    under load on 2 shared cores) by asking again with backoff, within the caller's overall deadline.
    """

    def __init__(self, base_url: str, paths: Paths) -> None:
        self.base_url = base_url.rstrip("/")
        self.paths = paths
        self._session = requests.Session()

    def _login(self) -> None:
        password = admin_password(self.paths)
        if password is None:
            raise PipelineError("no generated admin password yet; is `airflow standalone` running?")
        reply = self._send("post", f"{self.base_url}/auth/token", json={"username": "admin", "password": password})
        reply.raise_for_status()
        self._session.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            reply = self._session.request(method, url, timeout=(_CONNECT_TIMEOUT_S, _READ_TIMEOUT_S), **kwargs)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise _Transient(type(exc).__name__) from exc
        if reply.status_code >= 500:
            raise _Transient(f"HTTP {reply.status_code}")
        return reply

    def _get_once(self, path: str) -> dict[str, Any]:
        if "Authorization" not in self._session.headers:
            self._login()
        reply = self._send("get", f"{self.base_url}/api/v2{path}")
        if reply.status_code == 401:
            self._login()
            reply = self._send("get", f"{self.base_url}/api/v2{path}")
        reply.raise_for_status()
        return reply.json()

    def get(self, path: str, deadline: float | None = None) -> dict[str, Any]:
        """``GET /api/v2<path>``, asked again with backoff after a timeout, a connection error or a 5xx until
        ``deadline`` (``time.monotonic()``; default: a minute from now).

        Raises:
            requests.HTTPError: a 4xx answer (e.g. 404 before a DAG is parsed).
            DeadlineExceeded: the API kept failing until the deadline; the message says how.
        """
        deadline = time.monotonic() + _STANDALONE_RETRY_S if deadline is None else deadline
        pause = _RETRY_FIRST_S
        while True:
            try:
                return self._get_once(path)
            except _Transient as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded(f"Airflow's API at {self.base_url} kept failing for GET {path} ({exc}); "
                                           "is the API server overloaded or down?") from None
                log.info("Airflow's API: GET %s: %s; asking again in %.0f s", path, exc, min(pause, remaining))
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, _RETRY_MAX_S)

    def wait_for_dag(self, dag_id: str, timeout_s: float = 180.0) -> None:
        """Wait until the DAG processor has parsed ``dag_id`` (a trigger before that is refused).

        Raises:
            DeadlineExceeded: the API still did not know the DAG after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s

        def check() -> tuple[bool | None, str]:
            try:
                self.get(f"/dags/{dag_id}", deadline)
            except requests.HTTPError as exc:  # 404 until the DAG processor has parsed the file
                return None, f"HTTP {exc.response.status_code}" if exc.response is not None else str(exc)
            return True, "parsed"

        poll_until(check, timeout_s, f"DAG {dag_id} not parsed", interval_s=_DAG_POLL_S,
                   hint="Check `airflow dags list-import-errors`")

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = _DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """Poll a DAG run until it succeeds or fails; returns the run. A slow or failing answer is asked again
        (with backoff) within ``timeout_s``: one stalled API call does not end the wait.

        Raises:
            DeadlineExceeded: it was still unfinished after ``timeout_s``; the message names its last state.
        """
        deadline = time.monotonic() + timeout_s

        def check() -> tuple[dict[str, Any] | None, str]:
            try:
                run = self.get(f"/dags/{dag_id}/dagRuns/{run_id}", deadline)
            except DeadlineExceeded as exc:
                return None, str(exc)
            return (run if run["state"] in _FINISHED else None), f"state {run['state']}"

        return poll_until(check, timeout_s, f"{dag_id} run {run_id} did not finish", interval_s=_RUN_POLL_S)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]


def trigger_dag(paths: Paths, dag_id: str, conf: dict[str, Any] | None = None) -> str:
    """``airflow dags trigger <dag> --conf '{...}'``, exactly as a person would type it; returns the run id."""
    cmd = [sys.executable, "-m", "airflow", "dags", "trigger", dag_id, "--conf", json.dumps(conf or {}),
           "--output", "json"]
    proc = subprocess.run(cmd, env=airflow_env(paths), capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise PipelineError(f"`airflow dags trigger {dag_id}` failed: {proc.stderr.strip()[-500:]}")
    # Airflow logs to stdout too; the JSON answer is the line that starts with "[{".
    answer = next((line for line in proc.stdout.splitlines() if line.startswith("[{")), None)
    if answer is None:
        raise PipelineError(f"`airflow dags trigger {dag_id}` printed no run: {proc.stdout.strip()[-500:]}")
    return json.loads(answer)[0]["dag_run_id"]
