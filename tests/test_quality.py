"""Image quality (pipeline.data.quality): each issue on a planted case, nothing on clean or uniformly odd
data, and shortcuts (a property that tells a class on its own) on a planted one."""
import csv
import json

import cv2
import numpy as np
import pytest

from pipeline.data import quality
from pipeline.shared.params import PrepareParams, PreprocessParams
from pipeline.stages import prepare

from conftest import write_image


def scene(rng: np.random.Generator, h: int = 48, w: int = 48, rgb: bool = False) -> np.ndarray:
    """A textured picture: a mid-gray noisy background with a few bright and dark blobs and bars."""
    img = (rng.random((h, w)) * 40 + 90).astype(np.uint8)
    for _ in range(5):
        x, y, x2, y2 = (int(v) for v in rng.integers(4, min(h, w) - 4, 4))
        cv2.circle(img, (x, y), int(rng.integers(3, 7)), int(rng.choice([15, 240])), -1)
        cv2.line(img, (x, y), (x2, y2), int(rng.integers(0, 255)), 2)
    if not rgb:
        return img
    tint = rng.uniform(0.3, 1.0, 3)
    return np.clip(img[..., None] * tint + rng.integers(0, 40, 3), 0, 255).astype(np.uint8)


def stats_of(images):
    grays = [i if i.ndim == 2 else cv2.cvtColor(i, cv2.COLOR_RGB2GRAY) for i in images]
    return quality.image_stats(images, grays)


def flagged(images, sizes=None):
    stats = stats_of(images)
    w = np.array([i.shape[1] for i in images]) if sizes is None else sizes[:, 0]
    h = np.array([i.shape[0] for i in images]) if sizes is None else sizes[:, 1]
    return {issue: set(idx.tolist()) for issue, (idx, _) in quality.issues(stats, w, h).items()}


def test_statistics_do_not_depend_on_the_batch():
    rng = np.random.default_rng(0)
    images = [scene(rng) for _ in range(5)] + [scene(rng, 30, 70, rgb=True), np.zeros((9, 9), np.uint8)]
    together = stats_of(images)
    for i, img in enumerate(images):
        np.testing.assert_array_equal(stats_of([img])[0], together[i])
    blank = together[-1]
    assert blank[quality.STATS.index("sharpness")] == quality.NONE  # no contrast: sharpness does not apply
    assert blank[quality.STATS.index("entropy")] == 0 and blank[quality.STATS.index("colour")] == quality.NONE


def test_each_planted_issue_is_flagged_and_nothing_else():
    rng = np.random.default_rng(1)
    images = [scene(rng) for _ in range(60)]
    dark = (scene(rng) * 0.25).astype(np.uint8)
    light = (scene(rng) * 0.25 + 185).astype(np.uint8)
    blurred = cv2.GaussianBlur(scene(rng), (0, 0), 3)
    blank = np.full((48, 48), 128, np.uint8) + rng.integers(0, 2, (48, 48), dtype=np.uint8)
    images += [dark, light, blurred, blank]
    found = flagged(images)
    assert 60 in found["dark"] and 61 in found["light"] and 62 in found["blurry"]
    assert 63 in found["low_information"]
    normal = set(range(60))
    assert all(not (idx & normal) for idx in found.values()), found


def test_odd_sizes_and_aspect_ratios_against_the_dataset():
    rng = np.random.default_rng(2)
    images = [scene(rng) for _ in range(40)]
    sizes = np.array([(64 + int(rng.integers(-6, 7)), 48 + int(rng.integers(-4, 5))) for _ in range(40)]
                     + [(256, 190), (150, 40)])
    images += [scene(rng), scene(rng)]
    found = flagged(images, sizes)
    assert found["odd_size"] == {40} and found["odd_aspect_ratio"] == {41}


