"""Every builder makes a compiled model that takes the serving input and learns from tiny data."""

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.models import (
    CLIENT_PIXEL_SCALE,
    RAW_PIXEL_SCALE,
    build_model,
    input_convention,
    make_dataset,
    pixel_scale_of,
    predict_probabilities,
    to_model_inputs,
)


@pytest.mark.parametrize("architecture", ["cnn", "mlp", "softmax"])
def test_image_builders_take_flat_pixels_and_learn(architecture, image_snapshot, make_config) -> None:
    config = make_config("image", architecture, epochs=3)
    train, test = image_snapshot.split("train"), image_snapshot.split("test")
    model = build_model(config, train)
    assert model.input_shape == (None, 784)
    assert model.output_shape == (None, 10)
    model.fit(make_dataset(to_model_inputs(train), train.y, 32, shuffle_seed=0), epochs=3, shuffle=False, verbose=0)
    probabilities = predict_probabilities(model, to_model_inputs(test))
    assert probabilities.shape == (len(test), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert np.mean(probabilities.argmax(axis=1) == test.y) > 0.5  # chance is 0.1


def test_text_cnn_takes_raw_strings_and_learns(text_snapshot, make_config) -> None:
    config = make_config("text", epochs=3)
    train = text_snapshot.split("train")
    model = build_model(config, train)
    assert model.get_layer("vectorize").vocabulary_size() > 20  # adapted on the train texts
    assert {layer.name for layer in model.layers} >= {"conv_2", "conv_3", "concat", "probabilities"}
    model.fit(make_dataset(to_model_inputs(train), train.y, 32, shuffle_seed=0), epochs=3, shuffle=False, verbose=0)
    mails = np.array(["free cash prize click now", "team meeting agenda"], dtype=object)
    probabilities = predict_probabilities(model, mails)
    assert probabilities.shape == (2, 2)
    assert probabilities[0, 1] > 0.5 > probabilities[1, 1]


def test_text_cnn_survives_keras_save_and_load(text_snapshot, make_config, tmp_path) -> None:
    import keras

    model = build_model(make_config("text"), text_snapshot.split("train"))
    inputs = to_model_inputs(text_snapshot.split("test"))
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    np.testing.assert_allclose(predict_probabilities(reloaded, inputs), predict_probabilities(model, inputs), atol=1e-6)


def test_architecture_must_fit_the_data_kind(image_snapshot, make_config) -> None:
    with pytest.raises(ConfigError, match="text_cnn"):
        build_model(make_config("image", "text_cnn"), image_snapshot.split("train"))


def test_seeded_builds_are_identical(image_snapshot, make_config) -> None:
    import keras

    config = make_config("image", "mlp")
    weights = []
    for _ in range(2):
        keras.utils.set_random_seed(7)
        weights.append(build_model(config, image_snapshot.split("train")).get_weights())
    for first, second in zip(*weights, strict=True):
        np.testing.assert_array_equal(first, second)


def test_to_model_inputs_applies_the_pixel_scale(image_snapshot) -> None:
    test = image_snapshot.split("test")
    pixels = np.asarray(test.x, dtype=np.float32).reshape(len(test), 784)
    client = to_model_inputs(test)
    assert client.dtype == np.float32 and client.max() == 1.0
    np.testing.assert_array_equal(client, pixels / np.float32(255))  # bit for bit what clients send
    np.testing.assert_array_equal(to_model_inputs(test, CLIENT_PIXEL_SCALE), client)
    raw = to_model_inputs(test, RAW_PIXEL_SCALE)
    assert raw.dtype == np.float32 and raw.max() == 255.0
    np.testing.assert_array_equal(raw, pixels)


def test_a_pixel_scale_is_refused_for_texts_and_must_be_positive(image_snapshot, text_snapshot) -> None:
    np.testing.assert_array_equal(to_model_inputs(text_snapshot.split("test"), CLIENT_PIXEL_SCALE),
                                  to_model_inputs(text_snapshot.split("test")))
    with pytest.raises(ValueError, match="images only"):
        to_model_inputs(text_snapshot.split("test"), RAW_PIXEL_SCALE)
    with pytest.raises(ValueError, match="positive"):
        to_model_inputs(image_snapshot.split("test"), 0.0)


def test_input_convention_is_recorded_only_when_it_is_not_the_clients() -> None:
    assert input_convention(CLIENT_PIXEL_SCALE) == {}
    record = input_convention(RAW_PIXEL_SCALE)
    assert record == {"input_convention": {"pixel_scale": 255.0}}
    assert pixel_scale_of(record) == RAW_PIXEL_SCALE
    assert pixel_scale_of({"run_id": "r"}) == CLIENT_PIXEL_SCALE  # older versions recorded nothing


def test_a_raw_pixel_model_standardizes_with_its_training_inputs(image_snapshot, make_config) -> None:
    train = image_snapshot.split("train")
    assert "standardize" not in {layer.name for layer in build_model(make_config("image", "softmax"), train).layers}
    model = build_model(make_config("image", "softmax"), train, RAW_PIXEL_SCALE)
    assert model.input_shape == (None, 784) and model.output_shape == (None, 10)
    mean, variance = (float(np.asarray(w).squeeze()) for w in model.get_layer("standardize").get_weights()[:2])
    raw = to_model_inputs(train, RAW_PIXEL_SCALE)
    assert mean == pytest.approx(raw.mean(), rel=1e-4) and variance == pytest.approx(raw.var(), rel=1e-3)
