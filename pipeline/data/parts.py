"""The landing place of a model's new labelled examples, and the data versions built from it.

Layout (all under ``<PIPELINE_HOME>/data/<model>/``)::

    landing/
      HEAD.json               the committed parts, oldest first: {"parts": [<part sha>, ...]}
      parts/<part sha>/       one ingested part: examples.npz (images) or examples.jsonl (texts) + part.json
      announced.json          the last data version announced on <model>_raw_data, and its parts
      .lock                   held (flock) by an ingest from its first read of HEAD to its commit
      .tmp-*/                 parts being written: never read, removed by the next ingest
    versions/<data version>.json   what a data version is: the base source + each part, counts and hashes

A part directory is named by the hash of its examples and written under a temporary name, then renamed; the
part counts only once ``HEAD.json`` names it, and ``HEAD.json`` is replaced atomically (the commit point). So a
crash at any moment leaves the committed data as it was: a half-written part is a ``.tmp-*`` directory or a part
no ``HEAD`` names, and neither is ever read.

A data version is the base source (the model config's ``data``, as :func:`pipeline.data.prepare.source_key`
identifies it) plus the committed parts in order; its id is the sha256 of both.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.dataset import Examples, read_examples
from pipeline.data.snapshot import example_digests, write_split
from pipeline.util.files import file_lock, fsync_dir, fsync_tree, write_atomically

_PART_FILE = "part.json"
_EXAMPLES = "examples"
_HEAD = "HEAD.json"
_ANNOUNCED = "announced.json"
_TMP_PREFIX = ".tmp-"


def landing_dir(data_dir: Path, model: str) -> Path:
    """``data/<model>/landing``: where ingested parts land."""
    return data_dir / model / "landing"


def versions_dir(data_dir: Path, model: str) -> Path:
    """``data/<model>/versions``: one manifest per data version."""
    return data_dir / model / "versions"


@dataclass(frozen=True)
class Part:
    """One committed ingested part: its directory and its ``part.json``."""

    path: Path
    meta: dict[str, Any]

    @property
    def sha256(self) -> str:
        return str(self.meta["sha256"])

    @property
    def examples_count(self) -> int:
        return int(self.meta["examples"])

    def examples(self) -> Examples:
        return read_examples(self.path, _EXAMPLES, self.meta["kind"], tuple(self.meta["class_names"]),
                             {"name": "ingested", "part": self.sha256, "origin": self.meta.get("origin", {})})

    def summary(self) -> dict[str, Any]:
        """What a data version's manifest and the registry's lineage say of the part."""
        return {"sha256": self.sha256, "examples": self.examples_count, "origin": self.meta.get("origin", {}),
                "counts": self.meta.get("counts", {}), "file_sha256": self.meta.get("file_sha256")}


@contextmanager
def landing_lock(data_dir: Path, model: str) -> Iterator[None]:
    """One ingest of the model at a time (across processes), from reading HEAD to committing the new one."""
    with file_lock(landing_dir(data_dir, model) / ".lock"):
        yield


def committed_parts(data_dir: Path, model: str) -> list[Part]:
    """The parts ``HEAD.json`` names, oldest first (none before the first ingest)."""
    landing = landing_dir(data_dir, model)
    head = landing / _HEAD
    if not head.is_file():
        return []
    shas = json.loads(head.read_text())["parts"]
    return [Part(landing / "parts" / sha, json.loads((landing / "parts" / sha / _PART_FILE).read_text()))
            for sha in shas]


def part_sha256(examples: Examples) -> str:
    """The identity of a part: its kind, classes, example digests and labels in order."""
    digest = hashlib.sha256(json.dumps([examples.kind, list(examples.class_names)]).encode())
    for item in example_digests(examples):
        digest.update(item.encode())
    digest.update(np.ascontiguousarray(examples.y, dtype=np.int64).tobytes())
    return digest.hexdigest()


def write_part(data_dir: Path, model: str, examples: Examples, meta: dict[str, Any]) -> Part:
    """Write ``examples`` as ``landing/parts/<sha>/`` (temp dir, fsync, rename); not committed yet."""
    landing = landing_dir(data_dir, model)
    sha = part_sha256(examples)
    final = landing / "parts" / sha
    final.parent.mkdir(parents=True, exist_ok=True)
    if (final / _PART_FILE).is_file():  # written by an ingest that died before its commit: same content
        return Part(final, json.loads((final / _PART_FILE).read_text()))
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{sha[:12]}-", dir=landing))
    try:
        files = {f"{_EXAMPLES}{'.npz' if examples.kind == 'image' else '.jsonl'}":
                 write_split(tmp, _EXAMPLES, examples)}
        full = {**meta, "sha256": sha, "model": model, "kind": examples.kind,
                "class_names": list(examples.class_names), "examples": len(examples),
                "counts": {name: int((examples.y == i).sum()) for i, name in enumerate(examples.class_names)},
                "files": files, "created_at": datetime.now(UTC).isoformat()}
        (tmp / _PART_FILE).write_text(json.dumps(full, indent=2, sort_keys=True))
        fsync_tree(tmp)
        if final.exists():  # an incomplete leftover of the same part (no part.json): replaced
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Part(final, full)


def commit_parts(data_dir: Path, model: str, parts: Sequence[Part]) -> None:
    """Make ``parts`` the committed list (atomic replace of HEAD.json): the moment an ingest becomes visible."""
    write_atomically(landing_dir(data_dir, model) / _HEAD,
                     json.dumps({"parts": [part.sha256 for part in parts]}, indent=2))


def remove_leftovers(data_dir: Path, model: str) -> int:
    """Delete temp dirs of ingests that died (call under :func:`landing_lock`); how many were removed."""
    landing = landing_dir(data_dir, model)
    if not landing.is_dir():
        return 0
    leftovers = [p for p in landing.iterdir() if p.name.startswith(_TMP_PREFIX) and p.is_dir()]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return len(leftovers)


# ---- data versions ------------------------------------------------------------------------------------------


def data_version_id(base_key: str, parts: Sequence[Part]) -> str:
    """sha256 of the base source's identity and the committed parts in order."""
    payload = {"base": base_key, "parts": [part.sha256 for part in parts]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def write_version_manifest(data_dir: Path, model: str, base_key: str, base_data: dict[str, Any],
                           parts: Sequence[Part]) -> dict[str, Any]:
    """Write (once; content-addressed) and return ``versions/<data version>.json``."""
    version = data_version_id(base_key, parts)
    path = versions_dir(data_dir, model) / f"{version}.json"
    if path.is_file():
        return json.loads(path.read_text())
    manifest = {
        "data_version": version, "model": model,
        "base": {"source_key": base_key, "data": base_data},
        "parts": [part.summary() for part in parts],
        "ingested_examples": sum(part.examples_count for part in parts),
        "created_at": datetime.now(UTC).isoformat(),
    }
    write_atomically(path, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


# ---- announcements ------------------------------------------------------------------------------------------


def last_announced(data_dir: Path, model: str) -> dict[str, Any]:
    """``{"data_version": ..., "parts": [...]}`` of the last announced version (empty before any)."""
    path = landing_dir(data_dir, model) / _ANNOUNCED
    return json.loads(path.read_text()) if path.is_file() else {}


def record_announced(data_dir: Path, model: str, data_version: str, parts: Sequence[Part],
                     event: dict[str, Any] | None) -> None:
    write_atomically(landing_dir(data_dir, model) / _ANNOUNCED, json.dumps({
        "data_version": data_version, "parts": [part.sha256 for part in parts],
        "event_id": (event or {}).get("id"), "at": datetime.now(UTC).isoformat()}, indent=2))


def unannounced_examples(data_dir: Path, model: str, parts: Sequence[Part]) -> int:
    """Examples in committed parts that no announced data version held yet."""
    announced = set(last_announced(data_dir, model).get("parts", []))
    return sum(part.examples_count for part in parts if part.sha256 not in announced)
