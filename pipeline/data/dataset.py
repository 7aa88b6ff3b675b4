"""In-memory examples and on-disk data snapshots: the contract between data, validation and training.

Images are uint8 arrays of shape (n, 28, 28) holding pixel values 0..255; texts are 1-D arrays of
Python ``str`` (dtype object). Labels are int64 class indices into ``class_names``.
A snapshot directory ``data/<model>/<sha256>/`` holds one file per split (``<split>.npz`` for
images, ``<split>.jsonl`` for texts) and ``manifest.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Kind = Literal["image", "text"]
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class Examples:
    """A set of labelled examples of one kind."""

    kind: Kind
    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    source: dict[str, Any] = field(default_factory=dict)  # name, version, integrity, ...

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} examples but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> Examples:
        """The examples at ``index``, same kind and classes."""
        return Examples(self.kind, self.x[index], self.y[index], self.class_names, self.source)


def read_examples(directory: Path, name: str, kind: Kind, class_names: tuple[str, ...],
                  source: dict[str, Any] | None = None) -> Examples:
    """Examples written as ``<directory>/<name>.npz`` (images) or ``<name>.jsonl`` (texts)."""
    if kind == "image":
        with np.load(directory / f"{name}.npz") as data:
            x, y = data["x"], data["y"]
    else:
        # split("\n"), not splitlines(): texts may hold \x85 or \u2028, which JSON leaves unescaped.
        text = (directory / f"{name}.jsonl").read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.split("\n") if line]
        x = np.array([r["text"] for r in rows], dtype=object)
        y = np.array([r["label"] for r in rows], dtype=np.int64)
    return Examples(kind, x, y, class_names, dict(source or {}))


@dataclass(frozen=True)
class Snapshot:
    """A prepared, split, content-addressed data set on disk."""

    path: Path
    manifest: dict[str, Any]

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    @property
    def kind(self) -> Kind:
        return self.manifest["kind"]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.manifest["class_names"])

    def split(self, name: str) -> Examples:
        """Load one split (``train``, ``val`` or ``test``)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return read_examples(self.path, name, self.kind, self.class_names, self.manifest.get("source", {}))

    @classmethod
    def open(cls, path: str | Path) -> Snapshot:
        """Open an existing snapshot directory."""
        path = Path(path)
        manifest = json.loads((path / "manifest.json").read_text())
        return cls(path, manifest)
