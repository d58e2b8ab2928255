"""Several labels per image end to end, on tiny generated images: a CSV with labels joined by "|" (or 0/1
columns) -> prepare (multi-hot arrays) -> train (a sigmoid per label, thresholds and temperatures fitted on
val) -> evaluate (mAP, F1, per-label figures, the report) -> predict (each row's label set, in either
runtime). Single-label runs are unchanged (every other test)."""
import csv
import json

import numpy as np
import pytest

from pipeline.data import ingest
from pipeline.model import rows as rows_mod
from pipeline.shared.params import IngestParams

from conftest import cli, write_image

PARTS = ("left", "right", "top")


def mark(parts: set[str], rng: np.random.Generator) -> np.ndarray:
    """A 28x28 image: a bright block in the left half, the right half, and/or a bar along the top."""
    img = rng.integers(0, 30, (28, 28)).astype(np.uint8)
    if "left" in parts:
        img[10:24, 2:12] = 220
    if "right" in parts:
        img[10:24, 16:26] = 220
    if "top" in parts:
        img[1:5, 4:24] = 160
    return img


def mosaic_folder(root, n=150, flags=False, seed=0):
    rng = np.random.default_rng(seed)
    table = []
    for i in range(n):
        parts = {p for p in PARTS if rng.random() < 0.45}
        write_image(root / f"{i:03d}.png", mark(parts, rng))
        table.append((f"{i:03d}.png", parts))
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", *PARTS] if flags else ["path", "label"])
        w.writerows([name, *[int(p in parts) for p in PARTS]] if flags else [name, "|".join(sorted(parts))]
                    for name, parts in table)
    return root


def test_a_table_of_0_1_columns_is_a_mapping_file(tmp_path):
    data = mosaic_folder(tmp_path / "d", n=12, flags=True)
    listing = ingest.scan(data)
    assert listing.layout == "csv" and listing.task == "multi"
    assert ingest.scan(data, p=IngestParams(task="single")).layout != "csv"  # no label column: not a mapping


def test_rows_give_every_label_above_its_own_threshold():
    rules = rows_mod.Rules(2, cuts=(0.5, 0.2, 0.9))
    probs = np.array([[0.6, 0.3, 0.8], [0.1, 0.1, 0.95], [0.4, 0.1, 0.5]])
    got = rows_mod.make_rows(["a", "b", "c"], ["", "", ""], probs, ["x", "y", "z"], rules)
    assert [r.label for r in got] == ["x;y", "z", ""]
    assert got[0].top == (("z", 0.8), ("x", 0.6))


def test_per_label_confident_learning_finds_wrong_and_missing_tags():
    """Planted flips of single label decisions (a tag added or removed): found with high precision and recall."""
    from pipeline.model.confident import find_label_issues

    rng = np.random.default_rng(0)
    truth = (rng.random((2000, 5)) < 0.3).astype(int)
    probs = np.clip(truth * 0.85 + 0.07 + rng.normal(0, 0.05, truth.shape), 0.01, 0.99)
    flip = rng.random(truth.shape) < 0.02
    given = np.where(flip, 1 - truth, truth)
    issues = find_label_issues(probs, given)
    found, planted = set(zip(issues.image.tolist(), issues.label.tolist())), set(zip(*np.nonzero(flip)))
    hits = len(found & planted)
    assert hits / len(found) > 0.95 and hits / len(planted) > 0.85
    assert {0, 1} <= set(issues.given.tolist())  # wrong tags and missing tags
    assert np.all(np.diff(issues.quality) >= 0)  # most suspicious first


