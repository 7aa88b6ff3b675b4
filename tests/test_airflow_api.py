"""The demo's Airflow client rides out a slow or failing API answer within its overall deadline."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from pipeline import airflow_api
from pipeline.airflow_api import AirflowApi
from pipeline.errors import DeadlineExceeded
from pipeline.settings import get_paths
from tests.airflow_stub import AirflowApiStub, Received, pose_as_local_stack, serving

_RUN = "/api/v2/dags/mnist_release/dagRuns/manual__1"


@dataclass
class FlakyAirflow(AirflowApiStub):
    """Answers the run's state only after ``slow`` answers that take too long and ``failing`` 503s."""

    slow: int = 0
    failing: int = 0
    state: str = "success"
    asked: list[float] = field(default_factory=list)

    def handle(self, got: Received) -> tuple[int, object]:
        if got.path != _RUN:
            return super().handle(got)
        self.asked.append(time.monotonic())
        if len(self.asked) <= self.slow:
            time.sleep(1.0)  # past the client's read timeout (set to 0.2 s below)
            return 200, {"state": "running"}
        if len(self.asked) <= self.slow + self.failing:
            return 503, {"detail": "Service Unavailable"}
        return 200, {"dag_run_id": "manual__1", "state": self.state}


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(airflow_api, "_READ_TIMEOUT_S", 0.2)
    monkeypatch.setattr(airflow_api, "_RETRY_FIRST_S", 0.05)
    monkeypatch.setattr(airflow_api, "_RETRY_MAX_S", 0.2)


def _client(stub: AirflowApiStub, tmp_path, monkeypatch) -> AirflowApi:
    pose_as_local_stack(tmp_path, stub, monkeypatch)
    return AirflowApi(stub.url, get_paths(tmp_path))


def test_a_slow_then_failing_api_does_not_end_the_wait_for_a_run(tmp_path, monkeypatch, fast_retries):
    pauses: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:  # the client's pauses (the stub's own slowness runs in its server threads)
        if threading.current_thread() is threading.main_thread():
            pauses.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(airflow_api.time, "sleep", sleep)
    with serving(FlakyAirflow(slow=2, failing=2)) as stub:
        run = _client(stub, tmp_path, monkeypatch).wait_for_run("mnist_release", "manual__1", timeout_s=120)
    assert run["state"] == "success" and len(stub.asked) >= 5  # 2 slow and 2 failed answers, then the run
    assert pauses[:4] == [0.05, 0.1, 0.2, 0.2]  # it backs off between tries, up to its maximum


def test_an_api_that_keeps_failing_ends_the_wait_at_its_deadline_saying_why(tmp_path, monkeypatch, fast_retries):
    with serving(FlakyAirflow(failing=10_000)) as stub:
        client = _client(stub, tmp_path, monkeypatch)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"did not finish within 2s; last seen: .*kept failing .*HTTP 503"):
            client.wait_for_run("mnist_release", "manual__1", timeout_s=2)
    assert time.monotonic() - started < 30


def test_a_4xx_is_not_retried(tmp_path, monkeypatch, fast_retries):
    import requests

    with serving(FlakyAirflow()) as stub:
        with pytest.raises(requests.HTTPError):
            _client(stub, tmp_path, monkeypatch).get("/dags/nope", time.monotonic() + 30)
        assert sum(r.path == "/api/v2/dags/nope" for r in stub.requests) == 1
