"""The "auto" choices: colour, size, polarity and flips, from the census of the data (tiny generated sets)."""
import json

import numpy as np
import pytest

from pipeline.data import census
from pipeline.shared.params import PrepareParams, PreprocessParams
from pipeline.stages import prepare

from conftest import SHAPES, shape_image, write_image


def stroke(side: int, dark_on_light: bool, rng: np.random.Generator) -> np.ndarray:
    img = np.full((side, side), 25, np.uint8) + rng.integers(0, 6, (side, side), dtype=np.uint8)
    c = side // 2 + int(rng.integers(-3, 4))
    img[side // 4: 3 * side // 4, c - 2:c + 2] = 230
    return 255 - img if dark_on_light else img


def prepared(tmp_path, make, n=12, labels=("a", "b"), cfg=None):
    rng = np.random.default_rng(0)
    for label in labels:
        for i in range(n):
            write_image(tmp_path / "data" / label / f"{i:02d}.png", make(label, i, rng))
    prepare.prepare(tmp_path / "data", tmp_path / "run", PrepareParams(workers=1), cfg or PreprocessParams())
    marker = json.loads((tmp_path / "run" / "prepare.json").read_text())
    return marker["preprocess"], json.loads((tmp_path / "run" / "dataset.json").read_text())["choices"]


def test_gray_images_stored_as_rgb_are_grayscale_and_small_images_go_to_28(tmp_path):
    cfg, choices = prepared(tmp_path, lambda l, i, rng: np.repeat(stroke(12, False, rng)[..., None], 3, axis=2))
    assert cfg["color"] == "grayscale" and "are gray" in choices["color"]["why"]
    assert cfg["size"] == [28, 28] and "12 px high, 12 wide" in choices["size"]["why"]  # grown to 28..64
    assert cfg["invert"] == "false" and "one polarity" in choices["invert"]["why"]


def test_colour_images_are_rgb_and_sizes_follow_the_census(tmp_path):
    def make(label, i, rng):
        img = np.zeros((40, 48, 3), np.uint8)
        img[..., 0 if label == "a" else 2] = 200
        return img
    cfg, choices = prepared(tmp_path, make)
    assert cfg["color"] == "rgb" and cfg["size"] == [40, 48] and cfg["invert"] == "false"
    big, _ = prepared(tmp_path / "big", lambda l, i, rng: np.zeros((120, 200, 3), np.uint8) + i)
    assert big["size"] == [38, 64]  # 120x200: the longer side to 64, the aspect kept


def test_mixed_polarity_is_normalised_per_image_and_explicit_values_win(tmp_path):
    cfg, choices = prepared(tmp_path, lambda l, i, rng: stroke(28, i % 2 == 0, rng))
    assert cfg["invert"] == "per-image" and "polarity varies" in choices["invert"]["why"]
    x = np.load(tmp_path / "run" / "X_train.npy")
    assert (np.median(x[:, :3], axis=(1, 2, 3)) < 0.3).all()  # every image now light on dark
    fixed, why = prepared(tmp_path / "fixed", lambda l, i, rng: stroke(28, i % 2 == 0, rng),
                          cfg=PreprocessParams(invert="false", size=(20, 20), color="rgb"))
    assert (fixed["invert"], fixed["size"], fixed["color"]) == ("false", [20, 20], "rgb")
    assert all(why[k]["why"] == "set in params" for k in ("invert", "size", "color"))


@pytest.mark.slow
def test_flips_yes_for_front_views_no_for_digits(tiny_mnist, tmp_path):
    rng = np.random.default_rng(0)
    x = np.stack([shape_image(k, rng) for k in SHAPES for _ in range(30)]).astype(np.float32)[..., None] / 255
    s = census.symmetry(x, np.repeat(np.arange(len(SHAPES)), 30), list(SHAPES))
    assert s["hflip"] and s["symmetric_classes"] >= len(SHAPES) - 1, s
    assert s["per_class"]["disc"] > 0.8 and s["per_class"]["boot"] < census.SYMMETRIC
    prepare.prepare(tiny_mnist, tmp_path / "run", PrepareParams(workers=1), PreprocessParams())
    digits = json.loads((tmp_path / "run" / "dataset.json").read_text())["choices"]["hflip"]
    assert digits["hflip"] is False and digits["symmetric_classes"] <= 3, digits


def test_of_two_classes_each_gets_its_own_verdict():
    """Arrows pointing right and up: the up arrow is mirror-symmetric, the right one is not (less the mean of
    two classes, each would be the other's negative, and both would get one verdict)."""
    right = np.zeros((21, 21), np.float32)
    right[9:12, 3:15] = 1
    for k in range(6):
        right[4 + k:17 - k, 14 + k] = 1
    up = np.rot90(right).copy()
    x = np.repeat(np.stack([right, up]), 5, axis=0)[..., None]
    s = census.symmetry(x, np.repeat(np.arange(2), 5), ["right", "up"])
    assert s["per_class"]["up"] > 0.9 and s["per_class"]["right"] < census.SYMMETRIC and s["hflip"] is False, s


def test_a_mirror_that_is_another_class_forbids_flips():
    """b and d: each the other's mirror image (even if every other class were symmetric)."""
    b = np.zeros((20, 20), np.float32)
    b[3:17, 5:7] = 1
    b[10:17, 5:14] = 1
    means = np.stack([b, b[:, ::-1], np.eye(20, dtype=np.float32) + np.eye(20, dtype=np.float32)[:, ::-1]])
    x = np.repeat(means, 5, axis=0)[..., None]
    s = census.symmetry(x, np.repeat(np.arange(3), 5), ["b", "d", "x"])
    assert s["hflip"] is False and s["mirror_looks_like"] == {"b": "d", "d": "b"}


def test_a_class_of_a_few_images_has_no_say_in_flips():
    """One symmetric drawing per class is not a symmetric class: too few images to judge, no flips; a class of
    a few images beside larger ones is left out of the vote."""
    disc = np.zeros((20, 20), np.float32)
    disc[5:15, 5:15] = 1
    s = census.symmetry(np.stack([disc, disc.T * 0.5, disc * 0.2])[..., None], np.arange(3), ["a", "b", "c"])
    assert s["hflip"] is False and "too few to judge" in s["why"], s
    b = np.zeros((20, 20), np.float32)
    b[3:17, 5:7] = 1
    b[10:17, 5:14] = 1
    x = np.concatenate([np.repeat(np.stack([disc, np.eye(20, dtype=np.float32) + np.eye(20, dtype=np.float32)[:, ::-1]]),
                                  census.SYMMETRY_IMAGES, axis=0), b[None]])[..., None]
    y = np.r_[np.repeat(np.arange(2), census.SYMMETRY_IMAGES), 2]
    s = census.symmetry(x, y, ["disc", "x", "b"])
    assert s["hflip"] and set(s["per_class"]) == {"disc", "x"}, s


@pytest.mark.parametrize("n, size, expected", [(10, 500, 10), (2000, 500, 500)])
def test_census_sample_is_seeded(n, size, expected):
    a, b = census.sample(n, 3, size), census.sample(n, 3, size)
    assert len(a) == expected and (a == b).all() and (np.diff(a) > 0).all()


def test_class_means_and_symmetry_of_the_training_files(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.random((500, 6, 5, 1)).astype(np.float32)
    y = rng.integers(0, 4, 500)
    sums = np.zeros((4, 6, 5, 1))
    np.add.at(sums, y, x.astype(np.float64))
    np.testing.assert_allclose(census.class_means(x, y, 4, chunk=128), sums / np.bincount(y)[:, None, None, None],
                               rtol=1e-6)  # float32 products per chunk
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    labels = ["a", "b", "c", "d"]
    assert census.symmetry_of(str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), labels) == census.symmetry(x, y, labels)


def test_with_no_image_to_look_at_the_choices_say_so_and_stay_valid():
    cfg, choices = census.resolve(PreprocessParams(invert="false"), [])
    assert cfg.resolved and choices["census"]["images"] == 0
    assert choices["color"]["why"] == choices["size"]["why"] == "no image could be looked at: the default"
    assert choices["invert"]["why"] == "set in params"


def test_auto_size_keeps_the_median_aspect():
    """A wide median image gives a wide input, within the bounds; a square one a square; tiny ones grow."""
    from pipeline.data.census import fit_size

    assert fit_size(300, 600) == (32, 64) and fit_size(1000, 1000) == (64, 64)
    assert fit_size(12, 12) == (28, 28) and fit_size(40, 50) == (40, 50)
    assert fit_size(20, 200) == (28, 64)  # an aspect beyond 64:28 is cut at the bounds


def test_the_size_choice_says_when_stretch_distorts_many_images():
    """Half the images 4:3, half square: the square median size stretches the others visibly, and the reason
    says so with the way out; all square (or resize = pad) says nothing of it."""
    def facts(shapes):
        return [census.Facts(w, h, True, 1) for w, h in shapes]

    _, mixed = census.resolve(PreprocessParams(), facts([(100, 100)] * 6 + [(640, 480)] * 4))
    assert "40% of the images looked at have another aspect" in mixed["size"]["why"]
    assert 'resize = "pad"' in mixed["size"]["why"]
    _, square = census.resolve(PreprocessParams(), facts([(100, 100)] * 10 + [(640, 480)]))
    _, padded = census.resolve(PreprocessParams(resize="pad"), facts([(100, 100)] * 6 + [(640, 480)] * 4))
    assert "aspect, and" not in square["size"]["why"] and "aspect, and" not in padded["size"]["why"]
