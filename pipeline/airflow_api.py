"""Talk to the local Airflow: trigger DAGs with the ``airflow`` CLI, follow runs through the REST API (v2)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import requests

from pipeline.errors import PipelineError
from pipeline.settings import Paths
from pipeline.stack import admin_password, airflow_env
from pipeline.util.polling import poll_until

_FINISHED = {"success", "failed"}
_DEFAULT_TIMEOUT_S = 600.0
_DAG_POLL_S = 2.0
_RUN_POLL_S = 1.0


class AirflowApi:
    """A small client of Airflow 3's public REST API, logged in as the standalone admin."""

    def __init__(self, base_url: str, paths: Paths) -> None:
        self.base_url = base_url.rstrip("/")
        self.paths = paths
        self._session = requests.Session()

    def _login(self) -> None:
        password = admin_password(self.paths)
        if password is None:
            raise PipelineError("no generated admin password yet; is `airflow standalone` running?")
        reply = self._session.post(f"{self.base_url}/auth/token", json={"username": "admin", "password": password},
                                   timeout=10)
        reply.raise_for_status()
        self._session.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"

    def get(self, path: str) -> dict[str, Any]:
        if "Authorization" not in self._session.headers:
            self._login()
        reply = self._session.get(f"{self.base_url}/api/v2{path}", timeout=10)
        if reply.status_code == 401:
            self._login()
            reply = self._session.get(f"{self.base_url}/api/v2{path}", timeout=10)
        reply.raise_for_status()
        return reply.json()

    def wait_for_dag(self, dag_id: str, timeout_s: float = 180.0) -> None:
        """Wait until the DAG processor has parsed ``dag_id`` (a trigger before that is refused).

        Raises:
            DeadlineExceeded: the API still did not know the DAG after ``timeout_s``.
        """

        def check() -> tuple[bool | None, str]:
            try:
                self.get(f"/dags/{dag_id}")
            except requests.HTTPError as exc:  # 404 until the DAG processor has parsed the file
                return None, f"HTTP {exc.response.status_code}" if exc.response is not None else str(exc)
            return True, "parsed"

        poll_until(check, timeout_s, f"DAG {dag_id} not parsed", interval_s=_DAG_POLL_S,
                   hint="Check `airflow dags list-import-errors`")

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = _DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """Poll a DAG run until it succeeds or fails; returns the run.

        Raises:
            DeadlineExceeded: it was still unfinished after ``timeout_s``; the message names its last state.
        """

        def check() -> tuple[dict[str, Any] | None, str]:
            run = self.get(f"/dags/{dag_id}/dagRuns/{run_id}")
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
