"""Several labels per image, measured (``make bench BENCH=multilabel``): our default recipe against a plain
Keras sigmoid LeNet-5 on the same split, over seeds, on 2x2 mosaics of MNIST digits labelled with the set of
digits present (:func:`benchmarks.devsets.build_mnist_mosaic`: 24k train / 6k test, 56x56) and its held-out
variant never tuned on (empty cells, turned digits, noise, 0/1 label columns).

| measure | ours | plain Keras |
|---|---|---|
| mAP, macro F1 (test split, mean ± sd over seeds) | prepare -> train -> evaluate, defaults (thresholds per label chosen on val) | the Keras LeNet-5 tutorial model with a sigmoid head and binary cross-entropy, Adam 1e-3, 15 epochs, batch 128, thresholds 0.5 |

Each seed prepares the data (the seed picks the validation split; the test split is the one the CSV gives)
and trains; the Keras model trains on the same prepared arrays.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import mean_sd, publish

KERAS_EPOCHS = 15
DATASETS = {"mnist-mosaic": False, "mnist-mosaic-sparse": True}  # name -> held out (never tuned on)


def build(name: str, root: Path, mnist_source: Path) -> Path:
    """The dataset's labels.csv, built once (``.complete`` marks a finished build)."""
    from benchmarks.devsets import build_mnist_mosaic

    out = root / name
    if not (out / ".complete").is_file():
        shutil.rmtree(out, ignore_errors=True)
        build_mnist_mosaic(mnist_source, out, held_out=DATASETS[name])
        (out / ".complete").write_text("")
    return out / "labels.csv"


