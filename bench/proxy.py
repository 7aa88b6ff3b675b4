"""Proxy benchmark: what the nginx proxy adds to a batch-1 predict over calling TF Serving directly.

One embedded TF Serving (the local backend, as production runs it) and one nginx proxy in front of it
(:mod:`pipeline.live.proxy`, stable upstream only). Four ways are timed at concurrency 1 with keep-alive clients
(the project's ``ServingClient``, one per way): REST direct, REST through the proxy, gRPC direct, gRPC through the
proxy. The ways run in alternating rounds (the order flips each round) so that drift on a busy VM hits them alike.
The overhead is the proxy's p50 (and p99) minus the direct one, against the issue's target (p50 <= 0.3 ms each).

The model is MNIST when ``<model base path>/<N>`` exists (``images`` float32 [-1, 784]), else a half_plus_two
(``x`` -> ``0.5 x + 2``) built into a temporary directory. Bounded: at most ``--calls`` calls per way and round,
and ``--seconds`` in all; everything started is stopped. Prints a JSON document, then a table.

Usage::

    .venv/bin/python bench/proxy.py [--model-base-path var/models/mnist] [--seconds 20] [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_TARGET_P50_OVERHEAD_MS = 0.3
_DEFAULT_SECONDS = 20.0
_DEFAULT_ROUNDS = 6
_DEFAULT_CALLS = 1500
_WARMUP_CALLS = 50
_START_TIMEOUT_S = 120.0
_WAYS = ("rest_direct", "rest_proxy", "grpc_direct", "grpc_proxy")


# ---- the model ------------------------------------------------------------------------------------------------


def find_version_dir(model_base_path: Path) -> Path | None:
    """The newest numeric version directory with a ``saved_model.pb``, if any."""
    if not model_base_path.is_dir():
        return None
    from pipeline.wire.version_dirs import is_version_name  # not str.isdigit(): '²' is a digit
    versions = [p for p in model_base_path.iterdir() if is_version_name(p.name) and (p / "saved_model.pb").is_file()]
    return max(versions, key=lambda p: int(p.name), default=None)


def build_half_plus_two(directory: Path) -> Path:
    """Export ``y = 0.5 x + 2`` (signature ``serving_default``: ``x`` -> ``y``) into ``directory``."""
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": 0.5 * x + 2.0}

    module = HalfPlusTwo()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return directory


def model_and_inputs(source: Path | None) -> tuple[str, str, Any]:
    """(model name, its only input's name, a batch-1 value of it) for MNIST or half_plus_two."""
    import numpy as np

    if source is not None:
        rng = np.random.default_rng(0)
        return "mnist", "images", (rng.integers(0, 256, size=(1, 784)) / 255.0).astype(np.float32)
    return "half_plus_two", "x", np.array([1.0], dtype=np.float32)


def predict_caller(client: Any, protocol: str, model: str, input_name: str, value: Any) -> Callable[[], Any]:
    """One batch-1 predict by the ``stable`` label, the way bench/serving.py sends it (rows over REST)."""
    if protocol == "rest":
        return lambda: client.predict(model, instances=value, label="stable", protocol="rest")
    return lambda: client.predict(model, inputs={input_name: value}, label="stable", protocol="grpc")


# ---- timing ---------------------------------------------------------------------------------------------------


def time_calls(call: Callable[[], Any], calls: int, seconds: float) -> tuple[list[float], int]:
    """Call ``call`` up to ``calls`` times or for ``seconds``, whichever ends first: (latencies, errors)."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    while len(latencies) + errors < calls and time.perf_counter() < stop_at:
        started = time.perf_counter()
        try:
            call()
        except Exception:  # noqa: BLE001 - counted, the bench goes on
            errors += 1
            continue
        latencies.append(time.perf_counter() - started)
    return latencies, errors


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def run_rounds(callers: dict[str, Callable[[], Any]], rounds: int, calls: int, seconds: float) -> dict[str, Any]:
    """Every way in each round, the order flipped each round; latencies pooled per way, and per-round p50s."""
    pooled: dict[str, list[float]] = {way: [] for way in callers}
    round_p50: dict[str, list[float]] = {way: [] for way in callers}
    errors = dict.fromkeys(callers, 0)
    budget = seconds / (rounds * len(callers))
    for index in range(rounds):
        order = list(callers) if index % 2 == 0 else list(reversed(callers))
        for way in order:
            latencies, failed = time_calls(callers[way], calls, budget)
            pooled[way] += latencies
            round_p50[way].append(percentile(sorted(latencies), 50))
            errors[way] += failed
    return {"pooled": pooled, "round_p50": round_p50, "errors": errors}


def summarize(measured: dict[str, Any]) -> dict[str, Any]:
    """Per way: count, errors, p50/p99 (ms); per protocol: the proxy's overhead against the target."""
    ways = {}
    for way, latencies in measured["pooled"].items():
        ordered = sorted(latencies)
        ways[way] = {"requests": len(ordered), "errors": measured["errors"][way],
                     "p50_ms": round(percentile(ordered, 50) * 1e3, 3),
                     "p99_ms": round(percentile(ordered, 99) * 1e3, 3)}
    overhead = {}
    for protocol in ("rest", "grpc"):
        direct, proxied = ways[f"{protocol}_direct"], ways[f"{protocol}_proxy"]
        paired = sorted(p - d for p, d in zip(measured["round_p50"][f"{protocol}_proxy"],
                                              measured["round_p50"][f"{protocol}_direct"], strict=True))
        p50 = round(proxied["p50_ms"] - direct["p50_ms"], 3)
        overhead[protocol] = {
            "p50_overhead_ms": p50,
            "p99_overhead_ms": round(proxied["p99_ms"] - direct["p99_ms"], 3),
            "round_p50_overhead_ms": [round(x * 1e3, 3) for x in paired],  # spread between rounds
            "median_round_p50_overhead_ms": round(paired[len(paired) // 2] * 1e3, 3),  # robust to one busy round
            "target_p50_ms": _TARGET_P50_OVERHEAD_MS,
            "met": p50 <= _TARGET_P50_OVERHEAD_MS,
        }
    return {"ways": ways, "overhead": overhead}


def render_table(summary: dict[str, Any]) -> str:
    header = f"{'way':<14}{'requests':>10}{'err':>5}{'p50 ms':>9}{'p99 ms':>9}"
    lines = [header, "-" * len(header)]
    for way, row in summary["ways"].items():
        lines.append(f"{way:<14}{row['requests']:>10}{row['errors']:>5}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}")
    lines.append("")
    for protocol, row in summary["overhead"].items():
        verdict = "met" if row["met"] else "MISSED"
        lines.append(f"{protocol:<5} proxy overhead: p50 {row['p50_overhead_ms']:+.3f} ms, p99 {row['p99_overhead_ms']:+.3f} ms, "
                     f"median of rounds {row['median_round_p50_overhead_ms']:+.3f} ms; "
                     f"target p50 <= {row['target_p50_ms']} ms: {verdict}")
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from pipeline.settings import get_paths

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-base-path", type=Path, default=get_paths().model_base_path("mnist"),
                        help="where the MNIST versions are (default: $PIPELINE_HOME/models/mnist)")
    parser.add_argument("--seconds", type=float, default=_DEFAULT_SECONDS, help="time for all rounds together")
    parser.add_argument("--rounds", type=int, default=_DEFAULT_ROUNDS, help="rounds of the four ways")
    parser.add_argument("--calls", type=int, default=_DEFAULT_CALLS, help="at most this many calls per way and round")
    parser.add_argument("--json", type=Path, help="also write the JSON document here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pipeline.wire import grpc_io

    grpc_io.prefer_classic_io()  # before grpc loads: the I/O path the server and the serving bench use

    from pipeline.live.proxy import NginxProxy, ProxySpec, UpstreamSpec
    from pipeline.serving.backends.local import LocalBackend
    from pipeline.serving.client import ServingClient
    from pipeline.settings import get_paths
    from pipeline.wire.model_config import single_model_config, write_config

    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        workdir = Path(tmp)
        source = find_version_dir(args.model_base_path)
        model, input_name, value = model_and_inputs(source)
        model_source = str(source) if source else "half_plus_two built by the bench (no MNIST version found)"
        base_path = workdir / "models" / model
        if source is not None:
            import shutil

            shutil.copytree(source, base_path / "1")
        else:
            build_half_plus_two(base_path / "1")

        backend = LocalBackend("bench-proxy", {"backend": "local", "extra_args": ["--tensorflow_intra_op_parallelism=1"]},
                               get_paths(workdir / "home"))
        config = single_model_config(model, base_path, [1], {"stable": 1})
        write_config(backend.config_path, config)
        proxy = NginxProxy(workdir / "proxy")
        clients: list[ServingClient] = []
        try:
            direct = backend.start(timeout_s=_START_TIMEOUT_S)
            backend.apply_config(config, timeout_s=60)
            proxied = proxy.start(ProxySpec(stable=UpstreamSpec.of(direct)), timeout_s=60)
            callers: dict[str, Callable[[], Any]] = {}
            for way in _WAYS:
                protocol, where = way.split("_")
                client = ServingClient.for_endpoint(direct if where == "direct" else proxied, timeout_s=30)
                clients.append(client)
                callers[way] = predict_caller(client, protocol, model, input_name, value)
            for call in callers.values():
                for _ in range(_WARMUP_CALLS):
                    call()
            measured = run_rounds(callers, args.rounds, args.calls, args.seconds)
        finally:
            for client in clients:
                client.close()
            proxy.stop()
            backend.stop()

    summary = summarize(measured)
    report = {"model_source": model_source, "model": model, "batch": 1, "concurrency": 1, "rounds": args.rounds,
              **summary}
    print(json.dumps(report, indent=2))
    print(render_table(summary))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
