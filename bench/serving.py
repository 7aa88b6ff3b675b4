"""Serving benchmark: what REST and gRPC add on top of running the SavedModel in process, and version swaps.

Runs the MNIST SavedModel (signature ``serving_default``: ``images`` float32 [-1, 784] -> ``probabilities``
float32 [-1, 10], ``classes`` int64 [-1]) three ways on the same inputs: in process (the floor), through the
local backend's REST API and through its gRPC API, at concurrency 1 and 8 and batch 1 and 32. A fourth row,
``in_process_idle``, is the floor called after 1 ms of sleep (a diagnostic: what the model alone costs a thread
that waited for its request, as a server's does). The server and the floor run TensorFlow with the same threads.
Then it swaps the ``stable`` label across new versions under steady load, the way a promotion does (load N+1
beside N, move the label, unload N), and counts failed requests. Prints a table and a JSON document.

gRPC runs on the I/O path :mod:`pipeline.wire.grpc_io` picks (grpc's classic poller); ``--grpc-event-engine``
runs client and server on grpc's own default (its EventEngine) instead, to compare.

Usage::

    .venv/bin/python bench/serving.py [--model-base-path var/models/mnist] [--seconds 2] [--swaps 20]

With no version under the model base path, a small CNN of the same signature is built and exported into a
temporary directory, so the bench runs standalone. Nothing is written outside a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_MODEL = "mnist"
_SIGNATURE = "serving_default"
_DEFAULT_SECONDS = 2.0
_DEFAULT_SWAPS = 20
_CONCURRENCIES = (1, 8)
_BATCHES = (1, 32)
_WARMUP_CALLS = 5
_RELOAD_DEADLINE_S = 30.0
_ROUNDS = 4  # each combination is measured in rounds that alternate the ways, so drift on a busy VM hits all alike
_TARGETS = {"rest_p50_overhead_ms": 1.5, "grpc_p50_overhead_ms": 1.0, "reload_p50_s": 2.0, "swap_failures": 0}


# ---- the model ----------------------------------------------------------------------------------------------


def find_version_dir(model_base_path: Path) -> Path | None:
    """The newest numeric version directory with a ``saved_model.pb``, if any."""
    if not model_base_path.is_dir():
        return None
    from pipeline.wire.version_dirs import is_version_name  # not str.isdigit(): '²' is a digit
    versions = [p for p in model_base_path.iterdir() if is_version_name(p.name) and (p / "saved_model.pb").is_file()]
    return max(versions, key=lambda p: int(p.name), default=None)


def build_small_cnn_version(directory: Path) -> Path:
    """Export an untrained small CNN with the MNIST serving signature into ``directory`` (a version dir)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input(shape=(784,)),
        tf.keras.layers.Reshape((28, 28, 1)),
        tf.keras.layers.Conv2D(16, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Conv2D(32, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])  # fmt: skip

    @tf.function(input_signature=[tf.TensorSpec([None, 784], tf.float32, name="images")])
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = model(images, training=False)
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=1, output_type=tf.int64)}

    module = tf.Module()
    module.model, module.serve = model, serve
    tf.saved_model.save(module, str(directory), signatures={_SIGNATURE: serve})
    return directory


def stage_versions(source: Path, model_base_path: Path, count: int) -> None:
    """Copy one version directory as versions ``1..count`` (the same weights under new numbers)."""
    for version in range(1, count + 1):
        shutil.copytree(source, model_base_path / str(version))


