"""Near-duplicates (resized, re-encoded, shifted copies) and outliers, on planted cases."""
import io
import json

import cv2
import numpy as np
from PIL import Image

from pipeline.data import similar
from pipeline.data.preprocess import perceptual
from pipeline.shared.params import PrepareParams, PreprocessParams
from pipeline.stages import prepare

from conftest import write_image


def scene(rng: np.random.Generator, side: int = 64) -> np.ndarray:
    """A distinct picture: a few random bright blobs and bars on a dark, slightly noisy background."""
    img = (rng.random((side, side)) * 20).astype(np.uint8)
    for _ in range(4):
        x, y, x2, y2 = (int(v) for v in rng.integers(side // 4, 3 * side // 4, 4))
        cv2.circle(img, (x, y), int(rng.integers(3, 8)), int(rng.integers(120, 255)), -1)
        cv2.line(img, (x, y), (x2, y2), int(rng.integers(100, 255)), 2)
    return img


def jpeg(img: np.ndarray, quality: int = 70) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def test_copies_keep_their_hash_and_thumbnail():
    rng = np.random.default_rng(0)
    img = scene(rng)
    h0, t0 = perceptual(img)
    variants = {"jpeg": jpeg(img), "resized": cv2.resize(img, (150, 150)),
                "shifted": np.roll(np.roll(img, 2, axis=0), -3, axis=1), "rgb": np.repeat(img[..., None], 3, axis=2)}
    thumbs = np.stack([np.frombuffer(t0, np.uint8)] + [np.frombuffer(perceptual(v)[1], np.uint8)
                                                        for v in variants.values()])
    corr = similar._unit(thumbs) @ similar._unit(thumbs)[0]
    for (name, v), c in zip(variants.items(), corr[1:]):
        assert bin(h0 ^ perceptual(v)[0]).count("1") <= similar.NEAR_BITS, name
        assert c >= similar.NEAR_CORR, (name, c)
    other = perceptual(scene(rng))
    assert bin(h0 ^ other[0]).count("1") > similar.NEAR_BITS


def test_planted_near_duplicates_within_across_classes_and_splits(tmp_path):
    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    originals = {}
    for split in ("train", "test"):
        for label in ("a", "b"):
            for i in range(12):
                img = scene(rng)
                originals[(split, label, i)] = img
                write_image(data / split / label / f"{i:02d}.png", img)
    write_image(data / "train" / "a" / "copy_jpeg.jpg", jpeg(originals[("train", "a", 0)]))      # within a class
    write_image(data / "train" / "a" / "copy_big.png", cv2.resize(originals[("train", "a", 1)], (128, 128)))
    write_image(data / "train" / "b" / "copy_of_a2.png", np.roll(originals[("train", "a", 2)], 2, axis=1))  # conflict
    write_image(data / "test" / "b" / "copy_of_train_b3.png", jpeg(originals[("train", "b", 3)], 60))  # leakage
    prepare.prepare(data, tmp_path / "run", PrepareParams(workers=1), PreprocessParams())
    near = json.loads((tmp_path / "run" / "dataset.json").read_text())["near_duplicates"]
    pairs = {kind: {frozenset(e["paths"]) for e in near[kind]["examples"]}
             for kind in ("within_class", "across_classes", "across_splits")}
    assert {"train/a/00.png", "train/a/copy_jpeg.jpg"} in pairs["within_class"]
    assert {"train/a/01.png", "train/a/copy_big.png"} in pairs["within_class"]
    assert {"train/a/02.png", "train/b/copy_of_a2.png"} in pairs["across_classes"]
    assert {"train/b/03.png", "test/b/copy_of_train_b3.png"} in pairs["across_splits"]
    assert near["within_class"]["pairs"] == 2 and near["across_classes"]["pairs"] == 1
    assert near["across_splits"]["pairs"] == 1  # the 48 distinct scenes are not near each other


def test_planted_outliers_are_flagged_first():
    rng = np.random.default_rng(2)
    bars = []
    for _ in range(60):
        img = np.zeros((28, 28), np.uint8)
        c = int(rng.integers(11, 17))
        img[4:24, c - 2:c + 2] = 220
        bars.append(img)
    noise = [(rng.random((28, 28)) * 255).astype(np.uint8) for _ in range(2)]
    ring = np.zeros((28, 28), np.uint8)
    cv2.circle(ring, (14, 14), 9, 255, 2)
    images = bars + noise + [ring]
    thumbs = np.stack([np.frombuffer(perceptual(i)[1], np.uint8) for i in images])
    found = similar.outliers([f"{i}.png" for i in range(len(images))], ["bar"] * len(images),
                             np.zeros(len(images), int), thumbs)
    assert {e["path"] for e in found["examples"]} == {"60.png", "61.png", "62.png"} and found["images"] == 3


def test_degenerate_hashes_stop_at_the_pair_budget(monkeypatch):
    monkeypatch.setattr(similar, "MAX_PAIRS", 5000)
    pairs, truncated = similar.hash_pairs(np.zeros(3000, np.uint64))  # 4.5 million identical-hash pairs
    assert truncated and 0 < len(pairs) <= 5000
