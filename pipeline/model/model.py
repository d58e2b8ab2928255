"""Model architectures (Keras, no Lambda layers so bundles load with ``safe_mode=True``).

``lenet5`` (the default) keeps LeNet-5's shape: two 5x5 convolution stages with
pooling, then three dense layers, under 100k parameters; its convolutions are a little
wider (8 and 24 maps) and it adds batch normalization after each pooling (README
"Training details" has the ablation). ``lenet5-classic`` is the 1998 network (tanh, average pooling), kept so
``pipeline compare`` can show the difference. The others are there to compare
against them:

- ``softmax``: one dense softmax layer on the pixels (multinomial logistic regression,
  the TI-ONE / TensorFlow "MNIST for beginners" baseline);
- ``mlp``: dense 512 (ReLU) -> dropout -> softmax (the Keras MLP tutorial);
- ``cnn``: the wider LeNet of TensorFlow's "Deep MNIST" tutorial: conv 32@5x5 ->
  pool -> conv 64@5x5 -> pool -> dense 1024 -> dropout -> softmax.

Every model ends in ``logits`` -> ``temperature`` (a ``Rescaling`` layer, 1 until
calibration sets it to 1/T) -> ``output`` (softmax), so the calibrated probabilities
are the model's own output in every export format.

LeNet-5's first pooling adapts to the input size (``size = "auto"`` may give 28..64
px): it brings the first feature map to about 14 px a side, as 28x28 inputs have.
"""
from __future__ import annotations

from typing import Any

from pipeline.shared.errors import UserError
from pipeline.shared.params import MODELS

# The modern LeNet-5's feature maps: 8 and 24 (the 1998 network: 6 and 16). Wider convolutions gained
# 0.2-1% accuracy on every development set for ~20% more time per step; 9 x 24 was as accurate and
# slower (README "Training details").
C1, C3 = 8, 24
TEMPERATURE_LAYER = "temperature"
LOGITS_LAYER = "logits"
FEATURES_LAYER = "f5"  # the LeNet-5 models' first dense layer: the novelty detector's features


