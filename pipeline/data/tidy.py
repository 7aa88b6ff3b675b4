"""Tidy tables that describe data splits one row at a time, for validation and data docs.

:func:`example_table` has one row per example: its split, label, a content hash (to find the same
example in two splits) and a few cheap features of its pixels or characters. Values are taken as
they are, never cast to the contract's dtype first, so a pixel of 300 or -1 shows up as one.
:func:`class_balance_table` has one row per (split, class) with its count and fraction.
Only task code imports this module (it imports pandas).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import pandas as pd

from pipeline.data.dataset import Examples

_DEFAULT_INK_THRESHOLD = 128  # a pixel at least half-bright counts as ink
_UNKNOWN_LABEL_NAME = "<unknown>"
_ASCII = 128
# Character classes as bits, so one lookup classifies a code point for every feature.
_ALPHA, _DIGIT, _SPACE, _NONPRINTABLE = 1, 2, 4, 8
_TEXT_FLAGS = {
    "alpha_fraction": _ALPHA,
    "digit_fraction": _DIGIT,
    "whitespace_fraction": _SPACE,
    "nonprintable_fraction": _NONPRINTABLE,
}


def example_table(splits: Mapping[str, Examples]) -> pd.DataFrame:
    """One row per example of every split.

    Args:
        splits: Examples by split name; all of one kind.

    Returns:
        Columns ``split``, ``label``, ``label_name``, ``example_sha``, then ``pixel_min``,
        ``pixel_max``, ``pixel_mean``, ``ink_fraction`` for images or ``length``,
        ``alpha_fraction``, ``digit_fraction``, ``whitespace_fraction``,
        ``nonprintable_fraction`` for texts. Missing texts and NaN pixels give nulls.
    """
    kinds = {examples.kind for examples in splits.values()}
    if len(kinds) > 1:
        raise ValueError(f"splits mix kinds {sorted(kinds)}; validate one kind at a time")
    frames = [_split_frame(name, examples) for name, examples in splits.items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _split_frame(name: str, examples: Examples) -> pd.DataFrame:
    features = image_features(examples.x) if examples.kind == "image" else text_features(examples.x)
    columns = {
        "split": np.full(len(examples), name, dtype=object),
        "label": examples.y,
        "label_name": label_names(examples.y, examples.class_names),
        "example_sha": example_shas(examples.x, examples.kind),
        **features,
    }
    return pd.DataFrame(columns)


def label_names(y: np.ndarray, class_names: tuple[str, ...]) -> np.ndarray:
    """The class name of each label; ``<unknown>`` where a label is no known class index."""
    names = np.full(len(y), _UNKNOWN_LABEL_NAME, dtype=object)
    with np.errstate(invalid="ignore"):
        known = (y >= 0) & (y < len(class_names)) & (np.asarray(y) % 1 == 0)
    lookup = np.asarray(class_names, dtype=object)
    names[known] = lookup[np.asarray(y[known], dtype=np.int64)]
    return names


def example_shas(x: np.ndarray, kind: str) -> np.ndarray:
    """sha256 of each example: an image's pixels or a text's UTF-8; None for a missing text.

    An image whose values all fit uint8 is hashed as uint8 bytes whatever its dtype, so the same
    picture in an int16 and a uint8 split is found; any other image is hashed as float64 bytes.
    """
    if kind == "image":
        return np.array([hashlib.sha256(row).hexdigest() for row in _canonical_pixel_rows(x)], dtype=object)
    return np.array(
        [hashlib.sha256(t.encode("utf-8", "surrogatepass")).hexdigest() if isinstance(t, str) else None for t in x],
        dtype=object,
    )


def _pixel_rows(x: np.ndarray) -> np.ndarray:
    """Images as one row of pixels each (also for zero images)."""
    x = np.asarray(x)
    return x.reshape(len(x), int(np.prod(x.shape[1:])))


def _canonical_pixel_rows(x: np.ndarray) -> list[bytes]:
    pixels = _pixel_rows(x)
    with np.errstate(invalid="ignore"):  # NaN and out-of-range values simply do not fit
        as_uint8 = pixels.astype(np.uint8)
        fits = (as_uint8 == pixels).all(axis=1)
    return [
        as_uint8[i].tobytes() if fits[i] else pixels[i].astype(np.float64).tobytes()
        for i in range(len(pixels))
    ]


def image_features(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image pixel statistics of the values as given (any numeric dtype), as float64."""
    pixels = _pixel_rows(x)
    return {  # reductions in the given dtype (min/max cannot overflow), sums in float64
        "pixel_min": pixels.min(axis=1).astype(np.float64),
        "pixel_max": pixels.max(axis=1).astype(np.float64),
        "pixel_mean": pixels.mean(axis=1, dtype=np.float64),
        "ink_fraction": (pixels >= _DEFAULT_INK_THRESHOLD).mean(axis=1),
    }


