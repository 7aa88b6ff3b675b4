"""docker-compose.yml: Compose accepts it, secrets come only from .env, and the serving wiring lines up.

`docker-compose config` (v1, Debian's docker-compose package) or `docker compose config` (v2 plugin)
validates the file against the Compose schema and resolves the .env variables; without either binary
those tests skip naming it. The other checks read the YAML directly (PyYAML resolves the `<<` merges).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.serving.profiles import load_profile
from pipeline.settings import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"

_AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                     "airflow-triggerer")
_SERVERS = ("tfserving-staging", "tfserving-production")


def _compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.skip("neither `docker-compose` nor the `docker compose` plugin is installed "
                "(apt-get install docker-compose)")


def _compose_config(env_file: Path) -> subprocess.CompletedProcess:
    command = _compose_command() + ["--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=COMPOSE_FILE.parent)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The file as Compose resolves it with .env.example's values."""
    result = _compose_config(ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_accepts_the_file_with_the_example_env(resolved):
    assert set(_AIRFLOW_SERVICES + _SERVERS + ("postgres",)) <= set(resolved["services"])


def test_compose_refuses_to_run_without_the_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = _compose_config(empty)
    assert result.returncode != 0
    assert re.search(r"set \w+ in \.env", result.stderr), result.stderr


def test_every_required_variable_is_documented_in_env_example(compose):
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE_FILE.read_text()))
    documented = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")
    )
    assert required and required <= set(documented)
    secrets = {name for name in required if re.search("PASSWORD|SECRET|KEY", name)}
    assert secrets and all(documented[name] == "change-me" for name in secrets)  # placeholders, never real values


