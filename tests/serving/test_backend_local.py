"""The local backend: start, attach from another backend object or process, stop, no process left behind, and a
killed server back on its own (supervisord restarts it, on the same ports, serving the same config)."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pipeline.errors import NotFound
from pipeline.serving.backends import make_backend
from pipeline.serving.backends.local import LocalBackend, ServerState
from pipeline.serving.client import ServingClient, ServingError
from pipeline.settings import get_paths
from pipeline.util.polling import poll_until

_START_TIMEOUT_S = 120.0  # the server imports TensorFlow; the 2 shared cores may be busy


def _backend(home: Path, **spec: object) -> LocalBackend:
    return make_backend("staging", {"backend": "local", **spec}, get_paths(home))  # type: ignore[return-value]


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LocalBackend]:
    """A local staging backend under a temporary pipeline home, stopped at the end whatever happened."""
    backend = _backend(tmp_path)
    yield backend
    backend.stop()
    backend.supervisor.shutdown()  # whatever a failed test left


def _ipv4(address: str) -> str:
    """``::ffff:127.0.0.1`` (gRPC's dual-stack socket bound to an IPv4 address) as ``127.0.0.1``."""
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _supervisord_pid(backend: LocalBackend) -> int:
    return int((backend.supervisor.runtime_dir / "supervisord.pid").read_text())


def _assert_nothing_left(backend: LocalBackend, *pids: int) -> None:
    """The server's processes and the stack's supervisord are gone."""
    def check() -> tuple[bool | None, str]:
        left = [pid for pid in pids if not _gone(pid)]
        return (True if not left else None), f"still running: {left}"

    poll_until(check, 30.0, "processes left after stop")
    assert not backend.supervisor.is_running()


@pytest.mark.slow
def test_start_attach_stop_leaves_nothing_running(backend, tmp_path):
    endpoint = backend.start(timeout_s=_START_TIMEOUT_S)
    state = ServerState(**json.loads(backend.state_path.read_text()))
    assert (state.rest_port, state.grpc_port) == (endpoint.rest_port, endpoint.grpc_port)
    assert backend.config_path.read_text().strip().startswith("model_config_list")
    assert backend.is_running()
    pid = backend.pid()
    assert pid is not None
    # The server is supervisord's child, and runs grpc on the I/O path this process chose (pipeline.wire.grpc_io).
    server = psutil.Process(pid)
    assert server.ppid() == _supervisord_pid(backend)
    assert server.environ().get("GRPC_EXPERIMENTS") == os.environ["GRPC_EXPERIMENTS"]
    # TF Serving's APIs have no authentication: the server listens on loopback only, on its two ports.
    listening = {(_ipv4(c.laddr.ip), c.laddr.port) for c in server.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {("127.0.0.1", endpoint.rest_port), ("127.0.0.1", endpoint.grpc_port)}
    with ServingClient.for_endpoint(endpoint) as client, pytest.raises(ServingError) as caught:
        client.model_status("nothing_served")
    assert caught.value.http_status == 404

    other = _backend(tmp_path)  # e.g. a later Airflow task
    assert other.start(timeout_s=5) == endpoint
    assert other.pid() == pid  # attached, not started again
    daemon = _supervisord_pid(backend)
    other.stop()

    _assert_nothing_left(backend, pid, daemon)
    assert not backend.state_path.exists()
    assert not backend.is_running()
    with pytest.raises(NotFound, match="not running"):
        backend.endpoint()
    backend.stop()  # idempotent


@pytest.mark.slow
def test_a_server_started_by_another_process_can_be_stopped_here(tmp_path):
    code = textwrap.dedent(f"""
        from pipeline.serving.backends import make_backend
        from pipeline.settings import get_paths
        backend = make_backend("staging", {{"backend": "local"}}, get_paths({str(tmp_path)!r}))
        print(backend.start(timeout_s={_START_TIMEOUT_S}).rest_url)
    """)
    started = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    backend = _backend(tmp_path)
    pids: list[int] = []
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        assert backend.is_running()  # the starter exited; its server lives on
        assert backend.endpoint().rest_url == started.stdout.strip().splitlines()[-1]
        pids = [backend.pid() or 0, _supervisord_pid(backend)]
    finally:
        backend.stop()
        backend.supervisor.shutdown()
    _assert_nothing_left(backend, *pids)


@pytest.mark.slow
def test_a_server_that_cannot_bind_fails_start_and_leaves_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        backend = _backend(tmp_path, rest_port=taken.getsockname()[1])
        try:
            with pytest.raises(ServingError, match="is already in use") as caught:
                backend.start(timeout_s=_START_TIMEOUT_S)
        finally:
            backend.stop()
    assert caught.value.code == "UNAVAILABLE"
    assert not backend.state_path.exists() and not backend.supervisor.is_running()


@pytest.mark.slow
def test_a_server_that_exits_while_starting_fails_start_with_its_log(tmp_path):
    backend = _backend(tmp_path, extra_args=("--no_such_flag=1",))
    try:
        with pytest.raises(ServingError, match="(?s)exited while starting.*no_such_flag") as caught:
            backend.start(timeout_s=_START_TIMEOUT_S)
    finally:
        backend.stop()
    assert caught.value.code == "UNAVAILABLE"
    assert not backend.state_path.exists() and not backend.supervisor.is_running()  # not left restarting


def test_a_state_file_without_a_supervised_server_is_not_taken_for_one(backend):
    backend.instance_dir.mkdir(parents=True)
    backend.state_path.write_text(json.dumps(ServerState("127.0.0.1", 1, 2).__dict__))
    assert not backend.is_running() and backend.pid() is None
    with pytest.raises(NotFound):
        backend.endpoint()
    backend.stop()  # nothing to stop: forgets the file, starts no supervisord
    assert not backend.state_path.exists() and not backend.supervisor.is_running()


def test_an_unreadable_or_old_state_file_is_forgotten(backend):
    backend.instance_dir.mkdir(parents=True)
    for text in ("{not json", json.dumps({"pid": 1, "pgid": 1, "create_time": 1.0, "host": "127.0.0.1",
                                          "rest_port": 1, "grpc_port": 2})):
        backend.state_path.write_text(text)
        with pytest.raises(NotFound):
            backend.endpoint()
        assert not backend.state_path.exists()


@pytest.mark.slow
def test_a_killed_server_is_back_serving_the_same_config_on_its_own(backend, make_base_path, half_plus_two_dir):
    import numpy as np

    from pipeline.wire.model_config import single_model_config, write_config

    base_path = make_base_path("half_plus_two", {1: half_plus_two_dir})
    write_config(backend.config_path, single_model_config("half_plus_two", base_path, [1], {"stable": 1}))
    endpoint = backend.start(timeout_s=_START_TIMEOUT_S)
    killed = backend.pid()
    assert killed is not None
    os.kill(killed, signal.SIGKILL)  # no stop, no task: nobody but supervisord restarts it
    x = np.array([4.0], dtype=np.float32)

    def predicts() -> tuple[bool | None, str]:
        with ServingClient.for_endpoint(endpoint, timeout_s=2.0) as client:
            try:
                return (True if client.predict("half_plus_two", inputs=x, label="stable")["y"].tolist() == [4.0]
                        else None), "answered"
            except ServingError as exc:
                return None, str(exc)[:200]

    poll_until(predicts, _START_TIMEOUT_S, "the killed server did not serve again", interval_s=0.2)
    assert backend.pid() not in (None, killed)
    assert backend.endpoint() == endpoint  # same ports: the proxy's upstream needs no change
    assert backend.is_running()


@pytest.mark.slow
def test_apply_config_serves_the_file_now(backend, make_base_path, half_plus_two_dir, half_plus_three_dir):
    import numpy as np

    from pipeline.wire.model_config import single_model_config, write_config

    base_path = make_base_path("half_plus_two", {1: half_plus_two_dir, 2: half_plus_three_dir})
    write_config(backend.config_path, single_model_config("half_plus_two", base_path, [1], {"stable": 1}))
    endpoint = backend.start(timeout_s=_START_TIMEOUT_S)  # returns once version 1 is AVAILABLE
    x = np.array([4.0], dtype=np.float32)
    with ServingClient.for_endpoint(endpoint) as client:
        assert client.predict("half_plus_two", inputs=x, label="stable")["y"].tolist() == [4.0]

        # no waiting for a poll: the reload is sent at once
        backend.apply_config(single_model_config("half_plus_two", base_path, [1, 2], {"stable": 1, "canary": 2}),
                             timeout_s=60)
        assert client.predict("half_plus_two", inputs=x, label="canary")["y"].tolist() == [5.0]

        backend.apply_config(single_model_config("half_plus_two", base_path, [2], {"stable": 2}), timeout_s=60)
        assert client.predict("half_plus_two", inputs=x, label="stable")["y"].tolist() == [5.0]
        with pytest.raises(ServingError) as caught:
            client.predict("half_plus_two", inputs=x, label="canary")
        assert caught.value.code == "INVALID_ARGUMENT"  # TF Serving: "Unrecognized servable version label"
