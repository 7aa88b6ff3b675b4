"""Property-based fuzz of the REST API: no request, however malformed, gets a 5xx or takes the server down.

Most examples go straight to :meth:`RestApi.handle` (fast); a few go through the socket as raw bytes. A failing
example is printed by hypothesis and can be replayed with ``@example``.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.embedded_server import ModelServer, ServerOptions
from pipeline.embedded_server.rest import RestApi

MODEL = "half_plus_two"
_KEYS = ["instances", "inputs", "signature_name", "examples", "context", "b64", "x", "n", "s"]
_SIGNATURES = ["serving_default", "classify_x_to_y", "regress_x_to_y", "regress_x2_to_y3", "echo_float32",
               "echo_float64", "echo_int8", "echo_int64", "echo_uint64", "echo_bool", "echo_string", "nope", ""]
_PATHS = [f"/v1/models/{MODEL}:predict", f"/v1/models/{MODEL}:classify", f"/v1/models/{MODEL}:regress",
          "/v1/models/multi_io:predict", f"/v1/models/{MODEL}/versions/123:predict",
          f"/v1/models/{MODEL}/labels/stable:predict", f"/v1/models/{MODEL}/versions/99999999999999999999:predict",
          f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/metadata", "/v1/models", "/v1/x", "/", "/v1/models/%00:predict"]
_SETTINGS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
            | st.sampled_from(_SIGNATURES))
_values = st.recursive(_scalars, lambda children: (
    st.lists(children, max_size=6)
    | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), children, max_size=4)), max_leaves=40)
_documents = st.dictionaries(st.sampled_from(_KEYS), _values, max_size=4)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, half_plus_two_dir: Path, multi_io_dir: Path) -> Any:
    from pipeline.wire import model_config
    from tests.servables import add_version

    root = tmp_path_factory.mktemp("fuzz")
    add_version(root / MODEL, 123, half_plus_two_dir)
    add_version(root / "multi_io", 1, multi_io_dir)
    config = model_config.single_model_config(MODEL, root / MODEL, versions=[123], labels={"stable": 123})
    multi = config.model_config_list.config.add(name="multi_io", base_path=str(root / "multi_io"))
    multi.model_platform = "tensorflow"
    path = model_config.write_config(root / "models.config", config)
    server = ModelServer(ServerOptions(port=0, rest_api_port=0, model_config_file=str(path),
                                       file_system_poll_wait_seconds=0, rest_api_timeout_in_ms=5000,
                                       max_request_bytes=1 << 20, max_tensor_elements=10_000,
                                       allow_version_labels_for_unavailable_models=True)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(server: Any) -> RestApi:
    return server._rest._api


def _check(status: int, text: str) -> None:
    assert status < 500, text
    doc = json.loads(text)
    assert isinstance(doc, dict) and doc, text


@_SETTINGS
@given(path=st.sampled_from(_PATHS), doc=_documents)
def test_request_shaped_json(api: RestApi, path: str, doc: dict) -> None:
    _check(*api.handle("POST", path, json.dumps(doc, allow_nan=True).encode()))


@_SETTINGS
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS"]),
       path=st.sampled_from(_PATHS) | st.text(max_size=40).map(lambda text: "/" + text), body=st.binary(max_size=300))
def test_any_bytes_any_path(api: RestApi, method: str, path: str, body: bytes) -> None:
    _check(*api.handle(method, path, body))


@_SETTINGS
@given(data=st.data(), doc=_documents, path=st.sampled_from(_PATHS))
def test_mutated_json(api: RestApi, data: Any, doc: dict, path: str) -> None:
    text = bytearray(json.dumps(doc, allow_nan=True).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = data.draw(st.sampled_from(list(b'[]{}",:\\0123456789eE-+.NaIfinity tn\x00\xff')))
        if action == "insert":
            text.insert(position, byte)
        elif position < len(text):
            if action == "delete":
                del text[position]
            else:
                text[position] = byte
    _check(*api.handle("POST", path, bytes(text)))


@_SETTINGS
@given(depth=st.integers(1, 3000), leaf=st.sampled_from(["1.0", "{}", '"s"', "[]", "1e400", "NaN"]),
       key=st.sampled_from(["instances", "inputs", "extra"]))
def test_deep_nesting(api: RestApi, depth: int, leaf: str, key: str) -> None:
    body = f'{{"{key}": {"[" * depth}{leaf}{"]" * depth}}}'.encode()
    _check(*api.handle("POST", f"/v1/models/{MODEL}:predict", body))


_http_lines = st.sampled_from([
    b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\n", b"GET /v1/models/half_plus_two HTTP/1.1\r\n",
    b"Host: h\r\n", b"Content-Length: 5\r\n", b"Content-Length: 99999999999\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n", b"Connection: close\r\n", b"\r\n", b'{"instances": [1.0]}', b"5\r\nhello\r\n",
    b"0\r\n\r\n", b"\x00\xff", b"GET / HTTP/1.0\r\n", b"X: " + b"y" * 1000 + b"\r\n"])


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(_http_lines | st.binary(max_size=50), min_size=1, max_size=12))
def test_raw_bytes_through_the_socket(server: Any, parts: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as sock:
        sock.sendall(b"".join(parts))
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(1 << 16):
            answer += chunk
    for line in answer.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 "):
            assert int(line.split(b" ")[1]) < 500, answer
    response = requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}:predict",
                             data=b'{"instances": [1.0]}', timeout=30)
    assert response.json() == {"predictions": [2.5]}
