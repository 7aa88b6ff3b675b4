"""The whole server's limits and recoveries: request sizes and tensor elements on both APIs, load retries, stray
version directories, flags and a bounded log."""

from __future__ import annotations

import logging
import logging.handlers
import shutil
import socket
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from pipeline.embedded_server import parse_flags
from pipeline.embedded_server.model_server import configure_logging
from pipeline.util.polling import poll_until

MODEL = "hp"
_WAIT_S = 60.0


@pytest.fixture
def small_server(serve: Any, make_base_path: Any, half_plus_two_dir: Path) -> Any:
    base = make_base_path(MODEL, {1: half_plus_two_dir})
    return serve(model_name=MODEL, model_base_path=str(base), max_request_bytes=1 << 20, max_tensor_elements=1000)


def _prediction_stub(server: Any) -> Any:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}",
                                    options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _request(shape: list[int], **values: Any) -> Any:
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    tensor = request.inputs["x"]
    tensor.dtype = types_pb2.DT_FLOAT
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    for field, value in values.items():
        setattr(tensor, field, value) if field == "tensor_content" else getattr(tensor, field).extend(value)
    return request


# ------------------------------------------------------------------ gRPC


def test_a_40_byte_grpc_request_claiming_a_huge_tensor_is_refused(small_server: Any) -> None:
    channel, stub = _prediction_stub(small_server)
    with channel:
        request = _request([300000, 784], float_val=[1.0])  # TF would broadcast the one value: 940 MB
        assert request.ByteSize() < 60
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "235200000 elements" in caught.value.details() and "--max_tensor_elements" in caught.value.details()
        for shape in ([-1, 4], [1] * 300):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(_request(shape, float_val=[1.0]), timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        answer = stub.Predict(_request([3], float_val=[1.0, 2.0, 3.0]), timeout=30)
        assert list(answer.outputs["y"].float_val) or answer.outputs["y"].tensor_content


def test_a_tensor_that_would_expand_past_a_grpc_message_is_refused() -> None:
    from pipeline.embedded_server.limits import check_tensor_proto
    from pipeline.wire.status import ServingError

    tensor = _request([1000, 1000], float_val=[1.0]).inputs["x"]  # 4 MB as an array, from a 20-byte tensor
    check_tensor_proto("x", tensor, 1 << 24)
    check_tensor_proto("x", tensor, 1 << 24, max_bytes=4_000_000)
    with pytest.raises(ServingError, match="would take 4000000 bytes") as caught:
        check_tensor_proto("x", tensor, 1 << 24, max_bytes=1 << 20)
    assert caught.value.code == "INVALID_ARGUMENT"


def test_a_grpc_message_over_the_size_limit_is_resource_exhausted(small_server: Any) -> None:
    channel, stub = _prediction_stub(small_server)
    with channel:
        request = _request([2 << 20], tensor_content=b"\0" * (8 << 20))
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # a gRPC message may take half of --max_request_bytes (grpcio holds it three times on its way in)
        request = _request([3 << 16], tensor_content=b"\0" * (3 << 18))  # 0.75 MiB
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_large_grpc_tensor_is_answered_from_its_own_bytes(serve: Any, make_base_path: Any,
                                                            half_plus_two_dir: Path) -> None:
    import numpy as np

    from pipeline.wire.tensors import to_ndarray

    base = make_base_path(MODEL, {1: half_plus_two_dir})
    server = serve(model_name=MODEL, model_base_path=str(base), max_request_bytes=16 << 20)
    values = np.arange(1 << 20, dtype=np.float32)  # 4 MiB: split out of the message and shared with TensorFlow
    channel, stub = _prediction_stub(server)
    with channel:
        answer = stub.Predict(_request([1 << 20], tensor_content=values.tobytes()), timeout=60)
        np.testing.assert_array_equal(to_ndarray(answer.outputs["y"]), values / 2 + 2)
        with pytest.raises(grpc.RpcError) as caught:  # content that does not fit the shape: still refused
            stub.Predict(_request([(1 << 20) + 1], tensor_content=values.tobytes()), timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ------------------------------------------------------------------ REST


def test_rest_body_and_element_limits_over_http(small_server: Any) -> None:
    url = f"http://127.0.0.1:{small_server.rest_port}/v1/models/{MODEL}:predict"
    with socket.create_connection(("127.0.0.1", small_server.rest_port), timeout=_WAIT_S) as sock:
        sock.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: h\r\nContent-Length: 209715200\r\n\r\n"
                     .encode())
        assert sock.recv(1000).startswith(b"HTTP/1.1 413")
    assert requests.post(url, data=b"[" + b"1," * (1 << 20) + b"1]", timeout=_WAIT_S).status_code == 413
    response = requests.post(url, json={"instances": [1.0] * 1001}, timeout=_WAIT_S)
    assert response.status_code == 400 and "more than 1000 elements" in response.json()["error"]
    assert requests.post(url, json={"instances": [1.0] * 1000}, timeout=_WAIT_S).status_code == 200
    # a body's strings may hold half of --max_request_bytes (1 MiB here), refused as the scan passes it
    response = requests.post(url, data=b'{"instances": ["' + b"a" * 600_000 + b'"]}', timeout=_WAIT_S)
    assert response.status_code == 400 and "more than 524288 bytes in strings" in response.json()["error"]
    response = requests.post(url, json={"instances": ["a" * 1000] * 600}, timeout=_WAIT_S)
    assert response.status_code == 400 and "more than 524288 bytes in strings" in response.json()["error"]
    response = requests.post(url, data=b'{"instances": ["' + b"a" * 400_000 + b'"]}', timeout=_WAIT_S)
    assert response.status_code == 400 and "is not of expected type: float" in response.json()["error"]


# ------------------------------------------------------------------ versions on disk


def _states(server: Any) -> list[tuple[int, str]]:
    return [(s.version, s.state) for s in server.manager.status(MODEL)]


def _wait_for_states(server: Any, wanted: list[tuple[int, str]]) -> None:
    poll_until(lambda: (True if _states(server) == wanted else None, str(_states(server))), _WAIT_S,
               f"versions {wanted}")


def _half_copy(source: Path, target: Path) -> None:
    """A version directory caught mid-copy: everything but saved_model.pb."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("saved_model.pb"))


def test_a_half_copied_version_is_retried_and_loads(serve: Any, make_base_path: Any, half_plus_two_dir: Path,
                                                    half_plus_three_dir: Path) -> None:
    base = make_base_path(MODEL, {1: half_plus_two_dir})
    server = serve(model_name=MODEL, model_base_path=str(base), max_num_load_retries=50,
                   load_retry_interval_micros=100_000)
    _half_copy(half_plus_three_dir, base / "2")
    _wait_for_states(server, [(2, "END"), (1, "AVAILABLE")])
    assert "Could not find SavedModel" in server.manager.status(MODEL, version=2)[0].error_message
    shutil.copy2(half_plus_three_dir / "saved_model.pb", base / "2" / "saved_model.pb")  # the copy completes
    _wait_for_states(server, [(2, "AVAILABLE"), (1, "END")])


def test_without_retries_a_failed_version_stays_failed(serve: Any, make_base_path: Any, half_plus_two_dir: Path,
                                                       half_plus_three_dir: Path) -> None:
    base = make_base_path(MODEL, {1: half_plus_two_dir})
    server = serve(model_name=MODEL, model_base_path=str(base), max_num_load_retries=0)
    _half_copy(half_plus_three_dir, base / "2")
    _wait_for_states(server, [(2, "END"), (1, "AVAILABLE")])
    shutil.copy2(half_plus_three_dir / "saved_model.pb", base / "2" / "saved_model.pb")
    for _ in range(10):  # ten polls later, still the failed load (TF Serving with --max_num_load_retries=0)
        server.manager.poll_file_system()
    assert _states(server) == [(2, "END"), (1, "AVAILABLE")]


def test_stray_version_directories_are_ignored(serve: Any, make_base_path: Any, half_plus_two_dir: Path,
                                               half_plus_three_dir: Path) -> None:
    base = make_base_path(MODEL, {1: half_plus_two_dir})
    for name in ["²", "007", "99999999999999999999"]:
        shutil.copytree(half_plus_three_dir, base / name)
    server = serve(model_name=MODEL, model_base_path=str(base))
    assert _states(server) == [(1, "AVAILABLE")]
    server.manager.poll_file_system()
    assert _states(server) == [(1, "AVAILABLE")]


# ------------------------------------------------------------------ flags and the log


def test_limit_and_timeout_flags() -> None:
    options = parse_flags(["--model_base_path=/m"])
    assert (options.rest_api_timeout_in_ms, options.max_num_load_retries, options.load_retry_interval_micros) == (
        30_000, 5, 60_000_000)  # TF Serving's defaults
    assert (options.max_request_bytes, options.max_tensor_elements) == (64 << 20, 1 << 24)
    options = parse_flags(["--model_base_path=/m", "--rest_api_num_threads=3", "--rest_api_timeout_in_ms=500",
                           "--max_num_load_retries=0", "--load_retry_interval_micros=1000", "--max_request_bytes=10",
                           "--max_tensor_elements=7", "--log_file=/tmp/x.log", "--log_file_max_bytes=100"])
    assert (options.rest_api_num_threads, options.rest_api_timeout_in_ms, options.max_num_load_retries) == (3, 500, 0)
    assert (options.load_retry_interval_micros, options.max_request_bytes, options.max_tensor_elements) == (
        1000, 10, 7)
    assert (options.log_file, options.log_file_max_bytes, options.log_file_backups) == ("/tmp/x.log", 100, 3)
    for bad in ("--rest_api_num_threads=0", "--max_request_bytes=-1", "--max_num_load_retries=-1"):
        with pytest.raises(SystemExit):
            parse_flags(["--model_base_path=/m", bad])


def test_the_log_file_rotates_and_stays_bounded(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    path = tmp_path / "server.log"
    try:
        configure_logging(parse_flags(["--model_base_path=/m", f"--log_file={path}", "--log_file_max_bytes=10000",
                                       "--log_file_backups=2"]))
        for index in range(2000):
            logging.getLogger("pipeline.embedded_server.rest").info("REST POST /v1/x -> 400: bad request %d", index)
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level = saved
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["server.log", "server.log.1", "server.log.2"]
    assert all((tmp_path / name).stat().st_size <= 10000 for name in files)
    assert "bad request 1999" in path.read_text()
