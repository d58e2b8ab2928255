"""Each preprocessing option on a known-answer image, and the MNIST digit normalization."""
import io

import numpy as np
import pytest
from PIL import Image

from pipeline.data.preprocess import is_dark_on_light, load_image, normalize_digit, preprocess
from pipeline.shared.params import PreprocessParams


def run(img: np.ndarray, **kw) -> np.ndarray:
    """Preprocess at the image's own size (no resizing), back to uint8 for exact comparisons."""
    cfg = PreprocessParams(**{"color": "grayscale", "invert": "false", "size": img.shape[:2], "min_side": 1, **kw})
    out = preprocess(img, cfg)
    assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    return np.rint(out[..., 0] * 255).astype(np.uint8)


def test_invert_true_and_auto_polarity():
    paper = np.full((20, 20), 230, np.uint8)
    paper[5:15, 8:12] = 20  # dark stroke on light paper
    assert is_dark_on_light(paper) and not is_dark_on_light(255 - paper)
    np.testing.assert_array_equal(run(paper, invert="true"), 255 - paper)
    np.testing.assert_array_equal(run(paper, invert="auto"), 255 - paper)  # unresolved "auto": per image
    np.testing.assert_array_equal(run(paper, invert="per-image"), 255 - paper)
    np.testing.assert_array_equal(run(255 - paper, invert="auto"), 255 - paper)  # already light on dark
    np.testing.assert_array_equal(run(paper, invert="false"), paper)


def test_median_removes_salt_noise():
    img = np.full((9, 9), 50, np.uint8)
    img[4, 4] = 255
    assert (run(img, denoise="median", denoise_kernel=3) == 50).all()


def test_gaussian_spreads_an_impulse_and_bilateral_keeps_flat_areas():
    img = np.zeros((9, 9), np.uint8)
    img[4, 4] = 255
    out = run(img, denoise="gaussian", denoise_kernel=5, denoise_sigma=1.0)
    assert out[4, 4] < 255 and out[4, 5] > 0 and out[0, 0] == 0
    flat = np.full((9, 9), 77, np.uint8)
    assert (run(flat, denoise="bilateral", denoise_kernel=5) == 77).all()


def test_histogram_equalization_stretches_contrast():
    img = np.tile(np.arange(100, 116, dtype=np.uint8), (16, 1))
    out = run(img, equalize="hist")
    assert out.min() < 20 and out.max() == 255
    clahe = run(img, equalize="clahe", clahe_clip=4.0)
    assert np.ptp(clahe) > np.ptp(img)


def test_binarize_otsu_and_fixed_threshold():
    img = np.array([[10, 20, 30, 200, 210, 220]] * 6, np.uint8)
    np.testing.assert_array_equal(run(img, binarize="otsu"), np.where(img > 100, 255, 0))
    edge = np.array([[127, 128, 129, 0, 255, 60]] * 6, np.uint8)
    np.testing.assert_array_equal(run(edge, binarize="fixed", threshold=128), np.where(edge >= 128, 255, 0))


def test_morphology_known_answers():
    speck = np.zeros((9, 9), np.uint8)
    speck[4, 4] = 255
    assert run(speck, morphology="erode").max() == 0
    dil = run(speck, morphology="dilate", morph_kernel=3)
    assert (dil[3:6, 3:6] == 255).all() and dil.sum() == 9 * 255
    assert run(speck, morphology="open").max() == 0
    ring = np.full((9, 9), 255, np.uint8)
    ring[4, 4] = 0  # a one-pixel hole
    assert (run(ring, morphology="close")[3:6, 3:6] == 255).all()


def test_rgb_options_keep_three_channels():
    rgb = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    cfg = PreprocessParams(color="rgb", size=(12, 12), min_side=1, denoise="median", equalize="clahe",
                           binarize="otsu", morphology="close", invert="auto")
    assert preprocess(rgb, cfg).shape == (12, 12, 3)


def test_normalize_digit_crops_scales_and_centres_on_mass():
    page = np.full((200, 160), 240, np.uint8)   # light paper
    page[30:90, 100:120] = 15                   # a dark bar, off centre: 60 tall, 20 wide
    out = normalize_digit(page)
    assert out.shape == (28, 28)
    ys, xs = np.nonzero(out > 128)
    assert ys.max() - ys.min() + 1 == 20        # longer side scaled to 20 px
    assert abs((xs.max() - xs.min() + 1) - 20 / 3) <= 1  # aspect kept
    yy, xx = np.indices(out.shape)
    w = out.astype(float)
    assert abs((yy * w).sum() / w.sum() - 13.5) <= 0.5 and abs((xx * w).sum() / w.sum() - 13.5) <= 0.5
    assert out[0].max() == 0 and out[:, 0].max() == 0  # paper became black background
    assert (normalize_digit(np.full((50, 50), 200, np.uint8)) == 0).all()  # blank page: no crash


