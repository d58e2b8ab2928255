"""Augmentation: random, train-only transforms applied on the fly in the tf.data pipeline.

Built from Keras preprocessing layers (no Lambda layers), run on whole batches
in parallel with training, seeded. Validation and test data are never augmented:
only the training dataset is mapped through :func:`build_augmenter`'s model.
"""
from __future__ import annotations

from typing import Any

from .params import AugmentParams


def build_augmenter(p: AugmentParams, seed: int) -> Any:
    """A Keras Sequential of the enabled random layers, or None when augmentation is off."""
    if not p.enabled:
        return None
    import keras
    from keras import layers

    fill = {"fill_mode": "constant", "fill_value": 0.0}  # background of prepared images is 0 after scaling
    steps: list[Any] = []
    if p.rotation:
        steps.append(layers.RandomRotation(p.rotation / 360.0, seed=seed, **fill))
    if p.translation:
        steps.append(layers.RandomTranslation(p.translation, p.translation, seed=seed + 1, **fill))
    if p.zoom:
        steps.append(layers.RandomZoom(p.zoom, seed=seed + 2, **fill))
    if p.shear:
        steps.append(layers.RandomShear(p.shear, p.shear, seed=seed + 3, **fill))
    if p.elastic:
        steps.append(layers.RandomElasticTransform(factor=1.0, scale=p.elastic, value_range=(0, 1),
                                                   seed=seed + 4, **fill))
    if p.brightness:
        steps.append(layers.RandomBrightness(p.brightness, value_range=(0, 1), seed=seed + 5))
    if p.contrast:
        steps.append(layers.RandomContrast(p.contrast, value_range=(0, 1), seed=seed + 6))
    if p.erasing:
        steps.append(layers.RandomErasing(factor=p.erasing, value_range=(0, 1), seed=seed + 7))
    if p.noise:
        steps.append(layers.GaussianNoise(p.noise, seed=seed + 8))
    if p.hflip:
        steps.append(layers.RandomFlip("horizontal", seed=seed + 9))
    return keras.Sequential(steps, name="augment") if steps else None


def augment_dataset(ds: Any, augmenter: Any) -> Any:
    """Map a batched (x, y) tf.data dataset through the augmenter (training mode), clipped to [0, 1]."""
    import tensorflow as tf

    if augmenter is None:
        return ds

    def apply(x: Any, y: Any) -> tuple[Any, Any]:
        return tf.clip_by_value(augmenter(x, training=True), 0.0, 1.0), y

    return ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
