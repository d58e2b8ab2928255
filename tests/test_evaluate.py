"""Evaluate (and the other stages that pair a bundle with a run) refuse a model whose label map or input
shape differs from the run's, saying which and what to do."""
import shutil

import numpy as np
import pytest

from pipeline.shared.errors import StageError
from pipeline.shared.params import (AugmentParams, EvaluateParams, PrepareParams, PreprocessParams, SuspectsParams,
                                    TrainParams)
from pipeline.stages.evaluate import evaluate
from pipeline.stages.prepare import prepare
from pipeline.stages.report import build_report
from pipeline.stages.suspects import suspects

from conftest import SHADES, shade_image, write_image


def _run_with(tmp_path, name, labels, model, size=None):
    """A prepared run of ``labels`` (shades) with ``model`` copied in as its bundle."""
    rng = np.random.default_rng(0)
    for i, label in enumerate(labels):
        for k in range(8):
            write_image(tmp_path / name / "data" / label / f"{k}.png", shade_image(list(SHADES)[i % 3], rng))
    run = tmp_path / name / "run"
    cfg = PreprocessParams(size=size) if size else PreprocessParams()
    prepare(tmp_path / name / "data", run, PrepareParams(workers=1, test_size=0.25), cfg)
    shutil.copytree(model, run / "model")
    return run


def test_a_model_with_other_labels_is_refused(shade_bundle, tmp_path):
    run = _run_with(tmp_path, "five", ["a", "b", "c", "d", "e"], shade_bundle)
    for stage in (lambda: evaluate(run, EvaluateParams()),
                  lambda: suspects(run, SuspectsParams(folds=2), TrainParams(), AugmentParams())):
        with pytest.raises(StageError, match=r"other labels than the run .* the model has 3 labels \['dark', "
                                             r"'light', 'mid'\], the run 5 labels \['a', 'b'.*make train RUN="):
            stage()


def test_a_model_for_another_input_shape_is_refused(shade_bundle, tmp_path):
    run = _run_with(tmp_path, "small", sorted(SHADES), shade_bundle, size=(20, 20))
    with pytest.raises(StageError, match=r"takes images of shape \(28, 28, 1\), but the run .* prepares them as "
                                         r"\(20, 20, 1\)"):
        evaluate(run, EvaluateParams())
    (run / "metrics.json").write_text('{"labels": ["dark", "light", "mid"], "accuracy": 1, "n": 1}')
    (run / "test_probs.npy").write_bytes(b"")
    with pytest.raises(StageError, match="takes images of shape"):
        build_report(run)


def test_a_class_without_test_images_has_no_figures_and_stays_out_of_the_macro_f1():
    from pipeline.shared import runfolder as rf
    from pipeline.stages.evaluate import compute_metrics, format_table

    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2])  # nothing of class 2 or 3 in the test split
    m = compute_metrics(y_true, y_pred, ["a", "b", "star", "ghost"])
    assert m["per_class"]["star"]["support"] == 0
    assert m["macro_f1"] == pytest.approx((1.0 + 2 / 3) / 2)  # a and b only (with star counted as 0: 0.56)
    assert rf.macro_f1(m["per_class"]) == m["macro_f1"]
    text = format_table(m)
    star = next(line for line in text.splitlines() if line.startswith("star"))
    assert star.split()[1:4] == ["0.0000", "n/a", "n/a"]  # a b predicted as star: its precision is 0, not n/a
    ghost = next(line for line in text.splitlines() if line.startswith("ghost"))
    assert ghost.split()[1:4] == ["n/a"] * 3 and m["per_class"]["star"]["predicted"] == 1
    assert "left out of the macro F1" in text and f"macro F1: {m['macro_f1']:.4f}" in text
    assert rf.macro_f1({"star": {"f1": 0.0, "support": 0}}) is None


def test_a_model_trained_on_an_earlier_preparation_is_said(caplog, tmp_path):
    """Re-prepared (a review's decisions) but not retrained: evaluate says its figures are of the older model."""
    from types import SimpleNamespace

    from pipeline.stages.evaluate import _prepared_earlier

    prep = SimpleNamespace(fingerprint="now")
    with caplog.at_level("WARNING"):
        assert _prepared_earlier({"prepared": "before"}, prep, tmp_path) is True
    assert "trained on an earlier preparation of this run" in caplog.text
    assert _prepared_earlier({"prepared": "now"}, prep, tmp_path) is False
    assert _prepared_earlier({}, prep, tmp_path) is False  # an older bundle that does not say
