"""Recovery benchmark: how long a SIGKILLed production server takes to serve again, with nobody but supervisord acting.

Starts the local backend's production server (under the stack's supervisord, in a temporary pipeline home) serving
one MNIST-signature version, then, ``--kills`` times: SIGKILL the server's process, poll a REST predict every
``--poll-ms`` until it answers again, and time it. The floor is measured in the same run: the cold start of the
same server (``start()`` called until the first answered predict), which a restart cannot beat; what recovery adds
on top of it is supervisord noticing the exit and spawning the server again. Prints a table and a JSON document.

Usage::

    .venv/bin/python bench/recovery.py [--model-base-path var/models/mnist] [--kills 3] [--poll-ms 50]

With no version under the model base path, a small CNN of the same signature is exported into a temporary
directory (bench/serving.py's), so the bench runs standalone. Nothing is written outside a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_MODEL = "mnist"
_DEFAULT_KILLS = 3
_DEFAULT_POLL_MS = 50
_DEADLINE_S = 180.0  # the server imports TensorFlow; the 2 shared cores may be busy
_TARGET_RECOVERY_S = 10.0  # "back serving within seconds"


def _predictor(endpoint: Any) -> Any:
    import numpy as np

    from pipeline.serving.client import ServingClient

    x = np.zeros((1, 784), dtype=np.float32)

    def answered() -> bool:
        try:
            with ServingClient.for_endpoint(endpoint, timeout_s=1.0) as client:
                client.predict(_MODEL, inputs={"images": x})
            return True
        except Exception:  # noqa: BLE001 - not answering yet is what is being timed
            return False

    return answered


def _wait(answered: Any, poll_s: float, started: float) -> float:
    while not answered():
        if time.perf_counter() - started > _DEADLINE_S:
            raise TimeoutError(f"no answer within {_DEADLINE_S:.0f}s")
        time.sleep(poll_s)
    return time.perf_counter() - started


def _wait_new_pid(backend: Any, old: int, poll_s: float, started: float) -> float:
    while backend.pid() in (None, old):
        if time.perf_counter() - started > _DEADLINE_S:
            raise TimeoutError("supervisord started no new server")
        time.sleep(poll_s / 5)
    return time.perf_counter() - started


def measure(version_dir: Path, workdir: Path, kills: int, poll_s: float) -> dict[str, Any]:
    from pipeline.serving.backends.local import LocalBackend
    from pipeline.settings import get_paths
    from pipeline.wire.model_config import single_model_config, write_config

    base = workdir / "models" / _MODEL
    shutil.copytree(version_dir, base / "1")
    paths = get_paths(workdir / "home")
    backend = LocalBackend("production", {"backend": "local"}, paths)
    write_config(backend.config_path, single_model_config(_MODEL, base, [1], {"stable": 1}))
    try:
        started = time.perf_counter()
        endpoint = backend.start(timeout_s=_DEADLINE_S)
        answered = _predictor(endpoint)
        cold_start_s = _wait(answered, poll_s, started)
        rounds = []
        for _ in range(kills):
            pid = backend.pid()
            assert pid is not None
            started = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            respawned_s = _wait_new_pid(backend, pid, poll_s, started)
            serving_s = _wait(answered, poll_s, started)
            rounds.append({"respawned_s": round(respawned_s, 3), "serving_again_s": round(serving_s, 3)})
            time.sleep(1.0)  # the next kill hits a settled server
        same_endpoint = backend.endpoint() == endpoint
    finally:
        backend.stop()
    recoveries = [r["serving_again_s"] for r in rounds]
    return {
        "cold_start_s": round(cold_start_s, 3),
        "rounds": rounds,
        "recovery_p50_s": round(statistics.median(recoveries), 3),
        "recovery_max_s": round(max(recoveries), 3),
        "respawn_max_s": max(r["respawned_s"] for r in rounds),
        "recovery_minus_cold_start_p50_s": round(statistics.median(recoveries) - cold_start_s, 3),
        "same_endpoint_after_restarts": same_endpoint,
    }


def render_table(result: dict[str, Any]) -> str:
    lines = [f"{'measure':<34} {'seconds':>8}", "-" * 43,
             f"{'cold start (floor)':<34} {result['cold_start_s']:>8.2f}"]
    for index, row in enumerate(result["rounds"], 1):
        lines.append(f"{f'kill {index}: new process':<34} {row['respawned_s']:>8.2f}")
        lines.append(f"{f'kill {index}: serving again':<34} {row['serving_again_s']:>8.2f}")
    lines += ["-" * 43,
              f"{'recovery p50':<34} {result['recovery_p50_s']:>8.2f}",
              f"{'recovery max':<34} {result['recovery_max_s']:>8.2f}",
              f"{'recovery p50 - cold start':<34} {result['recovery_minus_cold_start_p50_s']:>8.2f}",
              f"same endpoint after restarts: {result['same_endpoint_after_restarts']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-path", type=Path, default=Path("var/models") / _MODEL)
    parser.add_argument("--kills", type=int, default=_DEFAULT_KILLS)
    parser.add_argument("--poll-ms", type=float, default=_DEFAULT_POLL_MS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import serving as serving_bench  # bench/serving.py: the model finder and the small CNN

    from pipeline.wire.grpc_io import prefer_classic_io

    prefer_classic_io()
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        workdir = Path(tmp)
        source = serving_bench.find_version_dir(args.model_base_path.resolve())
        if source is None:
            source = serving_bench.build_small_cnn_version(workdir / "small-cnn")
        result = measure(source, workdir, args.kills, args.poll_ms / 1000)
    report = {"bench": "recovery", "version_dir": str(source), "kills": args.kills, "poll_ms": args.poll_ms,
              **result, "target_recovery_s": _TARGET_RECOVERY_S,
              "met": result["recovery_max_s"] <= _TARGET_RECOVERY_S}
    print(render_table(result))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
