"""Suspects: planted label flips are found first; a killed run resumes; suggestions become corrections."""
import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.model import confident, queues
from pipeline.shared.params import AugmentParams, PrepareParams, PreprocessParams, SuspectsParams, TrainParams
from pipeline.stages import prepare
from pipeline.stages.suspects import suspects, write_corrections

from conftest import REPO, SHADES, shade_image, write_image

PARAMS = """
[prepare]
test_size = 0.1
val_size = 0.1
[train]
batch_size = 16
[augment]
enabled = false
[suspects]
folds = 4
step_budget = 400
"""
FLIPS = {("dark", 3): "light", ("mid", 5): "dark", ("light", 7): "mid"}


@pytest.fixture()
def flipped(tmp_path):
    """Three shades, 40 images each, three of them filed under a wrong label."""
    rng = np.random.default_rng(0)
    for label in SHADES:
        for i in range(40):
            given = FLIPS.get((label, i), label)
            write_image(tmp_path / "data" / given / f"{label}{i:02d}.png", shade_image(label, rng))
    (tmp_path / "params.toml").write_text(PARAMS)
    return tmp_path


def test_confident_learning_on_known_probabilities():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.85, 0.15], [0.1, 0.9], [0.2, 0.8], [0.95, 0.05]])
    labels = np.array([0, 0, 0, 1, 1, 1])  # the last image is labelled 1 but looks like 0
    issues = confident.find_issues(probs, labels)
    assert issues.index.tolist() == [5] and issues.suggested.tolist() == [0]
    assert issues.quality[0] == pytest.approx(0.05)


