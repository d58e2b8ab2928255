"""Saliency maps (pipeline.model.explain): occlusion finds a planted feature, deletion scores it, Grad-CAM runs."""
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.model import explain
from pipeline.shared.errors import UserError

H = W = 28
PATCH = (slice(10, 14), slice(6, 10))        # what the stand-in model looks at
DISTRACTOR = (slice(20, 24), slice(18, 22))  # just as bright, but ignored by the model


class PatchModel:
    """A stand-in predictor: P(class 1) depends only on the brightness of the planted patch."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        x = np.asarray(x, np.float32)
        p1 = 1.0 / (1.0 + np.exp(-10.0 * (x[:, PATCH[0], PATCH[1]].mean(axis=(1, 2, 3)) - 0.5)))
        return SimpleNamespace(probs=np.stack([1.0 - p1, p1], axis=1))


def planted_image():
    x = np.zeros((H, W, 1), np.float32)
    x[PATCH] = 1.0
    x[DISTRACTOR] = 1.0
    return x


def mask(region):
    m = np.zeros((H, W), bool)
    m[region] = True
    return m


def test_occlusion_finds_the_planted_patch():
    model, x = PatchModel(), planted_image()
    heat = explain.occlusion(model, x, 1)
    assert heat.shape == (H, W) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)  # normalised to [0, 1]
    # the maximum lies in the patch or touching it (one pixel around)
    r, c = np.unravel_index(np.argmax(heat), heat.shape)
    assert PATCH[0].start - 1 <= r <= PATCH[0].stop and PATCH[1].start - 1 <= c <= PATCH[1].stop
    inside, outside = heat[mask(PATCH)].mean(), heat[~mask(PATCH)].mean()
    assert inside > 3 * outside and inside > 0.5
    # the distractor is as bright, but hiding it changes nothing
    assert heat[mask(DISTRACTOR)].max() == 0.0
    # its own parameters: the same map whatever the batch, and saliency("occlusion") is occlusion
    np.testing.assert_array_equal(explain.saliency(model, x, 1, "occlusion"), heat)


def test_occlusion_of_a_class_that_only_gains_is_zero():
    # hiding the patch only raises P(class 0): no drop anywhere, an all-zero map (not a division by zero)
    heat = explain.occlusion(PatchModel(), planted_image(), 0)
    assert heat.shape == (H, W) and not heat.any()


def test_deletion_auc_is_lower_for_the_faithful_map():
    model, x = PatchModel(), planted_image()
    heat = explain.occlusion(model, x, 1)
    faithful = explain.deletion_auc(model, x, 1, heat)
    elsewhere = [np.roll(heat, (H // 2, W // 2), axis=(0, 1)), heat.T[::-1].copy(), mask(DISTRACTOR).astype(float)]
    for other in elsewhere:
        assert not (other > 0)[mask(PATCH)].any()  # really points elsewhere
        assert faithful < explain.deletion_auc(model, x, 1, other)
    # a map that is exactly the patch: the patch goes in the first step, so the mean probability is at most
    # (P(intact) + steps x P(patch hidden)) / (steps + 1)
    steps = 20
    p_full = float(model(x[None]).probs[0, 1])
    hidden = x.copy()
    hidden[PATCH] = 0.0
    p_gone = float(model(hidden[None]).probs[0, 1])
    exact = explain.deletion_auc(model, x, 1, mask(PATCH).astype(float), steps=steps)
    assert exact == pytest.approx((p_full + steps * p_gone) / (steps + 1), rel=1e-5)


def test_saliency_refuses_an_unknown_method():
    model = PatchModel()
    with pytest.raises(UserError, match=r"--method must be one of occlusion, gradcam\. Received: 'lime'"):
        explain.saliency(model, planted_image(), 1, "lime")
    assert model.calls == 0  # refused before any work


def test_gradcam_on_a_trained_bundle(shade_bundle):
    from pipeline.data.preprocess import preprocess
    from pipeline.shared import bundle

    from conftest import shade_image

    b = bundle.load(shade_bundle)
    x = preprocess(shade_image("light", np.random.default_rng(0)), b.preprocess)
    cls = b.labels.index("light")
    cam = explain.gradcam(b.model, x, cls)
    assert cam.shape == b.preprocess.input_shape[:2]
    assert np.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() <= 1.0 + 1e-6
