"""Prepare: raw source -> deduplicated, stratified, content-addressed snapshot (reused when unchanged)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import ModelConfig
from pipeline.data.dataset import SPLITS, Examples, Snapshot
from pipeline.data.parts import Part, committed_parts, write_version_manifest
from pipeline.data.snapshot import (
    drop_duplicates,
    example_digests,
    split_by_digest,
    stratified_split,
    write_snapshot,
)
from pipeline.data.sources import load_examples
from pipeline.errors import ConfigError
from pipeline.settings import Paths
from pipeline.util.files import write_atomically

log = logging.getLogger(__name__)

# Bump when preparation changes what a source turns into, so old snapshots are not reused.
PREPARE_VERSION = 1
# Data settings that do not change what a source turns into (so changing them keeps the snapshot).
_NOT_SOURCE = {"retrain_min_new_examples"}


def source_key(config: ModelConfig) -> str:
    """Identity of "this source, prepared this way": pinned package or file hash + split settings."""
    data = base_data(config)
    if config.data.path and Path(config.data.path).is_file():
        data["file_sha256"] = hashlib.sha256(Path(config.data.path).read_bytes()).hexdigest()
    payload = {"data": data, "class_names": config.class_names, "prepare_version": PREPARE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _index_path(config: ModelConfig, paths: Paths, key: str | None = None) -> Path:
    return paths.data_dir / config.name / "by-source" / f"{key or source_key(config)}.json"


def find_prepared(config: ModelConfig, paths: Paths, key: str | None = None) -> Snapshot | None:
    """The snapshot this source (or data version ``key``) was already prepared into, if still complete on disk."""
    index = _index_path(config, paths, key)
    if not index.is_file():
        return None
    directory = paths.data_dir / config.name / json.loads(index.read_text())["sha256"]
    return Snapshot.open(directory) if (directory / "manifest.json").is_file() else None


def prepare_snapshot(config: ModelConfig, paths: Paths) -> Snapshot:
    """The newest data version as a snapshot: the configured source plus every ingested part; reused when unchanged.

    Without ingested parts this is the source alone, as it always was. With parts, the source's own snapshot keeps
    its splits and each ingested example goes to the split its digest picks (:func:`split_by_digest`), after
    dropping any example already there, so old examples never move and a test example never lands in train.
    """
    parts = committed_parts(paths.data_dir, config.name)
    base = _prepare_base(config, paths)
    if not parts:
        return base
    version = write_version_manifest(paths.data_dir, config.name, source_key(config), base_data(config), parts)
    existing = find_prepared(config, paths, version["data_version"])
    if existing is not None:
        log.info("reusing snapshot %s (data version %s unchanged)", existing.path, version["data_version"][:12])
        return existing
    splits, added, duplicates = _with_parts(config, base, parts)
    kept: dict[str, Any] = {k: base.manifest[k] for k in ("split", "prepare_version") if k in base.manifest}
    extra = {**kept, "duplicates_dropped": int(base.manifest.get("duplicates_dropped", 0)) + duplicates,
             "data_version": version["data_version"], "base_snapshot": base.sha256,
             "parts": [{**part.summary(), "added": added[part.sha256]} for part in parts]}
    snapshot = write_snapshot(config.name, splits, paths.data_dir, base.manifest.get("source", {}), extra)
    _write_index(config, paths, snapshot, version["data_version"])
    log.info("prepared snapshot %s: data version %s = base %s + %d part(s), %d example(s) added",
             snapshot.path, version["data_version"][:12], base.sha256[:12], len(parts), sum(added.values()))
    return snapshot


def _prepare_base(config: ModelConfig, paths: Paths) -> Snapshot:
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
    extra = {"duplicates_dropped": duplicates, "split": base_data(config),
             "prepare_version": PREPARE_VERSION}
    snapshot = write_snapshot(config.name, splits, paths.data_dir, examples.source, extra)
    _write_index(config, paths, snapshot)
    log.info("prepared snapshot %s (%d examples, %d duplicates dropped)", snapshot.path, len(examples), duplicates)
    return snapshot


def _write_index(config: ModelConfig, paths: Paths, snapshot: Snapshot, key: str | None = None) -> None:
    write_atomically(_index_path(config, paths, key), json.dumps({"sha256": snapshot.sha256}))


def base_data(config: ModelConfig) -> dict[str, Any]:
    """The config's data settings that make the base source (a data version's manifest records them)."""
    return config.data.model_dump(mode="json", exclude=_NOT_SOURCE)


def _with_parts(config: ModelConfig, base: Snapshot, parts: list[Part]
                ) -> tuple[dict[str, Examples], dict[str, int], int]:
    """The base's splits with each part's new examples appended to the split of their digest."""
    splits = {name: base.split(name) for name in SPLITS}
    seen = {digest for part in splits.values() for digest in example_digests(part)}
    added: dict[str, int] = {}
    duplicates = 0
    for part in parts:
        examples = part.examples()
        if examples.kind != base.kind or tuple(examples.class_names) != base.class_names:
            raise ConfigError(f"{config.name}: ingested part {part.sha256[:12]} holds {examples.kind} examples of "
                              f"classes {list(examples.class_names)}, but the source gives {base.kind} examples of "
                              f"{list(base.class_names)}; the config's data changed kind or classes since it came in")
        digests = example_digests(examples)
        keep = np.array([i for i, d in enumerate(digests) if d not in seen], dtype=np.int64)
        seen.update(digests)
        duplicates += len(examples) - len(keep)
        added[part.sha256] = len(keep)
        new = split_by_digest(examples.subset(keep), config.data.val_fraction, config.data.test_fraction)
        for name in SPLITS:
            splits[name] = _concat(splits[name], new[name])
    return splits, added, duplicates


def _concat(first: Examples, second: Examples) -> Examples:
    x = np.concatenate([first.x, second.x.astype(first.x.dtype, copy=False)]) if len(second) else first.x
    y = np.concatenate([first.y, second.y]) if len(second) else first.y
    return Examples(first.kind, x, y, first.class_names, first.source)


def _first_per_class(y, limit: int):
    """Indices of a class-balanced subset of at most ``limit`` examples (deterministic)."""
    classes = np.unique(y)
    per_class = max(1, limit // len(classes))
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in classes]))
