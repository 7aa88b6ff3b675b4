"""Plots of a training run (matplotlib, Agg canvas: no display, no global pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DEFAULT_DPI = 100
_CURVE_METRICS = ("loss", "accuracy")


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=_DEFAULT_DPI, bbox_inches="tight")
    return path


def plot_training_curve(history: dict[str, list[float]], path: Path) -> Path:
    """Loss and accuracy per epoch, train and validation side by side.

    Args:
        history: Keras ``History.history`` (``loss``, ``val_loss``, ``accuracy``, ...).
        path: Where the PNG goes.
    """
    figure = Figure(figsize=(10, 4))
    for axis, metric in zip(figure.subplots(1, len(_CURVE_METRICS)), _CURVE_METRICS, strict=True):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            values = history.get(key) or []
            axis.plot(range(1, len(values) + 1), values, marker="o", label=label)
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(True, alpha=0.3)
        axis.legend()
    return _save(figure, path)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path) -> Path:
    """A confusion matrix heat map, true classes as rows, counts written in every cell."""
    n = len(class_names)
    figure = Figure(figsize=(max(4, 0.6 * n + 2), max(3.5, 0.6 * n + 1.5)))
    axis = figure.subplots()
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis)
    axis.set_xticks(range(n), labels=list(class_names))
    axis.set_yticks(range(n), labels=list(class_names))
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            colour = "white" if peak and count > peak / 2 else "black"
            axis.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=8)
    return _save(figure, path)
