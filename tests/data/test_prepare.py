"""Preparing a configured source into a snapshot, reused when the source is unchanged."""

import json

import numpy as np

from pipeline.config import parse_model_config
from pipeline.data import prepare as prepare_module
from pipeline.data.prepare import prepare_snapshot
from pipeline.settings import Paths


def _config(path, **data):
    return parse_model_config({
        "name": "digits", "task": "image_classification",
        "data": {"source": "npz", "path": str(path), **data},
        "train": {"architecture": "softmax"},
    })


def _npz(tmp_path, n=300):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    x[1] = x[0]  # one duplicate
    np.savez(path, x=x, y=np.arange(n) % 3)
    return path


def test_prepare_writes_snapshot_and_drops_duplicates(tmp_path):
    paths = Paths(tmp_path / "home")
    snapshot = prepare_snapshot(_config(_npz(tmp_path)), paths)
    manifest = json.loads((snapshot.path / "manifest.json").read_text())
    assert manifest["duplicates_dropped"] == 1
    assert sum(manifest["counts"][s]["total"] for s in ("train", "val", "test")) == 299


def test_prepare_reuses_snapshot_when_source_unchanged(tmp_path, monkeypatch):
    paths = Paths(tmp_path / "home")
    config = _config(_npz(tmp_path))
    first = prepare_snapshot(config, paths)
    monkeypatch.setattr(prepare_module, "load_examples", lambda *a: (_ for _ in ()).throw(AssertionError("rebuilt")))
    assert prepare_snapshot(config, paths).path == first.path


def test_changed_file_gives_new_snapshot(tmp_path):
    paths = Paths(tmp_path / "home")
    path = _npz(tmp_path)
    first = prepare_snapshot(_config(path), paths)
    np.savez(path, x=np.random.default_rng(1).integers(0, 256, (90, 28, 28), dtype=np.uint8), y=np.arange(90) % 3)
    assert prepare_snapshot(_config(path), paths).path != first.path


def test_limit_keeps_a_balanced_subset(tmp_path):
    snapshot = prepare_snapshot(_config(_npz(tmp_path), limit=60), Paths(tmp_path / "home"))
    total = sum(snapshot.manifest["counts"][s]["total"] for s in ("train", "val", "test"))
    assert total == 60
