"""Ingest benchmark: how long new labelled data takes to become a committed data version, against its floors.

In a temporary home with an image model on a synthetic npz source, measures (each once, on this machine):

* **floor: GX validation** of N examples alone (``landing.validate_part``: the same rules an ingest runs), and
  **floor: read** (copy the file and load its arrays);
* **ingest_file** of an .npz of N new examples (read, validate, dedupe, write, commit; no Airflow configured);
* **ingest_live_labels** of N captured one-instance REST requests with labels;
* **prepare** of the newest data version (base + both parts) into a snapshot, and again (reused).

Usage::

    .venv/bin/python bench/ingest.py [--examples 1000] [--base 3000] [--json-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import parse_model_config  # noqa: E402
from pipeline.data.dataset import Examples  # noqa: E402
from pipeline.data.landing import ingest_file, ingest_live_labels, validate_part  # noqa: E402
from pipeline.data.prepare import prepare_snapshot  # noqa: E402
from pipeline.live.store import Capture, CaptureStore, VariantAnswer, capture_db_path  # noqa: E402
from pipeline.settings import Paths  # noqa: E402
from tests.conftest import synthetic_images as _digits  # noqa: E402  (learnable fake digits, as the tests use)


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run(examples: int, base: int) -> dict:
    os.environ.pop("PIPELINE_AIRFLOW_API_URL", None)
    root = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        x, y = _digits(base, 1)
        np.savez(root / "base.npz", x=x, y=y)
        config = parse_model_config({"name": "digits", "task": "image_classification",
                                     "class_names": [str(d) for d in range(10)],
                                     "data": {"source": "npz", "path": str(root / "base.npz")},
                                     "train": {"architecture": "softmax"}})
        paths = Paths(root / "home")
        prepare_snapshot(config, paths)
        nx, ny = _digits(examples, 2)
        np.savez(root / "new.npz", x=nx, y=ny)
        figures: dict[str, float] = {}
        validate_part(Examples("image", nx[:10], ny[:10], config.class_names), config)  # GX imported and warm
        figures["floor_read_s"], _ = _timed(lambda: np.load(shutil.copy(root / "new.npz", root / "copy.npz"))["x"])
        figures["floor_validate_s"], _ = _timed(
            lambda: validate_part(Examples("image", nx, ny, config.class_names), config))
        figures["ingest_file_s"], result = _timed(lambda: ingest_file("digits", root / "new.npz", paths=paths,
                                                                      config=config))
        lx, ly = _digits(examples, 3)
        with CaptureStore(capture_db_path("digits", paths)) as store:
            for i in range(examples):
                body = json.dumps({"instances": [(lx[i].reshape(-1) / np.float32(255)).tolist()]})
                store.add(Capture(f"r{i}", 1.0, "stable", "/v1/models/digits:predict", body, 1,
                                  VariantAnswer(classes=(0,)), VariantAnswer(classes=(0,))))
            with store.transaction() as tx:
                for i in range(examples):
                    tx.add_label(f"r{i}", int(ly[i]), 2.0, "bench")
        figures["ingest_live_labels_s"], live = _timed(lambda: ingest_live_labels("digits", paths=paths,
                                                                                  config=config))
        figures["prepare_with_parts_s"], snapshot = _timed(lambda: prepare_snapshot(config, paths))
        figures["prepare_reused_s"], _ = _timed(lambda: prepare_snapshot(config, paths))
        return {"examples": examples, "base": base, "file_new": result.new_examples, "live_new": live.new_examples,
                "snapshot_total": sum(int(c["total"]) for c in snapshot.manifest["counts"].values()),
                **{k: round(v, 3) for k, v in figures.items()}}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--base", type=int, default=3000)
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args()
    report = run(args.examples, args.base)
    if not args.json_only:
        print(f"{'measure':<24} {'seconds':>8}")
        for key, value in report.items():
            if key.endswith("_s"):
                print(f"{key[:-2]:<24} {value:>8.3f}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
