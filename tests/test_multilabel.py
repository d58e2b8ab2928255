"""Multi-label cores: average precision as scikit-learn computes it, thresholds per label, per-label
temperatures, the metrics."""
import numpy as np
import pytest

from pipeline.model import multilabel


def test_average_precision_matches_scikit_learn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.random(60) < 0.3
        score = np.round(rng.random(60) + 0.6 * y, 1)  # ties included
        if y.any():
            assert multilabel.average_precision(y, score) == pytest.approx(average_precision_score(y, score))
    assert np.isnan(multilabel.average_precision(np.zeros(5, bool), np.arange(5.0)))


def test_thresholds_maximize_each_labels_f1_or_reach_a_precision():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [1, 1], [0, 0]], bool)
    p = np.array([[0.9, 0.1], [0.6, 0.2], [0.55, 0.7], [0.2, 0.4], [0.8, 0.9], [0.1, 0.05]])
    cuts = multilabel.thresholds(y, p)
    # the F1-best cuts (every positive, no negative): the middle of the gap below the weakest positive
    assert cuts[0] == pytest.approx((0.55 + 0.6) / 2) and cuts[1] == pytest.approx((0.4 + 0.7) / 2)
    assert ((p >= cuts) == y).all()  # the same validation decisions as the gap's top
    assert multilabel.threshold(y[:, 0], p[:, 0], target_precision=1.0) == 0.6  # a precision target: its lowest cut
    assert multilabel.threshold(np.array([1, 1], bool), np.array([0.3, 0.8])) == 0.3  # nothing below: that cut
    assert multilabel.threshold(np.zeros(4, bool), np.arange(4.0)) == multilabel.DEFAULT_THRESHOLD


def test_calibration_picks_thresholds_by_the_rule_in_params(monkeypatch):
    """``[train] label_thresholds``: each label's best F1, or the lowest cut whose val precision reaches the
    target; the rule is recorded."""
    from pipeline.model import trust

    monkeypatch.setattr(trust, "scale_logits", lambda model, temps: None)  # no Keras model needed here
    rng = np.random.default_rng(4)
    y = rng.random((400, 3)) < 0.4
    logits = rng.normal(0, 1, (400, 3)) + 2.5 * (y - 0.5)
    f1 = trust._calibrate_multi(None, logits, y)
    strict = trust._calibrate_multi(None, logits, y, 0.95)
    assert f1["threshold_rule"] == "best F1" and strict["threshold_rule"] == "precision >= 0.95"
    probs = multilabel.sigmoid(logits / np.array(f1["temperatures"])[None, :])
    cut = np.array(strict["thresholds"])
    precision = ((probs >= cut) & y).sum(axis=0) / (probs >= cut).sum(axis=0)
    assert (precision >= 0.95).all() and (cut >= np.array(f1["thresholds"])).all()
    assert f1["val_positives"] == y.sum(axis=0).tolist()


def test_a_label_with_few_validation_positives_is_warned_about(monkeypatch, caplog):
    from pipeline.model import trust

    monkeypatch.setattr(trust, "scale_logits", lambda model, temps: None)
    y = np.zeros((60, 2), bool)
    y[:30, 0], y[:3, 1] = True, True
    logits = np.where(y, 2.0, -2.0) + np.random.default_rng(0).normal(0, 0.5, y.shape)
    with caplog.at_level("WARNING"):
        calib = trust._calibrate_multi(None, logits, y, labels=["plus", "minus"])
    assert calib["val_positives"] == [30, 3]
    assert "1 label(s) rest on fewer than 10 validation positives each (minus 3)" in caplog.text


def test_per_label_temperatures_undo_an_overconfident_scale():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (4000, 2))
    y = rng.random((4000, 2)) < 1 / (1 + np.exp(-z))
    t = multilabel.fit_temperatures(z * np.array([5.0, 1.0]), y)  # label 0 five times too sure
    assert t[0] == pytest.approx(5.0, rel=0.15) and t[1] == pytest.approx(1.0, rel=0.15)


def test_a_label_right_on_every_validation_image_keeps_temperature_one():
    """No minimum to fit (the loss falls as T goes to 0): the model's own probabilities, not 0s and 1s."""
    z = np.array([[4.0, 3.0], [3.5, -2.0], [-3.0, 1.0], [-4.0, -1.5], [2.0, 0.5], [-2.5, -3.0]])
    y = np.array([[1, 1], [1, 0], [0, 0], [0, 0], [1, 1], [0, 0]], bool)  # label 1: image 2 wrong at 0.5
    t = multilabel.fit_temperatures(z, y)
    assert t[0] == 1.0 and t[1] != 1.0


def test_metrics_by_hand():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]], bool)
    p = np.array([[0.9, 0.2, 0.8], [0.1, 0.7, 0.6], [0.8, 0.4, 0.1], [0.3, 0.1, 0.2]])
    m = multilabel.metrics(y, p, np.full(3, 0.5), ["a", "b", "c"])
    assert m["task"] == "multi" and m["subset_accuracy"] == 0.5 and m["hamming_loss"] == pytest.approx(2 / 12)
    assert m["per_label"]["b"]["recall"] == 0.5 and m["per_label"]["c"]["precision"] == 0.5
    assert m["f1_micro"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    assert m["map"] == pytest.approx(np.mean([1.0, 1.0, 1.0]))


def test_loss_is_keras_binary_crossentropy_with_positive_weights():
    import keras

    y = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    p = np.array([[0.9, 0.2, 0.4], [0.3, 0.6, 0.05]], np.float32)
    for s in (0.0, 0.1):
        ours = float(keras.ops.mean(multilabel.loss(s, None)(y, p)))
        assert ours == pytest.approx(float(keras.losses.BinaryCrossentropy(label_smoothing=s)(y, p)), rel=1e-5)
    heavy = float(keras.ops.mean(multilabel.loss(0.0, [5.0, 1.0, 1.0])(y, p)))
    ones = float(keras.ops.mean(multilabel.loss(0.0, [1.0, 1.0, 1.0])(y, p)))
    assert heavy == pytest.approx(ones + 4 * -np.log(0.9) / 6, rel=1e-5)  # one positive of label 0, weighted 5x


def test_positive_weights_follow_the_imbalance_rule():
    weights, why, few = multilabel.positive_weights([5, 30, 50], 100, "auto", 2.0, ["cat", "cow", "dog"])
    assert weights == [1.0, 2.3333, 1.0] and "19.0x" in why  # 5 images: not weighted up
    assert few and "'cat' (5): not weighted up" in few[0]
    weights, _, few = multilabel.positive_weights([15, 100], 200, "auto", 10.0)
    assert weights == [12.3333, 1.0] and few == ()  # 15 images: weighted as they are
    assert multilabel.positive_weights([40, 50], 100, "auto", 10.0)[0] is None
    assert multilabel.positive_weights([40, 50], 100, "balanced", 10.0)[:1] == ([1.5, 1.0],)
    weights, _, few = multilabel.positive_weights([1, 50], 216, "balanced", 10.0, ["yellow", "red"])
    assert weights[0] == 215.0 and "'yellow' (1): balanced weights count each of their images up to 215x" in few[0]
    assert multilabel.positive_weights([5, 50], 100, "none", 10.0)[0] is None

