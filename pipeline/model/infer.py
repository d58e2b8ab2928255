"""Inference: the one path from model input to class probabilities.

``evaluate`` (the metrics we report), ``predict`` and ``serve`` (the labels users
get), ``export``'s agreement check and ``suspects`` all call :class:`Predictor` (or
:func:`predict_probs`), so what the bundle says about its outputs is applied in one
place, the same way everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.model import novelty
from pipeline.model.model import LOGITS_LAYER, feature_layer, strokes_layer
from pipeline.shared.bundle import Bundle


@dataclass
class Output:
    """What the model says about a batch of images."""

    probs: np.ndarray   # (n, classes): the bundle's (calibrated) class probabilities
    logits: np.ndarray  # (n, classes): before the temperature and the softmax
    features: np.ndarray | None = None  # (n, d): the novelty detector's features (None: the model has none)
    novelty: np.ndarray | None = None   # (n,): higher = less like the training data (None: no novelty model)
    familiar: np.ndarray | None = None  # (n,) bool: novelty within the bundle's threshold
    conv: np.ndarray | None = None      # (n, ...): the convolution features (only from Predictor(conv=True))


class Predictor:
    """A bundle's model as one compiled TensorFlow graph, called on fixed-size batches.

    A fixed batch shape means the graph is traced once, and an image gets the same
    arithmetic whatever else is in its batch (a resumed run writes the same rows).
    """

    def __init__(self, b: Bundle, batch_size: int = 512, novelty: bool = True, conv: bool = False) -> None:
        import tensorflow as tf

        self.bundle, self.batch_size = b, batch_size
        self.n_classes = len(b.labels)
        # novelty=False: probabilities only (evaluate, export's check), no novelty work at all.
        reference = _nearest_reference(b) if novelty else None
        self.scores_novelty = reference is not None
        head = _strokes_head(b) if reference is not None else None
        forward = _with_logits(b.model)

        def graph(x: Any) -> dict[str, Any]:
            feats, logits, probs, conv_feats = forward(x, training=False)
            out = {"features": feats, "logits": logits, "probs": probs}
            if conv and conv_feats is not None:  # conv=True: the convolution features too (train's novelty fit)
                out["conv"] = conv_feats
            if reference is None:
                return out
            # The novelty detector's nearest-neighbour distance and strokes logit, in the same graph call:
            # TensorFlow's matmul over the reference is about twice as fast as numpy's here (README "Trust").
            unit = tf.math.l2_normalize(tf.reshape(feats, (tf.shape(feats)[0], -1)), axis=1, epsilon=1e-12)
            out["nearest"] = 1.0 - tf.reduce_max(tf.matmul(unit, reference), axis=1)
            if head is not None:
                w1, b1, w2, b2 = head
                hidden = tf.nn.relu(tf.matmul(tf.reshape(conv_feats, (tf.shape(conv_feats)[0], -1)), w1) + b1)
                out["strokes"] = tf.linalg.matvec(hidden, w2) + b2
            return out

        self._forward = tf.function(graph)

    def warm_up(self) -> None:
        """Trace the graph now (the first call is slow), e.g. before a server takes requests."""
        self(np.zeros((1, *self.bundle.preprocess.input_shape), np.float32))

    def __call__(self, x: np.ndarray) -> Output:
        n, batch = len(x), self.batch_size
        if n == 0:
            empty = np.zeros((0, self.n_classes), np.float32)
            return self._novelty(x, Output(empty, empty, None))
        parts: dict[str, list[np.ndarray]] = {}
        for i in range(0, n, batch):
            block = np.asarray(x[i:i + batch], np.float32)  # one batch in memory (x may be memory-mapped)
            if len(block) < batch:  # the last one, zero-padded to the traced shape
                block = np.concatenate([block, np.zeros((batch - len(block), *block.shape[1:]), np.float32)])
            for key, value in self._forward(block).items():
                parts.setdefault(key, []).append(np.asarray(value))
        got = {key: np.concatenate(p)[:n] for key, p in parts.items() if p[0].size}  # an older model: no features
        out = Output(got["probs"], got["logits"], got.get("features"), conv=got.get("conv"))
        return self._novelty(x, out, got.get("nearest"), got.get("strokes"))

    def _novelty(self, x: np.ndarray, out: Output, nearest: np.ndarray | None = None,
                 strokes: np.ndarray | None = None) -> Output:
        """Add the bundle's novelty score (nothing when the bundle has no novelty model)."""
        b = self.bundle
        if not self.scores_novelty:
            return out
        if not len(x):
            out.novelty, out.familiar = np.zeros(0, np.float32), np.zeros(0, bool)
            return out
        out.novelty, out.familiar = novelty.score(b.novelty, np.asarray(x, np.float32), out.features, nearest,
                                                  strokes)
        return out


def _nearest_reference(b: Bundle) -> Any:
    """The novelty detector's reference features as a constant (d, n) for the graph; None when the
    bundle has no novelty model or its model no feature layer (an older bundle)."""
    import tensorflow as tf

    if b.novelty is None or LOGITS_LAYER not in [layer.name for layer in b.model.layers]:
        return None
    return tf.constant(np.ascontiguousarray(np.asarray(b.novelty.reference, np.float32).T))


def _strokes_head(b: Bundle) -> tuple[Any, ...] | None:
    """The novelty detector's strokes classifier as graph constants (W1, b1, w2, b2); None without one."""
    import tensorflow as tf

    if not b.novelty.uses_strokes:
        return None
    return tuple(tf.constant(a, tf.float32) for a in b.novelty.head_layers())


def _with_logits(model: Any) -> Any:
    """The model as a function of the images returning (features, logits, probabilities, convolution
    features). A model without a ``logits`` layer (an older bundle) gives no features and its
    log-probabilities as logits."""
    import keras

    names = [layer.name for layer in model.layers]
    if LOGITS_LAYER not in names:
        def old(x: Any, training: bool = False) -> tuple[Any, Any, Any, Any]:
            p = model(x, training=training)
            none = keras.ops.zeros((keras.ops.shape(x)[0], 0))
            return none, keras.ops.log(keras.ops.maximum(p, 1e-12)), p, none
        return old
    feature_name, conv_name = feature_layer(model), strokes_layer(model)

    def forward(x: Any, training: bool = False) -> tuple[Any, Any, Any, Any]:
        feats = logits = conv = None
        for layer in model.layers:  # a Sequential model: the layers in order
            x = layer(x, training=training)
            if layer.name == feature_name:
                feats = x
            if layer.name == conv_name:
                conv = x
            if layer.name == LOGITS_LAYER:
                logits = x
        return feats, logits, x, conv
    return forward


def predict_probs(b: Bundle, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Class probabilities of ``x`` (already preprocessed) with the bundle's model."""
    return Predictor(b, batch_size, novelty=False)(x).probs


