"""Metrics against values computed by hand."""

import numpy as np
import pytest

from pipeline.models.evaluate import confusion_matrix, evaluate_model, evaluate_predictions


def _one_hot(classes: list[int], n: int) -> np.ndarray:
    return np.eye(n)[classes]


def test_binary_metrics_match_hand_computed_values() -> None:
    # true:  ham ham ham spam spam spam spam ; predicted: ham spam ham spam spam ham spam
    y_true = np.array([0, 0, 0, 1, 1, 1, 1])
    predicted = [0, 1, 0, 1, 1, 0, 1]
    metrics = evaluate_predictions(y_true, _one_hot(predicted, 2), ("ham", "spam"))
    # spam: TP=3 FP=1 FN=1 -> P=3/4 R=3/4 F1=3/4 ; ham: TP=2 FP=1 FN=1 -> P=R=F1=2/3
    assert metrics["accuracy"] == pytest.approx(5 / 7)
    assert metrics["f1_spam"] == pytest.approx(0.75)
    assert metrics["per_class"]["ham"]["precision"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["spam"]["support"] == 4
    assert metrics["f1_macro"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert metrics["confusion_matrix"] == [[2, 1], [1, 3]]
    assert metrics["n_examples"] == 7


def test_unbalanced_precision_recall_and_absent_prediction_scores_zero() -> None:
    y_true = np.array([0, 1, 2, 2])
    predicted = [0, 0, 2, 2]  # class 1 is never predicted
    metrics = evaluate_predictions(y_true, _one_hot(predicted, 3), ("a", "b", "c"))
    assert metrics["per_class"]["a"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert metrics["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert metrics["accuracy"] == 0.75
    assert "f1_spam" not in metrics


def test_argmax_of_probabilities_is_the_prediction() -> None:
    probabilities = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    assert confusion_matrix(np.array([1, 2]), probabilities.argmax(axis=1), 3).tolist() == [
        [0, 0, 0],
        [0, 1, 0],
        [1, 0, 0],
    ]


def test_wrong_probability_width_is_refused() -> None:
    with pytest.raises(ValueError, match="3 classes"):
        evaluate_predictions(np.array([0]), np.array([[1.0, 0.0]]), ("a", "b", "c"))


def test_metrics_are_json_serialisable() -> None:
    import json

    metrics = evaluate_predictions(np.array([0, 1]), _one_hot([0, 1], 2), ("ham", "spam"))
    assert json.loads(json.dumps(metrics)) == metrics


def test_evaluate_model_scores_a_keras_model(image_snapshot) -> None:
    import keras

    from pipeline.models import IMAGE_FEATURES

    # A model that always says "3" is right exactly on the 3s.
    inputs = keras.Input((IMAGE_FEATURES,))
    outputs = keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros",
                                 bias_initializer=keras.initializers.Constant(np.eye(10)[3]))(inputs)
    test = image_snapshot.split("test")
    metrics = evaluate_model(keras.Model(inputs, outputs), test)
    assert metrics["accuracy"] == pytest.approx(np.mean(test.y == 3))
    assert metrics["per_class"]["3"]["recall"] == 1.0
