"""Load generators that cost the machine little CPU: ``wrk`` for REST, ``h2load`` for gRPC (bench/batching.py).

A Python client spends about as much CPU per request as the server it measures; on 2 cores its threads take that
CPU from the server. ``wrk`` (one event-loop thread, a Lua script for the POST body) and ``h2load`` (nghttp2's
HTTP/2 load generator: the gRPC-framed ``PredictRequest`` body POSTed with ``content-type: application/grpc`` and
``te: trailers`` over h2c) keep ``concurrency`` requests in flight on as many connections, closed loop, as the
Python client's threads do. Each run says how many requests completed, how many failed, p50/p99 latency, and
the CPU the tool itself used. Debian packages: ``wrk``, ``nghttp2-client`` (``make system-deps``). A missing tool
is named by :func:`missing_tools`; the bench then keeps the Python-client rows only.

gRPC status travels in HTTP/2 trailers, which h2load does not read: :func:`check_grpc_body` sends the same bytes
once through grpcio first and checks the answer is a ``PredictResponse`` with outputs, so a bad body fails the
bench instead of being counted as fast successes.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOOLS = {"rest": "wrk", "grpc": "h2load"}
PACKAGES = {"wrk": "wrk", "h2load": "nghttp2-client"}
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
_KILL_AFTER_S = 30.0  # past the run's own duration

# wrk's summary as one JSON line (its own report is for people); latencies are in microseconds.
_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_WRK_BODY"), "rb")); wrk.body = f:read("*a"); f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(99)))
end
"""


def missing_tools() -> dict[str, str]:
    """protocol -> a line naming the tool missing for it and its Debian package (empty: all present)."""
    return {protocol: f"{tool} not found (Debian package {PACKAGES[tool]}; `make system-deps`)"
            for protocol, tool in TOOLS.items() if shutil.which(tool) is None}


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message (uncompressed)."""
    return b"\0" + struct.pack(">I", len(message)) + message


def check_grpc_body(endpoint: str, request: bytes) -> None:
    """Send ``request`` (a serialized PredictRequest) once through grpcio; raise unless it is answered with outputs.

    Raises:
        RuntimeError: the server refused it or answered without outputs.
    """
    import grpc
    from tensorflow_serving.apis import predict_pb2

    with grpc.insecure_channel(endpoint) as channel:
        call = channel.unary_unary(PREDICT_METHOD)  # no serializers: bytes in, bytes out
        try:
            answer = predict_pb2.PredictResponse.FromString(call(request, timeout=30))
        except grpc.RpcError as exc:
            raise RuntimeError(f"the h2load body is refused by the server: {exc}") from None
    if not answer.outputs:
        raise RuntimeError("the h2load body was answered without outputs")


@dataclass
class ExternalLoad:
    """One way driven by an external tool: ``wrk`` on a REST predict URL or ``h2load`` on a gRPC endpoint."""

    tool: str
    url: str
    body: bytes  # the REST JSON, or the gRPC-framed PredictRequest

    def run(self, concurrency: int, seconds: float) -> dict[str, Any]:
        """``concurrency`` connections, one request in flight each, for ``seconds`` (at least 1 s)."""
        whole_seconds = max(1, round(seconds))
        with tempfile.TemporaryDirectory(prefix="bench-loadgen-") as tmp:
            work = Path(tmp)
            (work / "body").write_bytes(self.body)
            if self.tool == "wrk":
                return self._wrk(work, concurrency, whole_seconds)
            return self._h2load(work, concurrency, whole_seconds)

    def _wrk(self, work: Path, concurrency: int, seconds: int) -> dict[str, Any]:
        (work / "post.lua").write_text(_WRK_SCRIPT)
        argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "30s", "-s", str(work / "post.lua"),
                self.url]
        output, cpu_s = _run(argv, {"BENCH_WRK_BODY": str(work / "body")}, seconds)
        line = next((x for x in output.splitlines() if x.startswith("BENCH ")), None)
        if line is None:
            raise RuntimeError(f"wrk gave no summary: {output[-500:]}")
        figures = json.loads(line[len("BENCH "):])
        return {"requests": figures["requests"] - figures["non2xx"], "errors": figures["errors"] + figures["non2xx"],
                "elapsed_s": figures["duration_us"] / 1e6, "p50_ms": figures["p50_us"] / 1e3,
                "p99_ms": figures["p99_us"] / 1e3, "client_cpu_s": cpu_s}

    def _h2load(self, work: Path, concurrency: int, seconds: int) -> dict[str, Any]:
        log = work / "requests.tsv"
        argv = ["h2load", f"-c{concurrency}", "-m1", "-t1", f"-D{seconds}", f"--log-file={log}", "-d",
                str(work / "body"), "-H", "content-type: application/grpc", "-H", "te: trailers", self.url]
        output, cpu_s = _run(argv, {}, seconds)
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
        latencies = sorted(int(row[2]) / 1e3 for row in rows if row[1] == "200")
        errors = sum(1 for row in rows if row[1] != "200")
        finished = next((x for x in output.splitlines() if x.startswith("finished in")), "")
        elapsed = _seconds(finished.split()[2].rstrip(",")) if finished else float(seconds)
        return {"requests": len(latencies), "errors": errors, "elapsed_s": elapsed,
                "p50_ms": _percentile(latencies, 50), "p99_ms": _percentile(latencies, 99), "client_cpu_s": cpu_s}


def _run(argv: list[str], env: dict[str, str], seconds: int) -> tuple[str, float]:
    """Run a tool; its output and the CPU seconds it used (from this process's reaped-children totals: the bench
    starts no other child while a tool runs)."""
    import resource

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    before = children_cpu()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env},
                              timeout=seconds + _KILL_AFTER_S, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{argv[0]} did not finish within {seconds + _KILL_AFTER_S:.0f} s") from None
    output = done.stdout + done.stderr
    if done.returncode:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {output[-500:]}")
    return output, children_cpu() - before


def _seconds(text: str) -> float:
    for unit, scale in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * scale
    return float(text)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]
