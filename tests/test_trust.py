"""Trust a prediction: novelty on tiny in/out sets, the cut rule on val, calibration, explain, old bundles."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline.model import calibrate, novelty
from pipeline.model.rows import resolve_threshold
from pipeline.shared import bundle, novelty_spec, plots
from pipeline.shared.novelty_spec import NoveltySpec
from pipeline.shared.params import NoveltyParams, PredictParams
from pipeline.stages.predict import predict

FLAG_RATE = NoveltyParams().flag_rate

from conftest import SHADES, cli, shade_image, write_image


def strokes(n, rng, side=20):
    """In-distribution: one bright vertical bar on black, anywhere."""
    x = np.zeros((n, side, side, 1), np.float32)
    for i in range(n):
        c = int(rng.integers(4, side - 4))
        x[i, 3:side - 3, c - 1:c + 1] = rng.uniform(0.7, 1.0)
    return x + rng.normal(0, 0.02, x.shape).astype(np.float32).clip(0)


def test_novelty_flags_other_kinds_and_keeps_the_rate_on_val():
    rng = np.random.default_rng(0)
    train, val, test = strokes(600, rng), strokes(300, rng), strokes(300, rng)
    feats = lambda x: x.reshape(len(x), -1)[:, ::4]  # noqa: E731  (stand-in for the model's features)
    spec = novelty.fit(novelty.image_stats(train), feats(train), novelty.image_stats(val), feats(val), FLAG_RATE)
    assert spec.facts["val_flagged"] <= FLAG_RATE and json.dumps(spec.to_json())  # JSON-ready, no pickle
    assert spec.flag_rate == FLAG_RATE and spec.head is None and spec.detectors == novelty.DETECTORS[:2]
    _, familiar = novelty.score(spec, test, feats(test))
    assert familiar.mean() >= 0.95
    blobs = np.stack([np.clip(np.exp(-((np.mgrid[0:20, 0:20] - rng.uniform(5, 15, (2, 1, 1))) ** 2).sum(0) / 20),
                              0, 1)[..., None] for _ in range(100)]).astype(np.float32)
    others = {"noise": rng.random((100, 20, 20, 1)).astype(np.float32), "inverted": 1 - test[:100], "blobs": blobs}
    for name, x in others.items():
        nov, fam = novelty.score(spec, x, feats(x))
        assert (~fam).mean() >= 0.9, name
        assert nov.min() > np.median(novelty.score(spec, test, feats(test))[0]), name


def test_strokes_classifier_tells_the_kinds_apart_and_adds_to_the_sum():
    rng = np.random.default_rng(5)
    train, val, test = strokes(400, rng), strokes(300, rng), strokes(200, rng)
    crosses = strokes(300, rng)  # stand-in for drawn strokes: a bar with a crossbar, unlike any training image
    crosses[:, 9:11, 4:16] = 0.9
    feats = lambda x: x.reshape(len(x), -1)  # noqa: E731
    head = novelty.fit_head(feats(train), feats(crosses[:200]), seed=0)
    assert head.shape == (400 + 3, novelty.HEAD_HIDDEN)
    assert novelty.strokes_logits(head, feats(crosses[200:])).min() > novelty.strokes_logits(head, feats(test)).max()
    np.testing.assert_array_equal(head, novelty.fit_head(feats(train), feats(crosses[:200]), seed=0))  # seeded
    few = lambda x: x.reshape(len(x), -1)[:, ::4]  # noqa: E731
    spec = novelty.fit(novelty.image_stats(train), few(train), novelty.image_stats(val), few(val), FLAG_RATE,
                       strokes=(feats(train), feats(val), feats(crosses[:200])))
    assert spec.detectors == novelty.DETECTORS and spec.facts["val_flagged"] <= FLAG_RATE
    score = lambda x: novelty.score(spec, x, few(x), strokes=novelty.strokes_logits(spec.head, feats(x)))  # noqa: E731
    assert score(test)[1].mean() >= 0.95 and (~score(crosses[200:])[1]).mean() >= 0.9
    # the sum of surprises: an image a little unusual to two detectors scores above one unusual to either
    levels, q = spec.tail_levels, spec.tail_quantiles.T
    mid = q[len(levels) // 2]
    one, two = np.array([[mid[0], q[0, 1], q[0, 2]]]), np.array([[mid[0], mid[1], q[0, 2]]])
    assert novelty.combine(spec, two)[0] > novelty.combine(spec, one)[0] > novelty.combine(spec, q[:1])[0] == 0
    # past the table's end the surprise keeps growing (an exponential tail), so novelty keeps ranking
    far = q[-1:] + np.array([[1.0, 0.0, 0.0]]) * (q[-1, 0] - q[0, 0])
    assert novelty.combine(spec, far * [[2, 1, 1]])[0] > novelty.combine(spec, far)[0] > novelty.combine(spec, q[-1:])[0]


def test_a_small_validation_split_pools_the_training_sample_and_keeps_the_rule_on_val():
    rng = np.random.default_rng(6)
    train, val, test = strokes(300, rng), strokes(60, rng), strokes(300, rng)
    crosses = strokes(300, rng)
    crosses[:, 9:11, 4:16] = 0.9
    feats = lambda x: x.reshape(len(x), -1)  # noqa: E731
    few = lambda x: x.reshape(len(x), -1)[:, ::4]  # noqa: E731
    spec = novelty.fit(novelty.image_stats(train), few(train), novelty.image_stats(val), few(val), FLAG_RATE,
                       strokes=(feats(train), feats(val), feats(crosses)))
    assert spec.facts["cut_set_on"] == "validation split and training sample" and spec.facts["val_flagged"] <= FLAG_RATE
    _, familiar = novelty.score(spec, test, few(test), strokes=novelty.strokes_logits(spec.head, feats(test)))
    assert familiar.mean() >= 0.95


def test_a_novelty_spec_round_trips_through_its_files(tmp_path):
    rng = np.random.default_rng(7)
    train, val = strokes(300, rng), strokes(200, rng)
    crosses = strokes(200, rng)
    crosses[:, 9:11, 4:16] = 0.9
    feats = lambda x: x.reshape(len(x), -1)  # noqa: E731
    spec = novelty.fit(novelty.image_stats(train), feats(train)[:, ::4], novelty.image_stats(val), feats(val)[:, ::4],
                       0.05, strokes=(feats(train), feats(val), feats(crosses)))
    spec.write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(novelty_spec.FILES)
    back = NoveltySpec.read(tmp_path)
    assert back.flag_rate == 0.05 and back.threshold == spec.threshold and back.detectors == spec.detectors
    np.testing.assert_array_equal(back.head, spec.head)
    x = strokes(50, rng)
    np.testing.assert_allclose(novelty.score(back, x, feats(x)[:, ::4], strokes=novelty.strokes_logits(back.head, feats(x)))[0],
                               novelty.score(spec, x, feats(x)[:, ::4], strokes=novelty.strokes_logits(spec.head, feats(x)))[0])
    w1, b1, w2, b2 = back.head_layers()  # the packing is undone in one place
    np.testing.assert_allclose(np.maximum(feats(x) @ w1 + b1, 0) @ w2 + b2, novelty.strokes_logits(back.head, feats(x)),
                               rtol=1e-5, atol=1e-5)


def test_a_novelty_spec_from_before_the_sum_still_scores():
    spec = NoveltySpec(("statistics", "features"), 1.0, FLAG_RATE, np.zeros(2), np.eye(2), np.zeros((1, 2)),
                       legacy={"val_median": [1.0, 0.1], "val_p98": [3.0, 0.3]})
    np.testing.assert_allclose(novelty.combine(spec, np.array([[1.0, 0.1], [5.0, 0.2], [2.0, 0.5]])), [0.0, 2.0, 2.0])


def test_stroke_images_go_through_the_datasets_preprocessing():
    from pipeline.data import strokes as drawn
    from pipeline.data.strokes import stroke_images
    from pipeline.shared.params import PreprocessParams

    raw = drawn.draw(8, seed=3)
    assert raw.shape == (8, drawn.SIDE, drawn.SIDE) and raw.dtype == np.uint8
    assert np.array_equal(raw, drawn.draw(8, seed=3)) and (raw > 128).mean(axis=(1, 2)).min() > 0.005
    for invert in ("false", "true"):
        cfg = PreprocessParams(color="rgb", size=(20, 24), invert=invert)
        x = stroke_images(8, cfg, seed=3)
        assert x.shape == (8, 20, 24, 3) and x.dtype == np.float32
        assert np.median(x) < 0.2  # light ink on black after the preprocessing, either way round


def test_auto_threshold_reaches_the_target_precision_on_val():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.3, 1.0, 2000)
    correct = rng.random(2000) < conf  # higher confidence, more often right
    probs = np.stack([conf, 1 - conf], axis=1)
    y = np.where(correct, 0, 1)
    table = calibrate.risk_coverage(probs, y)
    for target in (0.9, 0.95):
        cut, facts = calibrate.threshold_for(table, target)
        kept = conf >= cut
        assert facts["reached"] and correct[kept].mean() >= target and facts["coverage"] == pytest.approx(kept.mean())
        lower = [c for c in table["threshold"] if c < cut]
        assert not lower or correct[conf >= max(lower)].mean() < target  # the lowest cut that reaches it
    assert calibrate.threshold_for(table, 1.01)[1]["reached"] is False


def test_an_auto_threshold_short_of_its_target_is_a_warning(caplog):
    """The labelled rows are less precise than asked: said as a warning (it was one INFO line among many)."""
    conf = np.linspace(0.34, 0.4, 100)
    probs = np.stack([conf, 1 - conf], axis=1)
    table = calibrate.risk_coverage(probs, np.arange(100) % 2)  # right half the time, whatever the confidence
    with caplog.at_level("INFO"):
        resolve_threshold(PredictParams(threshold="auto"), {"risk_coverage": table, "val_images": 500})
    said = [r for r in caplog.records if "no cut reaches 99.00% precision" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING", caplog.text
    with caplog.at_level("INFO"):
        caplog.clear()
        resolve_threshold(PredictParams(threshold="auto", target_precision=0.4), {"risk_coverage": table,
                                                                                   "val_images": 500})
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text


def test_temperature_scaling_reduces_the_calibration_error_of_an_overconfident_model():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 3000)
    logits = rng.normal(0, 1, (3000, 5))
    logits[np.arange(3000), y] += 1.5
    overconfident = logits * 6  # the same ranking, far too sure
    t = calibrate.fit_temperature(overconfident, y)
    before, after = calibrate.ece(calibrate.softmax(overconfident), y), calibrate.ece(calibrate.softmax(overconfident / t), y)
    assert t > 3 and after < 0.5 * before and after < 0.03, (t, before, after)
    p = calibrate.softmax(overconfident / t)
    np.testing.assert_allclose(calibrate.uncalibrated(p, t), calibrate.softmax(overconfident), atol=1e-6)
    right = logits[:18].copy()
    right[np.arange(18), y[:18]] += 3  # a tiny validation split the model gets all right: no minimum to find
    for scale in (0.3, 1.0, 5.0):  # under- or over-confident: the mean confidence set to (n+1)/(n+2)
        t = calibrate.fit_temperature(right * scale, y[:18])
        conf = calibrate.softmax(right * scale / t).max(axis=1).mean()
        assert conf == pytest.approx(19 / 20, abs=1e-4) and calibrate.T_BOUNDS[0] < t < calibrate.T_BOUNDS[1]


def test_trained_bundle_carries_calibration_and_novelty(shade_bundle):
    b = bundle.load(shade_bundle)
    assert b.calibration["temperature"] > 0 and b.calibration["risk_coverage"]["threshold"]
    assert b.novelty.threshold > 0 and b.novelty.reference.shape[1] == 120  # the f5 layer
    assert b.novelty.detectors == novelty.DETECTORS and b.novelty.flag_rate == FLAG_RATE
    flat = int(np.prod(b.model.get_layer("flatten").output.shape[1:]))
    assert b.novelty.head.shape == (flat + 3, novelty.HEAD_HIDDEN) and b.novelty.head.dtype == np.float32
    cut, how = resolve_threshold(PredictParams(threshold="auto"), b.calibration)
    assert 0 <= cut <= 1 and "auto" in how["how"]


def test_predict_columns_unfamiliar_and_unknown(shade_bundle, tmp_path):
    rng = np.random.default_rng(3)
    for label in SHADES:
        write_image(tmp_path / "in" / f"{label}.png", shade_image(label, rng))
    for i in range(3):
        write_image(tmp_path / "in" / f"noise{i}.png", (rng.random((20, 20)) * 255).astype(np.uint8))
    s = predict(tmp_path / "in", shade_bundle, tmp_path / "p.csv", PredictParams(workers=1, unfamiliar="unknown"))
    rows = {r["path"]: r for r in __import__("csv").DictReader(open(tmp_path / "p.csv"))}
    assert all(rows[f"noise{i}.png"]["familiar"] == "false" and rows[f"noise{i}.png"]["label"] == "unknown"
               for i in range(3))
    # a model fitted on 54 images has a rough cut: most (not always all) new shades are familiar
    familiar = [label for label in SHADES if rows[f"{label}.png"]["familiar"] == "true"]
    assert len(familiar) >= 2 and all(rows[f"{label}.png"]["label"] == label for label in familiar)
    assert min(float(rows[f"noise{i}.png"]["novelty"]) for i in range(3)) > max(
        float(rows[f"{label}.png"]["novelty"]) for label in SHADES)
    assert s["unfamiliar"] == 6 - len(familiar) and s["unfamiliar_share"] == pytest.approx((6 - len(familiar)) / 6, abs=1e-4)


def test_a_bundle_missing_only_its_strokes_classifier_is_a_clear_error(shade_bundle, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(shade_bundle, damaged)
    (damaged / novelty_spec.HEAD).unlink()
    with pytest.raises(bundle.artifacts.StageError, match="novelty strokes classifier not found"):
        bundle.load(damaged)


def test_bundles_without_the_new_files_still_load(shade_bundle, tmp_path, caplog):
    old = tmp_path / "old"
    shutil.copytree(shade_bundle, old)
    for name in (bundle.CALIBRATION, *novelty_spec.FILES):
        (old / name).unlink()
    with caplog.at_level("INFO"):
        b = bundle.load(old)
    assert b.novelty is None and b.calibration is None
    assert "unfamiliar-input detection is unavailable" in caplog.text
    rng = np.random.default_rng(4)
    write_image(tmp_path / "in" / "a.png", shade_image("dark", rng))
    s = predict(tmp_path / "in", old, tmp_path / "p.csv", PredictParams(workers=1))
    assert s["predicted"] == 1 and s["unfamiliar"] is None
    row = next(iter(__import__("csv").DictReader(open(tmp_path / "p.csv"))))
    assert row["novelty"] == "" and row["familiar"] == "" and row["label"] == "dark"
    with pytest.raises(ValueError, match='threshold = "auto" needs the validation figures'):
        predict(tmp_path / "in", old, tmp_path / "q.csv", PredictParams(workers=1, threshold="auto"))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["occlusion", "gradcam"])
def test_explain_writes_an_overlay_png(shade_bundle, tmp_path, method):
    rng = np.random.default_rng(5)
    img = write_image(tmp_path / "mid.png", shade_image("mid", rng))
    res = cli("explain", img, "--model", shade_bundle, "--out", tmp_path / "o.png", "--method", method)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "mid" in res.stdout and f"{method} map" in res.stdout
    with Image.open(tmp_path / "o.png") as png:
        width, height = (round(inches * plots.DPI) for inches in plots.EXPLANATION_INCHES)
        assert png.format == "PNG" and png.size == (width, height)  # the three panels
    if method == "occlusion":  # another label than the most probable one, by name
        res = cli("explain", img, "--model", shade_bundle, "--out", tmp_path / "d.png", "--label", "dark")
        assert res.returncode == 0 and res.stdout.startswith(f"{img}: dark  top-3: mid "), res.stdout
        res = cli("explain", img, "--model", shade_bundle, "--out", tmp_path / "e.png", "--label", "zebra")
        assert res.returncode == 2 and "--label 'zebra' is not a label of this model: dark, light, mid" in res.stderr


def test_a_cut_set_on_few_validation_images_says_so_and_a_multi_label_model_says_its_threshold_is_unused(caplog):
    import logging

    from pipeline.model.rows import rules_for

    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]] * 2)
    table = calibrate.risk_coverage(probs, np.array([0, 0, 1, 0] * 2))
    with caplog.at_level(logging.INFO):
        few = rules_for(PredictParams(threshold="auto"), ["a", "b"], {"risk_coverage": table, "val_images": 8})
        many = rules_for(PredictParams(threshold="auto"), ["a", "b"], {"risk_coverage": table, "val_images": 5000})
    assert "on 8 validation images only" in few.how["how"] and "only" not in many.how["how"]
    assert "cut was set on 8 validation images only" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        rules_for(PredictParams(threshold=0.5), ["a", "b"], {"thresholds": [0.4, 0.6]})
    assert "threshold 0.5 not used: a multi-label model" in caplog.text
