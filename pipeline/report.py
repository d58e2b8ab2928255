"""Report: one self-contained ``report.html`` for a run (images inline, no network), plus its PNGs.

Sections: warnings; the dataset (images per class and split, samples, rejected
files, duplicates and leakage); training (loss/accuracy curves, learning rate,
time per epoch, best epoch); test results (accuracy, per-class table,
confusion matrix, most confused pairs, worst misclassified images,
confidence histogram and reliability diagram); the settings and the
environment that made it. ``make evaluate`` writes it; ``make report``
rewrites it from the run folder alone.
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, artifacts, bundle, plots

log = logging.getLogger(__name__)

REPORT = "report.html"
PNGS = {"counts": "class_counts.png", "samples": "samples.png", "curves": "curves.png",
        "confusion": "confusion_matrix.png", "misclassified": "misclassified.png", "calibration": "calibration.png"}
WORST = 24  # misclassified images in the gallery
LOW_ACCURACY = 0.5


# ---------------------------------------------------------------- reading the run folder
def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _json_or_none(path: Path, what: str) -> Any:
    return artifacts.read_json(path, what) if path.is_file() else None


def _history(run: Path) -> list[dict[str, float]]:
    rows = []
    for r in _read_csv(run / "history.csv"):
        rows.append({k: float(v) for k, v in r.items() if v not in ("", None)})
    return rows


def _test_paths(run: Path) -> list[str]:
    """File of each X_test row (the manifest's test rows, in order)."""
    return [r["path"] for r in _read_csv(run / "manifest.csv") if r.get("split") == "test"]


def _inputs_fingerprint(run: Path) -> str:
    files = ["metrics.json", "test_probs.npy", "history.csv", "dataset.json", "prepare.json", "model/bundle.json"]
    return artifacts.fingerprint(__version__, [artifacts.sha256_file(run / f) if (run / f).is_file() else None
                                               for f in files])


# ---------------------------------------------------------------- analysis (pure)
def confused_pairs(cm: np.ndarray, labels: list[str], top: int = 10) -> list[dict[str, Any]]:
    """The largest off-diagonal cells: (true, predicted, count, share of the true class)."""
    cm = np.asarray(cm)
    pairs = [(int(cm[i, j]), i, j) for i in range(len(labels)) for j in range(len(labels)) if i != j and cm[i, j]]
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    support = cm.sum(axis=1)
    return [{"true": labels[i], "predicted": labels[j], "count": n, "share": n / max(int(support[i]), 1)}
            for n, i, j in pairs[:top]]


def worst_misclassified(probs: np.ndarray, y: np.ndarray, top: int = WORST) -> np.ndarray:
    """Indices of wrong predictions, most confident first (the model's worst mistakes)."""
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    wrong = np.flatnonzero(pred != y)
    return wrong[np.argsort(-conf[wrong], kind="stable")][:top]


def warnings_for(metrics: dict[str, Any], dataset: dict[str, Any] | None, info: dict[str, Any]) -> list[str]:
    """The audit's warnings plus what evaluation and training reveal."""
    out = list((dataset or {}).get("warnings", []))
    acc, n_labels = metrics["accuracy"], len(metrics["labels"])
    if acc < LOW_ACCURACY:
        out.append(f"low accuracy: {acc:.1%} on the test split (chance is {1 / n_labels:.1%}); "
                   "more data per class, other preprocessing or more epochs may help")
    empty = [name for name, m in metrics["per_class"].items() if m["support"] == 0]
    if empty:
        out.append(f"no test images for: {', '.join(empty)} (their precision/recall mean nothing)")
    if info.get("monitor") == "loss":
        out.append("no validation split: early stopping and the best checkpoint followed the training loss")
    return out


# ---------------------------------------------------------------- HTML
def _e(value: Any) -> str:
    return html.escape(str(value))


def _img(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{_e(alt)}">'


def _figure(png: bytes | None, alt: str, caption: str) -> str:
    if png is None:
        return f'<p class="missing">{_e(alt)}: not available.</p>'
    return f"<figure>{_img(png, alt)}<figcaption>{caption}</figcaption></figure>"


def _table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv_table(d: dict[str, Any]) -> str:
    rows = [[k, json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v] for k, v in d.items()]
    return _table(["key", "value"], rows, "kv")


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f3f5f8;
line-height:1.45}
header{background:#1d2330;color:#fff;padding:18px 0}
header .wrap,main{max-width:1180px;margin:0 auto;padding:0 24px}
header h1{margin:0 0 4px;font-size:1.6em} header p{margin:0;color:#c8cfdb}
nav{margin-top:10px} nav a{color:#9cc3ff;margin-right:16px;text-decoration:none}
section{background:#fff;border-radius:8px;padding:6px 22px 18px;margin:18px 0;box-shadow:0 1px 3px #0001}
h2{border-bottom:2px solid #e6e9ef;padding-bottom:4px} h3{margin-bottom:6px}
figure{margin:12px 0} figure img{max-width:100%;height:auto;border:1px solid #e6e9ef;border-radius:4px}
figcaption{color:#555;font-size:.9em;margin-top:4px}
table{border-collapse:collapse;font-size:.88em;margin:8px 0}
th,td{padding:3px 10px;border-bottom:1px solid #e6e9ef;text-align:right;vertical-align:top}
th{background:#f3f5f8} td:first-child,th:first-child{text-align:left}
table.kv td,table.kv th{text-align:left;max-width:760px;overflow-wrap:anywhere}
.kpis{display:flex;flex-wrap:wrap;gap:14px;margin:12px 0}
.kpi{background:#f3f5f8;border-radius:6px;padding:8px 16px;min-width:130px}
.kpi b{display:block;font-size:1.5em}
.warn{background:#fff4e0;border-left:4px solid #f0a020;padding:8px 14px;margin:12px 0}
.warn li{margin:2px 0} .ok{color:#2a7a2a} .missing{color:#888;font-style:italic}
.cols{display:flex;flex-wrap:wrap;gap:28px} .cols>div{flex:1 1 360px;min-width:0}
"""


def _dataset_section(dataset: dict[str, Any] | None, rejected: list[dict[str, str]],
                     pngs: dict[str, bytes | None]) -> str:
    if dataset is None:
        return ('<section id="dataset"><h2>Dataset</h2><p class="missing">dataset.json not found '
                "(prepared by an older version); re-run <code>make prepare</code>.</p>"
                + _figure(pngs.get("samples"), "samples", "Preprocessed training images per class.") + "</section>")
    counts = dataset["counts"]
    splits = [s for s in next(iter(counts.values())) if s != "total"] if counts else []
    table = _table(["label", *splits, "total"], [[k, *(c[s] for s in splits), c["total"]] for k, c in counts.items()])
    rej = dataset["rejected"]
    reasons = (_table(["reason", "files"], [[r, n] for r, n in rej["by_reason"].items()])
               if rej["total"] else '<p class="ok">No file was rejected.</p>')
    examples = ""
    if rejected:
        examples = ("<details><summary>Rejected files (first 50)</summary>"
                    + _table(["path", "reason"], [[r["path"], r["reason"]] for r in rejected[:50]]) + "</details>")
    dup, leak, conf = dataset["duplicates"], dataset["leakage"], dataset["conflicts"]
    found = _table(["check", "found", "detail"], [
        ["duplicate files (identical bytes)", dup["extra_copies"], f"{dup['groups']} groups"],
        ["same bytes under different labels", conf["groups"], "kept; listed in dataset.json"],
        ["leakage (train image also in val/test)", leak["images"], leak["action"]],
        ["extension does not match content", dataset.get("extension_mismatch", {}).get("files", 0),
         "read by content"],
    ])
    sizes = dataset.get("sizes", {})
    census = (f"{dataset['images']} usable images in {dataset['classes']} classes, from "
              f"<code>{_e(dataset.get('data', '?'))}</code> (layout <code>{_e(dataset.get('layout', '?'))}</code>); "
              f"sizes {sizes.get('min_width')}–{sizes.get('max_width')} × {sizes.get('min_height')}–"
              f"{sizes.get('max_height')} px; formats {_e(', '.join(f'{k} {v}' for k, v in dataset['formats'].items()))}"
              f"; modes {_e(', '.join(f'{k} {v}' for k, v in dataset['modes'].items()))}.")
    return f"""<section id="dataset"><h2>Dataset</h2><p>{census}</p>
<div class="cols"><div>{_figure(pngs["counts"], "images per class", "Images per class, stacked by split.")}</div>
<div><h3>Images per class</h3>{table}</div></div>
{_figure(pngs.get("samples"), "samples", "Training images per class after preprocessing: what the model sees.")}
<div class="cols"><div><h3>Rejected files by reason</h3>{reasons}{examples}</div>
<div><h3>Duplicates and leakage</h3>{found}</div></div></section>"""


def _training_section(history: list[dict[str, float]], info: dict[str, Any], pngs: dict[str, bytes | None]) -> str:
    if not history:
        return '<section id="training"><h2>Training</h2><p class="missing">history.csv not found.</p></section>'
    best = info.get("best_epoch")
    secs = [r.get("seconds", 0.0) for r in history]
    kpis = [("model", info.get("model", "?")), ("parameters", f"{info.get('parameters', '?'):,}"
                                                 if isinstance(info.get("parameters"), int) else "?"),
            ("epochs run", len(history)), ("best epoch", best),
            (f"best {info.get('monitor', 'val_loss')}", f"{info.get('best_' + info.get('monitor', 'val_loss'), 0):.4f}"),
            ("training time", f"{sum(secs):.0f} s"), ("median epoch", f"{float(np.median(secs)):.1f} s")]
    rows = [[int(r["epoch"]), f"{r.get('seconds', 0):.1f}", f"{r.get('learning_rate', 0):.2e}",
             f"{r.get('loss', float('nan')):.4f}", f"{r.get('accuracy', float('nan')):.4f}",
             f"{r.get('val_loss', float('nan')):.4f}", f"{r.get('val_accuracy', float('nan')):.4f}"]
            for r in history]
    return f"""<section id="training"><h2>Training</h2>
<div class="kpis">{"".join(f'<div class="kpi">{_e(k)}<b>{_e(v)}</b></div>' for k, v in kpis)}</div>
{_figure(pngs["curves"], "training curves", "Loss and accuracy on the training and validation splits, the "
         "learning rate and the time of each epoch; the dashed line marks the best epoch (its weights are the "
         "model's).")}
<details><summary>Every epoch</summary>{_table(["epoch", "seconds", "learning rate", "loss", "accuracy",
                                               "val loss", "val accuracy"], rows)}</details></section>"""


def _results_section(metrics: dict[str, Any], pairs: list[dict[str, Any]], gallery: list[list[Any]],
                     calib: dict[str, Any] | None, pngs: dict[str, bytes | None]) -> str:
    per_class = [[name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"]]
                 for name, m in metrics["per_class"].items()]
    macro_f1 = float(np.mean([m["f1"] for m in metrics["per_class"].values()]))
    n_wrong = metrics["n"] - int(round(metrics["accuracy"] * metrics["n"]))
    kpis = [("test accuracy", f"{metrics['accuracy']:.2%}"), ("macro F1", f"{macro_f1:.4f}"),
            ("test images", metrics["n"]), ("misclassified", n_wrong)]
    if calib:
        kpis.append(("calibration error (ECE)", f"{calib['ece']:.3f}"))
    pair_table = (_table(["true", "predicted as", "images", "share of the true class"],
                         [[p["true"], p["predicted"], p["count"], f"{p['share']:.1%}"] for p in pairs])
                  if pairs else '<p class="ok">No confusions: every test image was classified correctly.</p>')
    worst = ""
    if gallery:
        worst = (_figure(pngs["misclassified"], "misclassified images",
                         "The model's most confident mistakes on the test split, as the model saw them "
                         "(after preprocessing): true → predicted label, confidence; file name below.")
                 + "<details><summary>The same as a table</summary>"
                 + _table(["file", "true", "predicted", "confidence", "second guess"], gallery) + "</details>")
    calib_fig = _figure(pngs["calibration"], "confidence and calibration",
                        "Left: confidence histogram of the predicted label, right and wrong predictions. Right: "
                        "Reliability diagram, the accuracy in each confidence bin; bars on the diagonal mean the "
                        "confidences can be read as probabilities. ECE = expected calibration error.") if calib else ""
    return f"""<section id="results"><h2>Test results</h2>
<div class="kpis">{"".join(f'<div class="kpi">{_e(k)}<b>{_e(v)}</b></div>' for k, v in kpis)}</div>
<div class="cols"><div><h3>Per class</h3>{_table(["label", "precision", "recall", "F1", "support"], per_class)}</div>
<div><h3>Most confused pairs</h3>{pair_table}</div></div>
{_figure(pngs["confusion"], "confusion matrix", "Confusion matrix on the test split: rows are the true labels, "
         "columns the predictions; left in images, right as a share of each true class.")}
<h3>Worst misclassified</h3>{worst or '<p class="ok">No misclassified test images.</p>'}
<h3>Confidence</h3>{calib_fig}</section>"""


def _settings_section(params: dict[str, dict[str, Any]], envs: dict[str, dict[str, Any]]) -> str:
    blocks = "".join(f"<div><h3>[{_e(name)}]</h3>{_kv_table(p)}</div>" for name, p in params.items() if p)
    env_rows = []
    keys = ["python", "platform", "cpu", "cpu_count", "memory_gb", "gpus"]
    stages = [s for s, e in envs.items() if e]
    for key in keys:
        env_rows.append([key, *(envs[s].get(key) if envs[s].get(key) is not None else "–" for s in stages)])
    packages = sorted({p for s in stages for p in envs[s].get("packages", {})})
    for pkg in packages:
        env_rows.append([pkg, *(envs[s].get("packages", {}).get(pkg, "–") for s in stages)])
    def cell(v: Any) -> Any:
        return (", ".join(v) or "none (CPU only)") if isinstance(v, list) else v

    env = (_table(["", *stages], [[k, *(cell(v) for v in vs)] for k, *vs in env_rows], "kv") if stages
           else '<p class="missing">not recorded (trained by an older version).</p>')
    return f"""<section id="settings"><h2>Settings and environment</h2>
<p>The resolved parameters of every stage (after per-dataset overrides), as recorded with the artifacts.</p>
<div class="cols">{blocks}</div><h3>Environment</h3>{env}</section>"""


# ---------------------------------------------------------------- the stage
def build_report(run: Path, force: bool = False) -> Path:
    """Write ``report.html`` and its PNGs into ``run``; skipped when its inputs are unchanged."""
    metrics_file = run / "metrics.json"
    if not metrics_file.is_file() or not (run / "test_probs.npy").is_file():
        raise artifacts.StageError(f"{run} has no finished evaluation (metrics.json, test_probs.npy); "
                                   "run `make evaluate` first")
    out = run / REPORT
    fp = _inputs_fingerprint(run)
    if not force and out.is_file() and all((run / f).is_file() for f in PNGS.values()) and \
            f'content="{fp}"' in out.read_text(encoding="utf-8", errors="replace")[:4096]:
        log.info("report: %s is up to date; skipped", out)
        return out
    t0 = time.perf_counter()
    metrics = artifacts.read_json(metrics_file, "metrics")
    labels = list(metrics["labels"])
    info = artifacts.read_json(run / "model" / bundle.MARKER, "model bundle marker")
    dataset = _json_or_none(run / "dataset.json", "dataset summary")
    history = _history(run)
    probs = artifacts.load_npy(run / "test_probs.npy", "test probabilities", mmap=False)
    y = np.asarray(artifacts.load_npy(run / "y_test.npy", "prepared test labels"))
    x = artifacts.load_npy(run / "X_test.npy", "prepared test images")
    if len(probs) != len(y):
        raise artifacts.StageError(f"{run}: test_probs.npy has {len(probs)} rows for {len(y)} test images; "
                                   "re-run `make evaluate`")
    names = _test_paths(run)
    names = names if len(names) == len(y) else [f"test #{i}" for i in range(len(y))]

    pngs: dict[str, bytes | None] = {}
    pngs["counts"] = plots.class_counts(dataset["counts"]) if dataset else None
    if (run / PNGS["samples"]).is_file():  # written by prepare
        pngs["samples"] = (run / PNGS["samples"]).read_bytes()
    else:
        x_train = artifacts.load_npy(run / "X_train.npy", "prepared train images")
        pngs["samples"] = plots.sample_grid(x_train, np.load(run / "y_train.npy"), labels)
    pngs["curves"] = plots.curves(history, info.get("best_epoch")) if history else None
    pngs["confusion"] = plots.confusion(np.array(metrics["confusion_matrix"]), labels)
    worst = worst_misclassified(probs, y)
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    second = np.argsort(-probs, axis=1)[:, 1] if probs.shape[1] > 1 else pred
    pngs["misclassified"] = plots.misclassified(
        np.asarray(x[worst]), [labels[y[i]] for i in worst], [labels[pred[i]] for i in worst],
        [float(conf[i]) for i in worst], [names[i] for i in worst]) if len(worst) else None
    gallery = [[names[i], labels[y[i]], labels[pred[i]], f"{conf[i]:.3f}",
                f"{labels[second[i]]} ({probs[i, second[i]]:.3f})"] for i in worst]
    calib_png, calib = plots.calibration(conf, pred == y) if len(y) else (None, None)
    pngs["calibration"] = calib_png

    for key, name in PNGS.items():
        if pngs.get(key) is not None and not (key == "samples" and (run / name).is_file()):
            artifacts.write_bytes(run / name, pngs[key])
    warnings = warnings_for(metrics, dataset, info)
    prepare_marker = _json_or_none(run / "prepare.json", "prepare marker") or {}
    bundle_params = _json_or_none(run / "model" / "params.json", "bundle params") or {}
    params = {"ingest": prepare_marker.get("ingest") or {}, "prepare": prepare_marker.get("params") or {},
              "preprocess": prepare_marker.get("preprocess") or {}, "train": bundle_params.get("train") or {},
              "augment": bundle_params.get("augment") or {}, "evaluate": metrics.get("params") or {}}
    envs = {"train": info.get("environment") or {}, "evaluate": metrics.get("environment") or {}}
    warn_html = ("<div class='warn'><b>Warnings</b><ul>" + "".join(f"<li>{_e(w)}</li>" for w in warnings)
                 + "</ul></div>") if warnings else ""
    title = f"{run.name}: {info.get('model', 'model')} — {metrics['accuracy']:.2%} test accuracy"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="pipeline-fingerprint" content="{fp}">
<title>{_e(title)}</title><style>{CSS}</style></head>
<body><header><div class="wrap"><h1>{_e(title)}</h1>
<p>Run folder <code>{_e(run)}</code> · model <b>{_e(info.get('model', '?'))}</b> · {metrics['n']} test images ·
{len(labels)} classes · report written {time.strftime('%Y-%m-%d %H:%M')} by lenet-pipeline {__version__}</p>
<nav><a href="#dataset">Dataset</a><a href="#training">Training</a><a href="#results">Test results</a>
<a href="#settings">Settings</a></nav></div></header>
<main>{warn_html}
{_dataset_section(dataset, _read_csv(run / "rejected.csv"), pngs)}
{_training_section(history, info, pngs)}
{_results_section(metrics, confused_pairs(np.array(metrics["confusion_matrix"]), labels), gallery, calib, pngs)}
{_settings_section(params, envs)}
</main></body></html>
"""
    artifacts.write_text(out, page)
    log.info("report: read metrics.json, test_probs.npy, X_test.npy, history.csv, dataset.json, model/ in %s", run)
    log.info("report: wrote %s and %s (%.1f s)", out, ", ".join(n for k, n in PNGS.items() if pngs.get(k)),
             time.perf_counter() - t0)
    return out


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--run", required=True, help="an evaluated run folder")
    return parser


def main(args: argparse.Namespace) -> int:
    """CLI: (re)write the report of an evaluated run."""
    out = build_report(Path(args.run), force=True)
    print(out)
    return 0
