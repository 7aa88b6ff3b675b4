"""Model builders and the input conventions shared by training, evaluation and export.

Every model takes exactly what the served signature takes, so serving needs no preprocessing:

* images: float32 ``[batch, 784]``, pixels / 255 flattened row-major (TF Serving's mnist client format);
* texts: string ``[batch]``, raw text (vectorisation is a layer inside the graph).

Nothing heavy is imported at module level: tensorflow and numpy load inside the functions.
"""

from __future__ import annotations

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
_DEFAULT_PREDICT_BATCH = 256


def kind_of_architecture(architecture: str) -> str:
    """The example kind (``image`` or ``text``) an architecture consumes."""
    if architecture in IMAGE_ARCHITECTURES:
        return "image"
    if architecture in TEXT_ARCHITECTURES:
        return "text"
    raise ConfigError(f"unknown train.architecture {architecture!r}")


def build_model(config: ModelConfig, train: Examples) -> keras.Model:
    """Build and compile the model ``config.train.architecture`` names.

    Args:
        config: The model's config; ``train`` holds architecture and optimiser settings.
        train: The training examples (text models adapt their vocabulary on them).

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
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.train.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def to_model_inputs(examples: Examples) -> np.ndarray:
    """The examples' features in the form the model (and the serving signature) takes.

    Images become float32 ``(n, 784)`` in [0, 1]; texts a 1-D array of ``str``.
    """
    import numpy as np

    if examples.kind == "image":
        pixels = np.asarray(examples.x, dtype=np.float32).reshape(len(examples), IMAGE_FEATURES)
        return pixels / np.float32(255.0)
    return np.asarray([str(text) for text in examples.x], dtype=object)


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
