"""Containers bench: the images built here, the compose stack up, and the MNIST release through it.

On a private dockerd (pipeline.localdocker.engine; or ``$DOCKER_HOST``'s engine):

1. **cold build**: every local image (pipeline.localdocker.images.build_all) with an empty cache directory
   (``--cold``: a temporary one; mmdebstrap, the wheelhouse download and every layer), else skipped;
2. **cached build**: the same again, every layer from the cache (what a fresh clone pays once the cache exists);
   floor: a one-instruction build on the Debian base (the engine's own cost of a build);
3. **compose up -> healthy**: docker-compose.yml with docker-compose.local.yml, from ``up`` until every service is
   healthy; floor: PostgreSQL alone, up to healthy (one container's start and first healthcheck);
4. **release**: ``mnist_release`` triggered through Airflow's API until every run ended (the first promotes
   version 1); floor: the sum of the releasing run's task durations (the work, without scheduling).

Targets (issue 15): cached build <= 30 s, up -> healthy <= 180 s, release <= 240 s, on this 2-core machine.
Prints JSON, then a table. Usage: ``.venv/bin/python bench/containers.py [--cold] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.localdocker.compose import ComposeStack  # noqa: E402
from pipeline.localdocker.engine import engine_for_tests  # noqa: E402
from pipeline.localdocker.images import build, build_all, debian_image  # noqa: E402

_TARGETS = {"cached_build_s": 30.0, "up_to_healthy_s": 180.0, "release_s": 240.0}


def timed(fn: Any) -> tuple[Any, float]:
    start = time.monotonic()
    value = fn()
    return value, round(time.monotonic() - start, 1)


def engine_floor_build(client: Any, workdir: Path) -> float:
    """A one-instruction build on the Debian base, its tag unique so nothing is cached."""
    recipe = workdir / "floor"
    recipe.mkdir(parents=True, exist_ok=True)
    (recipe / "Dockerfile").write_text(f"FROM {debian_image(client)}\nLABEL bench.nonce={time.time_ns()}\n")
    _, seconds = timed(lambda: build(client, recipe / "Dockerfile", "mlops-local/bench-floor:1", recipe, {}))
    client.images.remove("mlops-local/bench-floor:1", force=True)
    return seconds


def postgres_alone(engine_url: str, workdir: Path) -> float:
    """Up -> healthy of the PostgreSQL service alone (its own project)."""
    stack = ComposeStack(engine_url, workdir / "floor-compose")
    stack.write_env()
    try:
        _, seconds = timed(lambda: (stack.compose("up", "-d", "--no-build", "postgres"), stack.wait_healthy(300)))
        return seconds
    finally:
        stack.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="also build every image from an empty cache")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict[str, Any] = {"bench": "containers", "cpus": os.cpu_count(), "targets": _TARGETS}
    with tempfile.TemporaryDirectory(prefix="bench-containers-") as tmp:
        workdir = Path(tmp)
        if args.cold:
            os.environ["PIPELINE_DOCKER_CACHE"] = str(workdir / "cache")
        engine = engine_for_tests()
        try:
            client = engine.client()
            if args.cold:
                _, report["cold_build_s"] = timed(lambda: build_all(client))
            else:
                build_all(client)  # warm the cache; the cached figure below is what counts
            _, report["cached_build_s"] = timed(lambda: build_all(client))
            report["cached_build_floor_s"] = engine_floor_build(client, workdir)
            report["up_to_healthy_floor_s"] = postgres_alone(engine.url, workdir)
            stack = ComposeStack(engine.url, workdir / "compose")
            stack.write_env()
            try:
                _, report["up_to_healthy_s"] = timed(lambda: (stack.up(), stack.wait_healthy(900)))
                stack.seed_cache(REPO / "var" / "cache" / "npm")
                release = stack.release("mnist_release", 1200)
                report["release_s"] = release["seconds"]
                report["release_runs"] = {run_id: run["state"] for run_id, run in release["runs"].items()}
                report["release_floor_s"] = release["work_s"]
            finally:
                stack.down()
        finally:
            engine.stop()
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print_table(report)
    return 0


def print_table(report: dict[str, Any]) -> None:
    rows = [("cold build (every image, empty cache)", report.get("cold_build_s"), None, None),
            ("cached build", report["cached_build_s"], report["cached_build_floor_s"], _TARGETS["cached_build_s"]),
            ("compose up -> all healthy", report["up_to_healthy_s"], report["up_to_healthy_floor_s"],
             _TARGETS["up_to_healthy_s"]),
            ("MNIST release through compose", report["release_s"], report["release_floor_s"], _TARGETS["release_s"])]
    print(f"\n{'figure':40} {'seconds':>9} {'floor':>9} {'target':>8}  met")
    for name, value, floor, target in rows:
        if value is None:
            continue
        met = "" if target is None else ("yes" if value <= target else "NO")
        print(f"{name:40} {value:>9} {floor if floor is not None else '-':>9} "
              f"{target if target is not None else '-':>8}  {met}")


if __name__ == "__main__":
    sys.exit(main())
