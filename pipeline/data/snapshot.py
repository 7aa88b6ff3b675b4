"""Split examples deterministically and write them as a content-addressed snapshot.

A snapshot lives in ``data/<model>/<sha256>/``: it is written under a temporary name and renamed,
so a directory named by a hash is always complete. The same content always gives the same hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.dataset import SPLITS, Examples, Snapshot

_MANIFEST_VERSION = 1


def example_digests(examples: Examples) -> list[str]:
    """sha256 of each example's content (image bytes or UTF-8 text): the identity used for dedupe and leaks."""
    if examples.kind == "image":
        return [hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest() for x in examples.x]
    return [hashlib.sha256(str(x).encode("utf-8")).hexdigest() for x in examples.x]


def drop_duplicates(examples: Examples) -> tuple[Examples, int]:
    """Keep the first of each identical example, so no example can land in two splits."""
    seen: set[str] = set()
    keep = []
    for i, digest in enumerate(example_digests(examples)):
        if digest not in seen:
            seen.add(digest)
            keep.append(i)
    return examples.subset(np.asarray(keep, dtype=np.int64)), len(examples) - len(keep)


def stratified_split(examples: Examples, val_fraction: float, test_fraction: float, seed: int) -> dict[str, Examples]:
    """Split each class by the same fractions with a seeded permutation; sorted indices keep order stable."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for label in np.unique(examples.y):
        index = rng.permutation(np.flatnonzero(examples.y == label))
        n_test = int(round(len(index) * test_fraction))
        n_val = int(round(len(index) * val_fraction))
        parts["test"].append(index[:n_test])
        parts["val"].append(index[n_test:n_test + n_val])
        parts["train"].append(index[n_test + n_val:])
    return {name: examples.subset(np.sort(np.concatenate(idx))) for name, idx in parts.items()}


def split_by_digest(examples: Examples, val_fraction: float, test_fraction: float) -> dict[str, Examples]:
    """Each example's split from its own digest: the same example always lands in the same split, whatever else
    is added, so data appended later never moves an old example (nor leaks a test example into train)."""
    draws = np.array([int(d[:16], 16) / 2**64 for d in example_digests(examples)], dtype=np.float64)
    where = np.where(draws < test_fraction, "test", np.where(draws < test_fraction + val_fraction, "val", "train"))
    return {name: examples.subset(np.flatnonzero(where == name)) for name in SPLITS}


def content_hash(splits: dict[str, Examples]) -> str:
    """sha256 over class names and every split's examples and labels, in a fixed order."""
    digest = hashlib.sha256()
    first = splits[SPLITS[0]]
    digest.update(json.dumps([first.kind, list(first.class_names)]).encode())
    for name in SPLITS:
        part = splits[name]
        digest.update(name.encode())
        for item in example_digests(part):
            digest.update(item.encode())
        digest.update(np.ascontiguousarray(part.y, dtype=np.int64).tobytes())
    return digest.hexdigest()


def write_split(directory: Path, name: str, part: Examples) -> str:
    """Write ``part`` as ``<directory>/<name>.npz`` or ``.jsonl`` (read back by ``dataset.read_examples``); its sha256."""
    if part.kind == "image":
        path = directory / f"{name}.npz"
        np.savez_compressed(path, x=part.x, y=part.y.astype(np.int64))
    else:
        path = directory / f"{name}.jsonl"
        lines = (json.dumps({"text": str(t), "label": int(y)}, ensure_ascii=False) for t, y in zip(part.x, part.y, strict=True))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _counts(part: Examples) -> dict[str, int]:
    return {name: int((part.y == i).sum()) for i, name in enumerate(part.class_names)}


def write_snapshot(
    model: str, splits: dict[str, Examples], data_dir: Path, source: dict[str, Any], extra: dict[str, Any] | None = None
) -> Snapshot:
    """Write ``splits`` as ``<data_dir>/<model>/<sha256>/``; an existing identical snapshot is reused."""
    sha = content_hash(splits)
    final = data_dir / model / sha
    if (final / "manifest.json").is_file():
        return Snapshot.open(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{sha[:12]}-", dir=final.parent))
    try:
        files = {name: write_split(tmp, name, part) for name, part in splits.items()}
        first = splits[SPLITS[0]]
        manifest = {
            "manifest_version": _MANIFEST_VERSION,
            "model": model,
            "sha256": sha,
            "kind": first.kind,
            "class_names": list(first.class_names),
            "source": source,
            "counts": {name: {"total": len(part), **_counts(part)} for name, part in splits.items()},
            "files": files,
            "created_at": datetime.now(UTC).isoformat(),
            **(extra or {}),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if (final / "manifest.json").is_file():  # another process won the race with the same content
            return Snapshot.open(final)
        raise
    return Snapshot.open(final)
