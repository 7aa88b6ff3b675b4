"""docker-compose.yml brought up for real with the local images (docker-compose.local.yml), on free loopback ports
and fresh secrets, then driven through Airflow's API as a user would: the tests and bench/containers.py use it.

``down()`` removes the project's containers, networks and volumes (``down -v``): nothing of it is left.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import SourceUnavailable
from pipeline.settings import REPO_ROOT
from pipeline.util.net import free_ports
from pipeline.util.polling import poll_until

log = logging.getLogger(__name__)

COMPOSE_FILES = (REPO_ROOT / "docker-compose.yml", REPO_ROOT / "docker-compose.local.yml")
_ADMIN = "admin"
_AIRFLOW_UID = 50000
_POLL_S = 3.0


def compose_binary() -> list[str]:
    """``docker-compose`` (v1) or ``docker compose`` (the v2 plugin).

    Raises:
        SourceUnavailable: neither is installed.
    """
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    raise SourceUnavailable("neither docker-compose nor the docker compose plugin is installed "
                            "(apt-get install docker-compose)")


@dataclass
class ComposeStack:
    """One compose project on an engine (``docker_url``), its settings in ``env_file`` under ``workdir``."""

    docker_url: str
    workdir: Path
    project: str = field(default_factory=lambda: f"mlops{secrets.token_hex(3)}")
    ports: dict[str, int] = field(default_factory=dict)
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))

    @property
    def env_file(self) -> Path:
        return self.workdir / ".env"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['AIRFLOW_API_PORT']}"

    @property
    def production_rest_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['TFSERVING_PRODUCTION_REST_PORT']}"

    def write_env(self) -> None:
        """Fresh secrets and free loopback ports (never the defaults another stack may hold)."""
        from cryptography.fernet import Fernet

        names = ("AIRFLOW_API_PORT", "TFSERVING_PRODUCTION_REST_PORT", "TFSERVING_PRODUCTION_GRPC_PORT",
                 "PROMETHEUS_PORT")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        values = {"AIRFLOW_UID": str(_AIRFLOW_UID), "POSTGRES_USER": "airflow", "POSTGRES_DB": "airflow",
                  "POSTGRES_PASSWORD": secrets.token_urlsafe(16), "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
                  "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(48), "AIRFLOW_API_SECRET_KEY": secrets.token_urlsafe(32),
                  "AIRFLOW_ADMIN_USER": _ADMIN, "AIRFLOW_ADMIN_PASSWORD": self.admin_password,
                  # Releases only when triggered: a scheduled run beside the triggered one would train again.
                  "PIPELINE_SCHEDULES": "off",
                  **{name: str(port) for name, port in self.ports.items()}}
        values["AIRFLOW_BASE_URL"] = self.airflow_url
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        self.env_file.chmod(0o600)

    def compose(self, *args: str, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
        """Run ``docker-compose <args>`` on this project; raises SourceUnavailable with its output on failure."""
        files = [arg for path in COMPOSE_FILES for arg in ("-f", str(path))]
        command = [*compose_binary(), "--project-directory", str(REPO_ROOT), "--env-file", str(self.env_file),
                   "-p", self.project, *files, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "DOCKER_HOST": self.docker_url})
        if done.returncode != 0:
            raise SourceUnavailable(f"{' '.join(command[-len(args):])} failed ({done.returncode}): "
                                    f"{(done.stdout + done.stderr)[-3000:]}")
        return done

    def up(self) -> None:
        self.compose("up", "-d", "--no-build")

    def health(self) -> dict[str, str]:
        """Each service's container state: its health where it has a healthcheck, else its status."""
        import docker

        client = docker.DockerClient(base_url=self.docker_url, timeout=60)
        try:
            found = client.containers.list(all=True, filters={"label": f"com.docker.compose.project={self.project}"})
            return {c.labels["com.docker.compose.service"]: c.attrs["State"].get("Health", {}).get("Status")
                    or c.status for c in found}
        finally:
            client.close()

    def wait_healthy(self, timeout_s: float) -> dict[str, str]:
        """Until every long-running service is healthy (airflow-init has exited 0).

        "unhealthy" is waited out, not fatal: Docker keeps running the check, and on two busy cores an Airflow CLI
        check can miss its timeout for a while and then pass.

        Raises:
            SourceUnavailable: a service's container stopped.
            DeadlineExceeded: not all healthy in time (with each one's state).
        """

        def check() -> tuple[dict[str, str] | None, str]:
            states = self.health()
            broken = {name: state for name, state in states.items()
                      if state == "dead" or (state == "exited" and name != "airflow-init")}
            if broken:
                raise SourceUnavailable(f"compose services failed: {broken}")
            waiting = {name: state for name, state in states.items() if state not in ("healthy", "exited")}
            return (states if states and not waiting else None), str(waiting or "no containers yet")

        return poll_until(check, timeout_s, f"compose project {self.project} not healthy", interval_s=_POLL_S,
                          hint=f"docker-compose -p {self.project} logs")

    def seed_cache(self, source: Path) -> None:
        """Copy a data cache (e.g. var/cache/npm) into the shared pipeline home, owned by the Airflow user: the
        compose networks have no route out from a daemon without NAT, so prepare cannot download."""
        self.compose("run", "--rm", "--no-deps", "--user", "0:0", "--entrypoint", "bash",
                     "-v", f"{source}:/seed:ro", "capture", "-c",
                     f"mkdir -p /opt/pipeline/var/cache/npm && cp -r /seed/. /opt/pipeline/var/cache/npm/ && "
                     f"chown -R {_AIRFLOW_UID}:0 /opt/pipeline/var/cache")

    def release(self, dag_id: str, timeout_s: float) -> dict[str, Any]:
        """Unpause ``dag_id``, trigger it, and wait until every run of it has ended (the stack's schedules are off,
        so that is the triggered run; with them on, unpausing would also start the latest interval's run).

        Returns ``{"seconds": trigger to the last end, "runs": {run_id: {"state", "tasks": {task_id: state}}}}``.
        """
        from pipeline.airflow_rest import AirflowRest, ApiAccess, ApiError

        api = AirflowRest(ApiAccess(self.airflow_url, username=_ADMIN, password=self.admin_password,
                                    source=f"compose project {self.project}"))
        try:
            poll_until(lambda: self._parsed(api, dag_id), timeout_s, f"{dag_id} not parsed", interval_s=_POLL_S)
            started = time.monotonic()
            api.call("POST", f"/dags/{dag_id}/dagRuns", body={"logical_date": None, "conf": {}})
            api.call("PATCH", f"/dags/{dag_id}", body={"is_paused": False})

            def all_ended() -> tuple[list[dict[str, Any]] | None, str]:
                try:
                    runs = api.call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 20})["dag_runs"]
                except ApiError as exc:  # one slow answer on busy cores (a read timeout): ask again until the deadline
                    return None, str(exc)
                states = {r["dag_run_id"]: r["state"] for r in runs}
                done = runs and all(state in ("success", "failed") for state in states.values())
                return (runs if done else None), str(states)

            runs = poll_until(all_ended, timeout_s, f"{dag_id}'s runs did not end", interval_s=_POLL_S)
            seconds = round(time.monotonic() - started, 1)
            api.call("PATCH", f"/dags/{dag_id}", body={"is_paused": True})
            report: dict[str, Any] = {"seconds": seconds, "runs": {}, "work_s": None}
            for run in runs:
                found = api.call("GET", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances")["task_instances"]
                report["runs"][run["dag_run_id"]] = {"state": run["state"],
                                                     "tasks": {t["task_id"]: t["state"] for t in found}}
                if any(t["task_id"] == "finalize" and t["state"] == "success" for t in found):
                    report["work_s"] = round(sum(t.get("duration") or 0.0 for t in found), 1)  # the releasing run's
            return report
        finally:
            api.close()

    @staticmethod
    def _parsed(api: Any, dag_id: str) -> tuple[bool | None, str]:
        from pipeline.airflow_rest import ApiError

        try:
            api.call("GET", f"/dags/{dag_id}")
        except ApiError as exc:  # 404 until the dag processor has parsed the file
            return None, str(exc)
        return True, "parsed"

    def pipeline_cli(self, *args: str) -> str:
        """``pipeline <args>`` in the scheduler's container (the pipeline home and registry the DAGs use)."""
        return self.compose("exec", "-T", "airflow-scheduler", "pipeline", *args, timeout_s=300).stdout

    def down(self) -> None:
        """``down -v``: the project's containers, networks and volumes go."""
        if self.env_file.is_file():
            self.compose("down", "-v", "--remove-orphans", timeout_s=300)
