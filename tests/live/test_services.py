"""The stack's live path (`pipeline up`'s part behind the endpoint) on real processes: production and canary
servers, nginx, the capture service, Prometheus and the exporter all under the home's one supervisord; a SIGKILLed
production server answers through the endpoint again with nobody but supervisord acting; stopping leaves nothing
running. Ports come from a profile written for the test (free loopback ports), in a temporary world."""

from __future__ import annotations

import os
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from pipeline.errors import SourceUnavailable
from pipeline.live.endpoints import live_endpoints, traffic_config
from pipeline.live.proxy import PROGRAM as PROXY_PROGRAM
from pipeline.live.proxy import find_nginx
from pipeline.live.services import start_live_path, stop_live_path
from pipeline.serving.backends import get_backend
from pipeline.serving.backends.local import LocalBackend
from pipeline.serving.client import ServingClient, ServingError
from pipeline.settings import REPO_ROOT, Paths, get_paths
from pipeline.util.net import free_ports
from pipeline.util.polling import poll_until
from pipeline.util.supervisor import stack_supervisor
from pipeline.wire.model_config import single_model_config

pytestmark = pytest.mark.slow  # two real servers, nginx and the services: tens of seconds on 2 shared cores

MODEL = "hp"
_DEADLINE_S = 180.0


def _write_world(root: Path) -> None:
    """A config dir with an embedded profile on free ports (servers on port 0), the proxy's template, one model."""
    configs = root / "configs"
    rest, grpc, capture, prometheus = free_ports(4, "127.0.0.1")
    profile: dict[str, Any] = {
        "instances": {name: {"backend": "local", "rest_port": 0, "grpc_port": 0}
                      for name in ("staging", "production", "canary")},
        "traffic": {"router": "nginx", "host": "127.0.0.1", "rest_port": rest, "grpc_port": grpc,
                    "capture_port": capture, "prometheus_port": prometheus},
    }
    (configs / "serving").mkdir(parents=True)
    (configs / "serving" / "embedded.yaml").write_text(yaml.safe_dump(profile))
    (configs / "proxy").mkdir()
    shutil.copy(REPO_ROOT / "configs" / "proxy" / "nginx.conf.template", configs / "proxy")
    (configs / "models").mkdir()
    shutil.copy(REPO_ROOT / "configs" / "models" / "mnist.yaml", configs / "models")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Paths]:
    try:
        find_nginx()
    except SourceUnavailable:
        pytest.skip("nginx not installed: apt-get install nginx-light")
    _write_world(tmp_path)
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path / "configs"))
    monkeypatch.delenv("PIPELINE_SERVING_PROFILE", raising=False)
    paths = get_paths()
    try:
        yield paths
    finally:
        stop_live_path(paths)
        get_backend("production", paths=paths).stop()
        stack_supervisor(paths.home).shutdown()


def _descendants(pid: int) -> list[int]:
    process = psutil.Process(pid)
    return [pid, *(child.pid for child in process.children(recursive=True))]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_live_path_runs_supervised_and_a_killed_production_server_comes_back(world: Paths, make_base_path: Any,
                                                                                 half_plus_two_dir: Path) -> None:
    import numpy as np

    production = get_backend("production", paths=world)
    assert isinstance(production, LocalBackend)
    base = make_base_path(MODEL, {1: half_plus_two_dir})
    production.ensure_config_file()
    production.config_path.write_text(str(single_model_config(MODEL, base, [1], {"stable": 1})))

    # The exporter's usual port (capture + 13) held by another process, as a client's ephemeral port may be.
    squatter = socket.create_server(("127.0.0.1", traffic_config().capture_port + 13))
    try:
        start_live_path(world)
    finally:
        squatter.close()
    supervisor = stack_supervisor(world.home)
    programs = supervisor.programs()
    assert {"server-production", "server-canary", PROXY_PROGRAM, "capture"} <= set(programs), programs
    assert all(state == "RUNNING" for state in programs.values()), programs
    daemon = int((supervisor.runtime_dir / "supervisord.pid").read_text())
    for name in programs:  # one supervisord is the parent of every one of them
        pid = supervisor.pid(name)
        assert pid is not None and psutil.Process(pid).ppid() == daemon, name

    endpoint = live_endpoints()
    x = np.array([1.0], dtype=np.float32)

    def through_the_endpoint() -> tuple[bool | None, str]:
        with ServingClient(endpoint.rest_url, timeout_s=2.0) as client:
            try:
                return (True if client.predict(MODEL, inputs=x)["y"].tolist() == [2.5] else None), "answered"
            except ServingError as exc:
                return None, str(exc)[:200]

    poll_until(through_the_endpoint, _DEADLINE_S, "the endpoint does not answer")
    killed = production.pid()
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    poll_until(through_the_endpoint, _DEADLINE_S, "production did not answer through the endpoint again",
               interval_s=0.2)
    assert production.pid() not in (None, killed)

    everything = _descendants(daemon)
    stop_live_path(world)
    production.stop()
    poll_until(lambda: (True if all(_gone(pid) for pid in everything) else None, "processes left"), 60.0,
               "processes left after the stack stopped")
    assert not supervisor.is_running()


def test_the_stacks_capture_service_runs_several_workers_and_the_cli_takes_them(monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    import pipeline.live.services as services
    from pipeline.cli import main
    from pipeline.live.endpoints import TrafficConfig

    program = services.capture_program(TrafficConfig(capture_port=8701), "http://127.0.0.1:8521")
    command = list(program.command)
    assert command[command.index("--workers") + 1] == str(services.CAPTURE_WORKERS) and services.CAPTURE_WORKERS > 1
    started: list[dict[str, Any]] = []
    monkeypatch.setattr(services, "serve_capture", lambda *args, **kwargs: started.append(kwargs))
    assert main(["capture-serve", "--serving-url", "http://127.0.0.1:1", "--workers", "3"]) == 0
    assert main(["capture-serve", "--serving-url", "http://127.0.0.1:1"]) == 0
    assert [kwargs["workers"] for kwargs in started] == [3, 1]
