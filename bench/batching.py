"""Batching benchmark: batch-1 MNIST throughput at concurrency 8 and p50 at concurrency 1, with and without
``--enable_batching``, against the in-process floor measured in the same run.

Two local-backend servers (the embedded TF Serving, as production runs it) serve the same MNIST version: one plain,
one with ``--enable_batching --batching_parameters_file`` (the file is ``--parameters``, by default
``configs/serving/batching.config``). Each server is ``--serving_processes`` processes (``--serving-processes``,
default 2: one per core here) with one TensorFlow op thread, 4 request threads and a CPU each
(``--pin_serving_processes``); ``--serving-processes 1`` measures TF Serving's single process (the rows before this
flag existed). A server's CPU is its processes' sum. Each way is called with batch-1 requests from 1 and from 8
client threads: ``in_process`` (the SavedModel's signature called in this process with the same TensorFlow threads:
the floor), ``servable``/``servable_batched`` (the server's own model call, :class:`Servable`, loaded in this
process, without and with a batch queue of the same parameters: batching's own cost or gain, with no HTTP or gRPC),
``rest``/``grpc`` on the plain server, ``rest_batched``/``grpc_batched`` on the batching one. At concurrency 1 the
ways take turns call by call, in a new shuffled order each cycle (req/s there is 1 / mean latency); at 8 they
alternate in rounds. Either way drift on a busy VM hits them alike. Each row also reports the CPU the server process
and this (client) process used, in cores, which shows where the time goes.

Which client produced which row (read this before comparing numbers across versions of this bench):

* ``in_process``: no client; the floor.
* ``servable``, ``servable_batched``: no client either; the batching layer alone (not judged against a target).
* ``rest``, ``grpc``, ``rest_batched``, ``grpc_batched``: the project's Python client (``ServingClient``), one per
  thread, in this process. Its ``client cpu`` is this process's. On 2 cores these threads take about as much CPU
  per request as the server, from the server: these rows measure client and server together. They were the only
  rows before the external tools were added (issue 13's "today about 21-25 %" and 0.40/0.47 came from them).
* ``rest_wrk``, ``rest_batched_wrk``: ``wrk`` (one event-loop thread, ``concurrency`` connections) POSTing the same
  JSON body the Python client sends. ``grpc_h2load``, ``grpc_batched_h2load``: ``h2load`` POSTing the same
  ``PredictRequest`` gRPC-framed over h2c. Their ``client cpu`` is the tool's own (its rusage). These rows are the
  server's throughput with a client that costs little CPU (bench/loadgen.py). Their p50/p99 are each run's
  percentiles averaged over the rounds, weighted by requests.

A missing tool is named in the output and its rows are left out (the summary then uses the Python-client rows and
says so); ``make system-deps`` installs both.

Targets (issue 13): at concurrency 8, REST and gRPC with batching >= 60 % of the floor's throughput (judged on the
``wrk``/``h2load`` rows when present; the Python-client ratio is shown beside it); at concurrency 1, batching must
not raise the p50 (reported as the difference to the plain server on the Python client's call-by-call
alternation, whose paired median is the most precise figure here; noise on a shared VM is ~0.1 ms).

Usage::

    .venv/bin/python bench/batching.py [--model-base-path var/models/mnist] [--seconds 36] [--rounds 4]
        [--parameters configs/serving/batching.config] [--serving-processes 2] [--no-external] [--json out.json]

With no version under the model base path, the bench's small CNN of the same signature is built in a temporary
directory. Nothing is written outside a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402  (bench/loadgen.py: wrk and h2load)
import serving as serving_bench  # noqa: E402  (bench/serving.py: model, load and timing helpers)

_MODEL = serving_bench._MODEL
_REPO = Path(__file__).resolve().parent.parent
_DEFAULT_PARAMETERS = _REPO / "configs" / "serving" / "batching.config"
_DEFAULT_SECONDS = 36.0  # per concurrency, shared by every way and round
_DEFAULT_ROUNDS = 4
_CONCURRENCIES = (1, 8)
_WARMUP_CALLS = 20
_TARGET_RATIO = 0.60
_DEFAULT_SERVING_PROCESSES = 2
# Per process: one TensorFlow op thread (each process runs its own model calls), 4 request threads (8 clients
# spread over 2 processes) and a CPU of its own. The floor keeps TensorFlow's default inter-op pool: its 8 threads
# share one model.
_SERVER_THREADS = ("--tensorflow_inter_op_parallelism=1", "--rest_api_num_threads=4", "--grpc_max_threads=4",
                   "--pin_serving_processes")
_IN_PROCESS_WAYS = ("in_process", "servable", "servable_batched")  # no server: no server CPU
_EXTERNAL_SUFFIX = {"rest": "_wrk", "grpc": "_h2load"}


def callers(endpoints: dict[str, Any], signature: Any, inputs: Any,
            servables: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    """One no-argument callable per way; one client per thread and server (clients aren't shared).

    ``servables``: the server's own model call (:class:`Servable`) loaded here, "plain" and "batched" (through a
    batch queue with the batching server's parameters): what batching itself costs or gains, without HTTP/gRPC.
    """
    import tensorflow as tf

    from pipeline.serving.client import ServingClient

    local = threading.local()

    def client(server: str) -> ServingClient:
        clients = local.__dict__.setdefault("clients", {})
        if server not in clients:
            clients[server] = ServingClient.for_endpoint(endpoints[server], timeout_s=30)
        return clients[server]

    tensor = tf.constant(inputs)
    ways: dict[str, Callable[[], Any]] = {"in_process": lambda: signature(images=tensor)["classes"].numpy()}
    model_calls = {server: servable.signature(serving_bench._SIGNATURE) for server, servable in servables.items()}
    for server, suffix in (("plain", ""), ("batched", "_batched")):
        ways[f"servable{suffix}"] = lambda s=model_calls[server]: s.call({"images": inputs})
    for server, suffix in (("plain", ""), ("batched", "_batched")):
        ways[f"rest{suffix}"] = (lambda s=server: client(s).predict(_MODEL, instances=inputs, label="stable",
                                                                     protocol="rest"))
        ways[f"grpc{suffix}"] = (lambda s=server: client(s).predict(_MODEL, inputs={"images": inputs},
                                                                     label="stable", protocol="grpc"))
    return ways


def external_ways(endpoints: dict[str, Any], inputs: Any) -> tuple[dict[str, loadgen.ExternalLoad], list[str]]:
    """The wrk/h2load ways (``rest_wrk``, ``grpc_batched_h2load``...) for the tools present; lines naming the rest."""
    from tensorflow_serving.apis import predict_pb2

    from pipeline.serving.client import _JSON_ENCODER
    from pipeline.wire.tensors import fill_tensor_proto

    missing = loadgen.missing_tools()
    rest_body = _JSON_ENCODER.encode({"signature_name": serving_bench._SIGNATURE, "instances": inputs.tolist()})
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.version_label = _MODEL, "stable"
    request.model_spec.signature_name = serving_bench._SIGNATURE
    fill_tensor_proto(request.inputs["images"], inputs)
    grpc_body = request.SerializeToString()
    ways: dict[str, loadgen.ExternalLoad] = {}
    for server, suffix in (("plain", ""), ("batched", "_batched")):
        endpoint = endpoints[server]
        if "rest" not in missing:
            ways[f"rest{suffix}_wrk"] = loadgen.ExternalLoad(
                "wrk", f"http://{endpoint.host}:{endpoint.rest_port}/v1/models/{_MODEL}/labels/stable:predict",
                rest_body.encode() if isinstance(rest_body, str) else rest_body)
        if "grpc" not in missing:
            loadgen.check_grpc_body(f"{endpoint.host}:{endpoint.grpc_port}", grpc_body)
            ways[f"grpc{suffix}_h2load"] = loadgen.ExternalLoad(
                "h2load", f"http://{endpoint.host}:{endpoint.grpc_port}{loadgen.PREDICT_METHOD}",
                loadgen.grpc_frame(grpc_body))
    return ways, list(missing.values())


def server_of(way: str) -> str:
    return "batched" if "_batched" in way else "plain"


def cpu_seconds(process: Any) -> float:
    """CPU seconds of a process and its children (a server's other ``--serving_processes``; the bench client's
    reaped tools are not counted here: they are children of this process only while they run)."""
    import psutil

    total = 0.0
    for one in [process, *process.children(recursive=True)] if process.pid != os.getpid() else [process]:
        try:
            times = one.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += float(times.user + times.system)
    return total


def measure(ways: dict[str, Any], servers: dict[str, Any], concurrency: int, seconds: float,
            rounds: int) -> list[dict[str, Any]]:
    """Every way at one concurrency, in alternating rounds; throughput, latency and CPU per way.

    A way is a no-argument callable (run from ``concurrency`` threads of this process) or a
    :class:`loadgen.ExternalLoad` (its tool keeps ``concurrency`` requests in flight; its CPU is the tool's).
    """
    import psutil

    me = psutil.Process()
    results: dict[str, list[dict[str, Any]]] = {way: [] for way in ways}
    cpu: dict[str, list[float]] = {way: [0.0, 0.0] for way in ways}  # [server, client] CPU seconds
    per_run = seconds / rounds / len(ways)
    for round_index in range(rounds):
        order = list(ways) if round_index % 2 == 0 else list(reversed(list(ways)))
        for way in order:
            server = servers[server_of(way)] if way not in _IN_PROCESS_WAYS else None
            server_before, client_before = (cpu_seconds(server) if server else 0.0), cpu_seconds(me)
            external = isinstance(ways[way], loadgen.ExternalLoad)
            result = ways[way].run(concurrency, per_run) if external else serving_bench.run_load(ways[way], concurrency,
                                                                                                  per_run)
            results[way].append(result)
            cpu[way][0] += (cpu_seconds(server) - server_before) if server else 0.0
            cpu[way][1] += result["client_cpu_s"] if external else cpu_seconds(me) - client_before
    rows = []
    for way in ways:
        external = isinstance(ways[way], loadgen.ExternalLoad)
        figures = merge_external(results[way]) if external else serving_bench.merge_loads(results[way])
        elapsed = sum(result["elapsed_s"] for result in results[way])
        rows.append({"way": way, "concurrency": concurrency, "client": client_of(way, ways[way]),
                     **{k: round(v, 3) for k, v in figures.items()},
                     "server_cores": round(cpu[way][0] / elapsed, 2), "client_cores": round(cpu[way][1] / elapsed, 2)})
    return rows


def client_of(way: str, call: Any) -> str:
    """Who made the load of a row: "python" (ServingClient threads), "wrk", "h2load", or "-" (the floor)."""
    if isinstance(call, loadgen.ExternalLoad):
        return call.tool
    return "-" if way in _IN_PROCESS_WAYS else "python"


def merge_external(results: list[dict[str, Any]]) -> dict[str, float]:
    """One row from several runs of an external tool: counts summed, percentiles weighted by requests."""
    requests = sum(result["requests"] for result in results)
    weight = max(requests, 1)
    return {"requests": requests, "errors": sum(result["errors"] for result in results),
            "p50_ms": sum(result["p50_ms"] * result["requests"] for result in results) / weight,
            "p99_ms": sum(result["p99_ms"] * result["requests"] for result in results) / weight,
            "throughput_rps": requests / sum(result["elapsed_s"] for result in results)}


def measure_interleaved(ways: dict[str, Callable[[], Any]], servers: dict[str, Any],
                        seconds: float) -> list[dict[str, Any]]:
    """Concurrency 1 with the ways taking turns call by call, so drift on a busy VM hits each p50 alike."""
    import psutil

    me = psutil.Process()
    latencies: dict[str, list[float]] = {way: [] for way in ways}
    busy: dict[str, float] = dict.fromkeys(ways, 0.0)
    cpu: dict[str, list[float]] = {way: [0.0, 0.0] for way in ways}
    stop_at = time.perf_counter() + seconds
    cycle = 0
    while time.perf_counter() < stop_at:
        for way, call in shuffled(list(ways.items()), cycle):
            server = servers[server_of(way)] if way not in _IN_PROCESS_WAYS else None
            server_before, client_before = (cpu_seconds(server) if server else 0.0), cpu_seconds(me)
            started = time.perf_counter()
            call()
            latencies[way].append(time.perf_counter() - started)
            busy[way] += latencies[way][-1]
            cpu[way][0] += (cpu_seconds(server) - server_before) if server else 0.0
            cpu[way][1] += cpu_seconds(me) - client_before
        cycle += 1
    rows = []
    for way, call in ways.items():
        values = sorted(latencies[way])
        plain = way.removesuffix("_batched")
        paired = (sorted(b - a for a, b in zip(latencies[plain], latencies[way], strict=False))
                  if way.endswith("_batched") else [])
        rows.append({"way": way, "concurrency": 1, "client": client_of(way, call), "requests": len(values), "errors": 0,
                     "p50_ms": round(serving_bench._percentile(values, 50) * 1e3, 3),
                     "p99_ms": round(serving_bench._percentile(values, 99) * 1e3, 3),
                     "throughput_rps": round(len(values) / busy[way], 3),
                     "server_cores": round(cpu[way][0] / busy[way], 2), "client_cores": round(cpu[way][1] / busy[way], 2),
                     **({"paired_delta_p50_ms": round(serving_bench._percentile(paired, 50) * 1e3, 3)} if paired else {})})
    return rows


def shuffled(items: list[Any], cycle: int) -> list[Any]:
    """``items`` in cycle ``cycle``'s order: a shuffle seeded by the cycle, so runs repeat and, over many cycles,
    each way follows every other about equally often and holds every position.

    A call's latency can depend on the call before it (the same server still busy after its answer, or the floor's
    TensorFlow threads winding down); in a fixed order ``rest_batched`` always followed plain ``grpc`` while ``rest``
    always followed ``in_process`` (rotating the order would not change that: it keeps each way's predecessor).
    """
    order = list(items)
    random.Random(cycle).shuffle(order)
    return order


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput ratios to the floor at concurrency 8, and the p50 change batching brings at concurrency 1.

    The c8 ratio is judged on the external tool's rows (wrk, h2load) when they were measured, else on the Python
    client's; ``client`` says which, and ``python_client`` always gives the Python client's ratio beside it.
    """
    def row(way: str, concurrency: int) -> dict[str, Any] | None:
        return next((r for r in rows if (r["way"], r["concurrency"]) == (way, concurrency)), None)

    def rps(way: str, concurrency: int) -> float:
        found = row(way, concurrency)
        assert found is not None, way
        return float(found["throughput_rps"])

    floor = rps("in_process", 8)
    summary: dict[str, Any] = {}
    for protocol in ("rest", "grpc"):
        suffix = _EXTERNAL_SUFFIX[protocol]
        external = row(f"{protocol}_batched{suffix}", 8) is not None and row(f"{protocol}{suffix}", 8) is not None
        judged = suffix if external else ""
        ratio = rps(f"{protocol}_batched{judged}", 8) / floor
        summary[f"{protocol}_c8_ratio"] = {
            "value": round(ratio, 3), "client": suffix.lstrip("_") if external else "python",
            "without_batching": round(rps(f"{protocol}{judged}", 8) / floor, 3),
            "python_client": round(rps(f"{protocol}_batched", 8) / floor, 3),
            "python_client_without_batching": round(rps(protocol, 8) / floor, 3),
            "target": _TARGET_RATIO, "met": ratio >= _TARGET_RATIO}
        plain_c1, batched_c1 = row(protocol, 1), row(f"{protocol}_batched", 1)
        assert plain_c1 is not None and batched_c1 is not None
        summary[f"{protocol}_c1_p50_delta_ms"] = {"value": round(batched_c1["p50_ms"] - plain_c1["p50_ms"], 3),
                                                  "client": "python",
                                                  "paired_median_ms": batched_c1.get("paired_delta_p50_ms"),
                                                  "without_batching_ms": plain_c1["p50_ms"],
                                                  "with_batching_ms": batched_c1["p50_ms"]}
        tool_plain, tool_batched = row(f"{protocol}{suffix}", 1), row(f"{protocol}_batched{suffix}", 1)
        if tool_plain is not None and tool_batched is not None:
            summary[f"{protocol}_c1_p50_delta_ms"][f"{suffix.lstrip('_')}_ms"] = round(
                tool_batched["p50_ms"] - tool_plain["p50_ms"], 3)
    layer_plain, layer_batched = row("servable", 1), row("servable_batched", 1)
    if layer_plain is not None and layer_batched is not None:
        summary["servable_c1_p50_delta_ms"] = {"value": round(layer_batched["p50_ms"] - layer_plain["p50_ms"], 3),
                                               "paired_median_ms": layer_batched.get("paired_delta_p50_ms")}
    return summary


def render_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    header = (f"{'way':<21}{'client':>7}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'/floor':>8}"
              f"{'server cpu':>11}{'client cpu':>11}{'err':>5}")
    lines = [header, "-" * len(header)]
    floors = {r["concurrency"]: r["throughput_rps"] for r in rows if r["way"] == "in_process"}
    for r in rows:
        ratio = r["throughput_rps"] / floors[r["concurrency"]] if r["concurrency"] in floors else float("nan")
        lines.append(f"{r['way']:<21}{r['client']:>7}{r['concurrency']:>5}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                     f"{r['throughput_rps']:>9.0f}{ratio:>8.2f}{r['server_cores']:>11.2f}{r['client_cores']:>11.2f}"
                     f"{r['errors']:>5}")
    lines.append("")
    for protocol in ("rest", "grpc") if summary else ():
        item = summary[f"{protocol}_c8_ratio"]
        verdict = "met" if item["met"] else "MISSED"
        lines.append(f"{protocol} conc 8 / floor ({item['client']} client): {item['value']:.2f} with batching, "
                     f"{item['without_batching']:.2f} without (target >= {item['target']}): {verdict}; "
                     f"python client: {item['python_client']:.2f} with, {item['python_client_without_batching']:.2f} "
                     f"without")
        delta = summary[f"{protocol}_c1_p50_delta_ms"]
        tool = next((f"; {key[:-3]} {value:+.2f} ms" for key, value in delta.items()
                     if key in ("wrk_ms", "h2load_ms")), "")
        lines.append(f"{protocol} conc 1 p50 (python client): {delta['with_batching_ms']:.2f} ms with batching, "
                     f"{delta['without_batching_ms']:.2f} ms without ({delta['value']:+.2f} ms; median of call-by-call "
                     f"differences {delta['paired_median_ms']:+.3f} ms{tool})")
    if "servable_c1_p50_delta_ms" in summary:
        layer = summary["servable_c1_p50_delta_ms"]
        lines.append(f"batch queue alone, in process, conc 1 p50: {layer['value']:+.3f} ms (median of call-by-call "
                     f"differences {layer['paired_median_ms']:+.3f} ms)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from pipeline.settings import get_paths

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-base-path", type=Path, default=get_paths().model_base_path(_MODEL),
                        help="where the MNIST versions are (default: $PIPELINE_HOME/models/mnist); read only")
    parser.add_argument("--seconds", type=float, default=_DEFAULT_SECONDS,
                        help="load time per concurrency, shared by every way and round")
    parser.add_argument("--rounds", type=int, default=_DEFAULT_ROUNDS, help="alternating rounds per concurrency")
    parser.add_argument("--parameters", type=Path, default=_DEFAULT_PARAMETERS,
                        help="the BatchingParameters text file the batching server is given")
    parser.add_argument("--intra-op-threads", type=int, default=1,
                        help="--tensorflow_intra_op_parallelism of both servers and the floor's (default 1, as the "
                             "embedded profile)")
    parser.add_argument("--serving-processes", type=int, default=_DEFAULT_SERVING_PROCESSES,
                        help="--serving_processes of both servers (default 2: one per core here; 1 is TF Serving's "
                             "single process)")
    parser.add_argument("--concurrencies", type=int, nargs="+", default=list(_CONCURRENCIES),
                        help="client threads to measure at (the summary needs 1 and 8)")
    parser.add_argument("--no-external", action="store_true",
                        help="leave out the wrk/h2load rows (Python-client rows only, as before they were added)")
    parser.add_argument("--json", type=Path, help="also write the JSON document here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pipeline.wire import grpc_io

    grpc_io.prefer_classic_io()  # before grpc is imported, as the servers run it
    import psutil
    import tensorflow as tf

    if args.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)

    from pipeline.embedded_server.batching import BatchScheduler, read_batching_parameters
    from pipeline.embedded_server.servable import Servable
    from pipeline.serving.backends.local import LocalBackend
    from pipeline.settings import get_paths
    from pipeline.wire.model_config import single_model_config, write_config

    parameters = args.parameters.read_text()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp:
        workdir = Path(tmp)
        source = serving_bench.find_version_dir(args.model_base_path)
        model_source = str(source) if source else "small CNN built by the bench (no version found)"
        source = source or serving_bench.build_small_cnn_version(workdir / "built")
        base_path = workdir / "models" / _MODEL
        serving_bench.stage_versions(source, base_path, 1)
        signature = tf.saved_model.load(str(source)).signatures[serving_bench._SIGNATURE]
        (workdir / "batching.config").write_text(parameters)
        scheduler = BatchScheduler(read_batching_parameters(str(workdir / "batching.config")))
        servables = {"plain": Servable.load(_MODEL, 1, source),
                     "batched": Servable.load(_MODEL, 1, source, batching=scheduler)}

        threads = [f"--tensorflow_intra_op_parallelism={args.intra_op_threads}",
                   f"--serving_processes={args.serving_processes}",
                   *(_SERVER_THREADS if args.serving_processes > 1 else ())]
        extra = {"plain": threads,
                 "batched": [*threads, "--enable_batching",
                             f"--batching_parameters_file={workdir / 'batching.config'}"]}
        backends = {name: LocalBackend(f"bench-{name}", {"backend": "local", "extra_args": flags},
                                       get_paths(workdir / "home")) for name, flags in extra.items()}
        config = single_model_config(_MODEL, base_path, [1], {"stable": 1})
        try:
            endpoints, processes = {}, {}
            for name, backend in backends.items():
                write_config(backend.config_path, config)
                endpoints[name] = backend.start(timeout_s=120)
                backend.apply_config(config, timeout_s=60)
                processes[name] = psutil.Process(backend.pid())
            ways = callers(endpoints, signature, serving_bench.sample_inputs(1), servables)
            for call in ways.values():
                for _ in range(_WARMUP_CALLS):
                    call()
            external, missing = external_ways(endpoints, serving_bench.sample_inputs(1)) if not args.no_external \
                else ({}, [])
            for line in missing:
                print(f"warning: {line}; its rows are left out", file=sys.stderr)
            rows = []
            for concurrency in args.concurrencies:
                if concurrency == 1:  # the Python ways call by call; the tools in rounds of their own
                    rows += measure_interleaved(ways, processes, args.seconds)
                    rows += measure(external, processes, 1, args.seconds * len(external) / 9, args.rounds) \
                        if external else []
                else:
                    rows += measure({**ways, **external}, processes, concurrency, args.seconds, args.rounds)
        finally:
            for backend in backends.values():
                backend.stop()
            scheduler.stop()

    summary = summarize(rows) if {1, 8} <= set(args.concurrencies) else {}
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    report = {"model_source": model_source, "intra_op_threads": args.intra_op_threads,
              "serving_processes": args.serving_processes, "server_flags": extra["batched"][:-1],
              "cpus": psutil.cpu_count(),
              "missing_tools": missing,
              "load_average_1min_start_end": load,
              "batching_parameters": parameters, "rows": rows, "summary": summary}
    print(render_table(rows, summary))
    print(f"{psutil.cpu_count()} CPUs; 1-minute load average {load[0]} at start, {load[1]} at end (other work "
          f"on the machine shows here; the floor shares it)")
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    status = main()
    print(f"bench took {time.perf_counter() - start:.0f} s", file=sys.stderr)
    sys.exit(status)
