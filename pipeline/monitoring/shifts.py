"""Known shifts of real digits, as from a "new scanner": for the drift tests, ``bench/drift.py`` and the demo.

Each shift transforms images and keeps their labels (the digit is still the same digit), and keeps the form the
inputs came in (784 floats or 28x28, the same scale):

- ``thicken``: strokes one pixel thicker on every side (grey dilation with a 3x3 cross), a heavier pen or scanner;
- ``translate``: the digit moved 3 pixels right and 3 down (what falls off the edge is lost), a misaligned feed;
- ``faint``: intensity at 60 %, a paler scan.

:func:`shift_share` shifts a seeded ``share`` of the examples, which is what ``pipeline traffic --shift NAME
--shift-share S`` sends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

_SIDE = 28
_TRANSLATE_PX = 3
_FAINT = 0.6


def _as_images(pixels: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    import numpy as np

    array = np.asarray(pixels)
    if array.size % (_SIDE * _SIDE):
        raise ConfigError(f"shifts apply to 28x28 digits, got inputs of shape {array.shape}")
    return array.reshape(-1, _SIDE, _SIDE), array.shape


def thicken(pixels: Any) -> np.ndarray:
    """Grey dilation with a 3x3 cross: each pixel takes its brightest 4-neighbour."""
    import numpy as np

    images, shape = _as_images(pixels)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    out = np.maximum.reduce([images, padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2],
                             padded[:, 1:-1, 2:]])
    return out.reshape(shape)


def translate(pixels: Any, dx: int = _TRANSLATE_PX, dy: int = _TRANSLATE_PX) -> np.ndarray:
    """The digit moved ``dx`` right and ``dy`` down, blank where it came from."""
    import numpy as np

    images, shape = _as_images(pixels)
    out = np.zeros_like(images)
    out[:, max(dy, 0):_SIDE + min(dy, 0), max(dx, 0):_SIDE + min(dx, 0)] = \
        images[:, max(-dy, 0):_SIDE - max(dy, 0), max(-dx, 0):_SIDE - max(dx, 0)]
    return out.reshape(shape)


def faint(pixels: Any) -> np.ndarray:
    """Intensity at 60 % (same dtype: integer pixels are rounded)."""
    import numpy as np

    images, shape = _as_images(pixels)
    scaled = images.astype(np.float64) * _FAINT
    out = np.rint(scaled).astype(images.dtype) if np.issubdtype(images.dtype, np.integer) else \
        scaled.astype(images.dtype)
    return out.reshape(shape)


SHIFTS: dict[str, Callable[[Any], np.ndarray]] = {"thicken": thicken, "translate": translate, "faint": faint}


def shift_named(name: str) -> Callable[[Any], np.ndarray]:
    """The shift called ``name``.

    Raises:
        ConfigError: no such shift (the message lists them).
    """
    if name not in SHIFTS:
        raise ConfigError(f"unknown shift {name!r} (known: {', '.join(SHIFTS)})")
    return SHIFTS[name]


def shift_share(inputs: Any, name: str, share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``inputs`` with a seeded ``share`` of its examples shifted, and the mask of those shifted.

    Raises:
        ConfigError: an unknown shift, or a share outside [0, 1].
    """
    import numpy as np

    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"shift share must be between 0 and 1, got {share}")
    transform = shift_named(name)
    out = np.array(inputs, copy=True)
    mask = np.zeros(len(out), dtype=bool)
    mask[np.random.default_rng(seed).permutation(len(out))[:round(share * len(out))]] = True
    if mask.any():
        out[mask] = transform(out[mask])
    return out, mask
