"""Digit classifiers over flattened 28x28 images (float32 ``[batch, 784]``, pixels / 255).

``cnn`` is the default: two small conv blocks reach >= 0.97 hold-out accuracy on ~7,500 real MNIST
digits in a few epochs and train in seconds on two CPU cores. ``mlp`` and ``softmax`` are the
original seed models, kept as config options (``train.architecture``).
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from pipeline.config import TrainConfig
from pipeline.models import IMAGE_FEATURES, IMAGE_SIZE

_DEFAULT_CNN_FILTERS = (32, 64)
_DEFAULT_CNN_DENSE_UNITS = 128
_DEFAULT_MLP_UNITS = 128
_DEFAULT_DROPOUT = 0.25


def _image_input() -> keras.KerasTensor:
    return keras.Input(shape=(IMAGE_FEATURES,), dtype="float32", name="images")


def build_cnn(config: TrainConfig, n_classes: int) -> keras.Model:
    """Two conv/max-pool blocks, a dense layer and a softmax: small enough for CPU, accurate enough."""
    inputs = _image_input()
    x = keras.layers.Reshape((IMAGE_SIZE, IMAGE_SIZE, 1))(inputs)
    for filters in _DEFAULT_CNN_FILTERS:
        x = keras.layers.Conv2D(filters, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(_DEFAULT_DROPOUT, seed=config.seed)(x)
    x = keras.layers.Dense(_DEFAULT_CNN_DENSE_UNITS, activation="relu")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="mnist_cnn")


def build_mlp(config: TrainConfig, n_classes: int) -> keras.Model:
    """One hidden layer of 128 units (the seed's ``mnist_saved_model`` style MLP)."""
    inputs = _image_input()
    x = keras.layers.Dense(_DEFAULT_MLP_UNITS, activation="relu")(inputs)
    x = keras.layers.Dropout(_DEFAULT_DROPOUT, seed=config.seed)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="mnist_mlp")


def build_softmax(config: TrainConfig, n_classes: int) -> keras.Model:
    """Multinomial logistic regression, TF Serving's original mnist example model."""
    del config  # nothing to tune; same signature as the other builders
    inputs = _image_input()
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(inputs)
    return keras.Model(inputs, outputs, name="mnist_softmax")


BUILDERS: dict[str, Callable[[TrainConfig, int], keras.Model]] = {
    "cnn": build_cnn,
    "mlp": build_mlp,
    "softmax": build_softmax,
}
