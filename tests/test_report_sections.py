"""The report's HTML sections (pipeline.stages.report.sections): user strings escaped, gaps said plainly."""
import base64
import html
import io
import re

import numpy as np
import pytest
from PIL import Image

from pipeline.stages.report import sections

EVIL = "<b>&x"  # a label / path / setting a user could give: must never reach the page as markup


def evil(tag: str) -> str:
    return f"{EVIL}{tag}"


def assert_escaped(page: str, *values: str) -> None:
    for v in values:
        assert v not in page, f"raw {v!r} in the page"
        assert html.escape(v) in page, f"{v!r} missing (escaped) from the page"


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- dataset
def dataset_dict():
    labels = [evil("L0"), evil("L1")]
    return {
        "data": evil("data"), "layout": evil("layout"), "images": 30, "classes": 2,
        "counts": {labels[0]: {"train": 10, "val": 2, "test": 3, "total": 15},
                   labels[1]: {"train": 9, "val": 3, "test": 3, "total": 15}},
        "rejected": {"total": 2, "by_reason": {evil("reason"): 2}},
        "duplicates": {"extra_copies": 1, "groups": 1}, "leakage": {"images": 0, "action": "drop"},
        "conflicts": {"groups": 0}, "extension_mismatch": {"files": 1},
        "near_duplicates": {
            "within_class": {"pairs": 1, "examples": [{"paths": [evil("n1"), evil("n2")], "labels": labels,
                                                       "similarity": 0.97}]},
            "across_classes": {"pairs": 0, "examples": []}, "across_splits": {"pairs": 0, "examples": []}},
        "outliers": {"images": 1, "rule": "robust z > 5", "examples": [{"path": evil("odd"), "label": labels[0],
                                                                         "z": 6.1}]},
        "sizes": {"min_width": 16, "max_width": 20, "min_height": 16, "max_height": 18},
        "formats": {evil("fmt"): 30}, "modes": {evil("mode"): 30},
        "choices": {"color": {"value": "grayscale", "why": evil("why")},
                    "hflip": {"hflip": False, "why": evil("flipwhy")}},
        "corrections": {"file": evil("corr.csv"), "relabeled": 2, "excluded": 1, "new_labels": [evil("new")]},
    }


def test_dataset_section_escapes_user_strings():
    d = dataset_dict()
    rejected = [{"path": evil("rej.png"), "reason": evil("why-rej")}]
    page = sections.dataset_section(d, rejected, {"counts": png_bytes(), "samples": png_bytes()})
    assert_escaped(page, *d["counts"], evil("reason"), evil("rej.png"), evil("why-rej"), evil("data"),
                   evil("layout"), evil("fmt"), evil("mode"), evil("why"), evil("flipwhy"), evil("corr.csv"),
                   evil("new"), evil("n1"), evil("n2"), evil("odd"))
    assert page.startswith('<section id="dataset">') and page.rstrip().endswith("</section>")
    # the counts table: one row per label, with the total
    for label, c in d["counts"].items():
        cells = [html.escape(label), *(str(c[s]) for s in ("train", "val", "test", "total"))]
        assert "<tr>" + "".join(f"<td>{v}</td>" for v in cells) + "</tr>" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2


def test_dataset_section_without_figures_says_not_available():
    d = dataset_dict()
    page = sections.dataset_section(d, [], {"counts": None, "samples": None})
    assert "images per class: not available" in page and "samples: not available" in page
    assert "<img" not in page


def test_dataset_section_with_nothing_rejected():
    d = dataset_dict()
    d["rejected"] = {"total": 0, "by_reason": {}}
    page = sections.dataset_section(d, [], {"counts": None})
    assert "No file was rejected." in page and "Rejected files (first 50)" not in page


def test_dataset_section_without_dataset_json_says_to_rerun_prepare():
    page = sections.dataset_section(None, [], {})
    assert "dataset.json not found" in page and "<code>make prepare</code>" in page
    assert "samples: not available" in page


