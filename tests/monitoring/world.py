"""A pipeline home for monitor runs: mnist v1 stable, trained on a snapshot of real digits, and a capture store
filled with live requests (real held-out digits, a known share shifted) whose answers and labels the test picks."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import ModelConfig, load_model_config
from pipeline.data.dataset import Examples
from pipeline.live.store import Capture, CaptureStore, VariantAnswer
from pipeline.release.registry import Registry, State
from pipeline.settings import Paths, get_paths
from tests.monitoring.streams import real_digits, window

MODEL = "mnist"
SHA = "ab" * 32
TEST_ACCURACY = 0.97


@dataclass
class MonitorWorld:
    paths: Paths
    registry: Registry
    config: ModelConfig
    held_out: Examples
    clock: float = field(default_factory=lambda: time.time() - 86_400)  # captured in the past day
    sent: int = 0

    def send(self, count: int, shift: str | None = None, share: float = 0.2, wrong_share: float = 0.0,
             labelled: bool = True, seed: int | None = None) -> float:
        """Capture ``count`` one-digit requests as the capture service would; returns the time after the last.

        Stable answers the true label, except for a ``wrong_share`` of the requests (an accuracy drop).
        """
        seed = self.sent if seed is None else seed
        last = self.registry.monitor_runs(MODEL, limit=1)
        self.clock = max([self.clock, *(run.window_until for run in last)])  # after what the last run judged
        inputs, labels = window(self.held_out, count, seed, shift, share)
        wrong = np.random.default_rng(seed + 1).random(count) < wrong_share
        with CaptureStore.for_model(MODEL, self.paths) as store:
            for index in range(count):
                self.sent += 1
                self.clock += 0.01
                request_id = f"req-{self.sent}"
                answer = int((labels[index] + 1) % 10 if wrong[index] else labels[index])
                body = json.dumps({"instances": [np.round(inputs[index], 4).tolist()]})
                store.add(Capture(request_id, self.clock, "stable", f"/v1/models/{MODEL}:predict", body, 1,
                                  VariantAnswer((answer,)), VariantAnswer((answer,))))
                if labelled:
                    with store.transaction() as tx:
                        tx.add_label(request_id, int(labels[index]), self.clock + 1, "test")
        self.clock += 1
        return self.clock


def monitor_world(root: Path, **monitoring: object) -> MonitorWorld:
    train, held_out = real_digits()
    paths = get_paths(root / "home")
    snapshot = paths.data_dir / MODEL / SHA
    snapshot.mkdir(parents=True)
    np.savez(snapshot / "train.npz", x=train.x, y=train.y)
    (snapshot / "manifest.json").write_text(json.dumps({"sha256": SHA, "kind": "image",
                                                        "class_names": list(train.class_names)}))
    registry = Registry(paths.registry_url)
    predicted = np.bincount(train.y, minlength=10)  # a test split predicted as the labels are spread
    registry.register_version(MODEL, 1, {"data_sha256": SHA, "airflow_run_id": "setup",
                                         "metrics": {"accuracy": TEST_ACCURACY,
                                                     "confusion_matrix": np.diag(predicted).tolist()}})
    for state in (State.STAGED, State.VALIDATED, State.PROMOTED):
        registry.transition(MODEL, 1, state, run_id="setup", reason="setup")
    overrides = {f"monitoring.{name}": value for name, value in monitoring.items()}
    config = load_model_config(MODEL).with_overrides(overrides) if overrides else load_model_config(MODEL)
    return MonitorWorld(paths, registry, config, held_out)
