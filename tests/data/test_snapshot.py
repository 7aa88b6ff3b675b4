"""Deterministic stratified splits and content-addressed, atomically written snapshots."""

import json

import numpy as np
import pytest

from pipeline.data.dataset import Examples, Snapshot
from pipeline.data.snapshot import content_hash, drop_duplicates, stratified_split, write_snapshot


def _images(n=200, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    y = np.arange(n, dtype=np.int64) % classes
    return Examples("image", x, y, tuple(str(c) for c in range(classes)), {"name": "synthetic"})


def _texts():
    x = np.array([f"message number {i}" for i in range(60)], dtype=object)
    y = np.array([i % 2 for i in range(60)], dtype=np.int64)
    return Examples("text", x, y, ("ham", "spam"), {"name": "synthetic"})


def test_split_is_stratified_disjoint_and_complete():
    examples = _images()
    splits = stratified_split(examples, 0.1, 0.2, seed=1)
    assert sum(len(s) for s in splits.values()) == len(examples)
    for part in splits.values():
        counts = np.bincount(part.y, minlength=4)
        assert counts.max() - counts.min() <= 1  # every class in the same proportion
    seen = [set(map(bytes, (x.tobytes() for x in part.x))) for part in splits.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_split_is_deterministic_per_seed():
    a = stratified_split(_images(), 0.1, 0.2, seed=7)
    b = stratified_split(_images(), 0.1, 0.2, seed=7)
    c = stratified_split(_images(), 0.1, 0.2, seed=8)
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash(c)


def test_drop_duplicates_keeps_first():
    examples = _images(20)
    doubled = Examples("image", np.concatenate([examples.x, examples.x[:5]]),
                       np.concatenate([examples.y, examples.y[:5]]), examples.class_names)
    deduped, dropped = drop_duplicates(doubled)
    assert dropped == 5 and len(deduped) == 20
    np.testing.assert_array_equal(deduped.x, examples.x)


@pytest.mark.parametrize("make", [_images, _texts])
def test_write_and_reopen_round_trip(tmp_path, make):
    examples = make()
    splits = stratified_split(examples, 0.1, 0.2, seed=3)
    snapshot = write_snapshot("m", splits, tmp_path, {"name": "synthetic"})
    assert snapshot.path == tmp_path / "m" / snapshot.sha256
    reopened = Snapshot.open(snapshot.path)
    for name, part in splits.items():
        loaded = reopened.split(name)
        assert list(loaded.y) == list(part.y)
        assert [str(v) for v in loaded.x.reshape(len(loaded), -1)] == [str(v) for v in part.x.reshape(len(part), -1)]
    manifest = json.loads((snapshot.path / "manifest.json").read_text())
    assert manifest["counts"]["train"]["total"] == len(splits["train"])
    assert set(manifest["files"]) == {"train", "val", "test"}


def test_same_content_gives_same_snapshot_without_rewrite(tmp_path):
    splits = stratified_split(_images(), 0.1, 0.2, seed=3)
    first = write_snapshot("m", splits, tmp_path, {})
    stamp = (first.path / "manifest.json").stat().st_mtime_ns
    second = write_snapshot("m", splits, tmp_path, {})
    assert second.path == first.path
    assert (second.path / "manifest.json").stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".tmp")]


def test_unknown_split_is_refused(tmp_path):
    snapshot = write_snapshot("m", stratified_split(_texts(), 0.1, 0.2, 0), tmp_path, {})
    with pytest.raises(ValueError, match="unknown split"):
        snapshot.split("holdout")