# ---------------------------------------------------------------- training
def test_training_section(tmp_path):
    assert "history.csv not found" in sections.training_section([], {}, {"curves": None})
    history = [{"epoch": e, "seconds": 1.5 + e, "learning_rate": 1e-3, "loss": 1.0 / e, "accuracy": 0.5,
                "val_loss": 1.2 / e, "val_accuracy": 0.4} for e in (1, 2, 3)]
    info = {"model": evil("model"), "parameters": 61706, "best_epoch": 3, "monitor": "val_loss", "best_val_loss": 0.4,
            "plan": {"epochs": 3, "epochs_why": evil("ewhy"), "total_steps": 1200, "steps_per_epoch": 400,
                     "global_batch": 16, "patience": 10, "hflip": False, "hflip_why": evil("hwhy"),
                     "class_weights": None, "class_weights_why": evil("cwhy")}}
    calib = {"temperature": 1.3, "fitted_on": evil("split")}
    page = sections.training_section(history, info, {"curves": None}, calib)
    assert_escaped(page, evil("model"), evil("ewhy"), evil("hwhy"), evil("cwhy"), "fitted on the " + evil("split"))
    assert "training curves: not available" in page
    assert "61,706" in page and f"{sum(r['seconds'] for r in history):.0f} s" in page
    assert f"{float(np.median([r['seconds'] for r in history])):.1f} s" in page