def test_airflow_runs_the_local_executor_with_our_serving_profile(compose):
    for name in _AIRFLOW_SERVICES:
        env = compose["services"][name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["PIPELINE_SERVING_PROFILE"] == "compose"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"


def test_releases_keep_their_schedule_unless_the_env_turns_it_off(resolved, tmp_path):
    for name in _AIRFLOW_SERVICES:
        assert resolved["services"][name]["environment"]["PIPELINE_SCHEDULES"] == "on"
    from pipeline.localdocker.compose import ComposeStack

    stack = ComposeStack("unix:///nowhere.sock", tmp_path / "stack")
    stack.write_env()  # the test and bench stack: a scheduled run beside the triggered one would train again
    env = dict(line.split("=", 1) for line in stack.env_file.read_text().splitlines())
    assert env["PIPELINE_SCHEDULES"] == "off" and stack.env_file.stat().st_mode & 0o777 == 0o600


def test_airflow_records_served_changes_through_the_api_server_and_links_to_the_ui(compose):
    for name in _AIRFLOW_SERVICES:
        env = compose["services"][name]["environment"]
        assert env["PIPELINE_AIRFLOW_API_URL"] == "http://airflow-apiserver:8080"
        assert env["PIPELINE_AIRFLOW_API_USERNAME"] and env["PIPELINE_AIRFLOW_API_PASSWORD"]
        assert env["AIRFLOW__API__BASE_URL"].startswith("${AIRFLOW_BASE_URL")
    assert "airflow-apiserver" in compose["services"]


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """target path -> volume name."""
    return {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}


def _flags(service: dict[str, Any]) -> dict[str, str]:
    return dict(arg.lstrip("-").split("=", 1) for arg in service["command"])


@pytest.mark.parametrize("instance", ["staging", "production"])
def test_servers_read_the_config_and_models_the_pipeline_writes(compose, instance):
    server = compose["services"][f"tfserving-{instance}"]
    airflow = compose["services"]["airflow-scheduler"]
    spec = load_profile("compose").instance(instance).spec()
    flags = _flags(server)
    assert server["image"] == "tensorflow/serving:2.19.0"
    assert flags["model_config_file"] == spec["config_path"]
    assert int(flags["model_config_file_poll_wait_seconds"].split(":-")[-1].rstrip("}")) > 0
    assert (flags["port"], flags["rest_api_port"]) == (str(spec["grpc_port"]), str(spec["rest_port"]))
    assert spec["host"] == f"tfserving-{instance}" and spec["manage"] is False
    # Same volume at the same path in Airflow and the server: models.config base paths mean the same file.
    for target, volume in _mounts(server).items():
        assert _mounts(airflow)[target] == volume
    assert any(Path(spec["config_path"]).is_relative_to(target) for target in _mounts(server))
    assert "/opt/pipeline/var/models" in _mounts(server)


def test_servers_wait_for_init_and_airflow_waits_for_healthy_servers(compose):
    for name in _SERVERS:
        assert compose["services"][name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert compose["services"]["airflow-scheduler"]["depends_on"][name]["condition"] == "service_healthy"
    assert compose["volumes"]["models"]["name"] == "mlops-models"  # pipeline.containers mounts it by this name


# ---- the admin plane: who reaches the servers -----------------------------------------------------------------

_TF_SERVING = ("tfserving-staging", "tfserving-production", "tfserving-canary")
_PIPELINE_SERVICES = set(_AIRFLOW_SERVICES) | {"proxy", "capture", "prometheus"}


def _networks(service: dict[str, Any]) -> set[str]:
    networks = service.get("networks", {"default": None})
    return set(networks if isinstance(networks, (dict, list)) else [])


def test_the_servers_sit_only_on_an_internal_network_only_the_pipeline_joins(resolved):
    services = resolved["services"]
    assert resolved["networks"]["serving"].get("internal") is True
    for name in _TF_SERVING:
        assert _networks(services[name]) == {"serving"}, name
        assert not services[name].get("ports"), f"{name} publishes a port"
    on_serving = {name for name, service in services.items() if "serving" in _networks(service)}
    assert on_serving == set(_TF_SERVING) | _PIPELINE_SERVICES
    # Clients come in where ports are published: the proxy is the only way from there to the servers.
    assert _networks(services["proxy"]) == {"edge", "serving"}
    assert resolved["networks"].get("edge", {}).get("internal") is not True
    assert _networks(services["postgres"]) == {"db"} and resolved["networks"]["db"].get("internal") is True


def test_every_published_port_is_bound_to_loopback(resolved):
    published = [(name, port) for name, service in resolved["services"].items() for port in service.get("ports", [])]
    assert published
    for name, port in published:
        host_ip = port.split(":")[0] if isinstance(port, str) else port.get("host_ip")
        assert host_ip == "127.0.0.1", f"{name}: {port}"


def test_airflow_opens_no_log_server_and_its_health_check_stays_inside(compose):
    services = compose["services"]
    for name in ("airflow-scheduler", "airflow-triggerer"):
        assert "--skip-serve-logs" in services[name]["command"], name  # Airflow binds those to every interface
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"] == "127.0.0.1"
    assert "localhost:8974" in " ".join(services["airflow-scheduler"]["healthcheck"]["test"])
    assert "airflow-logs:/opt/airflow/logs" in services["airflow-apiserver"]["volumes"]  # logs read from the volume


class _StatusHandler(BaseHTTPRequestHandler):
    status = 404

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(b'{"error": "Servable not found"}')

    def log_message(self, *args: Any) -> None:
        pass


def _run_probe(probe: str, port: int) -> int:
    script = probe.replace("/127.0.0.1/8501", f"/127.0.0.1/{port}")
    return subprocess.run(["bash", "-c", script], capture_output=True, timeout=10).returncode


@pytest.mark.parametrize("status, healthy", [(200, True), (404, True), (503, False)])
def test_the_healthcheck_probe_reads_the_model_status_url(compose, status, healthy):
    test = compose["services"]["tfserving-production"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"]
    handler = type("Handler", (_StatusHandler,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert (_run_probe(test[3], server.server_address[1]) == 0) is healthy
    finally:
        server.shutdown()


def test_the_healthcheck_probe_fails_when_nothing_listens(compose):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        assert _run_probe(compose["services"]["tfserving-staging"]["healthcheck"]["test"][3], port) != 0


class _FlakyApi:
    """Airflow's API as a busy host gives it: the first poll of the runs times out, the next answers."""

    def __init__(self, *_: Any) -> None:
        self.polls = 0

    def call(self, method: str, path: str, body: Any = None, params: Any = None) -> Any:
        from pipeline.airflow_rest import ApiError

        if path.endswith("/dagRuns") and method == "GET":
            self.polls += 1
            if self.polls == 1:
                raise ApiError("Airflow's API at http://127.0.0.1:1 is not reachable (ReadTimeout)")
            return {"dag_runs": [{"dag_run_id": "manual__1", "state": "success"}]}
        if path.endswith("/taskInstances"):
            return {"task_instances": [{"task_id": "finalize", "state": "success", "duration": 1.0}]}
        return {}

    def close(self) -> None:
        pass


def test_a_slow_api_answer_while_waiting_for_the_release_is_asked_again(tmp_path, monkeypatch):
    import pipeline.airflow_rest
    import pipeline.localdocker.compose as compose_module
    from pipeline.localdocker.compose import ComposeStack

    monkeypatch.setattr(pipeline.airflow_rest, "AirflowRest", _FlakyApi)
    monkeypatch.setattr(compose_module, "_POLL_S", 0.01)
    stack = ComposeStack("unix:///nowhere.sock", tmp_path / "stack")
    stack.write_env()
    report = stack.release("mnist_release", timeout_s=60)
    assert report["runs"] == {"manual__1": {"state": "success", "tasks": {"finalize": "success"}}}