@pytest.mark.slow
def test_planted_flips_are_ranked_first(flipped):
    run = flipped / "run"
    prepare.prepare(flipped / "data", run, PrepareParams(workers=1, test_size=0.1, val_size=0.1),
                    PreprocessParams(size=(16, 16)))
    record = suspects(run, SuspectsParams(folds=4, step_budget=400), TrainParams(batch_size=16),
                      AugmentParams(enabled=False))
    rows = list(csv.DictReader(open(run / "suspects.csv", newline="")))
    assert list(rows[0]) == ["path", "label", "suggested", "score", "reason"]
    in_train_val = {r["path"].rsplit("/", 1)[-1] for r in csv.DictReader(open(run / "manifest.csv"))
                    if r["split"] in ("train", "val")}
    planted = {f"{t}{i:02d}.png" for (t, i) in FLIPS} & in_train_val
    top = [r["path"].rsplit("/", 1)[-1] for r in rows[:len(planted)]]
    assert set(top) == planted, rows[:5]
    true = [r["path"].rsplit("/", 1)[-1][:-6] for r in rows[:len(planted)]]  # "mid05.png" -> "mid"
    assert all(r["suggested"] != r["label"] for r in rows) and sum(
        r["suggested"] == t for r, t in zip(rows, true)) >= len(planted) - 1
    assert record["flagged"] == len(rows) <= len(planted) + 2
    assert (run / "suspects.png").is_file() and record["out_of_fold_accuracy"] > 0.9
    fixes = write_corrections(run)
    assert [r["label"] for r in csv.DictReader(open(fixes))][:len(planted)] == [r["suggested"] for r in rows[:len(planted)]]
    with pytest.raises(ValueError, match="exists"):
        write_corrections(run)
    s = prepare.prepare(flipped / "data", run, PrepareParams(workers=1, test_size=0.1, val_size=0.1),
                        PreprocessParams(size=(16, 16)))
    assert s.dataset["corrections"]["relabeled"] == len(rows)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_finished_folds(flipped):
    run = flipped / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "pipeline", "suspects", "--run", str(run), "--params", str(flipped / "params.toml")]
    assert subprocess.run([sys.executable, "-m", "pipeline", "prepare", "--data", str(flipped / "data"), "--run",
                           str(run), "--params", str(flipped / "params.toml")], env=env, capture_output=True).returncode == 0
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list((run / "suspects_folds").glob("fold*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (run / "suspects_folds").glob("fold*.json"))
    assert done and not (run / "suspects.csv").exists()
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{done[0].removesuffix('.json')} done before; kept" in res.stderr
    assert (run / "suspects.csv").is_file() and "suspects of" in res.stdout
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert "up to date" in again.stderr


def test_a_class_smaller_than_the_folds_keeps_the_folds_and_is_named():
    import warnings

    from pipeline.stages.suspects import effective_folds, folds, small_classes

    y = np.array([0] * 20 + [1] * 20 + [2])  # one image of class 2: the other checks keep their 5 folds
    assert effective_folds(y, 5) == 5 and small_classes(y, 5) == {2: 1}
    assert effective_folds(np.array([0] * 3 + [1] * 2), 5) == 3  # no class fills 5 folds: as many as the largest
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn's own warning about it is not passed on
        held = folds(y, 5, seed=0)
    assert len(held) == 5 and sorted(np.concatenate(held).tolist()) == list(range(len(y)))
    assert sum(2 in y[h] for h in held) == 1  # the only image of class 2: held out once
    assert effective_folds(np.zeros((6, 3)), 5) == 5 and small_classes(np.zeros((6, 3)), 5) == {}  # multi-label


def test_copies_of_one_image_are_held_out_together_whatever_their_labels():
    """The same file under two labels: a fold's model that learned one copy would call the other copy's label
    wrong, the right one included. Copies share a fold (the first copy's); the other images keep theirs."""
    from pipeline.stages.suspects import folds, same_pixels

    rng = np.random.default_rng(1)
    x = rng.random((60, 8, 8, 1)).astype(np.float32)
    y = np.repeat([0, 1, 2], 20)
    x[25], x[47], x[5] = x[3], x[3], x[40]  # image 3 (class 0) also filed under 1 and 2; 40 (class 2) under 0
    copies = same_pixels(x)
    assert copies[25] == copies[47] == copies[3] and copies[5] == copies[40] and len(set(copies.tolist())) == 57
    plain, grouped = folds(y, 5, seed=0), folds(y, 5, seed=0, copies=copies)
    fold_of = {i: f for f, h in enumerate(grouped) for i in h.tolist()}
    assert fold_of[3] == fold_of[25] == fold_of[47] and fold_of[5] == fold_of[40]
    assert sorted(fold_of) == list(range(60))
    moved = {i for f, h in enumerate(plain) for i in h.tolist() if fold_of[i] != f}
    assert moved <= {3, 25, 47, 5, 40}


def test_past_the_strict_cut_the_suggestion_is_the_models_likeliest_label():
    # row 0 flagged (given a, the model says b); rows 1-2 past the cut: given c but c still likeliest, and
    # given a with b likeliest; a suggestion never points away from the label the model prefers
    from pipeline.stages.suspects import Checked, ranked_rows

    probs = np.array([[0.05, 0.9, 0.05], [0.2, 0.25, 0.55], [0.3, 0.6, 0.1], [0.98, 0.01, 0.01]])
    c = Checked(np.zeros((4, 2, 2, 1)), np.array([0, 2, 0, 0]), ["p0", "p1", "p2", "p3"], ["train"] * 4,
                np.arange(4), probs)
    issues = confident.Issues(np.array([0]), np.array([1]), np.array([0.05]), np.ones(3), np.zeros((3, 3)))
    rows = {r["path"]: r for r in ranked_rows(issues, c, ["a", "b", "c"])}
    assert (rows["p0"]["suggested"], rows["p0"]["flagged"]) == ("b", True)
    assert (rows["p1"]["suggested"], rows["p1"]["confidence"], rows["p1"]["flagged"]) == ("c", 0.55, False)
    assert rows["p2"]["suggested"] == "b" and rows["p3"]["suggested"] == "a"
    card = queues.suspects([{k: str(v) for k, v in rows["p1"].items()}])[0]
    assert "still the model's likeliest label" in card["reason"]
