"""The compose router: the split moved by rewriting the config an nginx in another container watches.

Fast tests play the proxy container with a tiny HTTP server answering ``/_proxy/health`` (and, where a test needs
it, writing ``reload.status`` as ``configs/proxy/compose-entrypoint.sh`` does, with the same ``stat``). The slow
test runs the real entrypoint with a real nginx in a temporary runtime directory, two tiny upstreams standing in
for production and canary TF Serving, and a client stream through every change.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.errors import ConfigError, DeadlineExceeded, NotFound, SourceUnavailable
from pipeline.live import watched_proxy
from pipeline.live.endpoints import TrafficConfig, TrafficSplit, traffic_config
from pipeline.live.proxy import NginxProxy, ProxySpec, UpstreamSpec, find_nginx
from pipeline.live.routing import HasAccessLog, NginxRouter, proxy_runtime_dir, router_for
from pipeline.live.watched_proxy import WatchedNginxRouter, write_initial_config
from pipeline.settings import REPO_ROOT, get_paths
from pipeline.util.net import free_ports

ENTRYPOINT = REPO_ROOT / "configs" / "proxy" / "compose-entrypoint.sh"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
_DEADLINE_S = 90.0  # nginx reloads in milliseconds, but the 2 shared cores may be busy
_STABLE = UpstreamSpec(rest="127.0.0.1:9", grpc="127.0.0.1:9")
_CANARY = UpstreamSpec(rest="127.0.0.1:10", grpc="127.0.0.1:10")
_MIRROR = "http://127.0.0.1:11"


def _spec(rest: int = 8501, grpc: int = 8500, stable: UpstreamSpec = _STABLE) -> ProxySpec:
    return ProxySpec(host="127.0.0.1", rest_port=rest, grpc_port=grpc, stable=stable)


def _generation_in(config: Path) -> int:
    match = re.search(r"generation (\d+)", config.read_text())
    assert match, config.read_text()[:300]
    return int(match[1])


def _stat_signature(path: Path, tz: str | None = None) -> str:
    """What the entrypoint records for a file: ``stat -c '%i %y %s'``."""
    env = {**os.environ, **({"TZ": tz} if tz else {})}
    return subprocess.run(["stat", "-c", "%i %y %s", str(path)], capture_output=True, text=True, check=True,
                          env=env, timeout=30).stdout.strip()


class FakeProxy:
    """Answers ``GET /_proxy/health`` as the proxy container would.

    mode ``follow``: serves the generation nginx.conf now holds (the proxy reloaded on it); ``stuck``: keeps
    serving ``stuck_at``; ``refuse``: serves ``stuck_at`` and records each new file as refused in reload.status.
    """

    def __init__(self, runtime: Path, mode: str = "follow", stuck_at: int = 1, header: bool = True):
        self.runtime, self.mode, self.stuck_at, self.header = runtime, mode, stuck_at, header
        self.served: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
                generation = outer.answer()
                body = json.dumps({"status": "ok", "generation": generation}).encode()
                self.send_response(200 if self.path == "/_proxy/health" else 404)
                if outer.header:
                    self.send_header("X-Proxy-Config", str(generation))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/_proxy/health"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def answer(self) -> int:
        config = self.runtime / "nginx.conf"
        if self.mode == "refuse":
            status = f"{_stat_signature(config)} refused: nginx: [emerg] host not found in upstream \"x\"\n"
            (self.runtime / "reload.status").write_text(status + "nginx: configuration file test failed\n")
        generation = _generation_in(config) if self.mode == "follow" else self.stuck_at
        self.served.append(generation)
        return generation

    def __enter__(self) -> FakeProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    """A runtime directory holding the proxy's first config, as airflow-init leaves it."""
    path = tmp_path / "proxy"
    assert write_initial_config(path, _spec())
    return path


def _state(runtime: Path) -> dict[str, Any]:
    return dict(json.loads((runtime / "router.json").read_text()))


# ---- the first config -------------------------------------------------------------------------------------------


