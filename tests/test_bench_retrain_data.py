"""bench/retrain_data.py's pure parts: where arrivals land, and what counts as recovered."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load_model_config
from pipeline.data.dataset import Examples
from pipeline.data.snapshot import split_by_digest
from tests.benches import load_bench


def _bench():
    return load_bench("retrain_data")


def _digits(count: int, seed: int) -> Examples:
    rng = np.random.default_rng(seed)
    return Examples("image", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), rng.integers(0, 10, count),
                    tuple(str(d) for d in range(10)))


def test_arrivals_land_in_train_and_val_by_their_digest_and_the_test_split_is_left_out() -> None:
    bench, config = _bench(), load_model_config("mnist")
    base = {name: _digits(50, seed) for seed, name in enumerate(("train", "val", "test"))}
    arrivals = _digits(400, 7)
    merged = bench.with_arrivals(base, arrivals, config)
    placed = split_by_digest(arrivals, config.data.val_fraction, config.data.test_fraction)
    assert set(merged) == {"train", "val"}
    for name in ("train", "val"):
        assert len(merged[name]) == 50 + len(placed[name])
        assert np.array_equal(merged[name].x[50:], placed[name].x)
        assert np.array_equal(merged[name].y[:50], base[name].y)
    assert len(placed["test"]) > 0  # what the ingest would put in test is not trained on here either


@pytest.mark.parametrize(("mix", "expected"), [(0.975, True), (0.974, True), (0.9739, False), (0.85, False)])
def test_recovered_is_within_one_point_of_the_pre_shift_accuracy(mix: float, expected: bool) -> None:
    assert _bench().recovered(mix, 0.984) is expected
