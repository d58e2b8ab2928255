"""The report's HTML sections: plain data in (from the run folder), escaped HTML out.

:mod:`pipeline.stages.report` reads the run folder, draws the figures and fills the page
template with these sections.
"""
from __future__ import annotations

import base64
import html
import json
from typing import Any

import numpy as np

from pipeline.data.quality import WORDS
from pipeline.model.rows import FEW_VAL
from pipeline.shared import runfolder as rf

REJECTED_SHOWN = 12  # rejected files shown as thumbnails (the table lists more)
REJECTED_TABLE = 50
OUTLIERS_SHOWN = 12
QUALITY_SHOWN = 4  # thumbnails per image-quality issue


def esc(value: Any) -> str:
    return html.escape(str(value))


def _img(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{esc(alt)}">'


def _figure(png: bytes | None, alt: str, caption: str) -> str:
    if png is None:
        return f'<p class="missing">{esc(alt)}: not available.</p>'
    return f"<figure>{_img(png, alt)}<figcaption>{caption}</figcaption></figure>"


def _table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv_table(d: dict[str, Any]) -> str:
    rows = [[k, json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v] for k, v in d.items()]
    return _table(["key", "value"], rows, "kv")


def thumbs(items: list[tuple[str, str]], images: dict[str, bytes | None], why: dict[str, str]) -> str:
    """A gallery of files: each as a thumbnail (or a placeholder saying why it cannot be shown) with its
    name and a caption."""
    cards = []
    for path, caption in items:
        png = images.get(path)
        pic = (_img(png, path) if png is not None else
               f'<div class="noimg" title="{esc(why.get(path, ""))}">cannot be shown</div>')
        cards.append(f'<figure class="thumb">{pic}<figcaption><code>{esc(path)}</code><br>{esc(caption)}'
                     "</figcaption></figure>")
    return f'<div class="thumbs">{"".join(cards)}</div>' if cards else ""


def dataset_section(dataset: dict[str, Any] | None, rejected: list[dict[str, str]],
                    pngs: dict[str, bytes | None], files: dict[str, bytes | None] | None = None,
                    unseen: dict[str, str] | None = None) -> str:
    """The dataset: counts, samples, choices, corrections, rejected files and what the audit found;
    ``files``: thumbnails of the rejected files and of :func:`shown_files` (None: cannot be shown,
    ``unseen`` says why)."""
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
    files, unseen = files or {}, unseen or {}
    examples = ""
    if rejected:
        examples = (thumbs([(r["path"], r["reason"]) for r in rejected[:REJECTED_SHOWN]], files, unseen)
                    + f"<details><summary>Rejected files (first {REJECTED_TABLE})</summary>"
                    + _table(["path", "reason"], [[r["path"], r["reason"]] for r in rejected[:REJECTED_TABLE]])
                    + "</details>")
    found = _checks(dataset, files, unseen)
    sizes = dataset.get("sizes", {})
    multi = dataset.get("multi_label") or {}
    none = sum((multi.get("no_label") or {}).values())
    census = (f"{dataset['images']} usable images in {dataset['classes']} {'labels' if multi else 'classes'}"
              + (f" ({multi.get('labels_per_image', 0):g} labels per image on average; <b>{none}</b> with no label, "
                 "a negative example of every label)" if multi else "") + ", from "
              f"<code>{esc(dataset.get('data', '?'))}</code> (layout <code>{esc(dataset.get('layout', '?'))}</code>); "
              f"sizes {sizes.get('min_width')}–{sizes.get('max_width')} × {sizes.get('min_height')}–"
              f"{sizes.get('max_height')} px; formats {esc(', '.join(f'{k} {v}' for k, v in dataset['formats'].items()))}"
              f"; modes {esc(', '.join(f'{k} {v}' for k, v in dataset['modes'].items()))}.")
    return f"""<section id="dataset"><h2>Dataset</h2><p>{census}</p>
<div class="cols"><div>{_figure(pngs["counts"], "images per class", "Images per class, stacked by split.")}</div>
<div><h3>Images per class</h3>{table}</div></div>
{_figure(pngs.get("samples"), "samples", "Training images per class after preprocessing: what the model sees.")}
{_choices(dataset.get("choices"))}{_corrections(dataset.get("corrections"))}
<div class="cols"><div><h3>Rejected files by reason</h3>{reasons}{examples}</div>
<div><h3>Duplicates, copies, look-alikes, outliers and leakage</h3>{found}</div></div>
{_quality(dataset.get("quality"), dataset.get("shortcuts"), files, unseen)}</section>"""


def _checks(dataset: dict[str, Any], files: dict[str, bytes | None], unseen: dict[str, str]) -> str:
    """The table of what the audit checked and found, with the first copies, look-alikes and outliers."""
    dup, leak, conf = dataset["duplicates"], dataset["leakage"], dataset["conflicts"]
    near, odd = dataset.get("near_duplicates"), dataset.get("outliers")
    checks = [
        ["duplicate files (identical bytes)", dup["extra_copies"], f"{dup['groups']} groups"],
        ["same bytes under different labels", conf["groups"],
         "kept, unless a copy in val/test is dropped as leakage (below); to review (similar.csv)"],
        ["leakage (train image also in val/test)", leak["images"], leak["action"]],
        ["extension does not match content", dataset.get("extension_mismatch", {}).get("files", 0),
         "read by content"]]
    if near and "copies" in near.get("across_splits", {}):
        checks += [["copies across splits (re-encoded, resized, cropped, shifted, recoloured)",
                    near["across_splits"]["copies"], "pairs; kept; similar.csv"],
                   ["copies under different labels", near["across_classes"]["copies"], "pairs; similar.csv"],
                   ["look-alikes under different labels",
                    near["across_classes"]["pairs"] - near["across_classes"]["copies"], "pairs; to review (similar.csv)"],
                   ["look-alikes within a class", near["within_class"]["pairs"], "pairs; different images, alike"]]
    elif near:  # prepared by an older version
        checks += [["near-duplicate pairs within a class", near["within_class"]["pairs"],
                    "resized, re-encoded, shifted"],
                   ["near-duplicate pairs across classes", near["across_classes"]["pairs"], "label conflicts"],
                   ["near-duplicate pairs across splits", near["across_splits"]["pairs"], "kept; leakage"]]
    if odd:
        far = f"; {odd['far']} far beyond their class's spread" if "far" in odd else ""
        checks.append(["outliers (unlike the rest of their class)", odd["images"], odd["rule"] + far])
    return _table(["check", "found", "detail"], checks) + _similar_examples(near, odd, files, unseen)


def _quality(q: dict[str, Any] | None, shortcuts: dict[str, Any] | None, files: dict[str, bytes | None],
             unseen: dict[str, str]) -> str:
    """The image-quality issues (a row each: images flagged, the rule) with the first few of each as
    thumbnails, and the shortcuts found."""
    if not q:
        return ""
    rows = [[WORDS.get(issue, issue), n, q["rules"].get(issue, "")] for issue, n in q["counts"].items()]
    parts = ["<h3>Image quality</h3>", _table(["issue", "images", "flagged when"], rows)]
    if not q.get("images"):
        parts.append('<p class="ok">No image stands out from the rest of the dataset.</p>')
    for issue, examples in q.get("examples", {}).items():
        shown = examples[:QUALITY_SHOWN]
        title = f"{esc(WORDS.get(issue, issue)).capitalize()} (first {len(shown)} of {q['counts'][issue]})"
        captions = [(e["path"], f"{e['label']}, {e['split']}, score {e['score']}") for e in shown]
        parts.append(f"<h4>{title}</h4>" + thumbs(captions, files, unseen))
    found = (shortcuts or {}).get("found", [])
    if found:
        parts.append("<h4>Shortcuts: a property that tells a class on its own</h4>" + _table(
            ["property", "class", "its images are", "balanced accuracy (held out)"],
            [[f["property"], f["label"], f"{f['direction']} than the rest", f["held_out"]] for f in found]))
    elif shortcuts is not None:
        parts.append('<p class="ok">No shortcut: no image property (brightness, size, aspect ratio, sharpness, '
                     "colourfulness) tells a class from the rest on its own.</p>")
    return "".join(parts)


def shown_files(dataset: dict[str, Any] | None) -> list[str]:
    """The files the dataset section shows as thumbnails besides the rejected ones: the first outliers
    and the first few of each image-quality issue (paths relative to the dataset's root)."""
    d = dataset or {}
    shown = [e["path"] for e in d.get("outliers", {}).get("examples", [])[:OUTLIERS_SHOWN]]
    for examples in d.get("quality", {}).get("examples", {}).values():
        shown += [e["path"] for e in examples[:QUALITY_SHOWN]]
    return shown


def _choices(choices: dict[str, Any] | None) -> str:
    """The settings "auto" resolved to, and why."""
    if not choices:
        return ""
    rows = [[key, choices[key].get("value"), choices[key].get("why")] for key in ("color", "size", "invert", "background")
            if key in choices]
    flip = choices.get("hflip")
    if flip:
        rows.append(["horizontal flips", "label-preserving" if flip.get("hflip") else "not safe", flip.get("why")])
    return "<h3>Chosen from the data</h3>" + _table(["setting", "value", "why"], rows, "kv")


def _corrections(fixed: dict[str, Any] | None) -> str:
    if not fixed:
        return ""
    new = f"; new classes: {', '.join(fixed['new_labels'])}" if fixed["new_labels"] else ""
    return (f"<h3>Corrections applied</h3><p>{esc(fixed['file'])}: <b>{fixed['relabeled']}</b> image(s) relabeled, "
            f"<b>{fixed['excluded']}</b> excluded, <b>{fixed.get('kept', 0)}</b> kept as they are{esc(new)} (the files "
            "under DATA are untouched; excluded ones are "
            "listed in rejected.csv, relabeled ones carry a note in manifest.csv).</p>")


def _similar_examples(near: dict[str, Any] | None, odd: dict[str, Any] | None, files: dict[str, bytes | None],
                      unseen: dict[str, str]) -> str:
    parts = []
    for kind, title in (("across_classes", "Copies and look-alikes under different labels"),
                        ("across_splits", "Copies and look-alikes across splits"), ("within_class", "Look-alikes")):
        ex = (near or {}).get(kind, {}).get("examples", [])[:10]
        if ex:
            parts.append(f"<details><summary>{title} (first {len(ex)})</summary>" + _table(
                ["first", "second", "labels", "kind", "similarity"],
                [[e["paths"][0], e["paths"][1], " / ".join(e["labels"]), e.get("kind", ""), e["similarity"]]
                 for e in ex]) + "</details>")
    ex = (odd or {}).get("examples", [])[:OUTLIERS_SHOWN]
    if ex:
        parts.append(f"<h4>Outliers: unlike the rest of their class (first {len(ex)})</h4>"
                     + thumbs([(e["path"], f"{e['label']}, robust z {e['z']}") for e in ex], files, unseen))
    return "".join(parts)


def _plan(info: dict[str, Any], calibration: dict[str, Any] | None) -> str:
    """What the recipe chose from the data (epochs, flips, class weights) and the temperature."""
    plan = info.get("plan")
    if not plan:
        return ""
    weights = plan.get("class_weights")
    rows = [["epochs", plan["epochs"], plan["epochs_why"]],
            ["steps", f"{plan['total_steps']:,} ({plan['steps_per_epoch']} per epoch, batch {plan['global_batch']})", ""],
            ["early stopping patience", plan["patience"], "epochs without a better val_loss"],
            ["horizontal flips", "on" if plan["hflip"] else "off", plan["hflip_why"]],
            ["class weights", "balanced" if weights else "none", plan["class_weights_why"]]]
    if calibration and calibration.get("temperatures"):  # several labels: one temperature (and cut) each
        t = calibration["temperatures"]
        rows.append(["temperatures", f"one per label, {min(t):.3g} to {max(t):.3g}",
                     f"fitted on the {calibration.get('fitted_on')} (model/calibration.json)"])
    elif calibration:
        rule = calibration.get("temperature_rule", "")
        how = f"set on the {calibration.get('fitted_on')}: {rule}" if rule.startswith("every") else \
            f"fitted on the {calibration.get('fitted_on')}"
        rows.append(["temperature", calibration.get("temperature"), how])
    return "<h3>Chosen from the data</h3>" + _table(["setting", "value", "why"], rows, "kv")


def training_section(history: list[dict[str, float]], info: dict[str, Any], pngs: dict[str, bytes | None],
                     calibration: dict[str, Any] | None = None) -> str:
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
<div class="kpis">{"".join(f'<div class="kpi">{esc(k)}<b>{esc(v)}</b></div>' for k, v in kpis)}</div>
{_figure(pngs["curves"], "training curves", "Loss and accuracy on the training and validation splits, the "
         "learning rate and the time of each epoch; the dashed line marks the best epoch (its weights are the "
         "model's).")}
{_plan(info, calibration)}
<details><summary>Every epoch</summary>{_table(["epoch", "seconds", "learning rate", "loss", "accuracy",
                                               "val loss", "val accuracy"], rows)}</details></section>"""


def _few_val(calib: dict[str, Any]) -> str:
    """A caption's warning when the temperature was fitted on few validation images."""
    n = calib.get("val_images")
    if n is None or n >= FEW_VAL:
        return ""
    return (f" The temperature was fitted on only {n} validation image(s): on so few it is a rough estimate, "
            "and the test ECE may rise after it by chance.")


def results_section(metrics: dict[str, Any], pairs: list[dict[str, Any]], gallery: list[list[Any]],
                     calib: dict[str, Any] | None, pngs: dict[str, bytes | None]) -> str:
    per_class = [[name, *rf.class_figures(m), m["support"]] for name, m in metrics["per_class"].items()]
    macro_f1 = rf.macro_f1(metrics["per_class"])
    n_wrong = metrics["n"] - int(round(metrics["accuracy"] * metrics["n"]))
    kpis = [("test accuracy", f"{metrics['accuracy']:.2%}"),
            ("macro F1", "n/a" if macro_f1 is None else f"{macro_f1:.4f}"),
            ("test images", metrics["n"]), ("misclassified", n_wrong)]
    if calib:
        kpis.append(("calibration error (ECE)", f"{calib['ece']:.3f}"
                     + (f" (before: {calib['ece_before']:.3f})" if "ece_before" in calib else "")))
    pair_table = (_table(["true", "predicted as", "images", "share of the true class"],
                         [[p["true"], p["predicted"], p["count"], f"{p['share']:.1%}"] for p in pairs])
                  if pairs else '<p class="ok">No confusions: every test image was classified correctly.</p>')
    worst = ""
    if gallery:
        worst = (_figure(pngs["misclassified"], "misclassified images",
                         "The model's most confident mistakes on the test split, as the model saw them "
                         "(after preprocessing), with the occlusion map of the predicted label over them (red: "
                         "hiding it costs the label most; see <code>pipeline explain</code>): true → predicted "
                         "label, confidence; file name below.")
                 + "<details><summary>The same as a table</summary>"
                 + _table(["file", "true", "predicted", "confidence", "second guess"], gallery) + "</details>")
    calib_fig = _figure(pngs["calibration"], "confidence and calibration",
                        "Left: confidence histogram of the predicted label, right and wrong predictions. Then the "
                        "reliability diagrams before and after temperature scaling (fitted on the validation "
                        "split): the accuracy in each confidence bin; bars on the diagonal mean the confidences "
                        "can be read as probabilities. ECE = expected calibration error." + _few_val(calib)) \
        if calib else ""
    calib_fig += _figure(pngs.get("risk"), "risk-coverage", "Accuracy of the predictions kept against the share "
                         "kept, as the confidence cut rises; the dot is the cut <code>--threshold auto</code> "
                         "picks on validation for the default 99% target precision.") if pngs.get("risk") else ""
    return f"""<section id="results"><h2>Test results</h2>
<div class="kpis">{"".join(f'<div class="kpi">{esc(k)}<b>{esc(v)}</b></div>' for k, v in kpis)}</div>
<div class="cols"><div><h3>Per class</h3>{_table(["label", "precision", "recall", "F1", "support"], per_class)}</div>
<div><h3>Most confused pairs</h3>{pair_table}</div></div>
{_figure(pngs["confusion"], "confusion matrix", "Confusion matrix on the test split: rows are the true labels, "
         "columns the predictions; left in images, right as a share of each true class.")}
<h3>Worst misclassified</h3>{worst or '<p class="ok">No misclassified test images.</p>'}
<h3>Confidence</h3>{calib_fig}</section>"""


def settings_section(params: dict[str, dict[str, Any]], envs: dict[str, dict[str, Any]]) -> str:
    blocks = "".join(f"<div><h3>[{esc(name)}]</h3>{_kv_table(p)}</div>" for name, p in params.items() if p)
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




def suspects_section(record: dict[str, Any] | None, pngs: dict[str, bytes | None]) -> str:
    """The suspected label errors (``make suspects``), when they were looked for."""
    head = '<section id="suspects"><h2>Suspected label errors</h2>'
    if not record:
        return (head + '<p class="missing">Not looked for yet: <code>make suspects</code> cross-checks every '
                "label (train and val by cross-validation, test with the trained model).</p></section>")
    checked = record.get("checked") or {"train and val": record["images"]}
    what = ", ".join(f"{n} {split}" for split, n in checked.items() if n)
    test_note = ("" if record.get("test_checked", True) else
                 " The test split was not checked: it needs a model trained on this preparation (make train).")
    if record.get("stale"):
        test_note += (" <b>These were found on an earlier preparation of this run</b> (labels may have changed "
                      "since, e.g. by a review): <code>make suspects</code> checks the data as it is now.")
    how = (f"Train and val images: models trained on the other {record['folds'] - 1} of {record['folds']} folds "
           f"(out-of-fold accuracy {record['out_of_fold_accuracy']:.2%}); test images: the trained model, which "
           f"never saw them. {esc(record['method'])}.{test_note}")
    if not record["flagged"]:
        return (head + f'<p class="ok">Checked {record["images"]} images ({esc(what)}); none flagged at the '
                f"finder's cut.</p><p>{how}</p></section>")
    rows = [[r["path"], r["label"], r["suggested"], f"{r['score']:.3f}", r.get("split", "")]
            for r in record.get("top", [])[:20]]
    by_split = record.get("flagged_by_split") or {}
    found = ", ".join(f"{n} in {split}" for split, n in by_split.items() if n)
    title = f"The {len(rows)} most suspicious" if len(rows) > 1 else "The suspect"
    return f"""{head}<p><b>{record['flagged']}</b> of {record['images']} images ({esc(what)}) carry a label that
out-of-sample predictions contradict{f" ({esc(found)})" if found else ""}. {how} They are listed in
<code>suspects.csv</code>, most suspicious first; <code>pipeline suspects --write-corrections</code> turns them
into a <code>corrections.csv</code> to review.</p>
{_figure(pngs.get("suspects"), "suspected label errors", "The most suspicious images as the model sees them: "
         "given → suggested label, score (1 - the probability of the given label).")}
<details><summary>{title}</summary>{_table(["file", "label", "suggested", "score", "split"], rows)}
</details></section>"""


def _relabeled(review: dict[str, Any], before: float) -> str:
    """How much of the before/after the test labels make: the model before the review on the labels now."""
    again = review.get("accuracy_before_relabeled")
    if again is None or abs(again - before) < 5e-5:
        return ""
    return (f" The model before the review, scored by the reviewed test labels: <b>{again:.2%}</b> (the difference "
            f"from {before:.2%} is the test labels the review changed, not the model).")


def review_section(dataset: dict[str, Any] | None, metrics: dict[str, Any]) -> str:
    """What the review (corrections.csv, labeled.csv) changed, and the test accuracy before and after."""
    dataset = dataset or {}
    fixed, labeled, review = dataset.get("corrections"), dataset.get("labeled"), dataset.get("review") or {}
    if not fixed and not labeled:
        return ""
    rows = []
    if fixed:
        rows += [["relabeled", fixed["relabeled"]], ["excluded", fixed["excluded"]], ["kept as they are", fixed.get("kept", 0)]]
        if fixed.get("new_labels"):
            rows.append(["new classes", ", ".join(fixed["new_labels"])])
        if fixed.get("gone_count"):
            rows.append(["decided on images no longer in the data (not applied)", fixed["gone_count"]])
    if labeled:
        rows.append(["new images labeled and added to train", labeled["added"]])
    before, last = review.get("accuracy_before"), review.get("accuracy_last_round")
    rounds = (f" That is over {review['rounds']} rounds of review; before the latest, {last:.2%}."
              if review.get("rounds", 1) > 1 and last is not None else "")
    tested, now = review.get("tested_before"), metrics.get("n")
    same = ("the same test split" if None in (tested, now) or tested == now else
            f"the same test split less the {tested - now} image(s) the review excluded ({tested} then, {now} now)")
    acc = (f"Test accuracy before: <b>{before:.2%}</b>, after: <b>{metrics['accuracy']:.2%}</b> ({same}: a review "
           "changes labels, not the split; relabeled test images are scored by their new labels; a model trained "
           f"again also differs by chance).{rounds}{_relabeled(review, before)}" if before is not None else
           "No evaluation before the review to compare with.")
    return (f'<section id="review"><h2>What the review changed</h2>{_table(["decision", "images"], rows)}'
            f"<p>{acc}</p></section>")