def test_the_first_config_sends_everything_to_production_and_is_written_once(runtime: Path) -> None:
    config = (runtime / "nginx.conf").read_text()
    assert _generation_in(runtime / "nginx.conf") == 1
    assert set(re.findall(r"server (\S+);", config)) == {"127.0.0.1:9"} and "mirror /_proxy/mirror" not in config
    assert f"{runtime.resolve()}/access.log" in config  # nginx's files in the shared directory, this very path
    state = _state(runtime)
    assert (state["generation"], state["written"]) == (1, 1) and state["spec"]["canary_percent"] == 0
    # Never over a state the router wrote since (airflow-init runs again at every `docker compose up`).
    before = (runtime / "nginx.conf").stat().st_ino
    assert not write_initial_config(runtime, _spec(rest=9999))
    assert (runtime / "nginx.conf").stat().st_ino == before and _state(runtime) == state


def test_a_config_without_state_is_replaced_one_generation_up(tmp_path: Path) -> None:
    from pipeline.live.proxy import render_config

    runtime = tmp_path / "proxy"
    runtime.mkdir()
    (runtime / "nginx.conf").write_text(render_config(_spec(), 4, runtime))  # an older airflow-init's, no state
    assert write_initial_config(runtime, _spec())
    assert _generation_in(runtime / "nginx.conf") == 5 and _state(runtime)["generation"] == 5


