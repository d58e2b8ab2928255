"""The plain Keras way, which every benchmark puts ours beside."""
from __future__ import annotations

from typing import Any


def keras_lenet5(input_shape: tuple[int, ...], n_classes: int) -> Any:
    """The usual Keras LeNet-5 tutorial model, compiled: conv 6@5x5 same (ReLU) -> max-pool ->
    conv 16@5x5 (ReLU) -> max-pool -> dense 120 -> 84 -> softmax; Adam 1e-3, sparse cross-entropy."""
    import keras
    from keras import layers

    model = keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(6, 5, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(16, 5, activation="relu"), layers.MaxPooling2D(2), layers.Flatten(),
        layers.Dense(120, activation="relu"), layers.Dense(84, activation="relu"),
        layers.Dense(n_classes, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def keras_augmentation() -> Any:
    """The usual Keras augmentation layers (rotation 10 degrees, shifts and zoom 10%), for a tf.data map."""
    import keras
    from keras import layers

    return keras.Sequential([layers.RandomRotation(10 / 360), layers.RandomTranslation(0.1, 0.1),
                             layers.RandomZoom(0.1)])
