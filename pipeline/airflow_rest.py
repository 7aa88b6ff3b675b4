"""Airflow's public REST API (v2), for the records the pipeline keeps in Airflow: asset events of what each
environment serves (``POST /api/v2/assets/events``) and one-line notes on DAG runs
(``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}``).

Light (``requests`` only, imported on use) and importable from anywhere, the release package included: it knows
nothing of the stack but where the local stack keeps its admin password. Which Airflow it talks to:

1. ``$PIPELINE_AIRFLOW_API_URL`` (any deployment), with ``$PIPELINE_AIRFLOW_API_TOKEN`` (a bearer token: JWT from
   ``POST /auth/token``) or ``$PIPELINE_AIRFLOW_API_USERNAME`` / ``$PIPELINE_AIRFLOW_API_PASSWORD`` (exchanged for
   one at ``/auth/token``);
2. else the local stack of this ``$PIPELINE_HOME`` (``pipeline up`` / ``make demo``), when its generated admin
   password exists: ``http://127.0.0.1:$AIRFLOW__API__PORT`` (or ``$PIPELINE_AIRFLOW_PORT``, default 8080);
3. else none: nothing is posted.

Every call here is best effort: a record that cannot be written (no Airflow configured, Airflow down, the asset
not parsed yet, a refusal) logs one warning line and returns; it never fails what the caller did.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pipeline.settings import Paths, get_paths

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

URL_ENV = "PIPELINE_AIRFLOW_API_URL"
TOKEN_ENV = "PIPELINE_AIRFLOW_API_TOKEN"
USERNAME_ENV = "PIPELINE_AIRFLOW_API_USERNAME"
PASSWORD_ENV = "PIPELINE_AIRFLOW_API_PASSWORD"
_LOCAL_ADMIN = "admin"
_DEFAULT_PORT = 8080
_CONNECT_TIMEOUT_S = 3.0
_READ_TIMEOUT_S = 10.0
NOTE_MAX_CHARS = 1000  # Airflow's DAGRunPatchBody.note limit


def airflow_home(paths: Paths) -> Path:
    """Where the local stack's Airflow keeps its home, logs and admin password."""
    return paths.home / "airflow"


def admin_password_file(paths: Paths) -> Path:
    """Where the local stack keeps its admin password (Airflow's simple auth manager reads it; ``pipeline up``
    writes it, mode 0600, before Airflow starts)."""
    return airflow_home(paths) / "simple_auth_manager_passwords.json.generated"


def admin_password(paths: Paths) -> str | None:
    """The local stack's admin password (never printed: :func:`admin_password_file` says where it is)."""
    generated = admin_password_file(paths)
    if not generated.is_file():
        return None
    return json.loads(generated.read_text()).get(_LOCAL_ADMIN)


@dataclass(frozen=True)
class ApiAccess:
    """How to reach one Airflow's public API: its base URL and a token or credentials to get one."""

    base_url: str
    token: str | None = None
    username: str | None = None
    password: str | None = None
    source: str = ""

    def __repr__(self) -> str:  # never the secrets
        return f"ApiAccess({self.base_url!r}, from {self.source})"


def api_access(paths: Paths | None = None) -> ApiAccess | None:
    """The Airflow to write records to: ``$PIPELINE_AIRFLOW_API_URL``, else this home's local stack, else None."""
    url = os.environ.get(URL_ENV, "").strip()
    if url:
        return ApiAccess(url.rstrip("/"), token=os.environ.get(TOKEN_ENV) or None,
                         username=os.environ.get(USERNAME_ENV) or None, password=os.environ.get(PASSWORD_ENV) or None,
                         source=f"${URL_ENV}")
    paths = paths or get_paths()
    password = admin_password(paths)
    if password is None:
        return None
    port = os.environ.get("AIRFLOW__API__PORT") or os.environ.get("PIPELINE_AIRFLOW_PORT") or str(_DEFAULT_PORT)
    return ApiAccess(f"http://127.0.0.1:{port}", username=_LOCAL_ADMIN, password=password,
                     source=f"the local stack of {paths.home}")


class ApiError(Exception):
    """A call to Airflow's API did not do what was asked; the message says why in one line."""