def test_airflow_init_writes_the_first_config_through_write_initial_config(tmp_path: Path) -> None:
    script = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["airflow-init"]["command"][-1]
    (snippet,) = [b for b in re.findall(r"python - <<'PY'\n(.*?)\nPY\n", script, flags=re.S) if "write_initial_config" in b]
    snippet = snippet.replace("${AIRFLOW_UID:-50000}", "50000")  # what Compose interpolates with .env.example
    assert snippet.index("os.setuid(50000)") < snippet.index("from pipeline")  # no `user` line: rendered unprivileged
    # Here the drop of privileges is recorded, not made (this interpreter may not be readable by uid 50000).
    stubs = ("import os\n_uid = [os.geteuid()]\nos.setgid = lambda gid: None\n"
             "os.setuid = lambda uid: _uid.__setitem__(0, uid)\nos.geteuid = lambda: _uid[0]\n")
    runtime = tmp_path / "live" / "proxy"
    result = subprocess.run([sys.executable, "-c", stubs + snippet], env={**os.environ, "PROXY_DIR": str(runtime)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    spec = WatchedNginxRouter(runtime, "http://unused").spec()
    assert (spec.host, spec.rest_port, spec.grpc_port) == ("0.0.0.0", 8501, 8500)
    assert spec.stable.rest == "tfserving-production:8501" and spec.canary is None
    config = (runtime / "nginx.conf").read_text()
    assert not re.search(r"^\s*user ", config, flags=re.M) and "listen 0.0.0.0:8501;" in config


# ---- moving the split -------------------------------------------------------------------------------------------


def test_without_a_first_config_the_split_is_0_and_cannot_move(tmp_path: Path) -> None:
    router = WatchedNginxRouter(tmp_path / "proxy", "http://127.0.0.1:9/_proxy/health", canary=_CANARY)
    assert router.current_split() == TrafficSplit(0, 0)
    with pytest.raises(NotFound, match="first config was never written.*airflow-init"):
        router.set_split(TrafficSplit(50, 0), timeout_s=5)


@pytest.mark.parametrize("header", [True, False], ids=["header", "body-only"])
def test_set_split_writes_the_next_generation_and_returns_once_it_is_served(runtime: Path, header: bool) -> None:
    with FakeProxy(runtime, header=header) as proxy:
        router = WatchedNginxRouter(runtime, proxy.url, canary=_CANARY, mirror_url=_MIRROR)
        router.set_split(TrafficSplit(50, 20), timeout_s=_DEADLINE_S)
        assert router.current_split() == TrafficSplit(50, 20)
        assert proxy.served[-3:] == [2, 2, 2]  # the new generation, on several fresh connections
        config = (runtime / "nginx.conf").read_text()
        assert _generation_in(runtime / "nginx.conf") == 2 and "50% canary;" in config and "20% 1;" in config
        assert "server 127.0.0.1:10;" in config and "upstream mirror_target" in config

        # Back to 0: production alone is named, so a rollback never needs the canary's name to resolve.
        router.set_split(TrafficSplit(0, 0), timeout_s=_DEADLINE_S)
        config = (runtime / "nginx.conf").read_text()
        assert _generation_in(runtime / "nginx.conf") == 3 and "127.0.0.1:10" not in config
        state = _state(runtime)
        assert (state["generation"], state["written"], state["spec"]["canary"]) == (3, 3, None)

        # The same split again: nothing written, nothing asked.
        inode, asked = (runtime / "nginx.conf").stat().st_ino, len(proxy.served)
        router.set_split(TrafficSplit(0, 0), timeout_s=_DEADLINE_S)
        assert (runtime / "nginx.conf").stat().st_ino == inode and len(proxy.served) == asked


def test_another_router_object_sees_the_split_and_continues_the_generations(runtime: Path) -> None:
    with FakeProxy(runtime) as proxy:
        WatchedNginxRouter(runtime, proxy.url, canary=_CANARY).set_split(TrafficSplit(5, 0), _DEADLINE_S)
        other = WatchedNginxRouter(runtime, proxy.url)  # no targets of its own: the state's canary is used
        assert other.current_split() == TrafficSplit(5, 0)
        other.set_split(TrafficSplit(10, 0), _DEADLINE_S)
        assert _generation_in(runtime / "nginx.conf") == 3 and "server 127.0.0.1:10;" in (runtime / "nginx.conf").read_text()


def test_a_share_without_a_target_is_refused_before_anything_is_written(runtime: Path) -> None:
    router = WatchedNginxRouter(runtime, "http://127.0.0.1:9/_proxy/health")
    before = (runtime / "nginx.conf").read_text()
    with pytest.raises(NotFound, match="no canary upstream"):
        router.set_split(TrafficSplit(10, 0), timeout_s=5)
    with pytest.raises(NotFound, match="no mirror target"):
        router.set_split(TrafficSplit(0, 10), timeout_s=5)
    assert (runtime / "nginx.conf").read_text() == before and _state(runtime)["written"] == 1


def test_a_refused_config_raises_at_once_and_the_old_split_stays(runtime: Path) -> None:
    before = (runtime / "nginx.conf").read_text()
    with FakeProxy(runtime, mode="refuse", stuck_at=1) as proxy:
        router = WatchedNginxRouter(runtime, proxy.url, canary=_CANARY)
        # Long before the deadline: the refusal is final, waiting longer would not change it.
        with pytest.raises(ConfigError, match=r"refused config generation 2.*host not found in upstream"):
            router.set_split(TrafficSplit(50, 0), timeout_s=60)
    assert router.current_split() == TrafficSplit(0, 0)
    state = _state(runtime)
    assert (state["generation"], state["written"]) == (1, 2)  # 2 is spent: never reused for another config
    assert (runtime / "nginx.conf").read_text() == before  # what the proxy keeps serving, for its next start too


def test_an_earlier_files_refusal_is_not_this_ones(runtime: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.conf"
    other.write_text("an earlier config\n")
    (runtime / "reload.status").write_text(f"{_stat_signature(other)} refused: nginx: [emerg] an old problem\n")
    with FakeProxy(runtime) as proxy:
        WatchedNginxRouter(runtime, proxy.url, canary=_CANARY).set_split(TrafficSplit(50, 0), _DEADLINE_S)
    assert _state(runtime)["generation"] == 2


def test_a_proxy_that_never_serves_the_change_times_out_with_what_it_answered(runtime: Path) -> None:
    before = (runtime / "nginx.conf").read_text()
    (runtime / "error.log").write_text("2026/01/01 00:00:00 [emerg] 7#7: something the master said\n")
    with FakeProxy(runtime, mode="stuck", stuck_at=1) as proxy:
        router = WatchedNginxRouter(runtime, proxy.url, canary=_CANARY)
        with pytest.raises(DeadlineExceeded) as raised:
            router.set_split(TrafficSplit(50, 0), timeout_s=1.0)
        message = str(raised.value)
        assert "generation 2 not served" in message and "X-Proxy-Config=1" in message
        assert "something the master said" in message
        assert router.current_split() == TrafficSplit(0, 0) and (runtime / "nginx.conf").read_text() == before
        # The next attempt takes a new number: an answer for the abandoned config can't pass for it.
        proxy.mode = "follow"
        router.set_split(TrafficSplit(50, 0), timeout_s=_DEADLINE_S)
    assert _state(runtime)["generation"] == 3 and router.current_split() == TrafficSplit(50, 0)


def test_a_proxy_that_does_not_answer_times_out_naming_it(runtime: Path) -> None:
    (port,) = free_ports(1)
    router = WatchedNginxRouter(runtime, f"http://127.0.0.1:{port}/_proxy/health", canary=_CANARY)
    with pytest.raises(DeadlineExceeded, match=r"no answer \(ConnectionRefusedError"):
        router.set_split(TrafficSplit(50, 0), timeout_s=0.5)


@pytest.mark.parametrize("tz", ["UTC0", "XYZ-05:30", "ABC+07"])
def test_the_entrypoints_stat_signature_is_read_in_any_time_zone(tmp_path: Path, tz: str) -> None:
    path = tmp_path / "nginx.conf"
    path.write_text("x" * 123)
    status = tmp_path / "reload.status"
    status.write_text(f"{_stat_signature(path, tz)} refused: nginx: [emerg] bad\nnginx: test failed\n")
    assert watched_proxy._refusal(status, watched_proxy._signature(path)) == "nginx: [emerg] bad\nnginx: test failed"
    status.write_text(f"{_stat_signature(path, tz)} ok\n")
    assert watched_proxy._refusal(status, watched_proxy._signature(path)) is None


# ---- the profile and the live analysis ----------------------------------------------------------------------------


def test_the_compose_profile_uses_the_watched_router_on_the_shared_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_SERVING_PROFILE", "compose")
    config = traffic_config("compose")
    assert config.router == "nginx_watched"
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    assert config.proxy_dir == compose["x-proxy-dir"] == str(proxy_runtime_dir(get_paths("/opt/pipeline/var")))
    router = router_for(config=config)
    assert isinstance(router, WatchedNginxRouter)
    assert router.health_url == "http://proxy:8501/_proxy/health"
    assert router.canary == UpstreamSpec(rest="tfserving-canary:8501", grpc="tfserving-canary:8500")
    assert router.mirror_url == "http://capture:8701"
    assert router.access_log_path == Path("/opt/pipeline/var/live/proxy/access.log")


def test_the_watched_router_needs_the_shared_directory() -> None:
    with pytest.raises(ConfigError, match="proxy_dir"):
        router_for(config=TrafficConfig(router="nginx_watched"))


def test_a_live_phase_window_starts_at_the_end_of_the_proxys_access_log(runtime: Path) -> None:
    from pipeline.release.live_canary import _window_start

    router = WatchedNginxRouter(runtime, "http://unused")
    assert isinstance(router, HasAccessLog)
    router.access_log_path.write_text('{"request_id": "a"}\n')
    start = _window_start(router)
    assert start["path"] == str(router.access_log_path) and start["offset"] == len('{"request_id": "a"}\n')
    # The embedded router as before; a router without an access log (Gateway API) starts no log window.
    embedded = NginxRouter(NginxProxy(runtime))
    assert _window_start(embedded)["path"] == str(embedded.proxy.access_log_path)

    class NoLog:
        def current_split(self) -> TrafficSplit:
            return TrafficSplit()

        def set_split(self, split: TrafficSplit, timeout_s: float) -> None:
            pass

    assert _window_start(NoLog()) == {}


# ---- the real entrypoint and nginx ----------------------------------------------------------------------------


class Upstream:
    """A stand-in TF Serving that answers every predict with its own name (HTTP/1.1 keep-alive)."""

    def __init__(self, name: str):
        body = json.dumps({"predictions": [name]}).encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (stdlib naming)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        port = self.server.server_address[1]
        self.spec = UpstreamSpec(rest=f"127.0.0.1:{port}", grpc=f"127.0.0.1:{port}")
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    stable, canary = Upstream("stable"), Upstream("canary")
    yield stable, canary
    stable.close()
    canary.close()


@pytest.fixture
def entrypoint(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen]]:
    """The proxy container's entrypoint on a runtime directory (nginx.conf not written yet), stopped at the end."""
    try:
        nginx = find_nginx()
    except SourceUnavailable as exc:
        pytest.skip(str(exc))
    runtime = tmp_path / "proxy"
    runtime.mkdir()
    env = {"PATH": os.environ["PATH"], "PROXY_DIR": str(runtime), "NGINX": nginx, "PROXY_WATCH_INTERVAL_S": "0.1"}
    process = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    yield runtime, process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # graceful: nginx finishes its requests
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the group we started: the script and its nginx
            process.wait(timeout=10)


class Stream:
    """Predicts through the proxy in a loop, keeping its connection as the pipeline's clients do."""

    def __init__(self, rest_url: str):
        from pipeline.serving.http_transport import KeepAliveSession

        self.session = KeepAliveSession(rest_url)
        self.url = f"{rest_url}/v1/models/m:predict"
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.session.request("POST", self.url, data='{"instances": [1.0]}', timeout=30)
                if response.status_code == 200:
                    self.answers.append(response.json()["predictions"][0])
                else:
                    self.failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
            except Exception as exc:  # noqa: BLE001 - a failure is what we count
                self.failures.append(f"{type(exc).__name__}: {exc}"[:300])

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.session.close()

    def wait_for_more(self, count: int) -> None:
        target = len(self.answers) + len(self.failures) + count
        deadline = time.monotonic() + _DEADLINE_S
        while len(self.answers) + len(self.failures) < target:
            assert time.monotonic() < deadline, f"the stream made no progress: {self.failures[-3:]}"
            time.sleep(0.05)


def _logged_variants(router: WatchedNginxRouter) -> dict[int, list[str]]:
    """The variant of every logged request, by the config generation that served it."""
    by_generation: dict[int, list[str]] = {}
    for line in router.access_log_path.read_text().splitlines():
        entry = json.loads(line)
        by_generation.setdefault(int(entry["config"]), []).append(entry["variant"])
    return by_generation


@pytest.mark.slow
def test_the_split_moves_on_the_real_proxy_container_entrypoint_without_failing_a_request(
        entrypoint: tuple[Path, subprocess.Popen], upstreams: tuple[Upstream, Upstream]) -> None:
    runtime, process = entrypoint
    stable, canary = upstreams
    rest, grpc = free_ports(2)
    write_initial_config(runtime, _spec(rest, grpc, stable=stable.spec))  # as airflow-init does
    router = WatchedNginxRouter(runtime, f"http://127.0.0.1:{rest}/_proxy/health", canary=canary.spec)
    deadline = time.monotonic() + _DEADLINE_S
    while watched_proxy._served_generation(router.health_url)[0] != 1:
        assert process.poll() is None and time.monotonic() < deadline, "the proxy never served its first config"
        time.sleep(0.05)

    with Stream(f"http://127.0.0.1:{rest}") as stream:
        stream.wait_for_more(50)
        router.set_split(TrafficSplit(50, 0), timeout_s=_DEADLINE_S)
        stream.wait_for_more(300)
        # A config naming a canary host that does not resolve, as when its container is gone: nginx -t refuses it.
        gone = UpstreamSpec(rest="no-such-host.invalid:8501", grpc="no-such-host.invalid:8500")
        with pytest.raises(ConfigError, match="no-such-host.invalid"):
            WatchedNginxRouter(runtime, router.health_url, canary=gone).set_split(TrafficSplit(60, 0), _DEADLINE_S)
        assert router.current_split() == TrafficSplit(50, 0)
        stream.wait_for_more(100)
        router.set_split(TrafficSplit(0, 0), timeout_s=_DEADLINE_S)
        stream.wait_for_more(100)

    assert stream.failures == [] and set(stream.answers) == {"stable", "canary"}
    variants = _logged_variants(router)
    state = _state(runtime)
    assert state["generation"] == 4 and state["written"] == 4  # 1 first, 2 at 50 %, 3 refused, 4 at 0 %
    assert set(variants[1]) == {"stable"} and set(variants[4]) == {"stable"} and 3 not in variants
    share = variants[2].count("canary") / len(variants[2])
    assert 0.25 < share < 0.75, (share, len(variants[2]))  # 50 % on a hash of random ids, hundreds of requests
    assert process.poll() is None  # the proxy kept running through the refusal

