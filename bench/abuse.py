"""Abuse benchmark: what an attacker's requests do to the embedded server and to well-behaved clients.

Runs ``python -m pipeline.embedded_server`` as a child process on an MNIST-shaped model built here (a linear
layer: ``x`` float32 [batch, 784] -> ``probabilities`` [batch, 10]) and measures, each against a floor taken in
the same run:

* **Latency under a big malformed request**: a well-behaved REST client and a gRPC client (each one request every
  10 ms on a kept-alive connection) while an attacker sends, again and again, a 200 MB malformed JSON body with a
  Content-Length, the same body chunked (no length), and a malformed body just under the size limit (which is read
  and parsed up to its error). p50/p99/max of the clients per attack; the floor is the same clients unattacked.
  Target: p99 <= 50 ms.
* **Peak RSS of one request** (the kernel's high-water mark, reset before each request): a 200 MB valid body, the
  largest valid float request the JSON value limit admits, a body just under the size limit of one long string
  and one of 1 MB strings,
  a 40-byte gRPC request whose shape claims [300000, 784], one value broadcast to the most elements the server
  takes and to the most bytes a gRPC message carries, a gRPC message just under its limit (half of
  --max_request_bytes) and one of 62 MiB (refused, RESOURCE_EXHAUSTED). Target:
  <= baseline + 2 x --max_request_bytes. (The model's answer is small, as a classifier's is; a model that echoes
  a 60 MB input back costs its answer too.)
* **1100 idle connections under a 1024 descriptor limit** (RLIMIT_NOFILE set in the server child): well-behaved REST
  (a new connection per request, as a client that never came before) and gRPC (a new channel per request) counts of
  successes and failures, and whether the file-system poller still loads a new version.

Usage::

    .venv/bin/python bench/abuse.py [--seconds 4] [--json-only]

Prints a table and a JSON document. Everything lives in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.wire.grpc_io import classic_io_env, prefer_classic_io  # noqa: E402 - after the path insert

_MODEL = "mnist_like"
_PIXELS = 784
_MAX_REQUEST_BYTES = 64 << 20  # the server's default, passed explicitly
_MAX_GRPC_MESSAGE_BYTES = _MAX_REQUEST_BYTES // 2  # pipeline.embedded_server.limits.GRPC_MESSAGE_SHARE
_MAX_TENSOR_ELEMENTS = 1 << 24  # the server's default --max_tensor_elements
_PACE_S = 0.01
_BIG = 200 << 20
_NOFILE = 1024
_IDLE_CONNECTIONS = 1100
_START_TIMEOUT_S = 180.0
_JSON_VALUE_BYTES = 48  # pipeline.embedded_server.limits.JSON_VALUE_BYTES
_TARGETS = {"p99_ms_under_attack": 50.0, "rss_over_baseline_limit_factor": 2.0}


# ---- the model and the server -----------------------------------------------------------------------------


def build_model(export_dir: Path, seed: int = 0) -> Path:
    """A linear MNIST-shaped classifier (``x`` [batch, 784] -> ``probabilities`` [batch, 10]) as a SavedModel."""
    import tensorflow as tf

    class Linear(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([_PIXELS, 10], seed=[seed, 1]) * 0.01)
            self.b = tf.Variable(tf.zeros([10]))

        @tf.function(input_signature=[tf.TensorSpec([None, _PIXELS], tf.float32, name="x")])
        def predict(self, x: Any) -> dict:
            return {"probabilities": tf.nn.softmax(tf.matmul(x, self.w) + self.b)}

    module = Linear()
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.predict})
    return export_dir


# ---- the server -----------------------------------------------------------------------------------------------


class Server:
    """The embedded server as a child process on free ports."""

    def __init__(self, base: Path, workdir: Path, nofile: int | None = None, extra: tuple[str, ...] = ()):
        from pipeline.util.net import free_ports

        self.rest_port, grpc_port = free_ports(2, "127.0.0.1")
        self.log_path = workdir / f"server-{self.rest_port}.log"
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.embedded_server", f"--port={grpc_port}",
                 f"--rest_api_port={self.rest_port}", f"--model_name={_MODEL}", f"--model_base_path={base}",
                 f"--max_request_bytes={_MAX_REQUEST_BYTES}", "--file_system_poll_wait_seconds=0.5", *extra],
                stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=limit,
                env={**classic_io_env(), "TF_CPP_MIN_LOG_LEVEL": "2",
                     "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        self.grpc_target = f"127.0.0.1:{grpc_port}"
        self._wait_ready()

    def _wait_ready(self) -> None:
        from pipeline.embedded_server import READY_PREFIX

        deadline = time.monotonic() + _START_TIMEOUT_S
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith(READY_PREFIX):
                return
            if not line and self.process.poll() is not None:
                raise SystemExit(f"server exited with {self.process.returncode}; see {self.log_path}")
        raise SystemExit(f"server not ready in {_START_TIMEOUT_S:g}s; see {self.log_path}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}/v1/models/{_MODEL}"

    def reset_peak_rss(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS

    def rss_mb(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} in /proc/{self.process.pid}/status")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


# ---- well-behaved clients -------------------------------------------------------------------------------------


def _grpc_request(values: Any) -> Any:
    import numpy as np
    from tensorflow_serving.apis import predict_pb2

    from pipeline.wire.tensors import fill_tensor_proto

    request = predict_pb2.PredictRequest()
    request.model_spec.name = _MODEL
    fill_tensor_proto(request.inputs["x"], np.asarray(values, dtype=np.float32))
    return request


class Clients:
    """A REST and a gRPC client, each sending one small request every 10 ms on a kept-alive connection."""

    def __init__(self, server: Server):
        self.server = server
        self.latencies: dict[str, list[float]] = {"rest": [], "grpc": []}
        self.failures: dict[str, int] = {"rest": 0, "grpc": 0}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rest, daemon=True),
                         threading.Thread(target=self._grpc, daemon=True)]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _paced(self, protocol: str, call: Callable[[], bool]) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                ok = call()
            except Exception:
                ok = False
            elapsed = time.perf_counter() - start
            if ok:
                self.latencies[protocol].append(elapsed)
            else:
                self.failures[protocol] += 1
            self._stop.wait(max(0.0, _PACE_S - elapsed))

    def _rest(self) -> None:
        import requests

        with requests.Session() as session:
            def call() -> bool:
                response = session.post(f"{self.server.url}:predict", data=_IMAGE_JSON, timeout=30)
                return response.status_code == 200

            self._paced("rest", call)

    def _grpc(self) -> None:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        request = _grpc_request(_image())
        with grpc.insecure_channel(self.server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            self._paced("grpc", lambda: bool(stub.Predict(request, timeout=30).outputs))

    def summary(self) -> dict[str, Any]:
        return {protocol: {**_percentiles(self.latencies[protocol]), "failures": self.failures[protocol]}
                for protocol in self.latencies}


def _image(rows: int = 1) -> Any:
    import numpy as np

    return np.random.default_rng(0).random((rows, _PIXELS), dtype=np.float32)


_IMAGE_JSON = json.dumps({"instances": [[round(v / _PIXELS, 4) for v in range(_PIXELS)]]})  # one 784-pixel row


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    ordered = sorted(latencies)
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2)}


# ---- attacks --------------------------------------------------------------------------------------------------


def _malformed(size: int) -> bytes:
    """A JSON body of ``size`` bytes that is well formed until its last bytes (the worst case for a parser)."""
    head, tail = b'{"instances": [[', b"1.0, oops"
    filler = b"0.5, " * ((size - len(head) - len(tail)) // 5)
    return head + filler + tail


def _post_raw(server: Server, head: bytes, body: Iterator[bytes]) -> int:
    """Send a request as a naive client does (the whole body, whatever the server says); the answer's status."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=60) as sock:
        try:
            sock.sendall(head)
            for chunk in body:
                sock.sendall(chunk)
        except OSError:
            pass  # the server closed while we were still sending: read what it answered
        try:
            answer = sock.recv(4096)
        except OSError:
            return 0
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _chunks(data: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start:start + size])


