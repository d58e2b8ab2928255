"""Copies, look-alikes and outliers (pipeline.data.similar), on planted cases: copies are found through
re-encoding, resizing, cropping, shifting, recolouring, inversion and brightness; different writers'
look-alike digits are not copies; outliers warn only when they stand far out of their class."""
import csv
import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.data import mnist, similar
from pipeline.data.preprocess import perceptual
from pipeline.shared.params import PrepareParams, PreprocessParams
from pipeline.stages import prepare

from conftest import write_image


def scene(rng: np.random.Generator, side: int = 64, design: list | None = None) -> np.ndarray:
    """A distinct picture: a few random bright blobs and bars on a dark, slightly noisy background (or
    the given ``design``: [(x, y, x2, y2, radius, blob level, bar level)])."""
    img = (rng.random((side, side)) * 20).astype(np.uint8)
    for x, y, x2, y2, r, blob, bar in design or [designed(rng, side) for _ in range(4)]:
        cv2.circle(img, (x, y), r, blob, -1)
        cv2.line(img, (x, y), (x2, y2), bar, 2)
    return img


def designed(rng: np.random.Generator, side: int) -> tuple[int, ...]:
    x, y, x2, y2 = (int(v) for v in rng.integers(side // 4, 3 * side // 4, 4))
    return x, y, x2, y2, int(rng.integers(3, 8)), int(rng.integers(120, 255)), int(rng.integers(100, 255))


def jpeg(img: np.ndarray, quality: int = 70) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf))


@pytest.mark.parametrize("kind", similar.COPY_KINDS)
def test_copies_keep_their_hash_and_thumbnail(kind):
    rng = np.random.default_rng(0)
    img = scene(rng)
    h0, t0 = perceptual(img)
    copy = similar.plant_copy(img, kind, rng)
    h1, t1 = perceptual(copy)
    t = similar._unit(np.stack([np.frombuffer(t0, np.uint8), np.frombuffer(t1, np.uint8)]))
    corr = float(t[0] @ t[1])
    assert bin(h0 ^ h1).count("1") <= similar.NEAR_BITS and corr >= similar.CANDIDATE_CORR, (kind, corr)
    assert bin(h0 ^ perceptual(scene(rng))[0]).count("1") > similar.NEAR_BITS


def test_signatures_do_not_depend_on_the_batch():
    rng = np.random.default_rng(1)
    images = [scene(rng) for _ in range(70)] + [scene(rng, 150), np.zeros((9, 30), np.uint8), 255 - scene(rng)]
    hashes, thumbs, negative = similar.signatures(images)
    for i, img in enumerate(images):
        assert similar.signature(img) == (int(hashes[i]), thumbs[i].tobytes())
    assert negative.tolist() == [False] * 72 + [True]  # dark content on a light border: its negative


def model_input(img: np.ndarray, side: int = 48) -> np.ndarray:
    g = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return cv2.resize(g, (side, side), interpolation=cv2.INTER_AREA if g.shape[0] > side else cv2.INTER_LINEAR
                      ).astype(np.float32) / 255


def test_the_strict_test_passes_copies_and_not_look_alikes():
    """Copies of every kind pass; a look-alike (the same design drawn again, each point a pixel or two
    off, as another writer would) does not, although its thumbnail is about as close as a copy's."""
    rng = np.random.default_rng(2)
    designs = [[designed(rng, 48) for _ in range(4)] for _ in range(40)]
    scenes = [scene(rng, 48, d) for d in designs]
    kinds = [similar.COPY_KINDS[k % len(similar.COPY_KINDS)] for k in range(40)]
    copies = [similar.plant_copy(s, k, rng) for s, k in zip(scenes, kinds)]
    pitch = np.array([[c.shape[0] / 48, c.shape[1] / 48] for c in copies], np.float32)
    ones = np.ones((40, 2), np.float32)
    a = np.stack([model_input(s) for s in scenes])
    same = similar.copy_similarity(a, np.stack([model_input(c) for c in copies]), ones, pitch)
    assert (same >= similar.COPY_CORR).mean() >= 0.95, dict(zip(kinds, same.round(4)))
    looks = [model_input(scene(rng, 48, [(*(v + int(rng.integers(-2, 3)) for v in e[:4]), *e[4:]) for e in d]))
             for d in designs]
    other = similar.copy_similarity(a, np.stack(looks), ones, ones)
    assert (other < similar.COPY_CORR).mean() >= 0.9, other.round(4)


