"""Classification metrics in plain numpy: accuracy, macro F1, per-class P/R/F1, confusion matrix.

A class with no predictions (or no examples) gets precision (or recall) 0 rather than NaN, so
metrics stay JSON-serialisable and a degenerate model scores low instead of erroring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.models import CLIENT_PIXEL_SCALE

if TYPE_CHECKING:
    from pathlib import Path

    import keras

    from pipeline.data.dataset import Examples

SPAM_CLASS = "spam"


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]`` as an int64 ``(n_classes, n_classes)`` array."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=np.float64), where=denominator > 0)


def per_class_scores(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 of every class from a confusion matrix."""
    true_positive = np.diag(matrix).astype(np.float64)
    precision = _safe_divide(true_positive, matrix.sum(axis=0).astype(np.float64))
    recall = _safe_divide(true_positive, matrix.sum(axis=1).astype(np.float64))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return precision, recall, f1


def evaluate_predictions(
    y_true: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Metrics of predicted class probabilities against the true labels.

    Args:
        y_true: int class indices ``(n,)``.
        probabilities: ``(n, n_classes)``; the predicted class is the arg-max.
        class_names: Names of the classes, by index.

    Returns:
        ``accuracy``, ``f1_macro``, ``f1_spam`` (only when a class is named "spam"), ``n_examples``,
        ``per_class`` ({name: {precision, recall, f1, support}}) and ``confusion_matrix`` (lists).
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names):
        raise ValueError(f"probabilities of shape {probabilities.shape} do not match {len(class_names)} classes")
    y_pred = probabilities.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    precision, recall, f1 = per_class_scores(matrix)
    n_examples = int(matrix.sum())
    metrics: dict[str, Any] = {
        "accuracy": float(np.trace(matrix) / n_examples) if n_examples else 0.0,
        "f1_macro": float(f1.mean()),
        "n_examples": n_examples,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(matrix[i].sum()),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.tolist(),
    }
    if SPAM_CLASS in class_names:
        metrics["f1_spam"] = float(f1[list(class_names).index(SPAM_CLASS)])
    return metrics


def evaluate_model(
    model: keras.Model, examples: Examples, *, pixel_scale: float = CLIENT_PIXEL_SCALE
) -> dict[str, Any]:
    """Predict ``examples`` with ``model`` and score them (see :func:`evaluate_predictions`).

    ``pixel_scale`` is the run's input convention (:func:`pipeline.models.pixel_scale_of`), never guessed here.
    """
    from pipeline.models import predict_probabilities, to_model_inputs

    probabilities = predict_probabilities(model, to_model_inputs(examples, pixel_scale))
    return evaluate_predictions(examples.y, probabilities, examples.class_names)


def evaluate_saved_model(version_path: Path, examples: Examples, signature_name: str = "serving_default",
                         batch_size: int = 256) -> dict[str, Any]:
    """Score a served version on ``examples``: its SavedModel's signature, fed what clients send (pixels / 255 or
    raw text), its ``probabilities`` output (see :func:`evaluate_predictions`)."""
    import tensorflow as tf

    from pipeline.models import to_model_inputs

    serve = tf.saved_model.load(str(version_path)).signatures[signature_name]
    (input_name,) = serve.structured_input_signature[1].keys()
    inputs = to_model_inputs(examples)
    batches = [serve(**{input_name: tf.constant(inputs[start:start + batch_size])})["probabilities"].numpy()
               for start in range(0, len(inputs), batch_size)]
    return evaluate_predictions(examples.y, np.concatenate(batches), examples.class_names)
