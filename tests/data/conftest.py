"""Small synthetic Examples that pass data validation, for tests to break on purpose."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import DataValidationConfig
from pipeline.data.dataset import Examples

IMAGE_CLASSES = ("zero", "one", "two", "three")
TEXT_CLASSES = ("ham", "spam")
SPLIT_SIZES = {"train": 80, "val": 20, "test": 20}
_WORDS = ("offer", "meeting", "free", "money", "report", "lunch", "click", "invoice", "hello", "today")


def make_images(n: int, n_classes: int, seed: int) -> Examples:
    """``n`` distinct 28x28 uint8 digits-like images: a bright block on black, labels round-robin."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        top, left = rng.integers(2, 14, size=2)
        x[i, top : top + 12, left : left + 9] = rng.integers(128, 256, size=(12, 9))  # ~14% ink
    y = np.arange(n, dtype=np.int64) % n_classes
    return Examples("image", x, y, IMAGE_CLASSES[:n_classes])


def make_texts(n: int, seed: int) -> Examples:
    """``n`` distinct short texts of words and a number, labels alternating ham/spam."""
    rng = np.random.default_rng(seed)
    texts = [f"{' '.join(rng.choice(_WORDS, size=8))} {seed}-{i}" for i in range(n)]
    y = np.arange(n, dtype=np.int64) % len(TEXT_CLASSES)
    return Examples("text", np.array(texts, dtype=object), y, TEXT_CLASSES)


def make_splits(kind: str) -> dict[str, Examples]:
    """Train/val/test of ``SPLIT_SIZES``, no example shared (each split has its own seed)."""
    makers = {"image": lambda n, s: make_images(n, len(IMAGE_CLASSES), s), "text": make_texts}
    return {name: makers[kind](size, seed) for seed, (name, size) in enumerate(SPLIT_SIZES.items())}


@pytest.fixture
def image_maker():
    """:func:`make_images`, for tests that need a set of another size."""
    return make_images


@pytest.fixture
def image_splits() -> dict[str, Examples]:
    return make_splits("image")


@pytest.fixture
def text_splits() -> dict[str, Examples]:
    return make_splits("text")


@pytest.fixture
def validation_config() -> DataValidationConfig:
    """Bounds the clean fixtures meet: 120 rows, classes 10%..60% of each split."""
    return DataValidationConfig(min_rows=100, min_class_fraction=0.1, max_class_fraction=0.6, max_text_length=500)
