"""Prepare: raw source -> deduplicated, stratified, content-addressed snapshot (reused when unchanged)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from pipeline.config import ModelConfig
from pipeline.data.dataset import Snapshot
from pipeline.data.snapshot import drop_duplicates, stratified_split, write_snapshot
from pipeline.data.sources import load_examples
from pipeline.settings import Paths

log = logging.getLogger(__name__)

# Bump when preparation changes what a source turns into, so old snapshots are not reused.
PREPARE_VERSION = 1


def source_key(config: ModelConfig) -> str:
    """Identity of "this source, prepared this way": pinned package or file hash + split settings."""
    data = config.data.model_dump(mode="json")
    if config.data.path and Path(config.data.path).is_file():
        data["file_sha256"] = hashlib.sha256(Path(config.data.path).read_bytes()).hexdigest()
    payload = {"data": data, "class_names": config.class_names, "prepare_version": PREPARE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _index_path(config: ModelConfig, paths: Paths) -> Path:
    return paths.data_dir / config.name / "by-source" / f"{source_key(config)}.json"


def find_prepared(config: ModelConfig, paths: Paths) -> Snapshot | None:
    """The snapshot this source was already prepared into, if it is still complete on disk."""
    index = _index_path(config, paths)
    if not index.is_file():
        return None
    directory = paths.data_dir / config.name / json.loads(index.read_text())["sha256"]
    return Snapshot.open(directory) if (directory / "manifest.json").is_file() else None


def prepare_snapshot(config: ModelConfig, paths: Paths) -> Snapshot:
    """Load, deduplicate and split the configured source into a snapshot; reuse one that exists."""
    existing = find_prepared(config, paths)
    if existing is not None:
        log.info("reusing snapshot %s (source unchanged)", existing.path)
        return existing
    examples = load_examples(config.data, config.class_names, paths.cache_dir)
    examples, duplicates = drop_duplicates(examples)
    if config.data.limit:
        examples = examples.subset(_first_per_class(examples.y, config.data.limit))
    splits = stratified_split(examples, config.data.val_fraction, config.data.test_fraction, config.data.seed)
    extra = {"duplicates_dropped": duplicates, "split": config.data.model_dump(mode="json"),
             "prepare_version": PREPARE_VERSION}
    snapshot = write_snapshot(config.name, splits, paths.data_dir, examples.source, extra)
    index = _index_path(config, paths)
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps({"sha256": snapshot.sha256}))
    log.info("prepared snapshot %s (%d examples, %d duplicates dropped)", snapshot.path, len(examples), duplicates)
    return snapshot


def _first_per_class(y, limit: int):
    """Indices of a class-balanced subset of at most ``limit`` examples (deterministic)."""
    import numpy as np

    classes = np.unique(y)
    per_class = max(1, limit // len(classes))
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in classes]))
