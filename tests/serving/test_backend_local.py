"""The local backend: start, attach from another backend object or process, stop, and no process left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pipeline.errors import NotFound
from pipeline.serving.backends import make_backend
from pipeline.serving.backends.local import LocalBackend, ServerState, _group_exists
from pipeline.serving.client import ServingClient, ServingError
from pipeline.settings import get_paths

_START_TIMEOUT_S = 120.0  # the server imports TensorFlow; the 2 shared cores may be busy


def _backend(home: Path, **spec: object) -> LocalBackend:
    return make_backend("staging", {"backend": "local", **spec}, get_paths(home))  # type: ignore[return-value]


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LocalBackend]:
    """A local staging backend under a temporary pipeline home, stopped at the end whatever happened."""
    backend = _backend(tmp_path)
    yield backend
    backend.stop()


def _assert_gone(state: ServerState) -> None:
    assert not psutil.pid_exists(state.pid) or psutil.Process(state.pid).status() == psutil.STATUS_ZOMBIE
    assert not _group_exists(state.pgid)


def _state(backend: LocalBackend) -> ServerState:
    return ServerState(**json.loads(backend.state_path.read_text()))


@pytest.mark.slow
def test_start_attach_stop_leaves_nothing_running(backend, tmp_path):
    endpoint = backend.start(timeout_s=_START_TIMEOUT_S)
    state = _state(backend)
    assert (state.rest_port, state.grpc_port) == (endpoint.rest_port, endpoint.grpc_port)
    assert backend.config_path.read_text().strip().startswith("model_config_list")
    assert backend.is_running()
    # The server runs grpc on the I/O path this process chose (pipeline.wire.grpc_io).
    assert psutil.Process(state.pid).environ().get("GRPC_EXPERIMENTS") == os.environ["GRPC_EXPERIMENTS"]
    with ServingClient.for_endpoint(endpoint) as client, pytest.raises(ServingError) as caught:
        client.model_status("nothing_served")
    assert caught.value.http_status == 404

    other = _backend(tmp_path)  # e.g. a later Airflow task
    assert other.start(timeout_s=5) == endpoint
    assert _state(other).pid == state.pid  # attached, not started again
    other.stop()

    _assert_gone(state)
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
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        assert backend.is_running()  # the starter exited; its server lives on
        assert backend.endpoint().rest_url == started.stdout.strip().splitlines()[-1]
        state = _state(backend)
    finally:
        backend.stop()
    _assert_gone(state)


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
    assert not backend.state_path.exists()


def test_stop_kills_a_process_group_that_ignores_sigterm(tmp_path):
    backend = _backend(tmp_path)
    ignore_term = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", ignore_term], start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "up"  # SIGTERM is ignored from here on
        state = ServerState(process.pid, process.pid, psutil.Process(process.pid).create_time(), "127.0.0.1", 1, 2)
        backend.instance_dir.mkdir(parents=True)
        backend.state_path.write_text(json.dumps(state.__dict__))
        started = time.monotonic()
        backend.stop(grace_s=0.5)
        assert process.wait(timeout=5) == -signal.SIGKILL
        assert 0.5 <= time.monotonic() - started < 5
        assert not backend.state_path.exists()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_a_stale_state_file_is_not_taken_for_a_running_server(backend):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    backend.instance_dir.mkdir(parents=True)
    backend.state_path.write_text(json.dumps(ServerState(pid, pid, 1.0, "127.0.0.1", 1, 2).__dict__))
    assert not backend.is_running()
    with pytest.raises(NotFound):
        backend.endpoint()
    backend.stop()  # nothing to signal: must not touch whatever has that pid now
    assert not backend.state_path.exists()


def test_a_state_file_naming_a_reused_pid_is_ignored(backend):
    # A live group leader with another start time: the kernel gave our dead server's pid to someone else.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        state = ServerState(stranger.pid, stranger.pid, 1.0, "127.0.0.1", 1, 2)
        backend.instance_dir.mkdir(parents=True)
        backend.state_path.write_text(json.dumps(state.__dict__))
        assert not backend.is_running()
        backend.stop(grace_s=0.2)
        assert stranger.poll() is None  # not ours: never signalled
        assert not backend.state_path.exists()
    finally:
        stranger.kill()
        stranger.wait()


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