def _normalize_digit_as_written(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The recipe as first written (np.nonzero, np.clip, np.roll): the faster one must give the same bytes."""
    import cv2

    if is_dark_on_light(gray):
        gray = 255 - gray
    h, w = size
    t, mask = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0 or t == 0 and mask.all():
        return np.zeros((h, w), np.uint8)
    crop = gray[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)
    rest = gray[mask == 0]
    paper = float(np.partition(rest, len(rest) // 2)[len(rest) // 2]) if rest.size else 0.0
    crop = np.clip((crop - paper) * (255.0 / max(1.0, crop.max() - paper)), 0, 255)
    box = max(1, round(min(h, w) * 20 / 28))
    ch, cw = crop.shape
    scale = box / max(ch, cw)
    nh, nw = max(1, round(ch * scale)), max(1, round(cw * scale))
    inter = cv2.INTER_AREA if nh * nw < ch * cw else cv2.INTER_LINEAR
    small = cv2.resize(crop, (nw, nh), interpolation=inter)
    canvas = np.zeros((h, w), np.float32)
    top, left = (h - nh) // 2, (w - nw) // 2
    canvas[top:top + nh, left:left + nw] = small
    m = cv2.moments(canvas)
    if m["m00"] > 0:
        cy, cx = m["m01"] / m["m00"], m["m10"] / m["m00"]
        dy = int(np.clip(round((h - 1) / 2 - cy), -top, h - nh - top))
        dx = int(np.clip(round((w - 1) / 2 - cx), -left, w - nw - left))
        canvas = np.roll(canvas, (dy, dx), axis=(0, 1))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(28, 28), (20, 36)])
def test_normalize_digit_gives_the_bytes_of_the_recipe_as_written(size):
    import cv2

    rng = np.random.default_rng(1)
    images = []
    for k in range(300):
        h, w = (int(v) for v in rng.integers(8, 90, 2))
        if k % 4 == 0:
            img = rng.integers(0, 256, (h, w), dtype=np.uint8)  # noise
        elif k % 4 == 1:
            img = np.full((h, w), 230, np.uint8)  # dark ink on paper, anywhere
            cv2.putText(img, str(k % 10), (int(rng.integers(0, w // 2 + 1)), int(rng.integers(h // 3, h))),
                        cv2.FONT_HERSHEY_SIMPLEX, max(h, w) / 60, int(rng.integers(0, 80)), max(1, max(h, w) // 20))
        elif k % 4 == 2:
            img = cv2.GaussianBlur(rng.integers(0, 256, (h, w), dtype=np.uint8), (5, 5), 2)
        else:
            img = np.zeros((h, w), np.uint8)  # a corner block or a dot
            img[int(rng.integers(0, h)):, int(rng.integers(0, w)):] = int(rng.integers(1, 256))
        images.append(img)
    images += [np.full((12, 12), 200, np.uint8), np.zeros((9, 9), np.uint8)]  # blank pages
    for img in images:
        assert np.array_equal(normalize_digit(img, size), _normalize_digit_as_written(img, size))


def test_normalized_rerendered_digit_matches_normalized_original(mnist_dir):
    """A digit printed dark on white at 200x200, JPEG-compressed, normalizes back to the original."""
    from pipeline.data import mnist

    images, _ = mnist.load_split(mnist_dir, "test")
    cfg = PreprocessParams(normalize="mnist", color="grayscale", size=(28, 28), invert="false")
    rng = np.random.default_rng(0)
    corr = []
    for digit in images[:100]:
        page = mnist.render_on_paper(digit, rng)  # the same generated set as `make bench`
        assert Image.open(io.BytesIO(page)).size == (200, 200)
        a = load_image(page, cfg).ravel()
        b = normalize_digit(digit).ravel().astype(np.float32)
        corr.append(np.corrcoef(a, b)[0, 1])
    assert np.median(corr) > 0.9, np.median(corr)


@pytest.mark.parametrize("kw, match", [
    ({"invert": "maybe"}, "invert must be one of"),
    ({"denoise": "wiener"}, "denoise must be one of"),
    ({"denoise_kernel": 4}, "denoise_kernel must be an odd number"),
    ({"equalize": "gamma"}, "equalize must be one of"),
    ({"binarize": "adaptive"}, "binarize must be one of"),
    ({"threshold": 300}, "threshold must be 0..255"),
    ({"morphology": "tophat"}, "morphology must be one of"),
    ({"normalize": "mnist", "color": "rgb"}, "color must be grayscale with normalize"),
])
def test_option_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        PreprocessParams(**kw)
