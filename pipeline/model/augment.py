"""Augmentation: random, train-only transforms applied on the fly in the tf.data pipeline.

Geometric transforms (rotation, translation, zoom, shear) are composed into ONE
random affine transform per image and applied with a single
``ImageProjectiveTransformV3`` op, which is several times cheaper than one Keras
layer per transform, so augmentation overlaps with training instead of slowing it.
The other transforms (elastic distortion, noise, brightness, contrast, erasing,
flip) are Keras preprocessing layers. Random draws are stateless, seeded by
``[train] seed`` and the batch number. Validation and test data are never
augmented: only the training dataset is mapped through :func:`augment_dataset`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipeline.shared.params import AugmentParams


@dataclass
class Augmenter:
    """What to apply: the geometric ranges and a Keras Sequential for the rest (or None)."""

    params: AugmentParams
    seed: int
    layers: Any

    @property
    def geometric(self) -> bool:
        p = self.params
        return bool(p.rotation or p.translation or p.zoom or p.shear)


def build_augmenter(p: AugmentParams, seed: int) -> Augmenter | None:
    """The augmenter for ``p``, or None when augmentation is off or does nothing."""
    if not p.enabled:
        return None
    import keras
    from keras import layers

    steps: list[Any] = []
    if p.elastic:
        steps.append(layers.RandomElasticTransform(factor=1.0, scale=p.elastic, value_range=(0, 1), seed=seed + 4,
                                                   fill_mode="constant", fill_value=0.0))
    if p.brightness:
        steps.append(layers.RandomBrightness(p.brightness, value_range=(0, 1), seed=seed + 5))
    if p.contrast:
        steps.append(layers.RandomContrast(p.contrast, value_range=(0, 1), seed=seed + 6))
    if p.erasing:
        steps.append(layers.RandomErasing(factor=p.erasing, value_range=(0, 1), seed=seed + 7))
    if p.noise:
        steps.append(layers.GaussianNoise(p.noise, seed=seed + 8))
    if p.hflip is True:  # "auto" is resolved by the training recipe before this
        steps.append(layers.RandomFlip("horizontal", seed=seed + 9))
    aug = Augmenter(p, seed, keras.Sequential(steps, name="augment") if steps else None)
    return aug if aug.geometric or aug.layers is not None else None


def _affine(images: Any, p: AugmentParams, seed: Any) -> Any:
    """One random affine transform per image (rotation, zoom, shear, translation about the centre)."""
    import tensorflow as tf

    shape = tf.shape(images)
    n, h, w = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)

    # one draw for all five parameters of every image: fewer small ops per batch
    limits = tf.constant([math.radians(p.rotation), p.zoom, p.shear, p.translation, p.translation], tf.float32)
    u = tf.random.stateless_uniform([5, n], seed=seed, minval=-1.0, maxval=1.0) * limits[:, None]
    theta, zoom, shear = u[0], 1.0 + u[1], u[2]
    tx, ty = u[3] * w, u[4] * h
    cos, sin = tf.cos(theta), tf.sin(theta)
    # Forward map A = R(theta) . Shear . Zoom about the centre, then shift by (tx, ty).
    # The op wants the inverse (output pixel -> input pixel): A^-1 = Zoom^-1 Shear^-1 R^-1.
    a0, a1 = cos / zoom, (sin - shear * cos) / zoom
    b0, b1 = -sin / zoom, (cos + shear * sin) / zoom
    cx, cy = (w - 1) / 2, (h - 1) / 2
    ox, oy = cx + tx, cy + ty  # where the centre goes
    c0 = cx - (a0 * ox + a1 * oy)
    c1 = cy - (b0 * ox + b1 * oy)
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, c0, b0, b1, c1, zeros, zeros], axis=1)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="NEAREST")
    out.set_shape(images.shape)  # the op loses the static shape later layers need
    return out


def augment_dataset(ds: Any, augmenter: Augmenter | None) -> Any:
    """Map a batched (x, y) tf.data dataset through the augmenter, clipped to [0, 1]."""
    import tensorflow as tf

    if augmenter is None:
        return ds
    p = augmenter.params

    def apply(i: Any, batch: tuple[Any, Any]) -> tuple[Any, Any]:
        x, y = batch
        seed = tf.stack([tf.constant(augmenter.seed, tf.int64), i * 16])
        if augmenter.geometric:
            x = _affine(x, p, seed)  # bilinear with a 0 fill: stays in [0, 1]
        if augmenter.layers is not None:
            x = tf.clip_by_value(augmenter.layers(x, training=True), 0.0, 1.0)
        return x, y

    # Augmenting a batch takes ~1 ms against ~13 ms of training: one private thread
    # keeps ahead of training without competing with its threads for the cores.
    opts = tf.data.Options()
    opts.threading.private_threadpool_size = 1
    opts.threading.max_intra_op_parallelism = 1
    return ds.enumerate().map(apply, num_parallel_calls=1).with_options(opts)
