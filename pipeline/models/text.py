"""Text CNN (Kim, 2014) over raw strings, with ``TextVectorization`` inside the graph.

The model's input is a string tensor ``[batch]``; the vectoriser (adapted on the training texts)
turns it into token ids, so the exported SavedModel serves raw text and its vocabulary travels
with it as a lookup table. Token ids -> embedding -> parallel Conv1D of ``conv_widths`` ->
global max-pool -> concat -> dropout -> dense softmax.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.config import TrainConfig


def build_vectorizer(config: TrainConfig, texts: np.ndarray) -> keras.layers.TextVectorization:
    """A ``TextVectorization`` layer adapted on ``texts`` (lower-cased, punctuation stripped)."""
    vectorizer = keras.layers.TextVectorization(
        max_tokens=config.max_tokens,
        output_mode="int",
        output_sequence_length=config.sequence_length,
        name="vectorize",
    )
    vectorizer.adapt(tf.constant(texts.tolist(), dtype=tf.string))
    return vectorizer


def build_text_cnn(config: TrainConfig, n_classes: int, train_texts: np.ndarray) -> keras.Model:
    """The text CNN, its vectoriser adapted on ``train_texts``.

    Args:
        config: Sizes: max_tokens, sequence_length, embedding_dim, conv_widths, filters, dropout.
        n_classes: Width of the softmax.
        train_texts: 1-D array of ``str``; only the training split, so no test leakage.
    """
    vectorizer = build_vectorizer(config, train_texts)
    inputs = keras.Input(shape=(), dtype="string", name="texts")
    tokens = vectorizer(inputs)
    embedded = keras.layers.Embedding(vectorizer.vocabulary_size(), config.embedding_dim, name="embed")(tokens)
    pooled = [
        keras.layers.GlobalMaxPooling1D(name=f"pool_{width}")(
            keras.layers.Conv1D(config.filters, width, activation="relu", name=f"conv_{width}")(embedded)
        )
        for width in config.conv_widths
    ]
    x = keras.layers.Concatenate(name="concat")(pooled) if len(pooled) > 1 else pooled[0]
    x = keras.layers.Dropout(config.dropout, seed=config.seed)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="text_cnn")