def test_gray_images_among_colour_ones_and_not_in_a_mixed_set():
    rng = np.random.default_rng(3)
    colour = [scene(rng, rgb=True) for _ in range(30)]
    gray = np.repeat(scene(rng)[..., None], 3, axis=2)
    assert flagged(colour + [gray])["grayscale"] == {30}
    half = colour[:15] + [np.repeat(scene(rng)[..., None], 3, axis=2) for _ in range(15)]
    assert flagged(half)["grayscale"] == set()  # half of them gray: a mixed dataset, nothing stands out
    assert flagged([scene(rng) for _ in range(10)])["grayscale"] == set()  # decoded gray: not judged


def test_a_uniformly_dark_or_blurry_dataset_is_not_flagged_everywhere():
    rng = np.random.default_rng(4)
    dark = [(scene(rng) * 0.2).astype(np.uint8) for _ in range(40)]
    soft = [cv2.GaussianBlur(scene(rng), (0, 0), 2) for _ in range(40)]
    assert not any(flagged(dark).values()) and not any(flagged(soft).values())


def test_robust_z_has_a_floor_and_keeps_missing_values():
    z, med = quality.robust_z(np.array([5.0, 5.0, 5.0, np.nan, 9.0]), 2.0)
    assert med == 5.0 and z[-1] == 2.0 and np.isnan(z[3])


def shortcut_props(rng, brighter: bool):
    n = 200
    y = np.repeat([0, 1], n // 2)
    brightness = rng.normal(100, 20, n) + (80 * (y == 1) if brighter else 0)
    props = {"brightness": brightness, "log_area": np.full(n, np.log(784.0)), "log_aspect": np.zeros(n),
             "log_sharpness": rng.normal(0, 0.2, n), "colour": np.full(n, np.nan)}
    return props, y, np.arange(n) % 4 != 0  # a quarter held out


def test_a_planted_shortcut_is_found_and_a_balanced_set_has_none():
    rng = np.random.default_rng(5)
    props, y, train = shortcut_props(rng, brighter=True)
    found = quality.shortcuts(props, y, train, ["plain", "bright"])
    assert {(f["property"], f["direction"]) for f in found} >= {("brightness", "higher")}
    assert all(f["held_out"] >= quality.SHORTCUT for f in found)
    props, y, train = shortcut_props(rng, brighter=False)
    assert quality.shortcuts(props, y, train, ["plain", "bright"]) == []


def test_prepare_writes_the_issues_the_report_and_review_read(tmp_path):
    rng = np.random.default_rng(6)
    data = tmp_path / "data"
    for label in ("a", "b"):
        for i in range(30):
            write_image(data / label / f"{i:02d}.png", scene(rng))
    write_image(data / "a" / "dark.png", (scene(rng) * 0.25).astype(np.uint8))
    write_image(data / "b" / "blank.png", np.full((48, 48), 120, np.uint8))
    prepare.prepare(data, tmp_path / "run", PrepareParams(workers=1), PreprocessParams())
    rows = list(csv.DictReader(open(tmp_path / "run" / "quality.csv")))
    manifest = {r["path"]: r for r in csv.DictReader(open(tmp_path / "run" / "manifest.csv"))}
    issues = {(r["path"].rsplit("/", 1)[-1], r["issue"]) for r in rows}
    assert ("dark.png", "dark") in issues and ("blank.png", "low_information") in issues
    assert all(r["path"] in manifest and r["label"] == manifest[r["path"]]["label"]
               and r["split"] == manifest[r["path"]]["split"] for r in rows)
    q = json.loads((tmp_path / "run" / "dataset.json").read_text())["quality"]
    assert q["counts"]["dark"] >= 1 and set(q["rules"]) == set(quality.ISSUES)
    assert q["examples"]["dark"][0]["path"] == "a/dark.png"
    warnings = json.loads((tmp_path / "run" / "dataset.json").read_text())["warnings"]
    assert any("too dark" in w and "quality.csv" in w for w in warnings)


@pytest.mark.parametrize("issue", quality.ISSUES)
def test_every_issue_has_words_and_a_rule(issue):
    assert quality.WORDS[issue] and quality.rules()[issue]