def sample_inputs(batch: int, seed: int = 0) -> Any:
    """``batch`` images of random pixels, scaled like the real ones (pixel / 255)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(batch, 784)) / 255.0).astype(np.float32)


# ---- timing -------------------------------------------------------------------------------------------------


def run_load(call: Callable[[], Any], concurrency: int, seconds: float) -> dict[str, Any]:
    """Call ``call`` from ``concurrency`` threads for ``seconds``; each latency, the errors, the time taken."""
    stop_at = time.perf_counter() + seconds
    per_thread: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency

    def worker(index: int) -> None:
        before = getattr(call, "before", None)
        while time.perf_counter() < stop_at:
            if before:
                before()  # not timed
            started = time.perf_counter()
            try:
                call()
            except Exception:  # noqa: BLE001 - counted, the bench goes on
                errors[index] += 1
                continue
            per_thread[index].append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies = [x for thread in per_thread for x in thread]
    return {"latencies": latencies, "errors": sum(errors), "elapsed_s": elapsed}


def merge_loads(results: list[dict[str, Any]]) -> dict[str, float]:
    """One result from several rounds of :func:`run_load` (their latencies pooled)."""
    latencies = sorted(x for result in results for x in result["latencies"])
    elapsed = sum(result["elapsed_s"] for result in results)
    return {
        "requests": len(latencies),
        "errors": sum(result["errors"] for result in results),
        "p50_ms": _percentile(latencies, 50) * 1e3,
        "p99_ms": _percentile(latencies, 99) * 1e3,
        "throughput_rps": len(latencies) / elapsed,
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def predict_callers(endpoint: Any, signature: Any, inputs: Any, concurrency: int) -> dict[str, Callable[[], Any]]:
    """One no-argument callable per way of running the model; one client per thread (sessions aren't shared)."""
    import tensorflow as tf

    from pipeline.serving.client import ServingClient

    local = threading.local()

    def client() -> ServingClient:
        if not hasattr(local, "client"):
            local.client = ServingClient.for_endpoint(endpoint, timeout_s=30)
        return local.client

    tensor = tf.constant(inputs)
    return {
        "in_process": lambda: signature(images=tensor)["classes"].numpy(),
        "in_process_idle": AfterIdle(lambda: signature(images=tensor)["classes"].numpy()),
        "rest": lambda: client().predict(_MODEL, instances=inputs, label="stable", protocol="rest"),
        "grpc": lambda: client().predict(_MODEL, inputs={"images": inputs}, label="stable", protocol="grpc"),
    }


class AfterIdle:
    """A call made after the caller slept ``idle_s`` (untimed), as a server's call is after waiting for a request.

    Diagnostic, not a target: on a small VM a thread that slept runs the same model measurably slower (cold
    caches, CPUs woken from idle), and no server answering one request at a time can avoid that.
    """

    def __init__(self, call: Callable[[], Any], idle_s: float = 0.001):
        self.call, self.idle_s = call, idle_s

    def before(self) -> None:
        time.sleep(self.idle_s)

    def __call__(self) -> Any:
        return self.call()


def bench_latency(endpoint: Any, signature: Any, seconds: float) -> list[dict[str, Any]]:
    """Every (way, batch, concurrency) combination, with overhead and ratio against in-process."""
    rows = []
    for batch in _BATCHES:
        inputs = sample_inputs(batch)
        for concurrency in _CONCURRENCIES:
            callers = predict_callers(endpoint, signature, inputs, concurrency)
            for call in callers.values():
                for _ in range(_WARMUP_CALLS):
                    call()
            rounds = [{way: run_load(call, concurrency, seconds / _ROUNDS) for way, call in callers.items()}
                      for _ in range(_ROUNDS)]
            figures = {way: merge_loads([r[way] for r in rounds]) for way in callers}
            floor = figures["in_process"]
            for way, result in figures.items():
                rows.append({
                    "way": way, "batch": batch, "concurrency": concurrency, **_rounded(result),
                    "p50_overhead_ms": round(result["p50_ms"] - floor["p50_ms"], 3),
                    "p50_ratio": round(result["p50_ms"] / floor["p50_ms"], 2),
                })  # fmt: skip
    return rows


def _rounded(result: dict[str, float]) -> dict[str, float]:
    return {key: (round(value, 3) if isinstance(value, float) else value) for key, value in result.items()}


# ---- version swaps ------------------------------------------------------------------------------------------


class SteadyLoad:
    """Threads predicting by the ``stable`` label (one over REST, one over gRPC) until stopped; count failures."""

    def __init__(self, endpoint: Any, protocols: tuple[str, ...] = ("rest", "grpc")):
        self.endpoint, self.inputs = endpoint, sample_inputs(1)
        self.counts = {protocol: [0, 0] for protocol in protocols}  # [ok, failed]; each thread writes its own
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(p,)) for p in protocols]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self, protocol: str) -> None:
        from pipeline.serving.client import ServingClient

        with ServingClient.for_endpoint(self.endpoint, timeout_s=10) as client:
            while not self._stop.is_set():
                try:
                    client.predict(_MODEL, instances=self.inputs, label="stable", protocol=protocol)
                    self.counts[protocol][0] += 1
                except Exception as exc:  # noqa: BLE001 - a failure is what we measure
                    self.counts[protocol][1] += 1
                    self.errors.append(f"{protocol}: {type(exc).__name__}: {exc}"[:200])


