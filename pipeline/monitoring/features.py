"""Per-model features of live inputs, cheap enough to compute on every captured request.

Digits (what clients send: 784 floats in [0, 1] or 0..255, or 28x28 arrays) become one row each of:

- ``ink``: mean intensity (0..1), how much of the frame is written on;
- ``centroid_x`` / ``centroid_y``: the intensity-weighted centre, in pixels (a translated scan moves it);
- ``bbox_width`` / ``bbox_height``: the extent of the pixels above half intensity;
- ``stroke``: written pixels over their boundary pixels (≈ half the stroke width: thicker pens raise it).

E-mails (raw text) become ``length`` (log1p of the characters), ``tokens`` (log1p of the token count) and
``oov_rate`` (the share of tokens outside the training snapshot's vocabulary); the window's token distribution
is compared as a whole (:func:`token_counts`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.errors import ValidationFailed

if TYPE_CHECKING:
    import numpy as np

SIDE = 28
DIGIT_FEATURES = ("ink", "centroid_x", "centroid_y", "bbox_width", "bbox_height", "stroke")
TEXT_FEATURES = ("length", "tokens", "oov_rate")
_INK_LEVEL = 0.5  # a pixel at or above half intensity is written on
_TOKEN = re.compile(r"[a-z0-9']+")
OTHER_TOKEN = "<other>"


def feature_names(kind: str) -> tuple[str, ...]:
    return DIGIT_FEATURES if kind == "image" else TEXT_FEATURES


def as_unit_images(pixels: Any) -> np.ndarray:
    """(n, 28, 28) float32 in [0, 1] from 784-long rows or 28x28 arrays, in [0, 1] or 0..255.

    Raises:
        ValidationFailed: not 784 values an image.
    """
    import numpy as np

    array = np.asarray(pixels, dtype=np.float32)
    if array.size % (SIDE * SIDE) or array.size == 0:
        raise ValidationFailed(f"digit inputs must be 784 values an image, got shape {array.shape}")
    images = array.reshape(-1, SIDE, SIDE)
    if images.max(initial=0.0) > 1.5:  # raw 0..255 pixels (the model's own convention may be either)
        images = images / np.float32(255.0)
    return np.clip(images, 0.0, 1.0)


def digit_features(pixels: Any) -> dict[str, np.ndarray]:
    """The digit features of each image (see the module docstring), one array per feature."""
    import numpy as np

    images = as_unit_images(pixels)
    n = len(images)
    mass = images.sum(axis=(1, 2))
    safe = np.where(mass > 0, mass, 1.0)
    grid = np.arange(SIDE, dtype=np.float32)
    centroid_x = (images.sum(axis=1) * grid).sum(axis=1) / safe
    centroid_y = (images.sum(axis=2) * grid).sum(axis=1) / safe
    written: np.ndarray = np.asarray(images >= _INK_LEVEL)
    cols: np.ndarray = np.asarray(written.any(axis=1))
    rows: np.ndarray = np.asarray(written.any(axis=2))
    width = np.where(cols.any(axis=1), SIDE - cols[:, ::-1].argmax(axis=1) - cols.argmax(axis=1), 0)
    height = np.where(rows.any(axis=1), SIDE - rows[:, ::-1].argmax(axis=1) - rows.argmax(axis=1), 0)
    padded = np.pad(written, ((0, 0), (1, 1), (1, 1)))
    interior = (padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]) & written
    count = written.sum(axis=(1, 2))
    boundary = count - interior.sum(axis=(1, 2))
    stroke = count / np.maximum(boundary, 1)
    return {"ink": mass / (SIDE * SIDE), "centroid_x": np.where(mass > 0, centroid_x, SIDE / 2),
            "centroid_y": np.where(mass > 0, centroid_y, SIDE / 2), "bbox_width": width.astype(np.float64),
            "bbox_height": height.astype(np.float64), "stroke": stroke.astype(np.float64)} if n else \
        {name: np.zeros(0) for name in DIGIT_FEATURES}


def tokens_of(text: str) -> list[str]:
    """Lower-cased word tokens (close to the text model's own standardization)."""
    return _TOKEN.findall(text.lower())


def vocabulary_of(texts: Iterable[str], size: int) -> frozenset[str]:
    """The ``size`` most frequent tokens of ``texts`` (the training snapshot's vocabulary)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(tokens_of(text))
    return frozenset(token for token, _ in counts.most_common(size))


def text_features(texts: Sequence[str], vocabulary: frozenset[str]) -> dict[str, np.ndarray]:
    """The e-mail features of each text (see the module docstring), one array per feature."""
    import numpy as np

    lengths, counts, oov = [], [], []
    for text in texts:
        tokens = tokens_of(str(text))
        lengths.append(len(str(text)))
        counts.append(len(tokens))
        oov.append(sum(token not in vocabulary for token in tokens) / len(tokens) if tokens else 0.0)
    return {"length": np.log1p(np.asarray(lengths, dtype=np.float64)),
            "tokens": np.log1p(np.asarray(counts, dtype=np.float64)), "oov_rate": np.asarray(oov, dtype=np.float64)}


def token_counts(texts: Iterable[str], kept: Sequence[str]) -> dict[str, int]:
    """How often each token of ``kept`` occurs in ``texts``; every other token counts as :data:`OTHER_TOKEN`."""
    wanted = set(kept)
    counts: Counter[str] = Counter()
    for text in texts:
        for token in tokens_of(str(text)):
            counts[token if token in wanted else OTHER_TOKEN] += 1
    return {token: counts.get(token, 0) for token in (*kept, OTHER_TOKEN)}


def features_of(kind: str, inputs: Any, vocabulary: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
    """The features of ``inputs`` for a model of ``kind`` (``image`` or ``text``)."""
    return digit_features(inputs) if kind == "image" else text_features(list(inputs), vocabulary)


def instances_of(request: Mapping[str, Any]) -> list[Any]:
    """The instances of a TF Serving predict request (row format ``instances``, or columnar ``inputs``).

    Raises:
        ValidationFailed: neither is there, or the instances are named inputs this monitor cannot read.
    """
    data = request.get("instances", request.get("inputs"))
    if data is None:
        raise ValidationFailed("the request has neither instances nor inputs")
    if isinstance(data, Mapping):  # named inputs: the models here have one input
        if len(data) != 1:
            raise ValidationFailed(f"the request names {len(data)} inputs; the monitor reads single-input models")
        data = next(iter(data.values()))
    if isinstance(data, (str, bytes)) or not isinstance(data, list):
        return [data]
    return list(data)
