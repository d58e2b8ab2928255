"""The HTML report (content, self-containment, a real browser), its analysis helpers, compare, model choice."""
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline.shared import plots
from pipeline.shared.params import EvaluateParams, TrainParams
from pipeline.stages import evaluate, report
from pipeline.stages.train import train

from conftest import CHROMIUM, chromium_page, cli


@pytest.mark.slow
def test_evaluate_writes_a_self_contained_report_and_pngs(trained_run):
    run, _ = trained_run
    page = (run / "report.html").read_text(encoding="utf-8")
    for name in ("class_counts.png", "samples.png", "curves.png", "confusion_matrix.png", "misclassified.png",
                 "calibration.png"):
        with Image.open(run / name) as img:
            img.verify()
    for anchor in ('id="dataset"', 'id="training"', 'id="results"', 'id="settings"'):
        assert anchor in page
    for text in ("Images per class", "Rejected files by reason", "copies across splits", "best epoch",
                 "Chosen from the data", "temperature", "risk-coverage",
                 "Suspected label errors", "temperature scaling",
                 "Per class", "Most confused pairs", "Worst misclassified", "reliability", "[train]", "[preprocess]",
                 "tensorflow", "lenet5", "macro F1"):
        assert text in page, text
    assert re.search(r"<td>background</td><td>\d+</td><td>the paper of the", page)  # a choice "auto" resolved
    # self-contained: every image is inline, nothing is fetched
    srcs = re.findall(r'src="([^"]*)"', page)
    # 7 plots (+ risk-coverage) and the thumbnails of the outliers and rejected files
    assert len(srcs) >= 7 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(href|src)="(https?:)?//', page) and "<script" not in page
    assert "@import" not in page and "url(" not in page


@pytest.mark.slow
def test_report_is_redone_only_when_its_inputs_change(trained_run, tmp_path):
    run, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = (copy / "report.html").stat().st_mtime_ns
    report.build_report(copy)
    assert (copy / "report.html").stat().st_mtime_ns == before
    (copy / "curves.png").unlink()
    report.build_report(copy)
    assert (copy / "curves.png").is_file() and (copy / "report.html").stat().st_mtime_ns != before
    (copy / "test_probs.npy").unlink()
    with pytest.raises(Exception, match="make evaluate"):
        report.build_report(copy)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(trained_run, tmp_path):
    """Loads the file in Debian's Chromium: no errors, no network, every image decoded, readable at 1366 px."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (.ci/run installs Debian's chromium package)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    run, _ = trained_run
    errors, requests = [], []
    with sync_api.sync_playwright() as pw:
        browser, page = chromium_page(pw, {"width": 1366, "height": 800}, errors, requests)
        page.goto((run / "report.html").as_uri(), wait_until="load")
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        overflow = page.evaluate("document.documentElement.scrollWidth")
        headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        captions = page.evaluate("document.querySelectorAll('figcaption').length")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert len(images) >= 7 and all(ok and w > 0 and h > 0 for ok, w, h in images), images
    assert overflow <= 1366  # no sideways scrolling at a laptop width
    assert headings == ["Dataset", "Training", "Test results", "Suspected label errors", "Settings and environment"]
    assert captions >= 5
    with Image.open(shot) as img:
        assert img.size[0] == 1366 and img.size[1] > 3000
        assert len(set(img.convert("L").resize((64, 256)).get_flattened_data())) > 20  # not a blank page


def test_confused_pairs_and_worst_misclassified():
    cm = np.array([[5, 3, 0], [1, 6, 0], [0, 4, 2]])
    pairs = report.confused_pairs(cm, ["a", "b", "c"], top=2)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("c", "b", 4), ("a", "b", 3)]
    assert pairs[0]["share"] == pytest.approx(4 / 6)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95]])
    y = np.array([0, 0, 1, 0])
    assert report.worst_misclassified(probs, y).tolist() == [3, 1, 2]


def test_calibration_error_known_answers():
    from pipeline.model import calibrate

    def two_class(conf, right):
        probs = np.stack([conf, 1 - conf], axis=1)
        return probs, np.where(right, 0, 1)

    probs, y = two_class(np.array([0.95] * 20), np.array([True] * 19 + [False]))
    _, perfect = plots.calibration(probs, y)
    assert perfect["ece"] == pytest.approx(0.0, abs=1e-9) == calibrate.ece(probs, y)
    probs, y = two_class(np.array([0.99] * 10), np.array([True] * 5 + [False] * 5))
    _, over = plots.calibration(probs, y, before=probs)
    assert over["ece"] == pytest.approx(0.49) == calibrate.ece(probs, y) and over["ece_before"] == over["ece"]


def test_a_model_that_learned_its_training_images_by_heart_is_said_to_have():
    """Training accuracy 100%, validation near chance (random colours on 3 shapes, 112 images): said in the
    report's warnings (from the training history)."""
    metrics = {"accuracy": 0.24, "labels": ["a", "b", "c"], "per_class": {k: {"support": 9} for k in "abc"}}
    history = [{"accuracy": 0.73, "val_accuracy": 0.33}, {"accuracy": 1.0, "val_accuracy": 0.42}]
    colour = report.warnings_for(metrics, {}, {"input_shape": [54, 64, 3]}, history)
    said = [w for w in colour if "by heart" in w]
    assert len(said) == 1 and "training accuracy 100%" in said[0] and "42% at best, chance 33%" in said[0]
    assert 'color = "grayscale"' in said[0]
    assert not any("by heart" in w for w in report.warnings_for(metrics, {}, {"input_shape": [54, 64, 3]}))


