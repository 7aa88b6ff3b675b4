"""The build stages as plain functions: the DAG tasks, the CLI and the tests all call these.

Each takes names and paths and returns a small JSON-able dict, so it can cross an Airflow XCom.
Heavy libraries are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import ModelConfig, load_model_config
from pipeline.gates import Verdict, evaluation_gate
from pipeline.settings import Paths, get_paths

log = logging.getLogger(__name__)


def resolve_config(model: str, config_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """A model's config from its YAML (or ``config_path``) with dotted overrides applied and validated."""
    config = load_model_config(model, config_path)
    return config.with_overrides(overrides) if overrides else config


def prepare_data(config: ModelConfig, paths: Paths | None = None) -> dict[str, Any]:
    """Raw source -> snapshot (reused when the source is unchanged)."""
    from pipeline.data.prepare import prepare_snapshot

    snapshot = prepare_snapshot(config, paths or get_paths())
    return {"snapshot": str(snapshot.path), "sha256": snapshot.sha256, "counts": snapshot.manifest["counts"],
            "data_version": snapshot.manifest.get("data_version"), "parts": len(snapshot.manifest.get("parts", []))}


def validate_data(config: ModelConfig, snapshot_path: str | Path) -> dict[str, Any]:
    """Blocking Great Expectations validation of a snapshot; raises ValidationFailed with the failed checks."""
    from pipeline.data.dataset import Snapshot
    from pipeline.data.validate import validate_snapshot

    report = validate_snapshot(Snapshot.open(snapshot_path), config.data_validation)
    return {"success": report.success, "docs": str(report.docs_path), "statistics": report.statistics}


def run_dir_for(config: ModelConfig, snapshot_sha: str, fault: str | None, paths: Paths) -> Path:
    """Where a training run lives: ``runs/<model>/<run_id>``; the same data, config and fault give the same id."""
    from pipeline.models.train import compute_run_id

    return paths.runs_dir / config.name / compute_run_id(config, snapshot_sha, fault)


def train(config: ModelConfig, snapshot_path: str | Path, *, fault: str | None = None,
          paths: Paths | None = None) -> dict[str, Any]:
    """Train on a snapshot; a finished identical run is reused rather than trained again."""
    from pipeline.data.dataset import Snapshot
    from pipeline.models.train import load_run, train_model

    snapshot = Snapshot.open(snapshot_path)
    run_dir = run_dir_for(config, snapshot.sha256, fault, paths or get_paths())
    if (run_dir / "run.json").is_file() and (run_dir / "model.keras").is_file():
        log.info("reusing finished training run %s", run_dir)
        result = load_run(run_dir)
    else:
        result = train_model(config, snapshot, run_dir, fault=fault)
    return {"run_dir": str(result.run_dir), "run_id": result.run_id, "metrics": scalars(result.metrics)}


def evaluate(config: ModelConfig, run_dir: str | Path, baseline: dict[str, Any] | None = None) -> Verdict:
    """The evaluation gate on a run's hold-out metrics; written to ``<run_dir>/evaluation.json``."""
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    gate = config.gates
    verdict = evaluation_gate(metrics, gate.metric, gate.min_value, gate.max_regression, baseline)
    verdict.write(Path(run_dir) / "evaluation.json")
    return verdict


def export(config: ModelConfig, run_dir: str | Path, snapshot_path: str | Path, *,
           model_base_path: str | Path | None = None, lineage: dict[str, Any] | None = None,
           paths: Paths | None = None) -> dict[str, Any]:
    """Export a run as the next version under the model base path (idempotent per run)."""
    from pipeline.data.dataset import Snapshot
    from pipeline.export import export_run

    base = Path(model_base_path) if model_base_path else (paths or get_paths()).model_base_path(config.name)
    result = export_run(Path(run_dir), base, Snapshot.open(snapshot_path), extra_metadata=lineage)
    return {"version": result.version, "path": str(result.path), "created": result.created,
            "content_sha256": result.content_sha256}


def build(config: ModelConfig, *, model_base_path: str | Path | None = None, fault: str | None = None,
          paths: Paths | None = None, on_stage: Callable[[str, float], None] | None = None) -> dict[str, Any]:
    """prepare -> validate -> train -> evaluate (floor) -> export, timing each stage."""
    paths = paths or get_paths()
    timings: dict[str, float] = {}

    def timed(stage: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = fn()
        timings[stage] = round(time.perf_counter() - start, 3)
        if on_stage:
            on_stage(stage, timings[stage])
        return value

    data = timed("prepare", lambda: prepare_data(config, paths))
    timed("validate", lambda: validate_data(config, data["snapshot"]))
    run = timed("train", lambda: train(config, data["snapshot"], fault=fault, paths=paths))
    verdict = timed("evaluate", lambda: evaluate(config, run["run_dir"]))
    verdict.raise_if_failed()
    exported = timed("export", lambda: export(config, run["run_dir"], data["snapshot"],
                                              model_base_path=model_base_path, paths=paths))
    return {**exported, "snapshot": data["snapshot"], "run_dir": run["run_dir"], "metrics": run["metrics"],
            "timings": timings}


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """Only the scalar metrics (what an XCom or a log line should carry)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
