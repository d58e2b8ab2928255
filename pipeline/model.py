"""Model architectures (Keras, no Lambda layers so bundles load with safe_mode=True).

``lenet5`` is the default; the others are there to compare against it
(``[train] model``, and ``pipeline compare`` for the results):

- ``softmax``: one dense softmax layer on the pixels (multinomial logistic regression,
  the TI-ONE / TensorFlow "MNIST for beginners" baseline);
- ``mlp``: dense 512 (ReLU) -> dropout -> softmax (the Keras MLP tutorial);
- ``cnn``: the wider LeNet of TensorFlow's "Deep MNIST" tutorial: conv 32@5x5 ->
  pool -> conv 64@5x5 -> pool -> dense 1024 -> dropout -> softmax.
"""
from __future__ import annotations

from typing import Any

MODELS = ("lenet5", "softmax", "mlp", "cnn")


def build_model(name: str, input_shape: tuple[int, int, int], n_classes: int, dropout: float = 0.0) -> Any:
    """Build an uncompiled Keras model by name (``dropout`` applies after hidden dense layers)."""
    import keras
    from keras import layers

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {list(MODELS)}")
    if name in ("lenet5", "cnn") and min(input_shape[:2]) < 12:
        raise ValueError(f"{name} needs inputs of at least 12x12 pixels. Received: {input_shape[:2]}")
    head = [layers.Dense(n_classes, activation="softmax", name="output")]
    if name == "lenet5":
        # LeNet-5 (LeCun et al. 1998) with modern choices: ReLU, max-pooling, softmax.
        # 'same' padding on the first conv plays the role of the original 32x32 input.
        body = [layers.Conv2D(6, 5, padding="same", activation="relu", name="c1"),
                layers.MaxPooling2D(2, name="s2"),
                layers.Conv2D(16, 5, activation="relu", name="c3"),
                layers.MaxPooling2D(2, name="s4"),
                layers.Flatten(),
                layers.Dense(120, activation="relu", name="f5"),
                layers.Dropout(dropout),
                layers.Dense(84, activation="relu", name="f6"),
                layers.Dropout(dropout)]
    elif name == "softmax":
        body = [layers.Flatten()]
    elif name == "mlp":
        body = [layers.Flatten(), layers.Dense(512, activation="relu", name="hidden"), layers.Dropout(dropout)]
    else:  # cnn
        body = [layers.Conv2D(32, 5, padding="same", activation="relu", name="conv1"),
                layers.MaxPooling2D(2, name="pool1"),
                layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2"),
                layers.MaxPooling2D(2, name="pool2"),
                layers.Flatten(),
                layers.Dense(1024, activation="relu", name="fc1"),
                layers.Dropout(dropout)]
    return keras.Sequential([keras.Input(shape=input_shape), *body, *head], name=name)