def test_warnings_repeat_the_audit_and_flag_low_accuracy():
    metrics = {"accuracy": 0.3, "labels": ["a", "b"], "per_class": {"a": {"support": 3}, "b": {"support": 0}}}
    out = report.warnings_for(metrics, {"warnings": ["class imbalance: ..."]}, {"monitor": "loss"})
    assert out[0] == "class imbalance: ..." and any(w.startswith("low accuracy") for w in out)
    assert any("no test images for: b" in w for w in out) and any("no validation split" in w for w in out)
    said = report.warnings_for({**metrics, "model_prepared_earlier": True},
                               {"warnings": ["no test images of class(es) ['b']: ..."]}, {})
    assert not any("no test images for" in w for w in said)  # prepare's warning says it already
    assert any(w.startswith("the model was trained on an earlier preparation") for w in said)
    short = report.warnings_for(metrics, {}, {"plan": {"warnings": ["training is far too short: 3 step(s)"]}})
    assert "train: training is far too short: 3 step(s)" in short  # why the model is weak, in the report too


@pytest.mark.slow
def test_model_choice_is_reported_and_compared(shade_bundle, tmp_path, capsys):
    """Train the softmax baseline on the same prepared data, then compare it with LeNet-5."""
    from pipeline import __main__ as pipeline_cli

    lenet = tmp_path / "lenet"
    shutil.copytree(shade_bundle.parent, lenet)
    soft = tmp_path / "softmax"
    shutil.copytree(shade_bundle.parent, soft, ignore=shutil.ignore_patterns("model", "history.csv", "checkpoints"))
    train(soft, TrainParams(model="softmax", epochs=3, batch_size=8), verbose=0)
    for run in (lenet, soft):
        evaluate.evaluate(run, EvaluateParams())
        report.build_report(run)
    assert "softmax — " in (soft / "report.html").read_text(encoding="utf-8")
    assert pipeline_cli.main(["compare", str(lenet), str(soft), "--out", str(tmp_path / "cmp.md")]) == 0
    printed = capsys.readouterr().out
    assert "model" in printed and "lenet5" in printed and "softmax" in printed and "F1 mid" in printed
    md = (tmp_path / "cmp.md").read_text()
    assert md.startswith(f"|  | {lenet} | {soft} |") and "| parameters | 87,667 | 2,355 |" in md, md
    assert pipeline_cli.main(["compare", str(lenet)]) == 0 and (tmp_path / "compare.csv").is_file()


def test_report_cli_and_compare_refuse_unevaluated_runs(tmp_path):
    res = cli("report", "--run", tmp_path)
    assert res.returncode == 2 and "make evaluate" in res.stderr
    res = cli("compare", tmp_path)
    assert res.returncode == 2 and "make evaluate" in res.stderr


def test_the_report_shows_no_file_from_outside_the_dataset(tmp_path):
    """rejected.csv keeps a mapping file's ``../`` row and absolute paths as given: the report (which people share)
    shows a thumbnail of none of them, nor of a symlink out; files inside the dataset are shown."""
    from types import SimpleNamespace

    from conftest import write_image

    data, run = tmp_path / "data", tmp_path / "run"
    for name in ("data/in.png", "secret.png", "data/img/ok.png"):
        write_image(tmp_path / name, np.full((12, 12), 90, np.uint8))
    (data / "link.png").symlink_to(tmp_path / "secret.png")
    run.mkdir()
    (run / "rejected.csv").write_text(f"path,reason\nin.png,x\n../secret.png,x\n{tmp_path / 'secret.png'},x\n"
                                      "link.png,x\nimg/../../secret.png,x\nimg/ok.png,x\n", encoding="utf-8")
    d = SimpleNamespace(dataset={"root": str(data)}, run=run,
                        prep=SimpleNamespace(preprocess=SimpleNamespace(background=0)))
    files, why = report._file_thumbnails(d)
    assert files["in.png"] and files["img/ok.png"]
    outside = ["../secret.png", str(tmp_path / "secret.png"), "link.png", "img/../../secret.png"]
    assert all(files[p] is None and why[p] == "outside the dataset folder: not shown" for p in outside)
