"""The real ``python -m pipeline.embedded_server`` process: flags, ready line, both APIs, clean SIGTERM exit."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from pipeline.embedded_server import READY_PREFIX, parse_flags
from pipeline.util.net import free_port
from pipeline.util.polling import poll_until

_START_TIMEOUT_S = 120.0


def test_flags_follow_tensorflow_model_server() -> None:
    options = parse_flags(["--model_name=m", "--model_base_path=/models/m"])
    assert (options.port, options.rest_api_port, options.bind_address) == (8500, None, "127.0.0.1")
    assert options.file_system_poll_wait_seconds == 1.0
    options = parse_flags(["--port", "9000", "--rest_api_port=9001", "--model_config_file=/c",
                           "--model_config_file_poll_wait_seconds=5", "--allow_version_labels_for_unavailable_models",
                           "--enable_batching=false"])
    assert (options.port, options.rest_api_port, options.model_config_file) == (9000, 9001, "/c")
    assert options.allow_version_labels_for_unavailable_models is True
    assert options.model_config_file_poll_wait_seconds == 5.0
    with pytest.raises(SystemExit):
        parse_flags(["--port=1"])  # neither a model nor a config file
    options = parse_flags(["--model_base_path=/m", "--tensorflow_intra_op_parallelism=1",
                           "--tensorflow_inter_op_parallelism", "3"])
    assert (options.tensorflow_intra_op_parallelism, options.tensorflow_inter_op_parallelism) == (1, 3)
    with pytest.raises(SystemExit):
        parse_flags(["--model_base_path=/m", "--tensorflow_intra_op_parallelism=-1"])


@pytest.mark.slow
def test_tensorflow_thread_flags_set_the_pools_of_a_fresh_process() -> None:
    code = ("import tensorflow as tf\n"
            "from pipeline.embedded_server.model_server import set_tensorflow_threads\n"
            "set_tensorflow_threads(1, 3)\n"
            "tf.constant(1.0) + 1  # the first op: TensorFlow is initialized\n"
            "set_tensorflow_threads(2, 0)  # too late now: kept, with a warning\n"
            "t = tf.config.threading\n"
            "print(t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1", "3"]


@pytest.fixture
def server_process(make_base_path: Any, half_plus_two_dir: Path) -> Any:
    base = make_base_path("half_plus_two", {1: half_plus_two_dir})
    rest_port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.embedded_server", "--port=0", f"--rest_api_port={rest_port}",
         "--model_name=half_plus_two", f"--model_base_path={base}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    yield process, rest_port
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def read_ready_line(process: subprocess.Popen) -> str:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(READY_PREFIX):
            return line
        if not line and process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode} before it was ready")
    raise AssertionError("no ready line")


@pytest.mark.slow
def test_subprocess_serves_rest_and_grpc_and_exits_cleanly_on_sigterm(server_process: Any) -> None:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    process, rest_port = server_process
    line = read_ready_line(process)
    grpc_target = line.split("grpc=")[1].split()[0]
    assert f"rest=127.0.0.1:{rest_port}" in line
    response = requests.post(f"http://127.0.0.1:{rest_port}/v1/models/half_plus_two:predict",
                             data='{"instances": [1.0, 2.0, 5.0]}', timeout=10)
    assert response.json() == {"predictions": [2.5, 3.0, 4.5]}
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "half_plus_two", "serving_default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0, 5.0], dtype=tf.float32))
    with grpc.insecure_channel(grpc_target) as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    assert tf.make_ndarray(reply.outputs["y"]).tolist() == [2.5, 3.0, 4.5]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def _open_idle_connections(port: int, count: int) -> list[socket.socket]:
    hogs = []
    for _ in range(count):
        try:
            hogs.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        except OSError:
            break  # the server (or the kernel's backlog) has had enough: that is the point
    return hogs


@pytest.mark.slow
def test_a_full_descriptor_table_degrades_gracefully(make_base_path: Any, half_plus_two_dir: Path,
                                                     half_plus_three_dir: Path, tmp_path: Path) -> None:
    """1100 idle connections against a server limited to 1024 descriptors: new REST and gRPC clients are served,
    the file-system poller still loads a new version, and nothing logs a traceback."""
    import grpc
    import numpy as np
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from pipeline.wire.tensors import fill_tensor_proto
    from tests.servables import add_version

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    base = make_base_path("half_plus_two", {1: half_plus_two_dir})
    rest_port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.embedded_server", "--port=0", f"--rest_api_port={rest_port}",
             "--model_name=half_plus_two", f"--model_base_path={base}", "--file_system_poll_wait_seconds=0.2"],
            stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024)))
    hogs: list[socket.socket] = []
    try:
        grpc_target = read_ready_line(process).split("grpc=")[1].split()[0]
        hogs = _open_idle_connections(rest_port, 1100)
        url = f"http://127.0.0.1:{rest_port}/v1/models/half_plus_two"
        for _ in range(20):  # each on a new connection, as a client that has never been here
            response = requests.post(f"{url}:predict", data='{"instances": [1.0]}', timeout=30)
            assert response.json() == {"predictions": [2.5]}
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        fill_tensor_proto(request.inputs["x"], np.asarray([1.0], dtype=np.float32))
        with grpc.insecure_channel(grpc_target) as channel:
            reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        assert list(reply.outputs["y"].float_val) or reply.outputs["y"].tensor_content
        add_version(base, 2, half_plus_three_dir)

        def version_two_available() -> tuple[bool | None, str]:
            states = requests.get(url, timeout=30).json()["model_version_status"]
            return (True if states[0]["version"] == "2" and states[0]["state"] == "AVAILABLE" else None), str(states)

        poll_until(version_two_available, 120, "the poller loading version 2 with the descriptor table full")
        assert process.poll() is None
    finally:
        for sock in hogs:
            sock.close()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert len(hogs) >= 1000
    assert "Traceback" not in log_path.read_text()