def test_planted_copies_within_across_classes_and_splits(tmp_path):
    rng = np.random.default_rng(3)
    data = tmp_path / "data"
    originals = {}
    for split in ("train", "test"):
        for label in ("a", "b"):
            for i in range(12):
                img = scene(rng)
                originals[(split, label, i)] = img
                write_image(data / split / label / f"{i:02d}.png", img)
    write_image(data / "train" / "a" / "copy_jpeg.jpg", jpeg(originals[("train", "a", 0)]))      # within a class
    write_image(data / "train" / "b" / "copy_of_a2.png", np.roll(originals[("train", "a", 2)], 2, axis=1))  # conflict
    write_image(data / "test" / "b" / "copy_of_train_b3.png", cv2.resize(jpeg(originals[("train", "b", 3)], 60),
                                                                          (100, 100)))  # leakage
    prepare.prepare(data, tmp_path / "run", PrepareParams(workers=1), PreprocessParams())
    d = json.loads((tmp_path / "run" / "dataset.json").read_text())
    near = d["near_duplicates"]
    pairs = {kind: {(frozenset(e["paths"]), e["kind"]) for e in near[kind]["examples"]}
             for kind in ("within_class", "across_classes", "across_splits")}
    assert (frozenset({"train/a/00.png", "train/a/copy_jpeg.jpg"}), "look-alike") in pairs["within_class"]
    assert (frozenset({"train/a/02.png", "train/b/copy_of_a2.png"}), "copy") in pairs["across_classes"]
    assert (frozenset({"train/b/03.png", "test/b/copy_of_train_b3.png"}), "copy") in pairs["across_splits"]
    assert near["across_classes"]["copies"] == 1 and near["across_splits"]["copies"] == 1
    assert near["across_classes"]["copy_groups"] == 1
    assert any("copies of one image carry different labels" in w for w in d["warnings"])
    assert any("1 val/test image(s) are copies of training images" in w for w in d["warnings"])
    rows = list(csv.DictReader(open(tmp_path / "run" / "similar.csv")))
    manifest = {r["path"] for r in csv.DictReader(open(tmp_path / "run" / "manifest.csv"))}
    assert {r["kind"] for r in rows} == {"copy"} and len({r["group"] for r in rows}) == 2
    assert all(r["path"] in manifest for r in rows)


@pytest.fixture(scope="module")
def digits(mnist_dir):
    """600 MNIST training digits and 200 test digits (different writers' look-alikes among them)."""
    x, y = mnist.load_split(mnist_dir, "train")
    xt, yt = mnist.load_split(mnist_dir, "test")
    return x[:600], y[:600], xt[:200], yt[:200]


def test_planted_copies_of_mnist_digits_are_found_and_look_alikes_are_not_copies(digits, tmp_path):
    """60 copies of training digits planted in the test split (every kind): recall >= 95%; the 800 real
    digits give no copy, no leakage warning and no outlier warning."""
    x, y, xt, yt = digits
    rng = np.random.default_rng(4)
    data = tmp_path / "digits"
    for split, xs, ys in (("train", x, y), ("test", xt, yt)):
        for i, (img, label) in enumerate(zip(xs, ys)):
            write_image(data / split / str(int(label)) / f"{i:04d}.png", img)
    planted = {}
    for k, i in enumerate(rng.choice(len(x), 60, replace=False).tolist()):
        name = f"test/{int(y[i])}/copy{k:02d}.png"
        write_image(data / name, similar.plant_copy(x[i], similar.COPY_KINDS[k % len(similar.COPY_KINDS)], rng))
        planted[name] = f"train/{int(y[i])}/{i:04d}.png"
    prepare.prepare(data, tmp_path / "run", PrepareParams(workers=1), PreprocessParams())
    groups: dict[str, set[str]] = {}
    for r in csv.DictReader(open(tmp_path / "run" / "similar.csv")):
        if r["kind"] == "copy":
            groups.setdefault(r["group"], set()).add(r["path"].split("/digits/", 1)[1])
    found = sum(any({copy, orig} <= g for g in groups.values()) for copy, orig in planted.items())
    assert found >= 57, f"{found} of 60 planted copies found"
    assert all(g & set(planted) for g in groups.values()), "a copy group of real digits only"
    d = json.loads((tmp_path / "run" / "dataset.json").read_text())
    far = {e["path"] for e in d["outliers"]["examples"] if e["far"]}
    assert far <= set(planted), far  # only planted copies (negatives, say) stand out: no real digit