def keras_sigmoid_lenet5(run: Path, seed: int) -> dict[str, Any]:
    """The plain Keras way on the run's prepared arrays: the tutorial LeNet-5 with a sigmoid per label."""
    import keras
    from keras import layers

    from pipeline.model import multilabel

    a = {k: np.load(run / f"{k}.npy") for k in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")}
    labels = json.loads((run / "labels.json").read_text())
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input(a["X_train"].shape[1:]),
        layers.Conv2D(6, 5, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(16, 5, activation="relu"), layers.MaxPooling2D(2), layers.Flatten(),
        layers.Dense(120, activation="relu"), layers.Dense(84, activation="relu"),
        layers.Dense(len(labels), activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    t0 = time.perf_counter()
    model.fit(a["X_train"], a["y_train"].astype(np.float32), batch_size=128, epochs=KERAS_EPOCHS, verbose=0,
              validation_data=(a["X_val"], a["y_val"].astype(np.float32)) if len(a["y_val"]) else None)
    seconds = time.perf_counter() - t0
    probs = model.predict(a["X_test"], batch_size=1024, verbose=0)
    m = multilabel.metrics(a["y_test"], probs, np.full(len(labels), 0.5), sorted(labels, key=labels.get))
    return {"map": m["map"], "f1_macro": m["f1_macro"], "f1_micro": m["f1_micro"],
            "subset_accuracy": m["subset_accuracy"], "train_seconds": seconds}


def one(name: str, data: Path, work: Path, seed: int, params: Path) -> dict[str, Any]:
    """prepare -> train -> evaluate with the defaults, then the Keras model on the same split."""
    from dataclasses import replace

    from pipeline.shared import params as params_mod
    from pipeline.stages.evaluate import evaluate
    from pipeline.stages.prepare import prepare
    from pipeline.stages.train import train

    run = work / f"seed{seed}" / name
    shutil.rmtree(run, ignore_errors=True)
    load = lambda section: params_mod.load(params, section, name)  # noqa: E731
    prepare(data, run, replace(load("prepare"), seed=seed), load("preprocess"), "auto", load("ingest"))
    t0 = time.perf_counter()
    train(run, replace(load("train"), seed=seed), verbose=0, aug=load("augment"))
    seconds = time.perf_counter() - t0
    m = evaluate(run, load("evaluate"))
    info = json.loads((run / "model" / "bundle.json").read_text())
    return {"dataset": name, "seed": seed, "map": m["map"], "f1_macro": m["f1_macro"], "f1_micro": m["f1_micro"],
            "subset_accuracy": m["subset_accuracy"], "hamming_loss": m["hamming_loss"], "test_images": m["n"],
            "train_seconds": seconds, "epochs_run": info["epochs_run"], "hflip": info["plan"]["hflip"],
            "class_weights_why": info["plan"]["class_weights_why"], "keras": keras_sigmoid_lenet5(run, seed)}


PLANTED_IMAGES, PLANTED_SHARE = 12000, 0.03  # training mosaics checked, and the share given one tag wrong
RANKED = (50, 100, 200, 400)  # precision of the first this many ranked decisions


def planted(data: Path, work: Path, seed: int = 0, images: int = PLANTED_IMAGES,
            params: Path = Path("params.toml")) -> dict[str, Any]:
    """Suspects on multi-label data: PLANTED_SHARE of PLANTED_IMAGES training mosaics get one tag wrong (a digit
    added that is absent, or one present removed); ``make suspects`` with the defaults; the precision and
    recall of its flagged (image, label) decisions against the planted ones."""
    import csv

    from pipeline.shared import params as params_mod
    from pipeline.stages.prepare import prepare
    from pipeline.stages.suspects import suspects

    rng = np.random.default_rng(seed)
    with open(data, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train"][:images]
    wrong: dict[str, str] = {}
    for i in rng.choice(len(rows), round(PLANTED_SHARE * len(rows)), replace=False).tolist():
        tags = set(filter(None, rows[i]["label"].split("|")))
        digit = str(rng.integers(10))
        tags ^= {digit}
        rows[i]["label"], wrong[rows[i]["path"]] = "|".join(sorted(tags)), digit
    table = data.parent / "planted.csv"  # beside the images: a mapping file's paths stay inside its folder
    work.mkdir(parents=True, exist_ok=True)
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows([r["path"], r["label"]] for r in rows)
    run = work / "planted-run"
    shutil.rmtree(run, ignore_errors=True)
    p = params_mod.load(params, "prepare")
    prepare(table, run, p, params_mod.load(params, "preprocess"), "auto", params_mod.load(params, "ingest"))
    t0 = time.perf_counter()
    record = suspects(run, params_mod.load(params, "suspects"), params_mod.load(params, "train"),
                      params_mod.load(params, "augment"))
    with open(run / "suspects.csv", newline="") as fh:
        found = {(Path(r["path"]).name, d) for r in csv.DictReader(fh)
                 for d in set(r["label"].split(";")) ^ set(r["suggested"].split(";")) if d}
    truth = {(Path(path).name, d) for path, d in wrong.items()}
    with open(run / "suspects_ranked.csv", newline="") as fh:  # one row per image, most doubtful first
        ranked = [[(Path(r["path"]).name, d) for d in set(r["label"].split(";")) ^ set(r["suggested"].split(";")) if d]
                  for r in csv.DictReader(fh)]
    order = [dec for row in ranked for dec in row]
    hits = len(found & truth)
    return {"images": record["images"], "planted": len(truth), "flagged": len(found), "hits": hits,
            "precision": hits / max(len(found), 1), "recall": hits / max(len(truth), 1),
            "out_of_fold_accuracy": record.get("out_of_fold_accuracy"), "fold_steps": record.get("fold_steps"),
            "ranked_precision": {n: sum(d in truth for d in order[:n]) / n for n in RANKED if len(order) >= n},
            "seconds": time.perf_counter() - t0}


def _child(name: str, data: Path, work: Path, seed: int, params: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.multilabel_bench", "--one", name, "--data", str(data), "--work",
           str(work), "--seed", str(seed), "--params", str(params)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TQDM_DISABLE": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"multi-label run {name} seed {seed} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])



def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per dataset: mAP and macro F1 (%, mean ± sd over the seeds), ours and Keras', and seconds."""
    lines = [f"{'dataset':<30} {'seeds':>5} {'mAP ours':>14} {'mAP Keras':>14} {'F1 macro ours':>14} "
             f"{'F1 macro Keras':>15} {'subset acc ours':>16} {'ours s':>7} {'Keras s':>7}"]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == name]
        tag = " (held out)" if DATASETS.get(name) else ""
        lines.append(f"{name + tag:<30} {len(rs):>5} {mean_sd([r['map'] for r in rs]):>14} "
                     f"{mean_sd([r['keras']['map'] for r in rs]):>14} {mean_sd([r['f1_macro'] for r in rs]):>14} "
                     f"{mean_sd([r['keras']['f1_macro'] for r in rs]):>15} "
                     f"{mean_sd([r['subset_accuracy'] for r in rs]):>16} "
                     f"{np.mean([r['train_seconds'] for r in rs]):>7.0f} "
                     f"{np.mean([r['keras']['train_seconds'] for r in rs]):>7.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.multilabel_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated, of: " + ",".join(DATASETS))
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--work", default="bench-results/multilabel", help="datasets and runs (default: %(default)s)")
    parser.add_argument("--params", default="params.toml", help="params file (default: %(default)s)")
    parser.add_argument("--out", default="bench-results", help="where multilabel.json goes")
    parser.add_argument("--suspects", action="store_true", help="only the planted-error check of suspects")
    parser.add_argument("--planted-images", type=int, default=PLANTED_IMAGES,
                        help="--suspects: training mosaics checked (default: %(default)s)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, Path(args.data), Path(args.work), args.seed, Path(args.params))))
        return 0
    from pipeline.data import mnist

    source = mnist.find_source(None, default=mnist.DEFAULT_RAW)
    if source is None:
        raise SystemExit("the multi-label benchmark needs the MNIST IDX files (MNIST_DIR)")
    if args.suspects:
        r = planted(build("mnist-mosaic", Path(args.work) / "data", source), Path(args.work) / "suspects",
                    images=args.planted_images, params=Path(args.params))
        publish(args.out, "multilabel_suspects", r,
                f"suspects on {r['images']} multi-label mosaics, {r['planted']} planted wrong tags (added or removed): "
                f"{r['flagged']} decisions flagged, precision {r['precision']:.3f}, recall {r['recall']:.3f} "
                f"({r['seconds']:.0f} s; folds of {r['fold_steps']} steps, out-of-fold decision accuracy "
                f"{r['out_of_fold_accuracy']:.3f}); precision of the first ranked decisions: "
                + ", ".join(f"{n}: {v:.2f}" for n, v in r["ranked_precision"].items()))
        return 0
    rows = []
    names = [n for n in args.datasets.split(",") if n]
    data = {name: build(name, Path(args.work) / "data", source) for name in names}
    for seed in [int(s) for s in args.seeds.split(",")]:  # seed by seed: every dataset has a figure early
        for name in names:
            print(f"multilabel: {name} seed {seed} ...", file=sys.stderr, flush=True)
            rows.append(_child(name, data[name], Path(args.work) / "runs", seed, Path(args.params)))
            r = rows[-1]
            print(f"  ours mAP {r['map']:.4f} F1 {r['f1_macro']:.4f} ({r['train_seconds']:.0f} s); Keras mAP "
                  f"{r['keras']['map']:.4f} F1 {r['keras']['f1_macro']:.4f}", file=sys.stderr, flush=True)
            publish(args.out, "multilabel", rows, format_table(rows))  # after every run: nothing measured is lost
    return 0


if __name__ == "__main__":
    sys.exit(main())
