"""The models pages over a small world (tests/ui/world.py), through FastAPI's TestClient, mounted at /pipeline as
Airflow's API server mounts them. Airflow stands in as a fake that records what the pages ask it."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.errors import PipelineError
from tests.ui.world import UiWorld, build_world

PREFIX = "/pipeline"
TOKEN = "the-ui-jwt"


class FakeUser:
    def get_name(self) -> str:
        return "oncall"


class FakeAirflow:
    """Airflow's REST API as the pages use it: triggers recorded, XComs and run confs from dicts."""

    def __init__(self) -> None:
        self.triggered: list[tuple[str, str, dict[str, Any]]] = []
        self.xcoms: dict[tuple[str, str, str], Any] = {}
        self.confs: dict[tuple[str, str], dict[str, Any]] = {}
        self.refuse: PipelineError | None = None

    def trigger(self, token: str, dag_id: str, conf: dict[str, Any]) -> str:
        if self.refuse is not None:
            raise self.refuse
        self.triggered.append((token, dag_id, conf))
        return f"manual__2026-01-01T00:00:0{len(self.triggered)}+00:00"

    def xcom_result(self, token: str, dag_id: str, run_id: str, task_id: str) -> Any:
        assert token == TOKEN, "the pages must call Airflow with the user's own token"
        return self.xcoms.get((dag_id, run_id, task_id))

    def run_conf(self, token: str, dag_id: str, run_id: str) -> dict[str, Any]:
        assert token == TOKEN
        return self.confs.get((dag_id, run_id), {})


@pytest.fixture
def world(tmp_path, monkeypatch) -> UiWorld:
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path / "configs"))
    monkeypatch.delenv("PIPELINE_SERVING_PROFILE", raising=False)
    monkeypatch.delenv("PIPELINE_REGISTRY_URL", raising=False)
    return build_world(tmp_path)


@pytest.fixture
def airflow() -> FakeAirflow:
    return FakeAirflow()


def mounted(app: Any) -> Any:
    """The app as Airflow's API server serves it: behind the plugin's LazyApp, mounted at /pipeline."""
    from fastapi import FastAPI

    from pipeline.ui.app import LazyApp

    parent = FastAPI()
    parent.mount(PREFIX, LazyApp(lambda: app))
    return parent


@pytest.fixture
def client(world, airflow):
    """A logged-in browser: the user dependency says who, the UI's cookie carries the token the pages forward."""
    from fastapi.testclient import TestClient

    from pipeline.ui.app import create_app

    app = create_app(world.paths, airflow, api_root="/", user=FakeUser, login_url=lambda after: f"/auth/login?next={after}")
    with TestClient(mounted(app), cookies={"_token": TOKEN}) as test_client:
        yield test_client