def test_outliers_warn_only_when_far_from_their_class(digits):
    x, y, _, _ = digits
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 256, (2, 28, 28), dtype=np.uint8)
    images = list(x) + list(noise)
    labels = np.concatenate([y, [3, 7]]).astype(np.int64)
    hashes, thumbs, negative = similar.signatures(images)
    seen = similar.as_seen(thumbs, negative)
    names = [str(int(v)) for v in labels]
    paths = [f"{i}.png" for i in range(len(images))]
    clean, _ = similar.outliers(names[:600], similar.outlier_scores(seen[:600], labels[:600]), paths[:600])
    assert clean["far"] == 0
    planted, rows = similar.outliers(names, similar.outlier_scores(seen, labels), paths)
    assert planted["far"] == 2 and {e["path"] for e in planted["examples"] if e["far"]} == {"600.png", "601.png"}
    assert [r[0] for r in rows[:2]] == [600, 601] or {r[0] for r in rows[:2]} == {600, 601}


def test_outlier_scores_in_parallel_jobs_equal_serial():
    rng = np.random.default_rng(6)
    thumbs = rng.integers(0, 256, (90, 256), dtype=np.uint8)
    y = np.repeat([0, 1, 2], 30)
    serial = similar.outlier_scores(thumbs, y)
    jobs = similar.outlier_jobs(thumbs, y, submit=lambda fn, *args: similar.here(fn, *args))
    for a, b in zip(serial, similar.gather(jobs, len(y))):
        np.testing.assert_array_equal(a, b)


def test_groups_join_pairs_and_order_them():
    found = {"pairs": np.array([[0, 1], [1, 2], [5, 6], [7, 8]]),
             "kind": np.array(["copy", "copy", "copy", "look-alike"]),
             "similarity": np.array([0.995, 0.999, 0.993, 0.991], np.float32),
             "across_classes": np.array([False, False, True, True]),
             "across_splits": np.array([True, True, False, False])}
    rows = similar.groups(found)
    assert [(g, i, k) for g, i, k, _ in rows] == [(0, 0, "copy"), (0, 1, "copy"), (0, 2, "copy"), (1, 5, "copy"),
                                                (1, 6, "copy"), (2, 7, "look-alike"), (2, 8, "look-alike")]
    assert rows[0][3] == pytest.approx(0.995, abs=1e-4) and rows[1][3] == pytest.approx(0.999, abs=1e-4)


def test_degenerate_hashes_stop_at_the_pair_budget(monkeypatch):
    monkeypatch.setattr(similar, "MAX_PAIRS", 5000)
    pairs, truncated = similar.hash_pairs(np.zeros(3000, np.uint64))  # 4.5 million identical-hash pairs
    assert truncated and 0 < len(pairs) <= 5000


def test_pitch_follows_the_resize_mode():
    w, h = np.array([56, 28]), np.array([28, 28])
    assert similar.pitch(w, h, (28, 28), "stretch", "none").tolist() == [[1, 2], [1, 1]]
    assert similar.pitch(w, h, (28, 28), "pad", "none").tolist() == [[2, 2], [1, 1]]
    assert similar.pitch(w, h, (28, 28), "crop", "none").tolist() == [[1, 1], [1, 1]]