def text_features(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-text length and character-class fractions; NaN for missing (non-str) texts."""
    lengths = np.full(len(x), np.nan)
    counts = np.full((len(x), len(_TEXT_FLAGS)), np.nan)
    for i, text in enumerate(x):
        if isinstance(text, str):
            lengths[i] = len(text)
            counts[i] = _class_counts(text)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = counts / np.maximum(lengths, 1)[:, None]  # an empty text has 0 of everything
    features = {"length": lengths}
    features.update({name: fractions[:, col] for col, name in enumerate(_TEXT_FLAGS)})
    return features


def _class_counts(text: str) -> np.ndarray:
    """How many characters of each class in ``_TEXT_FLAGS`` one text has.

    Characters are classified as an array of code points (one byte each for ASCII text, the
    common case) and tallied per combination of classes: no Python loop per character.
    """
    if text.isascii():
        flags = _ASCII_FLAGS[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    else:
        code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        flags = _char_flags(code_points)
    return np.bincount(flags, minlength=_FLAG_COMBOS) @ _BITS_OF_COMBO


def _char_flags(code_points: np.ndarray) -> np.ndarray:
    flags = _ASCII_FLAGS[np.minimum(code_points, _ASCII - 1)]
    wide = code_points >= _ASCII
    distinct, inverse = np.unique(code_points[wide], return_inverse=True)
    flags[wide] = np.array([_flags_of(chr(cp)) for cp in distinct], dtype=np.uint8)[inverse]
    return flags


def _flags_of(char: str) -> int:
    printable = char.isprintable() or char.isspace()  # tabs and newlines are fine in a text
    return (
        _ALPHA * char.isalpha()
        | _DIGIT * char.isdigit()
        | _SPACE * char.isspace()
        | _NONPRINTABLE * (not printable)
    )


_ASCII_FLAGS = np.array([_flags_of(chr(cp)) for cp in range(_ASCII)], dtype=np.uint8)
_FLAG_COMBOS = 16
# Row c says which classes the flag combination c holds: bincount(flags) @ this = counts per class.
_BITS_OF_COMBO = np.array(
    [[(combo & bit) > 0 for bit in _TEXT_FLAGS.values()] for combo in range(_FLAG_COMBOS)], dtype=np.int64
)


def class_balance_table(examples: pd.DataFrame, class_names: tuple[str, ...], splits: list[str]) -> pd.DataFrame:
    """One row per (split, known class): its count, the split's size and the class's fraction.

    Classes absent from a split appear with count 0, so a missing class fails a lower bound.
    Unknown labels count toward the split's size but get no row of their own.
    """
    counts = examples.groupby(["split", "label"]).size()
    split_rows = examples.groupby("split").size()
    rows = []
    for split in splits:
        total = int(split_rows.get(split, 0))
        for label, name in enumerate(class_names):
            count = int(counts.get((split, label), 0))
            fraction = count / total if total else 0.0
            rows.append({"split": split, "label": label, "label_name": name, "count": count,
                         "split_rows": total, "fraction": fraction})
    return pd.DataFrame(rows, columns=["split", "label", "label_name", "count", "split_rows", "fraction"])
