import json

import numpy as np
import pytest

from pipeline.errors import ValidationFailed
from pipeline.monitoring.features import (
    DIGIT_FEATURES,
    OTHER_TOKEN,
    digit_features,
    instances_of,
    text_features,
    token_counts,
)
from pipeline.monitoring.shifts import thicken, translate


def _bar(width: int) -> np.ndarray:
    """A vertical stroke ``width`` pixels wide in the middle of a blank digit (0..255)."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[6:22, 12:12 + width] = 255
    return image


def test_the_same_digits_give_the_same_features_in_either_scale_and_shape() -> None:
    image = _bar(2)
    raw = digit_features(image[None])
    unit = digit_features((image.reshape(1, 784) / 255.0).tolist())
    assert set(raw) == set(DIGIT_FEATURES)
    for name in DIGIT_FEATURES:
        assert raw[name] == pytest.approx(unit[name])
    assert raw["bbox_width"][0] == 2 and raw["bbox_height"][0] == 16
    assert raw["centroid_x"][0] == pytest.approx(12.5) and raw["centroid_y"][0] == pytest.approx(13.5)


def test_thicker_strokes_raise_ink_and_the_stroke_measure_and_a_shift_moves_the_centroid() -> None:
    thin, thick = digit_features(_bar(2)[None]), digit_features(_bar(5)[None])
    assert thick["stroke"][0] > thin["stroke"][0] and thick["ink"][0] > thin["ink"][0]
    dilated = digit_features(thicken(_bar(2)[None]))
    assert dilated["stroke"][0] > thin["stroke"][0] and dilated["bbox_width"][0] == 4
    moved = digit_features(translate(_bar(2)[None]))
    assert moved["centroid_x"][0] == pytest.approx(thin["centroid_x"][0] + 3)
    assert moved["centroid_y"][0] == pytest.approx(thin["centroid_y"][0] + 3)


def test_a_blank_digit_has_features_not_nan() -> None:
    blank = digit_features(np.zeros((1, 784)))
    assert all(np.isfinite(values).all() for values in blank.values())


def test_inputs_that_are_not_digits_are_refused() -> None:
    with pytest.raises(ValidationFailed, match="784 values"):
        digit_features(np.zeros((1, 100)))


def test_e_mail_features_count_length_and_unknown_words() -> None:
    features = text_features(["cheap pills now", "", "hello team meeting"], frozenset({"hello", "team", "meeting"}))
    assert features["oov_rate"].tolist() == [1.0, 0.0, 0.0]
    assert features["length"][1] == 0 and features["tokens"][0] == pytest.approx(np.log1p(3))
    counts = token_counts(["hello hello spam", "Hello"], ["hello"])
    assert counts == {"hello": 3, OTHER_TOKEN: 1}


@pytest.mark.parametrize(("request_body", "count"), [
    ({"instances": [[0.0] * 784, [0.0] * 784]}, 2),
    ({"inputs": {"pixels": [[0.0] * 784]}}, 1),  # the capture's record of a gRPC request (columnar, named)
    ({"instances": ["an e-mail"]}, 1),
    ({"inputs": "one e-mail"}, 1),
])
def test_the_instances_of_a_predict_request(request_body, count) -> None:
    assert len(instances_of(json.loads(json.dumps(request_body)))) == count


def test_a_body_without_instances_is_refused() -> None:
    with pytest.raises(ValidationFailed, match="neither instances nor inputs"):
        instances_of({"signature_name": "x"})
