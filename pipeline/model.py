"""Model architectures (Keras, no Lambda layers so bundles load with safe_mode=True)."""
from __future__ import annotations

from typing import Any

MODELS = ("lenet5",)


def build_model(name: str, input_shape: tuple[int, int, int], n_classes: int, dropout: float = 0.0) -> Any:
    """Build an uncompiled Keras model by name."""
    import keras
    from keras import layers

    if name != "lenet5":
        raise ValueError(f"unknown model {name!r}; available: {list(MODELS)}")
    if min(input_shape[:2]) < 12:
        raise ValueError(f"lenet5 needs inputs of at least 12x12 pixels. Received: {input_shape[:2]}")
    # LeNet-5 (LeCun et al. 1998) with modern choices: ReLU, max-pooling, softmax.
    # 'same' padding on the first conv plays the role of the original 32x32 input.
    return keras.Sequential([
        keras.Input(shape=input_shape),
        layers.Conv2D(6, 5, padding="same", activation="relu", name="c1"),
        layers.MaxPooling2D(2, name="s2"),
        layers.Conv2D(16, 5, activation="relu", name="c3"),
        layers.MaxPooling2D(2, name="s4"),
        layers.Flatten(),
        layers.Dense(120, activation="relu", name="f5"),
        layers.Dropout(dropout),
        layers.Dense(84, activation="relu", name="f6"),
        layers.Dropout(dropout),
        layers.Dense(n_classes, activation="softmax", name="output"),
    ], name=name)