def attack_content_length(server: Server, body: bytes) -> int:
    head = (f"POST /v1/models/{_MODEL}:predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return _post_raw(server, head, _chunks(body))


def attack_chunked(server: Server, body: bytes) -> int:
    head = (f"POST /v1/models/{_MODEL}:predict HTTP/1.1\r\nHost: bench\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()

    def framed() -> Iterator[bytes]:
        for chunk in _chunks(body):
            yield f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        yield b"0\r\n\r\n"

    return _post_raw(server, head, framed())


def under_attack(server: Server, seconds: float, attack: Callable[[], int] | None) -> dict[str, Any]:
    """The clients' latencies over ``seconds`` while ``attack`` runs back to back (None: the floor)."""
    statuses: list[int] = []
    stop = threading.Event()

    def attacker() -> None:
        while attack is not None and not stop.is_set():
            statuses.append(attack())

    thread = threading.Thread(target=attacker, daemon=True)
    with Clients(server) as clients:
        time.sleep(0.5)  # the clients' connections are up before the attack
        clients.latencies = {"rest": [], "grpc": []}
        thread.start()
        time.sleep(seconds)
        stop.set()
    thread.join(timeout=120)
    return {**clients.summary(), "attacks": len(statuses), "attack_statuses": sorted(set(statuses)),
            "server_alive": server.alive()}


# ---- peak RSS of one request ----------------------------------------------------------------------------------


def peak_rss(server: Server, send: Callable[[], Any]) -> dict[str, Any]:
    time.sleep(0.5)
    baseline = server.rss_mb()
    server.reset_peak_rss()
    outcome = send()
    time.sleep(0.2)
    peak = server.rss_mb("VmHWM")
    return {"baseline_mb": round(baseline, 1), "peak_mb": round(peak, 1), "delta_mb": round(peak - baseline, 1),
            "answer": outcome}


def rss_cases(server: Server) -> dict[str, dict[str, Any]]:
    import grpc
    import numpy as np
    import requests
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    url = f"{server.url}:predict"
    rows = (_MAX_REQUEST_BYTES // _JSON_VALUE_BYTES) // (_PIXELS + 1) - 1  # the most the JSON value limit admits
    row = b"[" + b", ".join([b"0.123456"] * _PIXELS) + b"]"
    floats = b'{"instances": [' + b", ".join([row] * rows) + b"]}"
    string = b'{"instances": ["' + b"a" * (_MAX_REQUEST_BYTES - 64) + b'"]}'
    piece = b'"' + b"a" * ((1 << 20) - 4) + b'"'
    strings = b'{"instances": [' + b", ".join([piece] * (_MAX_REQUEST_BYTES // len(piece) - 1)) + b"]}"
    valid_200mb = b'{"instances": [' + b", ".join([row] * (_BIG // len(row))) + b"]}"
    cases: dict[str, Callable[[], Any]] = {
        f"rest_{len(valid_200mb) >> 20}mb_valid_refused": lambda: attack_content_length(server, valid_200mb),
        f"rest_{rows}x784_floats_{len(floats) >> 20}mb": lambda: requests.post(url, data=floats,
                                                                               timeout=300).status_code,
        f"rest_{len(string) >> 20}mb_one_string": lambda: requests.post(url, data=string, timeout=300).status_code,
        f"rest_{len(strings) >> 20}mb_1mb_strings": lambda: requests.post(url, data=strings,
                                                                         timeout=300).status_code,
    }
    channel = grpc.insecure_channel(server.grpc_target, options=[("grpc.max_send_message_length", -1),
                                                                 ("grpc.max_receive_message_length", -1)])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def grpc_call(request: Any) -> str:
        try:
            stub.Predict(request, timeout=300)
            return "OK"
        except grpc.RpcError as exc:
            return str(exc.code().name)

    huge_shape = _grpc_request(_image())
    huge_shape.inputs["x"].ClearField("tensor_content")
    huge_shape.inputs["x"].float_val.append(1.0)
    huge_shape.inputs["x"].tensor_shape.dim[0].size = 300000
    near_limit_rows = (_MAX_GRPC_MESSAGE_BYTES - (1 << 20)) // (4 * _PIXELS)
    near_limit = _grpc_request(np.zeros((near_limit_rows, _PIXELS), dtype=np.float32))
    over_limit_rows = (_MAX_REQUEST_BYTES - (1 << 20)) // (4 * _PIXELS)
    over_limit = _grpc_request(np.zeros((over_limit_rows, _PIXELS), dtype=np.float32))
    cases[f"grpc_{huge_shape.ByteSize()}_bytes_shape_300000x784"] = lambda: grpc_call(huge_shape)
    for rows in (_MAX_TENSOR_ELEMENTS // _PIXELS, _MAX_GRPC_MESSAGE_BYTES // (4 * _PIXELS)):  # one value broadcast
        broadcast = _grpc_request(_image())
        broadcast.inputs["x"].ClearField("tensor_content")
        broadcast.inputs["x"].float_val.append(1.0)
        broadcast.inputs["x"].tensor_shape.dim[0].size = rows
        cases[f"grpc_{broadcast.ByteSize()}_bytes_shape_{rows}x784"] = lambda request=broadcast: grpc_call(request)
    cases[f"grpc_{near_limit_rows}x784_{near_limit.ByteSize() >> 20}mb_tensor"] = lambda: grpc_call(near_limit)
    cases[f"grpc_{over_limit_rows}x784_{over_limit.ByteSize() >> 20}mb_tensor"] = lambda: grpc_call(over_limit)
    try:
        return {name: peak_rss(server, send) for name, send in cases.items()}
    finally:
        channel.close()


# ---- a full descriptor table ----------------------------------------------------------------------------------


def descriptor_table(base: Path, workdir: Path, seconds: float) -> dict[str, Any]:
    import grpc
    import requests
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from tests.servables import add_version

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * _IDLE_CONNECTIONS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * _IDLE_CONNECTIONS), hard))
    server = Server(base, workdir, nofile=_NOFILE)
    hogs: list[socket.socket] = []
    try:
        for _ in range(_IDLE_CONNECTIONS):
            try:
                hogs.append(socket.create_connection(("127.0.0.1", server.rest_port), timeout=10))
            except OSError:
                break
        counts = {"rest_ok": 0, "rest_failed": 0, "grpc_ok": 0, "grpc_failed": 0}
        latencies: dict[str, list[float]] = {"rest": [], "grpc": []}
        request = _grpc_request(_image())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:  # a new connection each time, as a client that has never been here
                ok = requests.post(f"{server.url}:predict", data=_IMAGE_JSON, timeout=30).ok
            except requests.RequestException:
                ok = False
            counts["rest_ok" if ok else "rest_failed"] += 1
            if ok:
                latencies["rest"].append(time.perf_counter() - start)
            start = time.perf_counter()
            try:
                with grpc.insecure_channel(server.grpc_target) as channel:
                    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                    ok = bool(stub.Predict(request, timeout=30).outputs)
            except grpc.RpcError:
                ok = False
            counts["grpc_ok" if ok else "grpc_failed"] += 1
            if ok:
                latencies["grpc"].append(time.perf_counter() - start)
        add_version(base, 2, build_model(workdir / "v2-source", seed=1))
        loaded = False
        poll_deadline = time.monotonic() + 120
        while time.monotonic() < poll_deadline and not loaded:
            try:
                states = requests.get(server.url, timeout=30).json()["model_version_status"]
                loaded = states[0]["version"] == "2" and states[0]["state"] == "AVAILABLE"
            except (requests.RequestException, KeyError, ValueError):
                pass
            time.sleep(0.5)
        return {"idle_connections_opened": len(hogs), "nofile": _NOFILE, **counts,
                "rest": _percentiles(latencies["rest"]), "grpc": _percentiles(latencies["grpc"]),
                "poller_loaded_new_version": loaded, "server_alive": server.alive(),
                "tracebacks_logged": server.log_path.read_text(errors="replace").count("Traceback")}
    finally:
        for sock in hogs:
            sock.close()
        server.stop()
        shutil.rmtree(base / "2", ignore_errors=True)


# ---- report ---------------------------------------------------------------------------------------------------


def render_table(report: dict[str, Any]) -> str:
    lines = ["Latency of well-behaved clients (one request / 10 ms each)",
             f"{'condition':<34} {'REST p50':>9} {'REST p99':>9} {'REST max':>9} {'gRPC p50':>9} {'gRPC p99':>9} "
             f"{'fail':>5} {'attacks':>8}  statuses"]
    for name, row in report["latency"].items():
        rest, grpc_ = row["rest"], row["grpc"]
        lines.append(f"{name:<34} {rest['p50_ms']:>9} {rest['p99_ms']:>9} {rest['max_ms']:>9} {grpc_['p50_ms']:>9} "
                     f"{grpc_['p99_ms']:>9} {rest['failures'] + grpc_['failures']:>5} {row['attacks']:>8}  "
                     f"{row['attack_statuses']}")
    lines += ["", f"Peak RSS of one request (MB; target: delta <= 2 x {_MAX_REQUEST_BYTES >> 20} MiB = "
                  f"{2 * _MAX_REQUEST_BYTES / 2**20:g})",
              f"{'request':<34} {'baseline':>9} {'peak':>9} {'delta':>9}  answer"]
    for name, row in report["rss"].items():
        lines.append(f"{name:<34} {row['baseline_mb']:>9} {row['peak_mb']:>9} {row['delta_mb']:>9}  {row['answer']}")
    fd = report["descriptors"]
    lines += ["", f"{fd['idle_connections_opened']} idle connections, RLIMIT_NOFILE={fd['nofile']}: "
                  f"REST {fd['rest_ok']} ok / {fd['rest_failed']} failed (p99 {fd['rest']['p99_ms']} ms), "
                  f"gRPC {fd['grpc_ok']} ok / {fd['grpc_failed']} failed (p99 {fd['grpc']['p99_ms']} ms), "
                  f"poller loaded a new version: {fd['poller_loaded_new_version']}, "
                  f"tracebacks logged: {fd['tracebacks_logged']}"]
    summary = report["summary"]
    lines += ["", f"worst p99 under attack: {summary['worst_p99_ms_under_attack']} ms (target <= "
                  f"{_TARGETS['p99_ms_under_attack']:g}); floor p99: {summary['floor_p99_ms']} ms; "
                  f"largest RSS delta: {summary['largest_rss_delta_mb']} MB (target <= "
                  f"{summary['rss_delta_target_mb']:g})"]
    return "\n".join(lines)


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    attacked = [row for name, row in report["latency"].items() if name != "floor"]
    worst = max(max(row["rest"]["p99_ms"], row["grpc"]["p99_ms"]) for row in attacked)
    floor = report["latency"]["floor"]
    largest = max(row["delta_mb"] for row in report["rss"].values())
    target = _TARGETS["rss_over_baseline_limit_factor"] * _MAX_REQUEST_BYTES / 2**20
    return {"worst_p99_ms_under_attack": worst,
            "floor_p99_ms": max(floor["rest"]["p99_ms"], floor["grpc"]["p99_ms"]),
            "largest_rss_delta_mb": largest, "rss_delta_target_mb": target,
            "p99_target_met": worst <= _TARGETS["p99_ms_under_attack"], "rss_target_met": largest <= target}


def rss_only(workdir: Path) -> dict[str, Any]:
    """Just the peak-RSS cases (``--rss-only``: quicker to iterate on)."""
    from tests.servables import add_version

    base = workdir / "models" / _MODEL
    add_version(base, 1, build_model(workdir / "source"))
    server = Server(base, workdir)
    try:
        return rss_cases(server)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each latency window")
    parser.add_argument("--json-only", action="store_true")
    parser.add_argument("--rss-only", action="store_true", help="only the peak-RSS cases")
    args = parser.parse_args(argv)
    prefer_classic_io()
    from tests.servables import add_version

    workdir = Path(tempfile.mkdtemp(prefix="abuse-bench-"))
    try:
        if args.rss_only:
            rss = rss_only(workdir)
            for name, row in rss.items():
                print(f"{name:<34} {row['baseline_mb']:>9} {row['peak_mb']:>9} {row['delta_mb']:>9}  {row['answer']}")
            print(json.dumps(rss, indent=2))
            return 0
        base = workdir / "models" / _MODEL
        add_version(base, 1, build_model(workdir / "source"))
        server = Server(base, workdir)
        try:
            malformed_200mb = _malformed(_BIG)
            malformed_under = _malformed(_MAX_REQUEST_BYTES - (1 << 20))
            latency = {
                "floor": under_attack(server, args.seconds, None),
                "200mb_malformed_content_length": under_attack(
                    server, args.seconds, lambda: attack_content_length(server, malformed_200mb)),
                "200mb_malformed_chunked": under_attack(
                    server, args.seconds, lambda: attack_chunked(server, malformed_200mb)),
                "63mb_malformed_under_limit": under_attack(
                    server, args.seconds, lambda: attack_content_length(server, malformed_under)),
            }
            rss = rss_cases(server)
        finally:
            server.stop()
        report = {"max_request_bytes": _MAX_REQUEST_BYTES, "cpus": os.cpu_count(), "latency": latency, "rss": rss,
                  "descriptors": descriptor_table(base, workdir, args.seconds)}
        report["summary"] = summarize(report)
        if not args.json_only:
            print(render_table(report))
        print(json.dumps(report, indent=2))
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
