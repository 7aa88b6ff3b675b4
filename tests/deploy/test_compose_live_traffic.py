"""docker-compose.yml's live-traffic path: the canary TF Serving, the proxy (nginx) that publishes production's
ports, the capture service, Prometheus, and how the proxy picks up a config the pipeline rewrites.

The wiring is read from the file as Compose resolves it (`docker-compose config`, skipped naming the binary when
absent). The proxy's entrypoint (configs/proxy/compose-entrypoint.sh) runs here against a real nginx (skipped naming
nginx when absent): it must start on the rendered config, reload on a change, keep serving through a refused one,
and stop gracefully.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.embedded_server.metrics import parse_monitoring_config, prometheus_path
from pipeline.live.endpoints import traffic_config
from pipeline.serving.profiles import load_profile
from pipeline.settings import REPO_ROOT, get_paths
from pipeline.util.files import write_atomically
from pipeline.util.net import free_ports

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENTRYPOINT = REPO_ROOT / "configs" / "proxy" / "compose-entrypoint.sh"
PROMETHEUS_CONFIG = REPO_ROOT / "configs" / "prometheus" / "compose.yml"
_CONTAINER_HOME = "/opt/pipeline/var"
_INSTANCES = ("staging", "production", "canary")


def _compose_config(env_file: Path) -> dict[str, Any]:
    if shutil.which("docker-compose"):
        command = ["docker-compose"]
    elif shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        command = ["docker", "compose"]
    else:
        pytest.skip("neither `docker-compose` nor the `docker compose` plugin is installed "
                    "(apt-get install docker-compose)")
    result = subprocess.run([*command, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
                            capture_output=True, text=True, timeout=60, cwd=COMPOSE_FILE.parent)
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    return _compose_config(REPO_ROOT / ".env.example")


def _services(resolved: dict[str, Any]) -> dict[str, Any]:
    return dict(resolved["services"])


def _flags(service: dict[str, Any]) -> dict[str, str]:
    return dict(arg.lstrip("-").split("=", 1) for arg in service["command"])


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source (a volume name, or a resolved host path)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        mounts[target] = source
    return mounts


def _published(service: dict[str, Any]) -> dict[int, str]:
    """container port -> "host_ip:published" (both syntaxes Compose v1 and v2 print)."""
    published = {}
    for port in service.get("ports", []):
        if isinstance(port, str):
            host_ip, host_port, container = port.split("/")[0].rsplit(":", 2)
            published[int(container)] = f"{host_ip}:{host_port}"
        else:
            published[int(port["target"])] = f"{port.get('host_ip', '')}:{port['published']}"
    return published


def test_clients_reach_production_only_through_the_proxy(resolved):
    services = _services(resolved)
    traffic = traffic_config("compose")
    assert traffic.router == "nginx_watched" and traffic.host == "proxy" and "proxy" in services
    assert "ports" not in services["tfserving-production"]
    published = _published(services["proxy"])
    # Production's former ports, now the proxy's, on the container ports the profile says clients use.
    assert published == {traffic.rest_port: "127.0.0.1:8521", traffic.grpc_port: "127.0.0.1:8520"}


def test_the_canary_serves_from_its_own_config_beside_production(resolved):
    services = _services(resolved)
    spec = load_profile("compose").instance("canary").spec()
    canary, production = services["tfserving-canary"], services["tfserving-production"]
    assert spec["host"] == "tfserving-canary" and spec["manage"] is False
    assert _flags(canary)["model_config_file"] == spec["config_path"]
    assert {k: v for k, v in _flags(canary).items() if k != "model_config_file"} == {
        k: v for k, v in _flags(production).items() if k != "model_config_file"}
    assert _mounts(canary) == _mounts(production) and canary["image"] == production["image"]
    airflow = services["airflow-scheduler"]
    assert airflow["depends_on"]["tfserving-canary"]["condition"] == "service_healthy"
    assert all(_mounts(airflow)[target] == source for target, source in _mounts(canary).items())
    init = " ".join(services["airflow-init"]["command"])
    assert "for instance in staging production canary" in init  # its empty models.config exists before it starts


@pytest.mark.parametrize("instance", _INSTANCES)
def test_tf_serving_exports_prometheus_metrics_from_the_file_init_writes(resolved, instance):
    services = _services(resolved)
    path = _flags(services[f"tfserving-{instance}"])["monitoring_config_file"]
    init = " ".join(services["airflow-init"]["command"])
    written = re.search(r"printf '(prometheus_config \{[^']*\})\\n' \\\s*> (\S+)", init)
    assert written and written[2] == path
    assert prometheus_path(parse_monitoring_config(written[1])) == "/monitoring/prometheus/metrics"


def test_the_proxy_and_the_pipeline_share_the_runtime_directory_at_the_same_path(resolved):
    from pipeline.live.routing import proxy_runtime_dir

    services = _services(resolved)
    runtime = str(proxy_runtime_dir(get_paths(_CONTAINER_HOME)))
    proxy = services["proxy"]
    assert proxy["environment"]["PROXY_DIR"] == services["airflow-init"]["environment"]["PROXY_DIR"] == runtime
    volume = _mounts(proxy)[runtime]
    for name in ("airflow-init", "airflow-scheduler", "airflow-dag-processor"):
        assert _mounts(services[name])[runtime] == volume
    assert _CONTAINER_HOME not in _mounts(proxy)  # of the pipeline's home, the proxy sees only its own directory
    assert proxy["user"] == services["airflow-scheduler"]["user"]  # the files there are the Airflow user's
    # The entrypoint is this repository's script.
    script_target = proxy["entrypoint"][-1]
    assert Path(_mounts(proxy)[script_target]).resolve() == ENTRYPOINT


def test_capture_runs_the_pipeline_image_against_the_canary_and_production_for_stable(resolved):
    services = _services(resolved)
    traffic = traffic_config("compose")
    capture = services[traffic.capture_host or ""]
    assert capture["image"] == services["airflow-scheduler"]["image"]
    assert capture["entrypoint"] + capture["command"] == [
        "pipeline", "capture-serve", "--host", "0.0.0.0", "--port", str(traffic.capture_port), "--serving-url",
        "http://tfserving-canary:8501", "--stable-url", "http://tfserving-production:8501"]
    assert _mounts(capture)[_CONTAINER_HOME] == _mounts(services["airflow-scheduler"])[_CONTAINER_HOME]
    assert capture["environment"]["PIPELINE_HOME"] == _CONTAINER_HOME


def test_prometheus_scrapes_every_instance_and_capture(resolved):
    services = _services(resolved)
    prometheus = services["prometheus"]
    assert Path(_mounts(prometheus)["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS_CONFIG
    assert int(_published(prometheus)[traffic_config("compose").prometheus_port].rsplit(":", 1)[1]) == 9090
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    instances = {group["labels"]["serving_instance"]: group["targets"] for group in jobs["tfserving"]["static_configs"]}
    profile = load_profile("compose")
    assert set(instances) == set(_INSTANCES)
    for instance, targets in instances.items():
        spec = profile.instance(instance).spec()
        assert targets == [f"{spec['host']}:{spec['rest_port']}"]
    assert jobs["tfserving"]["metrics_path"] == "/monitoring/prometheus/metrics"
    traffic = traffic_config("compose")
    assert jobs["capture"]["static_configs"] == [{"targets": [f"{traffic.capture_host}:{traffic.capture_port}"]}]


def test_promtool_accepts_the_compose_prometheus_config():
    if not shutil.which("promtool"):
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    result = subprocess.run(["promtool", "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- the proxy's first config, written by airflow-init ----------------------------------------------------------


def _init_proxy_snippet(resolved: dict[str, Any]) -> str:
    script = resolved["services"]["airflow-init"]["command"][-1]
    blocks = re.findall(r"python - <<'PY'\n(.*?)\nPY\n", script, flags=re.S)
    (snippet,) = [block for block in blocks if "write_initial_config" in block]
    return str(snippet)


# In the container the snippet drops root before it renders; here the drop is recorded instead of made (this
# machine's interpreter may not be readable by another user), and geteuid() answers what it was dropped to.
_PRIVILEGES_RECORDED = """import os
_uid = [os.geteuid()]
os.setgid = lambda gid: None
os.setuid = lambda uid: _uid.__setitem__(0, uid)
os.geteuid = lambda: _uid[0]
"""


def _run_snippet(snippet: str, runtime: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROXY_DIR": str(runtime)}
    return subprocess.run([sys.executable, "-c", _PRIVILEGES_RECORDED + snippet], env=env, capture_output=True,
                          text=True, timeout=60)


def test_init_renders_a_first_config_that_sends_everything_to_production(resolved, tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    snippet = _init_proxy_snippet(resolved)
    # The Airflow user of .env.example, before the pipeline is imported (its render reads the effective user).
    assert snippet.index("os.setuid(50000)\n") < snippet.index("from pipeline")
    runtime = tmp_path / "live" / "proxy"
    result = _run_snippet(snippet, runtime)
    assert result.returncode == 0, result.stderr
    config = (runtime / "nginx.conf").read_text()
    assert "listen 0.0.0.0:8501;" in config and "listen 0.0.0.0:8500 http2;" in config
    assert set(re.findall(r"server (\S+);", config)) == {"tfserving-production:8501", "tfserving-production:8500"}
    assert not re.search(r"^\s*user ", config, flags=re.M) and "mirror /_proxy/mirror" not in config
    assert str(runtime) in config  # pid, logs and temp files where the proxy's volume is
    if os.access(nginx, os.X_OK):  # nginx resolves upstream names at load: check the rest with a local address
        local = runtime.parent / "local.conf"
        (runtime / "temp").mkdir()  # as the entrypoint does before nginx starts
        local.write_text(config.replace("tfserving-production", "127.0.0.1"))
        check = subprocess.run([nginx, "-t", "-q", "-p", f"{runtime}/", "-c", str(local), "-e",
                                str(runtime / "error.log")], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
    # Never over a config the pipeline wrote since (its router keeps router.json beside nginx.conf).
    assert (runtime / "router.json").is_file()
    (runtime / "nginx.conf").write_text("# the pipeline's\n")
    assert _run_snippet(snippet, runtime).returncode == 0
    assert (runtime / "nginx.conf").read_text() == "# the pipeline's\n"


# ---- the proxy's entrypoint against a real nginx ------------------------------------------------------------------


def _nginx() -> str:
    from pipeline.errors import SourceUnavailable
    from pipeline.live.proxy import find_nginx

    try:
        return find_nginx()
    except SourceUnavailable as exc:
        pytest.skip(str(exc))


def _generation(port: int) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        connection.request("GET", "/_proxy/health", headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        value = response.getheader("X-Proxy-Config")
        return int(value) if response.status == 200 and value else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.slow
def test_the_proxy_starts_on_the_rendered_config_and_reloads_when_it_changes(tmp_path):
    from pipeline.live.proxy import ProxySpec, UpstreamSpec, render_config

    nginx = _nginx()
    rest, grpc = free_ports(2, "127.0.0.1")
    runtime = tmp_path / "proxy"
    runtime.mkdir()
    spec = ProxySpec(host="127.0.0.1", rest_port=rest, grpc_port=grpc,
                     stable=UpstreamSpec(rest="127.0.0.1:9", grpc="127.0.0.1:9"))
    env = {"PATH": os.environ["PATH"], "PROXY_DIR": str(runtime), "NGINX": nginx, "PROXY_WATCH_INTERVAL_S": "0.1"}
    process = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        time.sleep(0.3)
        assert process.poll() is None  # waits for the first config rather than failing
        write_atomically(runtime / "nginx.conf", render_config(spec, 1, runtime))
        _wait_for(lambda: _generation(rest) == 1, 90, "generation 1 not served")
        assert (runtime / "reload.status").read_text().endswith(" ok\n")

        write_atomically(runtime / "nginx.conf", render_config(spec.model_copy(update={"workers": 2}), 2, runtime))
        _wait_for(lambda: _generation(rest) == 2, 90, "generation 2 not served after the file changed")

        write_atomically(runtime / "nginx.conf", render_config(spec, 3, runtime) + "\nno_such_directive on;\n")
        _wait_for(lambda: "refused" in (runtime / "reload.status").read_text(), 90, "a bad config not reported")
        assert "no_such_directive" in (runtime / "reload.status").read_text()
        assert _generation(rest) == 2  # the running config stays

        write_atomically(runtime / "nginx.conf", render_config(spec, 4, runtime))
        _wait_for(lambda: _generation(rest) == 4, 90, "generation 4 not served after a refused one")

        master = int((runtime / "nginx.pid").read_text())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        _wait_for(lambda: not Path(f"/proc/{master}").exists(), 60, "nginx still runs after the entrypoint stopped")
        assert _generation(rest) is None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the group we started: the script and its nginx
            process.wait(timeout=10)
        output = process.stdout.read().decode() if process.stdout else ""
    assert "reloaded" in output and "kept the running config" in output, output