# ---------------------------------------------------------------- results
def metrics_for(labels, f1s, n, accuracy):
    return {"n": n, "accuracy": accuracy,
            "per_class": {k: {"precision": f, "recall": f, "f1": f, "support": n // len(labels)}
                          for k, f in zip(labels, f1s)}}


def test_results_section_perfect_confusion_says_no_confusions():
    labels = [evil("a"), evil("b")]
    page = sections.results_section(metrics_for(labels, [1.0, 1.0], 20, 1.0), [], [], None, {"confusion": None})
    assert "No confusions" in page and "No misclassified test images." in page
    assert "confusion matrix: not available" in page
    assert_escaped(page, *labels)
    assert '<div class="kpi">misclassified<b>0</b></div>' in page
    assert "100.00%" in page
    assert "ECE" not in page  # no calibration given: nothing said about it


def test_results_section_with_mistakes_escapes_pairs_and_gallery():
    labels = [evil("a"), evil("b"), evil("c")]
    f1s = [0.9, 0.6, 0.75]
    n, acc = 40, 0.85
    pairs = [{"true": labels[1], "predicted": labels[2], "count": 4, "share": 4 / 13}]
    gallery = [[evil("file.png"), labels[1], labels[2], "0.97", labels[0]]]
    calib = {"ece": 0.031, "ece_before": 0.082}
    pngs = {"confusion": png_bytes(), "misclassified": png_bytes(), "calibration": png_bytes(), "risk": None}
    page = sections.results_section(metrics_for(labels, f1s, n, acc), pairs, gallery, calib, pngs)
    assert_escaped(page, *labels, evil("file.png"))
    assert "No confusions" not in page and "No misclassified" not in page
    assert f"{np.mean(f1s):.4f}" in page and f"{4 / 13:.1%}" in page
    assert f'misclassified<b>{n - round(acc * n)}</b>' in page
    assert f"{calib['ece']:.3f} (before: {calib['ece_before']:.3f})" in page
    srcs = re.findall(r'src="data:image/png;base64,([^"]*)"', page)
    assert len(srcs) == 3 and all(base64.b64decode(s) == png_bytes() for s in srcs)
    assert "risk-coverage" not in page  # its figure absent: not even a placeholder (it is optional)
    assert "rough estimate" not in page  # how many validation images: not recorded, nothing said
    few = sections.results_section(metrics_for(labels, f1s, n, acc), pairs, gallery, {**calib, "val_images": 32}, pngs)
    assert "fitted on only 32 validation image(s)" in few
    many = sections.results_section(metrics_for(labels, f1s, n, acc), pairs, gallery, {**calib, "val_images": 500}, pngs)
    assert "rough estimate" not in many


# ---------------------------------------------------------------- suspects
def test_suspects_section_not_run_says_how_to_run_it():
    page = sections.suspects_section(None, {})
    assert "Not looked for yet" in page and "<code>make suspects</code>" in page
    assert sections.suspects_section({}, {}) == page


def test_suspects_section_escapes_and_counts():
    record = {"flagged": 3, "images": 50, "folds": 5, "out_of_fold_accuracy": 0.94, "method": evil("method"),
              "top": [{"path": evil(f"s{i}.png"), "label": evil("given"), "suggested": evil("sugg"),
                       "score": 0.9 - i / 10} for i in range(25)]}
    page = sections.suspects_section(record, {"suspects": None})
    assert_escaped(page, evil("method"), evil("s0.png"), evil("given"), evil("sugg"))
    assert "suspected label errors: not available" in page
    assert f"other {record['folds'] - 1} of {record['folds']} folds" in page and "94.00%" in page
    shown = [i for i in range(25) if html.escape(evil(f"s{i}.png")) + "<" in page]
    assert shown == list(range(20))  # the 20 most suspicious only
    empty = sections.suspects_section({**record, "flagged": 0, "top": [], "checked": {"train": 40, "val": 10}},
                                      {"suspects": png_bytes()})
    # an empty result says what was checked and that nothing passed the cut; no empty gallery
    assert "Checked 50 images (40 train, 10 val); none flagged at the finder" in empty and "<img" not in empty
    untested = sections.suspects_section({**record, "test_checked": False}, {"suspects": None})
    assert "The test split was not checked" in untested


# ---------------------------------------------------------------- settings
def test_settings_section_escapes_params_and_environment():
    params = {"train": {"model": evil("m"), "size": [28, 28]}, evil("sec"): {"k": 1}, "empty": {}}
    envs = {"train": {"python": "3.12", "gpus": [], "packages": {evil("pkg"): evil("1.0")}},
            evil("stage"): {"python": "3.11", "gpus": ["GPU:0"], "packages": {}},
            "old": {}}
    page = sections.settings_section(params, envs)
    assert_escaped(page, evil("m"), "[" + evil("sec") + "]", evil("pkg"), evil("1.0"), evil("stage"))
    assert "[empty]" not in page and "<th>old</th>" not in page  # empty sections / unrecorded stages left out
    assert "none (CPU only)" in page and "GPU:0" in page
    assert html.escape("[28, 28]") in page
    assert "not recorded" in sections.settings_section(params, {"train": {}})


@pytest.mark.parametrize("value", ["<script>alert(1)</script>", "a\"b'c", "&amp;"])
def test_esc_round_trips(value):
    assert html.unescape(sections.esc(value)) == value and "<" not in sections.esc(value)


def test_the_multi_label_report_warns_about_thresholds_on_few_validation_positives():
    from pipeline.stages.report import multi

    said = multi.few_positives({"val_positives": [30, 2, 12]}, ["plus", "minus", "times"])
    assert said == ["the thresholds of 1 label(s) rest on fewer than 10 validation positives each (minus 2): "
                    "rough estimates"]
    assert multi.few_positives({}, ["a"]) == [] and multi.few_positives(None, ["a"]) == []


def test_corrections_applied_counts_every_decision():
    text = sections._corrections({"file": "runs/x/corrections.csv", "relabeled": 8, "excluded": 2, "kept": 1,
                                  "new_labels": ["ellipse"]})
    assert "<b>8</b> image(s) relabeled, <b>2</b> excluded, <b>1</b> kept as they are; new classes: ellipse" in text


def test_the_multi_label_results_say_when_no_label_decision_is_wrong():
    from pipeline.stages.report import multi

    m = {"precision": 1.0, "recall": 1.0, "f1": 1.0, "ap": 1.0, "support": 3, "threshold": 0.5}
    metrics = {"n": 4, "labels": ["a", "b"], "per_label": {"a": m, "b": m}, "map": 1.0, "f1_macro": 1.0,
               "f1_micro": 1.0, "subset_accuracy": 1.0, "hamming_loss": 0.0}
    page = multi.results_section(metrics, None, [], {"pr": png_bytes(), "errors": None})
    assert "No wrong label decision" in page and "not available" not in page


def test_the_dataset_section_counts_multi_label_images_with_no_label():
    d = {**dataset_dict(), "multi_label": {"labels_per_image": 1.3, "no_label": {"train": 30, "val": 6, "test": 7}}}
    page = sections.dataset_section(d, [], {"counts": png_bytes(), "samples": png_bytes()})
    assert "1.3 labels per image on average; <b>43</b> with no label" in page and " labels (1.3" in page
    assert "with no label" not in sections.dataset_section(dataset_dict(), [], {"counts": None, "samples": None})