def swap_version(admin: Any, model_base_path: Path, current: int) -> tuple[float, float]:
    """Promote ``current + 1`` the way a release does; (seconds to AVAILABLE, seconds for the whole swap).

    Load N+1 beside N (reload, wait AVAILABLE), then move ``stable`` to N+1 and unload N in one config.
    """
    from pipeline.wire.model_config import single_model_config

    new, started = current + 1, time.perf_counter()
    both = single_model_config(_MODEL, model_base_path, [current, new], {"stable": current})
    admin.reload_config(both, deadline_s=_RELOAD_DEADLINE_S)
    admin.wait_until_available(_MODEL, new, _RELOAD_DEADLINE_S, poll_s=0.005)
    loaded_s = time.perf_counter() - started
    admin.reload_config(single_model_config(_MODEL, model_base_path, [new], {"stable": new}))
    if [s.version for s in admin.model_status(_MODEL, label="stable")] != [new]:
        raise RuntimeError(f"stable does not name version {new} after the swap")
    return loaded_s, time.perf_counter() - started


def bench_swaps(backend: Any, model_base_path: Path, swaps: int) -> dict[str, Any]:
    """Promote versions 2..swaps+1 one after the other under steady load on the ``stable`` label."""
    from pipeline.serving.client import ServingClient

    endpoint = backend.endpoint()
    with ServingClient.for_endpoint(endpoint, timeout_s=_RELOAD_DEADLINE_S) as admin, SteadyLoad(endpoint) as load:
        timings = [swap_version(admin, model_base_path, current) for current in range(1, swaps + 1)]
    reload_s, swap_s = [t[0] for t in timings], [t[1] for t in timings]
    return {
        "swaps": swaps,
        "reload_to_available_p50_s": round(statistics.median(reload_s), 3),
        "reload_to_available_max_s": round(max(reload_s), 3),
        "swap_p50_s": round(statistics.median(swap_s), 3),
        "requests_during_swaps": sum(ok + failed for ok, failed in load.counts.values()),
        "failed_requests": sum(failed for _, failed in load.counts.values()),
        "first_errors": load.errors[:3],
    }


# ---- report -------------------------------------------------------------------------------------------------


def summarize(latency: list[dict[str, Any]], swaps: dict[str, Any]) -> dict[str, Any]:
    """The headline figures (batch 1, concurrency 1) against the targets."""
    def p50_overhead(way: str) -> float:
        return next(r["p50_overhead_ms"] for r in latency if (r["way"], r["batch"], r["concurrency"]) == (way, 1, 1))

    figures = {
        "rest_p50_overhead_ms": p50_overhead("rest"),
        "grpc_p50_overhead_ms": p50_overhead("grpc"),
        "reload_p50_s": swaps["reload_to_available_p50_s"],
        "swap_failures": swaps["failed_requests"],
    }
    return {name: {"value": value, "target": _TARGETS[name], "met": value <= _TARGETS[name]}
            for name, value in figures.items()}  # fmt: skip


