"""Airflow's public REST API, called as the person who is logged in (their own token): what they may not do,
Airflow refuses, and the runs they trigger are theirs.

The app runs inside Airflow's API server, so it calls that server on loopback (:func:`api_url_from_airflow_conf`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from pipeline.errors import NotFound, PipelineError

_TIMEOUT_S = 15.0


class AirflowRefused(PipelineError):
    """Airflow answered a call with an error; ``status`` is its HTTP status, the message its detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"Airflow answered HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class Airflow(Protocol):
    """What the pages ask Airflow (a fake stands in for it in tests)."""

    def trigger(self, token: str, dag_id: str, conf: dict[str, Any]) -> str:
        """Trigger a run of ``dag_id`` with ``conf``; returns its run id."""
        ...

    def xcom_result(self, token: str, dag_id: str, run_id: str, task_id: str) -> Any:
        """A task's return value in a run (None when it has none)."""
        ...

    def run_conf(self, token: str, dag_id: str, run_id: str) -> dict[str, Any]:
        """The conf a run was triggered with."""
        ...


def api_url_from_airflow_conf() -> str:
    """The API server's own URL on loopback, from Airflow's ``[api]`` settings (host, port, base_url, ssl)."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    host = conf.get("api", "host", fallback="0.0.0.0")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    scheme = "https" if conf.get("api", "ssl_cert", fallback="") else "http"
    root = urlsplit(conf.get("api", "base_url", fallback="") or "/").path.rstrip("/")
    return f"{scheme}://{host}:{conf.getint('api', 'port', fallback=8080)}{root}"


@dataclass
class AirflowRest:
    """:class:`Airflow` through ``<base_url>/api/v2``."""

    base_url: str
    timeout_s: float = _TIMEOUT_S

    def _call(self, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.base_url.rstrip('/')}/api/v2{path}"
        try:
            reply = httpx.request(method, url, json=body, timeout=self.timeout_s,
                                  headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise PipelineError(f"could not reach Airflow's API at {url}: {exc}") from exc
        if reply.status_code == 404:
            raise NotFound(_detail(reply))
        if reply.status_code >= 400:
            raise AirflowRefused(reply.status_code, _detail(reply))
        answer: dict[str, Any] = reply.json()
        return answer

    def trigger(self, token: str, dag_id: str, conf: dict[str, Any]) -> str:
        run = self._call(token, "POST", f"/dags/{quote(dag_id, safe='')}/dagRuns",
                         {"logical_date": None, "conf": conf})
        return str(run["dag_run_id"])

    def xcom_result(self, token: str, dag_id: str, run_id: str, task_id: str) -> Any:
        path = (f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
                f"{quote(task_id, safe='')}/xcomEntries/return_value")
        try:
            value = self._call(token, "GET", path).get("value")
        except NotFound:
            return None
        if isinstance(value, str):  # the raw serialized value: JSON for the plain dicts our tasks return
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def run_conf(self, token: str, dag_id: str, run_id: str) -> dict[str, Any]:
        run = self._call(token, "GET", f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}")
        return dict(run.get("conf") or {})


def _detail(reply: httpx.Response) -> str:
    try:
        detail = reply.json().get("detail", reply.text)
    except ValueError:
        return reply.text[:500]
    return detail if isinstance(detail, str) else json.dumps(detail)[:500]
