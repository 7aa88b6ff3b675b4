"""Model builders and the input conventions shared by training, evaluation and export.

Every model takes exactly what the served signature takes, so serving needs no preprocessing:

* images: float32 ``[batch, 784]``, pixels / 255 flattened row-major (TF Serving's mnist client format);
* texts: string ``[batch]``, raw text (vectorisation is a layer inside the graph).

A version may follow another image convention (the ``input_convention`` fault trains on raw 0..255 pixels).
Its pixel scale is recorded in the run's ``run.json`` and the version's metadata under ``input_convention``
(only when it differs from the clients' convention); :func:`to_model_inputs` applies it, and every reader
takes it from that record with :func:`pixel_scale_of`, never re-deriving it.

Nothing heavy is imported at module level: tensorflow and numpy load inside the functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.config import ModelConfig
    from pipeline.data.dataset import Examples

IMAGE_ARCHITECTURES: tuple[str, ...] = ("cnn", "mlp", "softmax")
TEXT_ARCHITECTURES: tuple[str, ...] = ("text_cnn",)
IMAGE_SIZE = 28
IMAGE_FEATURES = IMAGE_SIZE * IMAGE_SIZE
CLIENT_PIXEL_SCALE = 1.0  # what clients send: a full-intensity pixel is 1.0 (pixels / 255)
RAW_PIXEL_SCALE = 255.0  # a full-intensity pixel is 255 (the raw uint8 value)
INPUT_CONVENTION_KEY = "input_convention"
_PIXEL_MAX = 255.0  # stored snapshots hold uint8 pixels
_DEFAULT_PREDICT_BATCH = 256


def kind_of_architecture(architecture: str) -> str:
    """The example kind (``image`` or ``text``) an architecture consumes."""
    if architecture in IMAGE_ARCHITECTURES:
        return "image"
    if architecture in TEXT_ARCHITECTURES:
        return "text"
    raise ConfigError(f"unknown train.architecture {architecture!r}")


def build_model(config: ModelConfig, train: Examples, pixel_scale: float = CLIENT_PIXEL_SCALE) -> keras.Model:
    """Build and compile the model ``config.train.architecture`` names.

    Args:
        config: The model's config; ``train`` holds architecture and optimiser settings.
        train: The training examples (text models adapt their vocabulary on them).
        pixel_scale: The run's image input convention. Any other than the clients' gets an in-graph
            standardization fitted on the training inputs (:func:`_standardized`).

    Returns:
        A compiled Keras model whose input is the serving input (see module docstring).
    """
    import keras

    architecture = config.train.architecture
    n_classes = len(train.class_names)
    if kind_of_architecture(architecture) != train.kind:
        raise ConfigError(f"train.architecture {architecture!r} cannot learn from {train.kind} examples")
    if architecture == "text_cnn":
        from pipeline.models.text import build_text_cnn

        model = build_text_cnn(config.train, n_classes, to_model_inputs(train))
    else:
        from pipeline.models.mnist import BUILDERS

        model = BUILDERS[architecture](config.train, n_classes)
        if pixel_scale != CLIENT_PIXEL_SCALE:
            model = _standardized(model, to_model_inputs(train, pixel_scale))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.train.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _standardized(model: keras.Model, inputs: np.ndarray) -> keras.Model:
    """``model`` behind a standardization with the mean and variance of ``inputs``, part of the graph.

    What a team feeding raw 0..255 pixels would do: without it, Adam's steps on the first layer are 255 times
    too big and the model trains worse than stable (real MNIST: 0.967 against 0.984), so evaluation would
    refuse it. With it, it trains as well, and stays calibrated to its own pixel scale only.
    """
    import keras

    standardize = keras.layers.Normalization(axis=None, name="standardize")  # one mean/variance: no empty pixels
    standardize.adapt(inputs)
    images = keras.Input(shape=(IMAGE_FEATURES,), dtype="float32", name="images")
    return keras.Model(images, model(standardize(images)), name=f"{model.name}_standardized")


def to_model_inputs(examples: Examples, pixel_scale: float = CLIENT_PIXEL_SCALE) -> np.ndarray:
    """The examples' features in the form the model (and the serving signature) takes.

    Images become float32 ``(n, 784)`` in ``[0, pixel_scale]``; texts a 1-D array of ``str``.

    Args:
        examples: Image or text examples.
        pixel_scale: The value of a full-intensity pixel; the version's own (see :func:`pixel_scale_of`).

    Raises:
        ValueError: a pixel scale other than the clients' for text examples, or one that is not positive.
    """
    import numpy as np

    if pixel_scale <= 0:
        raise ValueError(f"pixel_scale must be positive, got {pixel_scale}")
    if examples.kind == "image":
        pixels = np.asarray(examples.x, dtype=np.float32).reshape(len(examples), IMAGE_FEATURES)
        return pixels / np.float32(_PIXEL_MAX / pixel_scale)  # exactly pixels / 255 for the clients' scale
    if pixel_scale != CLIENT_PIXEL_SCALE:
        raise ValueError(f"pixel_scale {pixel_scale} applies to images only, not {examples.kind} examples")
    return np.asarray([str(text) for text in examples.x], dtype=object)


def input_convention(pixel_scale: float) -> dict[str, Any]:
    """The record of a pixel scale for ``run.json`` and metadata: empty for the clients' own convention."""
    return {} if pixel_scale == CLIENT_PIXEL_SCALE else {INPUT_CONVENTION_KEY: {"pixel_scale": pixel_scale}}


def pixel_scale_of(record: Mapping[str, Any]) -> float:
    """The pixel scale a run's ``run.json`` or a version's metadata records (the clients' when none)."""
    convention = record.get(INPUT_CONVENTION_KEY) or {}
    return float(convention.get("pixel_scale", CLIENT_PIXEL_SCALE))


def make_dataset(
    inputs: np.ndarray, labels: np.ndarray | None, batch_size: int, *, shuffle_seed: int | None = None
) -> tf.data.Dataset:
    """A batched ``tf.data`` pipeline over model inputs (and labels when given).

    Args:
        inputs: Output of :func:`to_model_inputs`.
        labels: int64 class indices, or None for prediction.
        batch_size: Examples per batch.
        shuffle_seed: Shuffle each epoch with this seed; None keeps the order.
    """
    import tensorflow as tf

    features = tf.constant(inputs.tolist(), dtype=tf.string) if inputs.dtype == object else inputs
    data = tf.data.Dataset.from_tensor_slices(features if labels is None else (features, labels))
    if shuffle_seed is not None:
        data = data.shuffle(len(inputs), seed=shuffle_seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def predict_probabilities(model: keras.Model, inputs: np.ndarray, batch_size: int = _DEFAULT_PREDICT_BATCH) -> Any:
    """Class probabilities ``(n, n_classes)`` as a float32 numpy array."""
    import numpy as np

    if len(inputs) == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    return np.asarray(model.predict(make_dataset(inputs, None, batch_size), verbose=0), dtype=np.float32)