def render_table(latency: list[dict[str, Any]], swaps: dict[str, Any], summary: dict[str, Any]) -> str:
    header = f"{'way':<16}{'batch':>6}{'conc':>6}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'+p50 ms':>9}{'x':>7}{'err':>5}"
    lines = [header, "-" * len(header)]
    for r in latency:
        lines.append(
            f"{r['way']:<16}{r['batch']:>6}{r['concurrency']:>6}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['throughput_rps']:>9.0f}{r['p50_overhead_ms']:>9.2f}{r['p50_ratio']:>7.2f}{r['errors']:>5}"
        )
    lines.append("")
    lines.append(
        f"reload to AVAILABLE: p50 {swaps['reload_to_available_p50_s']:.3f} s, "
        f"max {swaps['reload_to_available_max_s']:.3f} s; "
        f"{swaps['swaps']} swaps (p50 {swaps['swap_p50_s']:.3f} s): "
        f"{swaps['failed_requests']} failed of {swaps['requests_during_swaps']} requests"
    )
    for name, item in summary.items():
        verdict = "met" if item["met"] else "MISSED"
        lines.append(f"{name:<22} {item['value']:>8} (target <= {item['target']}): {verdict}")
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from pipeline.settings import get_paths

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-base-path", type=Path, default=get_paths().model_base_path(_MODEL),
                        help="where the MNIST versions are (default: $PIPELINE_HOME/models/mnist)")
    parser.add_argument("--seconds", type=float, default=_DEFAULT_SECONDS, help="load duration per combination")
    parser.add_argument("--swaps", type=int, default=_DEFAULT_SWAPS, help="version swaps under load")
    parser.add_argument("--intra-op-threads", type=int, default=1,
                        help="TensorFlow threads per op, for the server (--tensorflow_intra_op_parallelism) and the "
                             "in-process floor alike (default 1, as the embedded profile; 0: one per core)")
    parser.add_argument("--grpc-event-engine", action="store_true",
                        help="run gRPC on grpc's default EventEngine I/O (GRPC_EXPERIMENTS empty), to compare")
    parser.add_argument("--json", type=Path, help="also write the JSON document here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pipeline.wire import grpc_io

    # Before grpc is imported: it reads the variable once, when it loads; the servers inherit it.
    if args.grpc_event_engine:
        os.environ[grpc_io.ENV_VAR] = ""
    grpc_io.prefer_classic_io()
    import tensorflow as tf

    if args.intra_op_threads:  # the floor runs the model with the threads the server is given
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)

    from pipeline.serving.backends.local import LocalBackend
    from pipeline.settings import get_paths
    from pipeline.wire.model_config import single_model_config, write_config

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        workdir = Path(tmp)
        source = find_version_dir(args.model_base_path)
        model_source = str(source) if source else "small CNN built by the bench (no version found)"
        source = source or build_small_cnn_version(workdir / "built")
        base_path = workdir / "models" / _MODEL
        stage_versions(source, base_path, args.swaps + 1)
        signature = tf.saved_model.load(str(source)).signatures[_SIGNATURE]

        spec = {"backend": "local", "extra_args": [f"--tensorflow_intra_op_parallelism={args.intra_op_threads}"]}
        backend = LocalBackend("bench", spec, get_paths(workdir / "home"))
        config = single_model_config(_MODEL, base_path, [1], {"stable": 1})
        write_config(backend.config_path, config)  # the server starts serving it
        try:
            started = time.perf_counter()
            endpoint = backend.start(timeout_s=120)
            backend.apply_config(config, timeout_s=60)
            startup_s = time.perf_counter() - started
            latency = bench_latency(endpoint, signature, args.seconds)
            swaps = bench_swaps(backend, base_path, args.swaps)
        finally:
            backend.stop()

    summary = summarize(latency, swaps)
    report = {"model_source": model_source, "server_start_s": round(startup_s, 2),
              "intra_op_threads": args.intra_op_threads, "grpc_experiments": os.environ.get(grpc_io.ENV_VAR),
              "latency": latency, "swaps": swaps, "summary": summary}  # fmt: skip
    print(render_table(latency, swaps, summary))
    print(f"gRPC I/O: GRPC_EXPERIMENTS={report['grpc_experiments']!r}")
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