class AirflowRest:
    """A small client of Airflow's public REST API: bearer token (fetched once, again after a 401), short timeouts.

    Raises :class:`ApiError` on any failure; the module's functions turn that into one warning.
    """

    def __init__(self, access: ApiAccess) -> None:
        import requests

        self.access = access
        self._session = requests.Session()
        if access.token:
            self._session.headers["Authorization"] = f"Bearer {access.token}"

    def close(self) -> None:
        self._session.close()

    def _login(self) -> None:
        import requests

        if not (self.access.username and self.access.password):
            raise ApiError(f"no token and no credentials for {self.access.base_url}")
        try:
            reply = self._session.post(f"{self.access.base_url}/auth/token",
                                       json={"username": self.access.username, "password": self.access.password},
                                       timeout=(_CONNECT_TIMEOUT_S, _READ_TIMEOUT_S))
        except requests.RequestException as exc:
            raise ApiError(f"Airflow's API at {self.access.base_url} is not reachable ({type(exc).__name__})") from None
        if reply.status_code not in (200, 201):
            raise ApiError(f"login to {self.access.base_url} refused: HTTP {reply.status_code}")
        self._session.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"

    def call(self, method: str, path: str, *, body: dict[str, Any] | None = None,
             params: dict[str, Any] | None = None) -> Any:
        """``method /api/v2<path>``; returns the decoded JSON answer."""
        if "Authorization" not in self._session.headers:
            self._login()
        reply = self._send(method, path, body, params)
        if reply.status_code == 401 and self.access.username:  # the token expired: once more with a fresh one
            self._login()
            reply = self._send(method, path, body, params)
        if reply.status_code >= 400:
            detail = reply.text.strip().replace("\n", " ")[:200]
            raise ApiError(f"{method} {path}: HTTP {reply.status_code} {detail}")
        return reply.json() if reply.content else None

    def _send(self, method: str, path: str, body: dict[str, Any] | None,
              params: dict[str, Any] | None) -> requests.Response:
        import requests

        try:
            return self._session.request(method, f"{self.access.base_url}/api/v2{path}", json=body, params=params,
                                         timeout=(_CONNECT_TIMEOUT_S, _READ_TIMEOUT_S))
        except requests.RequestException as exc:
            raise ApiError(f"Airflow's API at {self.access.base_url} is not reachable ({type(exc).__name__})") from None

    def asset_id(self, name: str, uri: str) -> int:
        """The id of the asset ``name`` with ``uri`` (it exists once a parsed DAG declares it)."""
        found = self.call("GET", "/assets", params={"name_pattern": name, "limit": 100})
        for asset in found.get("assets", []):
            if asset.get("name") == name and asset.get("uri") == uri:
                return int(asset["id"])
        raise ApiError(f"Airflow knows no asset {name} ({uri}) yet: no parsed DAG declares it")


def post_asset_event(name: str, uri: str, extra: dict[str, Any], paths: Paths | None = None) -> dict[str, Any] | None:
    """Record an event of the asset ``name`` with ``extra``; returns Airflow's event, or None (one warning logged)."""
    access = api_access(paths)
    if access is None:
        log.warning("asset event %s not recorded: no Airflow API configured (set $%s, or start the stack)", name,
                    URL_ENV)
        return None
    client = AirflowRest(access)
    try:  # looked up each time: changes are rare, and an asset's id changes if it is ever re-created
        asset_id = client.asset_id(name, uri)
        return client.call("POST", "/assets/events", body={"asset_id": asset_id, "extra": extra})
    except ApiError as exc:
        log.warning("asset event %s not recorded: %s", name, exc)
        return None
    finally:
        client.close()


def set_run_note(dag_id: str, run_id: str, note: str, paths: Paths | None = None, *, append: bool = True) -> bool:
    """Write ``note`` (one line, cut to Airflow's 1000 characters) on the DAG run; True when written.

    ``append``: keep a note the run already has (an earlier failure of the same run) and add this one after it.
    """
    access = api_access(paths)
    if access is None:
        log.warning("note on %s %s not written: no Airflow API configured (set $%s, or start the stack)", dag_id,
                    run_id, URL_ENV)
        return False
    path = f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"
    line = one_line(note)
    client = AirflowRest(access)
    try:
        if append:
            existing = (client.call("GET", path) or {}).get("note") or ""
            if existing and line not in existing:
                line = f"{existing} | then {line}"
        client.call("PATCH", path, body={"note": one_line(line)}, params={"update_mask": "note"})
        return True
    except ApiError as exc:
        log.warning("note on %s %s not written: %s", dag_id, run_id, exc)
        return False
    finally:
        client.close()


def one_line(text: str, limit: int = NOTE_MAX_CHARS) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