@pytest.mark.slow
def test_prepare_with_workers_gives_the_same_audit_as_without(tmp_path):
    """The outliers, symmetry and samples run in the idle decoding workers when there are some: the
    findings and files are the same as in one process."""
    rng = np.random.default_rng(7)
    data = tmp_path / "data"
    for label in ("a", "b"):
        for i in range(40):
            write_image(data / label / f"{i:02d}.png", scene(rng, 32))
    write_image(data / "b" / "noise.png", rng.integers(0, 256, (32, 32), dtype=np.uint8))
    for workers in (1, 2):
        prepare.prepare(data, tmp_path / f"run{workers}", PrepareParams(workers=workers), PreprocessParams())
    one, two = (json.loads((tmp_path / f"run{w}" / "dataset.json").read_text()) for w in (1, 2))
    for key in ("near_duplicates", "outliers", "quality", "shortcuts", "warnings"):
        assert one[key] == two[key], key
    assert one["choices"]["hflip"] == two["choices"]["hflip"]
    for name in ("similar.csv", "outliers.csv", "quality.csv", "samples.png"):
        assert (tmp_path / "run1" / name).read_bytes() == (tmp_path / "run2" / name).read_bytes(), name
    assert not list((tmp_path / "run2").glob(".*tmp*"))  # the workers' thumbnails file is gone


def test_the_copy_test_gives_the_same_scores_in_a_pool_as_here(tmp_path):
    """Blocks of pairs run as jobs (the decoding workers') score exactly as in this process, in order."""
    from multiprocessing.pool import ThreadPool

    rng = np.random.default_rng(3)
    parts = [rng.random((n, 12, 12, 1), dtype=np.float32) for n in (40, 25)]
    files = []
    for k, arr in enumerate(parts):
        files.append(str(tmp_path / f"x{k}.npy"))
        np.save(files[-1], arr)
    file_of = np.r_[np.zeros(40, np.int8), np.ones(25, np.int8)]
    row_of = np.r_[np.arange(40), np.arange(25)].astype(np.int64)
    source = similar.Source(tuple(files), file_of, row_of)
    pairs = np.sort(rng.integers(0, 65, (300, 2)), axis=1)
    pitches = np.ones((65, 2), np.float32)
    old_block = similar.PAIR_BLOCK
    try:
        similar.PAIR_BLOCK = 32  # ten blocks, more than IN_FLIGHT
        here = similar._verify(pairs, source, pitches)
        with ThreadPool(2) as pool:
            pooled = similar._verify(pairs, source, pitches, lambda fn, *args: pool.apply_async(fn, args))
    finally:
        similar.PAIR_BLOCK = old_block
    x = np.concatenate(parts)[..., 0]
    direct = similar.copy_similarity(x[pairs[:, 0]], x[pairs[:, 1]], pitches[pairs[:, 0]], pitches[pairs[:, 1]])
    assert np.array_equal(here, pooled)
    np.testing.assert_allclose(here, direct, atol=1e-5)


def test_identical_files_across_labels_or_splits_join_the_copies_of_similar_csv():
    """Byte-identical files are reported apart (duplicates, conflicts, leakage), and similar.csv, the review
    page's source, shows those that span labels or splits with the other copies."""
    sha1 = np.zeros((6, 20), np.uint8)
    sha1[:, 0] = [1, 2, 1, 3, 3, 4]  # images 0 and 2 identical, 3 and 4 identical
    y, splits = np.array([0, 0, 1, 2, 2, 0]), np.array([0, 0, 0, 0, 0, 1])
    found = {"pairs": np.array([[1, 5]]), "kind": np.array(["copy"]), "similarity": np.array([0.995], np.float32),
             "across_classes": np.array([False]), "across_splits": np.array([True]), "with_train": np.array([True])}
    rows = similar.groups(similar.with_identical(found, sha1, y, splits))
    assert {(i, kind, round(sim, 3)) for _, i, kind, sim in rows} == {(0, "copy", 1.0), (2, "copy", 1.0),
                                                                       (1, "copy", 0.995), (5, "copy", 0.995)}
    assert rows[0][1:3] == (0, "copy") and rows[1][1] == 2  # the identical pair first: the most similar group
    assert similar.with_identical(found, np.arange(120, dtype=np.uint8).reshape(6, 20), y, splits) is found
