"""Train one model on one data snapshot and write the run directory.

A run directory holds::

    model.keras            the trained Keras model (best validation epoch)
    metrics.json           test-split metrics (pipeline.models.evaluate)
    history.json           per-epoch loss/accuracy, train and validation
    training_curve.png     history as a plot
    confusion_matrix.png   test-split confusion matrix
    run.json               run id, model, snapshot sha256, config, times, code version, and the input
                           convention when it is not the clients' (written last)

The run id is a hash of the snapshot, the config and the fault, so training the same thing twice
gives the same id (and the same export version, see pipeline.export).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np

import pipeline
from pipeline.config import FAULTS, ModelConfig
from pipeline.data.dataset import Examples, Snapshot
from pipeline.errors import ConfigError, NotFound
from pipeline.models import (
    CLIENT_PIXEL_SCALE,
    RAW_PIXEL_SCALE,
    build_model,
    input_convention,
    kind_of_architecture,
    make_dataset,
    to_model_inputs,
)
from pipeline.models.artifacts import plot_confusion_matrix, plot_training_curve
from pipeline.models.evaluate import evaluate_model
from pipeline.util.files import write_atomically

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
RUN_FILE = "run.json"
CURVE_FILE = "training_curve.png"
CONFUSION_FILE = "confusion_matrix.png"
_RUN_ID_LENGTH = 16
_DEFAULT_MIN_DELTA = 1e-4  # smaller validation-loss gains do not count as improvement


@dataclass(frozen=True)
class TrainResult:
    """A finished training run on disk."""

    run_id: str
    run_dir: Path
    metrics: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)  # run.json

    def load_model(self, compile: bool = True) -> keras.Model:
        """The trained Keras model of this run (``compile=False``: weights only, no optimizer state)."""
        return keras.models.load_model(self.run_dir / MODEL_FILE, compile=compile)


class _EpochLogger(keras.callbacks.Callback):
    """One ``logging`` line per epoch, whatever Keras' own verbosity."""

    def __init__(self, model_name: str, epochs: int) -> None:
        super().__init__()
        self._model_name = model_name
        self._epochs = epochs
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        figures = " ".join(f"{name}={value:.4f}" for name, value in sorted((logs or {}).items()))
        log.info(
            "%s epoch %d/%d %s (%.1fs)",
            self._model_name, epoch + 1, self._epochs, figures, time.monotonic() - self._started,
        )


def compute_run_id(config: ModelConfig, snapshot_sha256: str, fault: str | None = None) -> str:
    """A stable id for training ``config`` on a snapshot, with an optional fault."""
    identity = {"config": config.model_dump(mode="json"), "snapshot": snapshot_sha256, "fault": fault}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return digest[:_RUN_ID_LENGTH]


def _check_fault(config: ModelConfig, fault: str | None) -> None:
    if fault is None:
        return
    if fault not in FAULTS:
        raise ConfigError(f"unknown fault {fault!r}; known faults: {', '.join(FAULTS)}")
    if not config.release.allow_fault_injection:
        raise ConfigError(
            f"fault {fault!r} refused: set release.allow_fault_injection: true in the {config.name} config"
        )
    if fault == "input_convention" and kind_of_architecture(config.train.architecture) != "image":
        raise ConfigError(f"fault 'input_convention' changes the pixel scale of image models; {config.name} "
                          f"({config.train.architecture}) reads text")


def pixel_scale_for(fault: str | None) -> float:
    """The pixel scale a run trains, evaluates and exports with: raw 0..255 pixels under ``input_convention``."""
    return RAW_PIXEL_SCALE if fault == "input_convention" else CLIENT_PIXEL_SCALE


def _check_snapshot(config: ModelConfig, snapshot: Snapshot) -> None:
    wanted = kind_of_architecture(config.train.architecture)
    if snapshot.kind != wanted:
        raise ConfigError(
            f"train.architecture {config.train.architecture!r} needs {wanted} data, "
            f"snapshot {snapshot.path} holds {snapshot.kind}"
        )
    if config.class_names and tuple(config.class_names) != snapshot.class_names:
        raise ConfigError(f"class_names {config.class_names} differ from the snapshot's {snapshot.class_names}")


def shift_labels(examples: Examples) -> Examples:
    """The ``label_shift`` fault: every label rotated to the next class (y -> (y + 1) % n)."""
    shifted = (np.asarray(examples.y, dtype=np.int64) + 1) % len(examples.class_names)
    return Examples(examples.kind, examples.x, shifted, examples.class_names, examples.source)


