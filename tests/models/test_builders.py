"""Every builder makes a compiled model that takes the serving input and learns from tiny data."""

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.models import build_model, make_dataset, predict_probabilities, to_model_inputs


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
