"""Models pages benchmark: how fast the pages answer with a long-lived model in the registry.

A temporary pipeline home holds one model with ``--versions`` versions (default 50, every one on disk with its
training plots, evaluation, staging and canary verdicts, the last ten with four live phases each) and
``--history`` registry transitions (default 500: each version released, then stable flipped back and forth as
rollbacks and re-releases do). The app (:func:`pipeline.ui.app.create_app`) is served by uvicorn on loopback and
asked over HTTP with a keep-alive client, one request at a time: the models overview (``/models``), a model's page
(``/models/<model>``: every version, the last 50 history rows, the rollback form), the same with every history
row (``?history=all``), and a verdict page. p50 and p95 of ``--requests`` requests per page (after warm-up
requests that pay the imports) go beside the issue's target: the models page in <= 300 ms.

Not in the figures: Airflow's login check (the bench's user dependency accepts every request; in the API server
Airflow validates the JWT and looks up its revocation first) and the servers' status calls (no TF Serving runs
here, so each instance reads as down after reading its state file; a running one adds two loopback calls).

Usage::

    .venv/bin/python bench/ui.py [--versions 50] [--history 500] [--requests 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.util.net import free_port  # noqa: E402 - after the path insert
from pipeline.util.polling import poll_until  # noqa: E402

MODEL = "mnist"
SHA = "ab" * 32
TARGET_MS = 300.0
_WARMUP = 3
_LIVE_VERSIONS = 10
_PHASES = (("shadow", 0.0), ("5%", 5.0), ("25%", 25.0), ("50%", 50.0))
_PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                     "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def write_world(root: Path, versions: int, history: int) -> dict[str, Any]:
    """The temporary home and config dir; returns what was written."""
    import yaml

    from pipeline.gates import Verdict
    from pipeline.release.registry import Registry, State
    from pipeline.settings import get_paths
    from pipeline.wire import model_config as mc

    configs = root / "configs"
    (configs / "models").mkdir(parents=True)
    (configs / "serving").mkdir()
    config = yaml.safe_load((REPO / "configs" / "models" / f"{MODEL}.yaml").read_text())
    (configs / "models" / f"{MODEL}.yaml").write_text(yaml.safe_dump(config))
    profile = {"instances": {name: {"backend": "local", "rest_port": 0, "grpc_port": 0}
                             for name in ("staging", "production")}}
    (configs / "serving" / "embedded.yaml").write_text(yaml.safe_dump(profile))
    os.environ["PIPELINE_CONFIG_DIR"] = str(configs)
    os.environ["PIPELINE_HOME"] = str(root / "home")
    os.environ.pop("PIPELINE_REGISTRY_URL", None)
    os.environ.pop("PIPELINE_SERVING_PROFILE", None)
    paths = get_paths(root / "home")
    registry = Registry(paths.registry_url)
    base = paths.model_base_path(MODEL)
    staging = {"served_accuracy": 0.97, "failed_requests": 0, "latency_p50_ms": 1.1, "latency_p95_ms": 2.5,
               "golden_max_abs_diff_rest": 1e-7, "golden_max_abs_diff_grpc": 1e-7, "malformed_status": 400}
    for version in range(1, versions + 1):
        directory = base / str(version)
        directory.mkdir(parents=True)
        (directory / "saved_model.pb").write_bytes(b"bench")
        run_dir = paths.runs_dir / MODEL / f"train-{version}"
        run_dir.mkdir(parents=True)
        for name in ("training_curve.png", "confusion_matrix.png"):
            (run_dir / name).write_bytes(_PNG)
        Verdict("evaluate", True, [], {"metric": "accuracy", "candidate": 0.97, "floor": 0.97,
                                       "max_regression": 0.005, "baseline": 0.97}).write(run_dir / "evaluation.json")
        registry.register_version(MODEL, version, {
            "data_sha256": SHA, "airflow_run_id": f"manual__release-{version}", "training_run_id": f"train-{version}",
            "params": {"epochs": 3}, "metrics": {"accuracy": 0.97 + version / 10_000, "loss": 0.1},
            "export_path": str(directory)})
        for state in (State.STAGED, State.VALIDATED, State.CANARY, State.PROMOTED):
            registry.transition(MODEL, version, state, run_id=f"manual__release-{version}", reason=f"bench: {state}")
        verdicts = paths.serving_dir / "verdicts" / MODEL / str(version)
        Verdict("staging", True, [], staging).write(verdicts / "staging.json")
        Verdict("canary", True, [], {**staging, "agreement": 0.99}).write(verdicts / "canary.json")
        if version > versions - _LIVE_VERSIONS:
            for phase, percent in _PHASES:
                record = registry.start_live_phase(MODEL, version, f"manual__release-{version}", phase, percent, 20.0,
                                                   {})
                figures = {"paired": {"requests": 400, "agreement": 0.99}, "stable": {"accuracy": 0.98},
                           "canary": {"accuracy": 0.98, "error_rate": 0.0},
                           "checks": [{"name": "agreement", "value": 0.99, "comparison": ">=", "limit": 0.92,
                                       "passed": True}]}
                registry.update_live_phase(record.id, "pass", figures, f"live canary {phase}: PASS")
    flips = 0
    while len(registry.history(MODEL)) < history:  # rollbacks and re-releases: stable flips between the last two
        registry.transition(MODEL, versions - 1 if flips % 2 == 0 else versions, State.PROMOTED,
                            run_id=f"manual__flip-{flips}", reason="bench: stable flipped")
        flips += 1
    docs = paths.data_dir / MODEL / SHA / "validation"
    docs.mkdir(parents=True)
    (docs / "index.html").write_text("<html><body>Data Docs</body></html>")
    stable = registry.stable_version(MODEL)
    assert stable is not None
    production = mc.single_model_config(MODEL, base, versions=sorted({stable, versions - 1, versions}),
                                        labels={"stable": stable})
    mc.write_config(paths.serving_dir / "production" / "models.config", production)
    return {"paths": paths, "versions": len(registry.versions(MODEL)), "history": len(registry.history(MODEL)),
            "live_phases": len(registry.live_phases(MODEL)), "stable": stable}


class BenchUser:
    """Every request is someone (the bench measures the pages, not Airflow's login)."""

    def get_name(self) -> str:
        return "bench"


def serve(app: Any, port: int) -> tuple[Any, threading.Thread]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    return server, thread


def measure(client: Any, url: str, requests: int) -> dict[str, Any]:
    for _ in range(_WARMUP):
        client.get(url).raise_for_status()
    timings, size = [], 0
    for _ in range(requests):
        started = time.perf_counter()
        reply = client.get(url)
        timings.append((time.perf_counter() - started) * 1000)
        reply.raise_for_status()
        size = len(reply.content)
    timings.sort()
    return {"requests": requests, "p50_ms": round(statistics.median(timings), 1),
            "p95_ms": round(timings[max(0, int(round(0.95 * len(timings))) - 1)], 1),
            "max_ms": round(timings[-1], 1), "bytes": size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=50)
    parser.add_argument("--history", type=int, default=500)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()

    import httpx
    from fastapi import FastAPI

    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        world = write_world(Path(tmp), args.versions, args.history)
        from pipeline.ui.app import create_app

        parent = FastAPI()
        parent.mount("/pipeline", create_app(world["paths"], airflow=_NoAirflow(), api_root="/",
                                             user=BenchUser))
        port = free_port()
        server, thread = serve(parent, port)
        base = f"http://127.0.0.1:{port}/pipeline"
        try:
            poll_until(lambda: (True if server.started else None, "starting"), 30.0, "uvicorn did not start",
                       interval_s=0.05)
            pages = {"models overview": f"{base}/models", "model page": f"{base}/models/{MODEL}",
                     "model page, all history": f"{base}/models/{MODEL}?history=all",
                     "verdict page": f"{base}/models/{MODEL}/versions/{args.versions}/verdicts/canary"}
            with httpx.Client(timeout=60.0) as client:
                results = {name: measure(client, url, args.requests) for name, url in pages.items()}
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    report = {"bench": "ui", "cpus": os.cpu_count(), "target_ms": TARGET_MS,
              "world": {k: v for k, v in world.items() if k != "paths"}, "results": results}
    print(json.dumps(report, indent=2))
    print()
    print(f"models pages, {world['versions']} versions, {world['history']} history rows, "
          f"{world['live_phases']} live phases ({args.requests} requests each)")
    print(f"{'page':<26} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'target':>8}  ok")
    for name, r in results.items():
        ok = "yes" if r["p95_ms"] <= TARGET_MS else "NO"
        print(f"{name:<26} {r['p50_ms']:>8} {r['p95_ms']:>8} {r['max_ms']:>8} {TARGET_MS:>8.0f}  {ok}")
    return 0


class _NoAirflow:
    """The pages measured here never call Airflow (no rollback is posted, no task link followed)."""

    def trigger(self, token: str, dag_id: str, conf: dict[str, Any]) -> str:
        raise AssertionError("the bench triggers nothing")

    def xcom_result(self, token: str, dag_id: str, run_id: str, task_id: str) -> Any:
        raise AssertionError("the bench follows no task link")

    def run_conf(self, token: str, dag_id: str, run_id: str) -> dict[str, Any]:
        raise AssertionError("the bench follows no task link")


if __name__ == "__main__":
    sys.exit(main())