@pytest.mark.slow
def test_multi_label_prepare_train_evaluate_predict(tmp_path):
    from dataclasses import replace

    from pipeline.shared import params as params_mod
    from pipeline.stages.prepare import prepare
    from pipeline.stages.suspects import suspects
    from pipeline.stages.train import train

    data = mosaic_folder(tmp_path / "data", n=160)
    run = tmp_path / "run"
    params = tmp_path / "p.toml"
    params.write_text("[prepare]\nworkers = 1\nval_size = 0.2\ntest_size = 0.2\n"
                      "[train]\nepochs = 25\nbatch_size = 16\nlearning_rate = 0.003\n")
    load = lambda section: params_mod.load(params, section)  # noqa: E731
    prepare(data / "labels.csv", run, load("prepare"), load("preprocess"))
    train(run, load("train"), verbose=0)
    res = cli("evaluate", "--run", run, "--params", params)  # as a user runs it: the table, then the report
    assert res.returncode == 0 and "mAP" in res.stdout, res.stderr[-3000:]
    y = np.load(run / "y_train.npy")
    assert y.ndim == 2 and y.shape[1] == 3 and set(np.unique(y)) <= {0, 1}
    dataset = json.loads((run / "dataset.json").read_text())
    assert dataset["task"] == "multi" and dataset["multi_label"]["positives"]["left"]["total"] > 20
    calibration = json.loads((run / "model" / "calibration.json").read_text())
    assert calibration["task"] == "multi" and len(calibration["thresholds"]) == len(calibration["temperatures"]) == 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "multi" and set(metrics["per_label"]) == set(PARTS)
    assert metrics["map"] > 0.9 and metrics["f1_macro"] > 0.8, metrics  # an easy task
    page = (run / "report.html").read_text()
    assert "test mAP" in page and "Per label (worst F1 first)" in page and (run / "pr_curves.png").is_file()
    assert f"every label right on {metrics['subset_accuracy']:.2%} of the images" in page and "test images · 3 labels ·" in page
    assert "one per label" in page  # the temperatures, not one that the model does not use
    info = json.loads((run / "model" / "bundle.json").read_text())
    assert info["task"] == "multi" and info["plan"]["class_weights_why"]

    record = suspects(run, replace(load("suspects"), folds=2), load("train"), load("augment"))
    assert record["task"] == "multi"
    from pipeline.faces import review_catalog
    from pipeline.shared.errors import UserError

    with pytest.raises(UserError, match="multi-label run: the review page decides one label per image"):
        review_catalog.build(run)
    from pipeline.stages.export import export

    info = export(run / "model", "onnx", tmp_path / "exported", check=np.load(run / "X_test.npy"),
                  y=np.load(run / "y_test.npy"))
    assert info["thresholds"] == calibration["thresholds"] and (tmp_path / "exported" / "calibration.json").is_file()
    assert info["agreement"]["top1_agreement"] == 1.0
    with open(run / "suspects.csv", newline="") as fh:
        for r in csv.DictReader(fh):  # the given labels and the suggested set, both label sets
            assert set(filter(None, r["suggested"].split(";"))) <= set(PARTS)
            assert "wrong" in r["reason"] or "missing" in r["reason"]

    rng = np.random.default_rng(9)
    new = tmp_path / "new"
    truth = {"both.png": {"left", "right"}, "none.png": set(), "top.png": {"top"}}
    for name, parts in truth.items():
        write_image(new / name, mark(parts, rng))
    for runtime in ("onnx", "tensorflow"):
        out = tmp_path / f"pred_{runtime}.csv"
        res = cli("predict", new, "--model", run / "model", "--out", out, "--runtime", runtime)
        assert res.returncode == 0, res.stderr[-3000:]
        with open(out, newline="") as fh:
            got = {r["path"]: set(filter(None, r["labels"].split(";"))) for r in csv.DictReader(fh)}
        assert got == truth, (runtime, got)
        assert open(out).readline().startswith("path,labels,confidence,top1_label")


def test_a_single_label_run_is_unchanged(tmp_path):
    """Single-label data: 1-D class indices, task "single" recorded, the same metrics keys as before plus task."""
    from pipeline.shared.params import PrepareParams, PreprocessParams
    from pipeline.stages.prepare import prepare

    from conftest import make_tree

    run = tmp_path / "run"
    prepare(make_tree(tmp_path / "d", {"a": 12, "b": 12}), run, PrepareParams(workers=1), PreprocessParams())
    y = np.load(run / "y_train.npy")
    assert y.ndim == 1 and y.dtype == np.int64
    assert json.loads((run / "dataset.json").read_text())["task"] == "single"
    assert "multi_label" not in json.loads((run / "dataset.json").read_text())