def first_pool(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """The first pooling window: about 14 px a side after it (2 for 28x28, 3 for 40..48, 5 for 64)."""
    return tuple(max(2, round(side / 14)) for side in input_shape[:2])  # type: ignore[return-value]


def second_pool(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """The second pooling window: at most 5 px a side after it, as 28x28 inputs give (2 for 28x28;
    3 for 32x32), so the first dense layer, and the parameter count, stay LeNet-5's size."""
    return tuple(max(2, -(-(side // p - 4) // 5)) for side, p in zip(input_shape[:2], first_pool(input_shape)))  # type: ignore[return-value]


def bn_momentum(total_steps: int) -> float:
    """Batch-norm momentum for a run of ``total_steps``: Keras' 0.99 needs ~500 steps for its moving
    statistics to settle, so a short run (a few epochs of a tiny set) uses a faster average."""
    return float(min(0.99, max(0.5, 1.0 - 20.0 / max(total_steps, 1))))


def _lenet5(layers: Any, input_shape: tuple[int, ...], dropout: float, classic: bool,
            momentum: float = 0.99) -> list[Any]:
    if classic:  # 1998: tanh, average pooling ("subsampling"), no normalization
        body = [layers.Conv2D(6, 5, padding="same", activation="tanh", name="c1"),
                layers.AveragePooling2D(first_pool(input_shape), name="s2"),
                layers.Conv2D(16, 5, activation="tanh", name="c3"),
                layers.AveragePooling2D(second_pool(input_shape), name="s4")]
    else:
        # Batch normalization after each pooling, then ReLU: max-pooling commutes with both, and
        # normalizing the pooled maps costs a quarter of normalizing the convolutions' outputs
        # (Keras 3's BatchNormalization is unfused on CPU). README "Training details".
        body = [layers.Conv2D(C1, 5, padding="same", use_bias=False, name="c1"),
                layers.MaxPooling2D(first_pool(input_shape), name="s2"),
                layers.BatchNormalization(momentum=momentum, name="s2_bn"), layers.Activation("relu", name="s2_relu"),
                layers.Conv2D(C3, 5, use_bias=False, name="c3"),
                layers.MaxPooling2D(second_pool(input_shape), name="s4"),
                layers.BatchNormalization(momentum=momentum, name="s4_bn"), layers.Activation("relu", name="s4_relu")]
    act = "tanh" if classic else "relu"
    body += [layers.Flatten(name="flatten"), layers.Dense(120, activation=act, name="f5")]
    body += [layers.Dropout(dropout, name="f5_dropout")] if dropout else []
    body += [layers.Dense(84, activation=act, name="f6")]
    return body + ([layers.Dropout(dropout, name="f6_dropout")] if dropout else [])


def _body(name: str, layers: Any, input_shape: tuple[int, ...], dropout: float, momentum: float) -> list[Any]:
    if name in ("lenet5", "lenet5-classic"):
        return _lenet5(layers, input_shape, dropout, name == "lenet5-classic", momentum)
    if name == "softmax":
        return [layers.Flatten()]
    if name == "mlp":
        return [layers.Flatten(), layers.Dense(512, activation="relu", name="hidden"), layers.Dropout(dropout)]
    return [layers.Conv2D(32, 5, padding="same", activation="relu", name="conv1"),  # cnn
            layers.MaxPooling2D(2, name="pool1"),
            layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2"),
            layers.MaxPooling2D(2, name="pool2"),
            layers.Flatten(),
            layers.Dense(1024, activation="relu", name="fc1"),
            layers.Dropout(dropout)]


def build_model(name: str, input_shape: tuple[int, int, int], n_classes: int, dropout: float = 0.0,
                total_steps: int = 0, multi: bool = False) -> Any:
    """Build an uncompiled Keras model by name (``dropout`` applies after hidden dense layers;
    ``total_steps``, when known, sets the batch-norm momentum; ``multi``: several labels per image, one
    sigmoid per label instead of the softmax)."""
    import keras
    from keras import layers

    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; available: {list(MODELS)}")
    if name.startswith("lenet5") or name == "cnn":
        if min(input_shape[:2]) < 12:
            raise UserError(f"{name} needs inputs of at least 12x12 pixels. Received: {input_shape[:2]}")
    head = [layers.Dense(n_classes, name=LOGITS_LAYER), layers.Rescaling(1.0, name=TEMPERATURE_LAYER),
            layers.Activation("sigmoid" if multi else "softmax", name="output")]
    body = _body(name, layers, input_shape, dropout, bn_momentum(total_steps) if total_steps else 0.99)
    return keras.Sequential([keras.Input(shape=input_shape), *body, *head], name=name)


HEAD_LAYERS = (LOGITS_LAYER, TEMPERATURE_LAYER, "output")  # always float32: the loss and the probabilities


def with_precision(model: Any, precision: str) -> Any:
    """A copy of ``model`` (same weights) computing in ``precision``: "bfloat16" (Keras'
    ``mixed_bfloat16``: float32 weights, bfloat16 arithmetic, a float32 head) or "float32".
    Training may run in bfloat16; every saved bundle's model is float32."""
    import keras

    policy = "mixed_bfloat16" if precision == "bfloat16" else "float32"

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        config["dtype"] = "float32" if layer.name in HEAD_LAYERS else policy
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(model, clone_function=clone)
    twin.set_weights(model.get_weights())
    return twin


def precision_of(model: Any) -> str:
    """ "bfloat16" when any layer computes in bfloat16, else "float32"."""
    return "bfloat16" if any(layer.dtype_policy.compute_dtype == "bfloat16" for layer in model.layers) else "float32"


def feature_layer(model: Any) -> str | None:
    """The layer whose activations the novelty detector compares: ``f5`` for LeNet-5, else the last
    layer before the logits (dropout aside); None for a model without a logits layer (older bundles)."""
    names = [layer.name for layer in model.layers]
    if LOGITS_LAYER not in names:
        return None
    if FEATURES_LAYER in names:
        return FEATURES_LAYER
    before = [layer for layer in model.layers[:names.index(LOGITS_LAYER)] if type(layer).__name__ != "Dropout"]
    return before[-1].name if before else None


def strokes_layer(model: Any) -> str | None:
    """The layer the novelty detector's strokes classifier reads: the last ``Flatten`` before the feature
    layer (LeNet-5's convolution features, 600 values for 28x28 inputs); None without one."""
    names = [layer.name for layer in model.layers]
    feature = feature_layer(model)
    if feature is None:
        return None
    flat = [layer.name for layer in model.layers[:names.index(feature)] if type(layer).__name__ == "Flatten"]
    return flat[-1] if flat else None


def set_temperature(model: Any, temperature: float) -> None:
    """Divide the model's logits by ``temperature`` (its calibrated softmax)."""
    model.get_layer(TEMPERATURE_LAYER).scale = 1.0 / float(temperature)


def scale_logits(model: Any, temperatures: Any) -> None:
    """Divide each logit by its own temperature (multi-label calibration: one per label), folded into the
    logits layer's kernel and bias, so every export format carries it."""
    import numpy as np

    layer = model.get_layer(LOGITS_LAYER)
    kernel, bias = layer.get_weights()
    t = np.asarray(temperatures, kernel.dtype)
    layer.set_weights([kernel / t[None, :], bias / t])


def is_multi_label(model: Any) -> bool:
    """Whether the model gives one sigmoid per label (several labels per image)."""
    try:
        return model.get_layer("output").get_config().get("activation") == "sigmoid"
    except ValueError:
        return False


def temperature(model: Any) -> float:
    """The temperature the model's output applies (1.0: uncalibrated, or an older bundle)."""
    try:
        return 1.0 / float(model.get_layer(TEMPERATURE_LAYER).scale)
    except ValueError:
        return 1.0