def fit(config: ModelConfig, model: keras.Model, train: Examples, val: Examples,
        pixel_scale: float = CLIENT_PIXEL_SCALE) -> dict[str, list[float]]:
    """Fit with early stopping on validation loss, best weights restored; returns the history."""
    if len(val) == 0:
        raise ConfigError("the snapshot's val split is empty; raise data.val_fraction or add data")
    settings = config.train
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss",
        min_delta=_DEFAULT_MIN_DELTA,
        patience=settings.early_stopping_patience,
        restore_best_weights=True,
    )
    history = model.fit(
        make_dataset(to_model_inputs(train, pixel_scale), train.y, settings.batch_size, shuffle_seed=settings.seed),
        validation_data=make_dataset(to_model_inputs(val, pixel_scale), val.y, settings.batch_size),
        epochs=settings.epochs,
        callbacks=[early_stopping, _EpochLogger(config.name, settings.epochs)],
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=1 if sys.stdout.isatty() else 0,  # progress bars only for a person watching
    )
    return {name: [float(v) for v in values] for name, values in history.history.items()}


def _write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically, so a reader never sees half a file."""
    write_atomically(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def train_model(config: ModelConfig, snapshot: Snapshot, run_dir: Path, *, fault: str | None = None) -> TrainResult:
    """Train ``config``'s model on ``snapshot`` and write the run into ``run_dir``.

    Args:
        config: The model's config (architecture, optimiser, seed, early stopping).
        snapshot: Prepared data; train fits, val early-stops, test is scored into metrics.json.
        run_dir: Directory of this run (created); e.g. ``runs/<model>/<compute_run_id(...)>``.
        fault: A deliberately bad model (needs ``release.allow_fault_injection``). ``"label_shift"`` trains
            on labels rotated by one (test metrics use the true labels, so evaluation refuses it).
            ``"input_convention"`` (image models only) trains, evaluates and exports on raw 0..255 pixels
            instead of the clients' pixels / 255, recorded in run.json: every offline gate and staging pass
            it, and only live client traffic shows it is wrong.

    Returns:
        The run's id, directory and test metrics.

    Raises:
        ConfigError: Unknown or disallowed fault, or data that does not fit the architecture.
    """
    _check_fault(config, fault)
    _check_snapshot(config, snapshot)
    run_id = compute_run_id(config, snapshot.sha256, fault)
    started, clock = _now(), time.monotonic()
    keras.utils.set_random_seed(config.train.seed)
    train, val, test = (snapshot.split(name) for name in ("train", "val", "test"))
    if fault == "label_shift":
        train, val = shift_labels(train), shift_labels(val)
    pixel_scale = pixel_scale_for(fault)
    log.info("%s run %s: training %s on %d examples (snapshot %s, fault %s)",
             config.name, run_id, config.train.architecture, len(train), snapshot.sha256[:12], fault)
    model = build_model(config, train, pixel_scale)
    history = fit(config, model, train, val, pixel_scale)
    metrics = evaluate_model(model, test, pixel_scale=pixel_scale)
    info = {
        "run_id": run_id,
        "model": config.name,
        "task": config.task,
        "kind": snapshot.kind,
        "class_names": list(snapshot.class_names),
        "architecture": config.train.architecture,
        "snapshot": {"sha256": snapshot.sha256, "path": str(snapshot.path)},
        "config": config.model_dump(mode="json"),
        "fault": fault,
        **input_convention(pixel_scale),  # export and staging read the run's convention from here
        "epochs_run": len(history.get("loss", [])),
        "started_at": started,
        "finished_at": _now(),
        "duration_s": round(time.monotonic() - clock, 3),
        "code_version": pipeline.__version__,
        "versions": {"keras": keras.__version__, "tensorflow": _tensorflow_version()},
    }
    _write_run_dir(Path(run_dir), model, history, metrics, info)
    log.info("%s run %s: test accuracy %.4f in %.1fs", config.name, run_id, metrics["accuracy"], info["duration_s"])
    return TrainResult(run_id, Path(run_dir), metrics, info)


def _tensorflow_version() -> str:
    import tensorflow as tf

    return tf.__version__


def _write_run_dir(
    run_dir: Path, model: keras.Model, history: dict, metrics: dict, info: dict[str, Any]
) -> None:
    """Write every artifact; ``run.json`` last, so its presence means the run is complete."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_FILE).unlink(missing_ok=True)  # a rerun into the same dir is incomplete until the end
    model.save(run_dir / MODEL_FILE)
    _write_json(run_dir / METRICS_FILE, metrics)
    _write_json(run_dir / HISTORY_FILE, history)
    plot_training_curve(history, run_dir / CURVE_FILE)
    plot_confusion_matrix(metrics["confusion_matrix"], info["class_names"], run_dir / CONFUSION_FILE)
    _write_json(run_dir / RUN_FILE, info)


def load_run(run_dir: Path) -> TrainResult:
    """A finished run from its directory.

    Raises:
        NotFound: ``run_dir`` holds no complete run (no run.json).
    """
    run_dir = Path(run_dir)
    try:
        info = json.loads((run_dir / RUN_FILE).read_text())
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
    except FileNotFoundError:
        raise NotFound(f"{run_dir} holds no complete training run; train it first (pipeline train)") from None
    return TrainResult(info["run_id"], run_dir, metrics, info)
