"""Why the model gave a label: saliency maps over the image it saw, and how faithful they are.

The default is an **occlusion** map (Zeiler and Fergus 2014): a patch of background slides over the
image and the map shows how much the label's probability drops when each part is hidden. It
measures the model's actual response, works for any model, and costs about a hundred forward
passes of a small image. **Grad-CAM** (Selvaraju et al. 2017) weighs the last convolution's feature
maps by their gradients; on a 28x28 LeNet that map is 10x10 and blurred by pooling.
:func:`deletion_auc` is the faithfulness test (hide the most salient pixels first: the faster the
probability falls, the better the map); docs/trust.md has the figures.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.model.infer import Predictor
from pipeline.shared.errors import UserError

METHODS = ("occlusion", "gradcam")


def _background(x: np.ndarray) -> np.ndarray:
    """The image's border level per channel: what an occluding patch is filled with."""
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    return np.median(border, axis=0)


def occlusion(predictor: Predictor, x: np.ndarray, cls: int, patch: int = 0, stride: int = 0) -> np.ndarray:
    """How much hiding each part of ``x`` (H, W, C) lowers the probability of ``cls``: (H, W) in [0, 1]."""
    h, w = x.shape[:2]
    patch = patch or max(3, round(min(h, w) / 5))
    stride = stride or max(1, patch // 3)
    fill = _background(x)
    tops = range(0, max(1, h - patch + 1), stride)
    lefts = range(0, max(1, w - patch + 1), stride)
    windows = [(t, left) for t in tops for left in lefts]
    batch = np.repeat(x[None], len(windows), axis=0)
    for k, (t, left) in enumerate(windows):
        batch[k, t:t + patch, left:left + patch] = fill
    base = float(predictor(x[None]).probs[0, cls])
    drop = np.maximum(base - predictor(batch).probs[:, cls], 0)
    heat, count = np.zeros((h, w), np.float64), np.zeros((h, w), np.float64)
    for k, (t, left) in enumerate(windows):
        heat[t:t + patch, left:left + patch] += drop[k]
        count[t:t + patch, left:left + patch] += 1
    heat /= np.maximum(count, 1)
    return (heat / heat.max()).astype(np.float32) if heat.max() > 0 else heat.astype(np.float32)


def gradcam(model: Any, x: np.ndarray, cls: int) -> np.ndarray:
    """Grad-CAM on the model's last convolution: (H, W) in [0, 1] (zeros for a model without one)."""
    import cv2
    import tensorflow as tf

    convs = [i for i, layer in enumerate(model.layers) if type(layer).__name__ == "Conv2D"]
    if not convs:
        return np.zeros(x.shape[:2], np.float32)
    last = convs[-1]
    inp = tf.constant(x[None], tf.float32)
    with tf.GradientTape() as tape:
        act = inp
        for layer in model.layers[:last + 1]:
            act = layer(act, training=False)
        tape.watch(act)
        out = act
        for layer in model.layers[last + 1:]:
            out = layer(out, training=False)
        score = out[0, cls]
    grads = tape.gradient(score, act)[0].numpy()
    maps = act[0].numpy()
    cam = np.maximum((maps * grads.mean(axis=(0, 1))).sum(axis=2), 0)
    cam = cv2.resize(cam.astype(np.float32), (x.shape[1], x.shape[0]), interpolation=cv2.INTER_LINEAR)
    return cam / cam.max() if cam.max() > 0 else cam


def saliency(predictor: Predictor, x: np.ndarray, cls: int, method: str) -> np.ndarray:
    """The saliency map of ``x`` for class ``cls`` by ``method``."""
    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}. Received: {method!r}")
    return occlusion(predictor, x, cls) if method == "occlusion" else gradcam(predictor.bundle.model, x, cls)


def deletion_auc(predictor: Predictor, x: np.ndarray, cls: int, heat: np.ndarray, steps: int = 20) -> float:
    """The deletion test of a saliency map: hide pixels most salient first (with the background level);
    the mean probability of ``cls`` along the way. Lower: the map found what the label rests on."""
    order = np.argsort(-heat.ravel(), kind="stable")
    fill = _background(x)
    batch = np.repeat(x[None], steps + 1, axis=0)
    for s in range(1, steps + 1):
        hidden = order[: round(len(order) * s / steps)]
        rows, cols = np.unravel_index(hidden, heat.shape)
        batch[s, rows, cols] = fill
    return float(predictor(batch).probs[:, cls].mean())
