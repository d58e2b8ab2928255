"""Augmentation: every transform runs, keeps shape and range, is seeded, and is train-only."""
import numpy as np
import pytest

from pipeline.model.augment import build_augmenter
from pipeline.shared.params import AugmentParams
from pipeline.model import batches

ALL = AugmentParams(enabled=True, rotation=15, translation=0.1, zoom=0.1, shear=0.2, elastic=0.5, noise=0.05,
                    brightness=0.2, contrast=0.2, erasing=0.5, hflip=True)


def digits(n=16):
    x = np.full((n, 28, 28, 1), 0.2, np.float32)  # mid-grey values, so contrast changes show
    x[:, 6:22, 12:16] = 0.7
    return x, np.arange(n) % 10


@pytest.mark.slow
def test_on_by_default_off_when_disabled_and_each_layer_present_when_on():
    assert build_augmenter(AugmentParams(enabled=False), 0) is None
    aug = build_augmenter(ALL, 0)
    assert aug.geometric  # rotation, translation, zoom, shear: one combined affine transform
    names = [type(layer).__name__ for layer in aug.layers.layers]
    assert names == ["RandomElasticTransform", "RandomBrightness", "RandomContrast", "RandomErasing",
                     "GaussianNoise", "RandomFlip"]
    default = build_augmenter(AugmentParams(), 0)
    assert default.geometric and default.layers is None  # hflip "auto" is resolved by the recipe, not here


@pytest.mark.slow
def test_affine_known_answers():
    """A pure translation moves a dot by the drawn amount; a 90-degree rotation turns a bar."""
    import tensorflow as tf

    from pipeline.model.augment import _affine

    bar = np.zeros((1, 29, 29, 1), np.float32)
    bar[0, 4:25, 14] = 1.0  # vertical bar through the centre
    seed = tf.constant([0, 0], tf.int64)
    rot = _affine(tf.constant(bar), AugmentParams(rotation=90, translation=0, zoom=0), seed).numpy()[0, ..., 0]
    angle = float(tf.random.stateless_uniform([5, 1], seed=seed, minval=-1.0, maxval=1.0)[0, 0]) * np.pi / 2
    ys, xs = np.nonzero(rot > 0.5)
    # the bar's direction after rotation, up to sign
    fit = np.degrees(np.arctan2(np.ptp(ys), np.ptp(xs)))
    assert abs(fit - (90 - abs(np.degrees(angle)))) < 8
    zero = _affine(tf.constant(bar), AugmentParams(rotation=0, translation=0, zoom=0), seed).numpy()
    np.testing.assert_allclose(zero, bar, atol=1e-6)  # identity when every range is 0


def test_train_batches_are_augmented_in_range_and_seeded():
    x, y = digits()
    a = next(iter(batches.make_dataset(x, y, 16, shuffle=False, seed=1, augmenter=build_augmenter(ALL, 1))))[0].numpy()
    b = next(iter(batches.make_dataset(x, y, 16, shuffle=False, seed=1, augmenter=build_augmenter(ALL, 1))))[0].numpy()
    assert a.shape == x.shape and 0.0 <= a.min() and a.max() <= 1.0
    assert not np.allclose(a, x)
    np.testing.assert_allclose(a, b)  # same seed, same augmentation


@pytest.mark.parametrize("field", ["rotation", "translation", "zoom", "shear", "elastic", "noise", "brightness",
                                   "contrast", "erasing"])
def test_each_transform_alone_changes_the_images(field):
    x, y = digits()
    zero = {k: 0.0 for k in ("rotation", "translation", "zoom", "shear", "elastic", "noise", "brightness",
                             "contrast", "erasing")}
    p = AugmentParams(enabled=True, **{**zero, field: 0.9 if field != "rotation" else 45.0})
    out = next(iter(batches.make_dataset(x, y, 16, False, 0, build_augmenter(p, 0))))[0].numpy()
    assert out.shape == x.shape and not np.allclose(out, x)


def test_validation_and_test_data_are_never_augmented():
    x, y = digits()
    ds = batches.make_dataset(x, y, 16, shuffle=False, seed=0)  # how val data is built: no augmenter
    np.testing.assert_array_equal(next(iter(ds))[0].numpy(), x)


def test_bad_values():
    with pytest.raises(ValueError, match="rotation must be 0..180"):
        AugmentParams(rotation=200)
    with pytest.raises(ValueError, match="zoom must be in"):
        AugmentParams(zoom=2)
