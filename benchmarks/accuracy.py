"""Accuracy table for ``make bench``: the default recipe on several datasets, mean ± sd over seeds,
each beside the plain Keras LeNet-5 tutorial recipe trained on the same split in the same run.

Every (dataset, seed) runs in a fresh process: ``prepare`` → ``train`` → ``evaluate`` with the
project's ``params.toml`` (so the run folder's name picks its ``[overrides.<name>]``, and only
MNIST has one), then the Keras recipe on the very arrays prepare wrote:

    conv 6@5x5 same (ReLU) -> max-pool -> conv 16@5x5 (ReLU) -> max-pool -> dense 120 -> 84 -> softmax,
    Adam 1e-3, batch 128, 15 epochs, no augmentation (the usual Keras LeNet-5 tutorial).

The seed is both the split seed and the training seed, so the spread covers both.
``symbols`` is held out: built and reported, never used to choose a default.

    python -m benchmarks.accuracy --datasets mnist100,glyphs --seeds 1,2,3
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

# name -> (what, held out?)
DATASETS = {
    "mnist": ("MNIST, the reference (60k/10k PNGs)", False),
    "mnist100": ("100 MNIST digits per class; the full 10k test set", False),
    "sklearn-digits": ("scikit-learn's 1,797 8x8 digits", False),
    "glyphs": ("20 letters from the installed fonts, dark on light, 24-48 px; unseen test fonts", False),
    "shapes": ("12 colour x shape classes on noisy colour backgrounds, 40-72 px JPEG, CSV", False),
    "mnist-cluttered": ("the 70k MNIST digits turned at random among fragments of other digits and noise", False),
    "symbols": ("HELD OUT: 12 coloured symbols on textured backgrounds, label after an id in the file name", True),
}
KERAS_EPOCHS = 15


def build(name: str, root: Path, mnist_source: Path | None, mnist_folder: Path) -> Path:
    """The dataset's folder (or CSV), built once under ``root``."""
    from benchmarks import devsets

    if name == "mnist":
        return mnist_folder
    out = root / name
    builders = {"mnist100": lambda: devsets.build_mnist100(mnist_source, out),
                "sklearn-digits": lambda: devsets.build_sklearn_digits(out),
                "glyphs": lambda: devsets.build_glyphs(out), "shapes": lambda: devsets.build_shapes(out),
                "mnist-cluttered": lambda: devsets.build_mnist_cluttered(mnist_source, out),
                "symbols": lambda: devsets.build_symbols(out)}
    if not (out / ".complete").is_file():
        shutil.rmtree(out, ignore_errors=True)
        if name in ("mnist100", "mnist-cluttered") and mnist_source is None:
            raise SystemExit("mnist100 needs the MNIST IDX files (MNIST_DIR)")
        builders[name]()
        (out / ".complete").write_text("")
    return out / "labels.csv" if name == "shapes" else out


def keras_lenet5(run: Path, seed: int) -> dict[str, Any]:
    """The plain Keras LeNet-5 tutorial recipe on the run's prepared arrays; its test accuracy."""
    import keras

    from benchmarks.baselines import keras_lenet5

    a = {k: np.load(run / f"{k}.npy") for k in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")}
    keras.utils.set_random_seed(seed)
    model = keras_lenet5(a["X_train"].shape[1:], len(json.loads((run / "labels.json").read_text())))
    val = (a["X_val"], a["y_val"]) if len(a["y_val"]) else None
    t0 = time.perf_counter()
    model.fit(a["X_train"], a["y_train"], batch_size=128, epochs=KERAS_EPOCHS, validation_data=val, verbose=0)
    seconds = time.perf_counter() - t0
    acc = float((model.predict(a["X_test"], batch_size=1024, verbose=0).argmax(1) == a["y_test"]).mean())
    return {"accuracy": acc, "train_seconds": seconds}


def one(name: str, data: Path, work: Path, seed: int, params: Path) -> dict[str, Any]:
    """prepare -> train -> evaluate with the defaults, then the Keras recipe on the same split (in this process)."""
    from dataclasses import replace

    from pipeline.shared import params as params_mod
    from pipeline.stages.evaluate import evaluate
    from pipeline.stages.prepare import prepare
    from pipeline.stages.train import train

    run = work / f"seed{seed}" / name  # the folder's name picks [overrides.<name>] as `make` would
    shutil.rmtree(run, ignore_errors=True)
    load = lambda section: params_mod.load(params, section, name)  # noqa: E731
    prepare(data, run, replace(load("prepare"), seed=seed), load("preprocess"), "auto", load("ingest"))
    t0 = time.perf_counter()
    train(run, replace(load("train"), seed=seed), verbose=0, aug=load("augment"))
    seconds = time.perf_counter() - t0
    metrics = evaluate(run, load("evaluate"))
    info = json.loads((run / "model" / "bundle.json").read_text())
    choices = info.get("preprocess_choices", {})
    return {"dataset": name, "seed": seed, "accuracy": metrics["accuracy"], "test_images": metrics["n"],
            "train_seconds": seconds, "epochs": info["plan"]["epochs"], "epochs_run": info["epochs_run"],
            "epochs_planned": info.get("epochs_planned", info["plan"]["epochs"]), "extended": info.get("extended", []),
            "not_extended": _not_extended(run, replace(load("train"), seed=seed), load) if info.get("extended") else None,
            "hflip": info["plan"]["hflip"], "color": choices.get("color", {}).get("value"),
            "size": choices.get("size", {}).get("value"), "invert": choices.get("invert", {}).get("value"),
            "keras": keras_lenet5(run, seed)}


def _not_extended(run: Path, p: Any, load: Any) -> dict[str, Any]:
    """The same split trained as planned, without going on while validation improves ([train] extend = 1):
    what the extension gained."""
    from dataclasses import replace

    from pipeline.stages.evaluate import evaluate
    from pipeline.stages.train import train

    plain = run.with_name(f"{run.name}-not-extended")
    shutil.rmtree(plain, ignore_errors=True)
    plain.mkdir(parents=True)
    for f in [*run.glob("*.npy"), run / "prepare.json", run / "labels.json", run / "dataset.json", run / "manifest.csv"]:
        shutil.copy(f, plain / f.name)
    (plain / "test_probs.npy").unlink(missing_ok=True)
    t0 = time.perf_counter()
    train(plain, replace(p, extend=1.0), verbose=0, aug=load("augment"))
    seconds = time.perf_counter() - t0
    return {"accuracy": evaluate(plain, load("evaluate"))["accuracy"], "train_seconds": seconds}


def _child(name: str, data: Path, work: Path, seed: int, params: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.accuracy", "--one", name, "--data", str(data), "--work", str(work),
           "--seed", str(seed), "--params", str(params)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TQDM_DISABLE": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"accuracy run {name} seed {seed} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])



def _extension(rs: list[dict[str, Any]]) -> str:
    """How often the run went on while validation improved, and what that gained (mean ± sd, points)."""
    went_on = [r for r in rs if r.get("not_extended")]
    if not went_on:
        return "-"
    gain = [100 * (r["accuracy"] - r["not_extended"]["accuracy"]) for r in went_on]
    sd = float(np.std(gain, ddof=1)) if len(gain) > 1 else 0.0
    return f"{len(went_on)}/{len(rs)}: {np.mean(gain):+.2f} ± {sd:.2f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per dataset: ours and the Keras recipe, mean ± sd (%) over the seeds, the extension (seeds
    where the run went on while validation improved: accuracy gained over stopping as planned), and the
    choices made."""
    lines = [f"{'dataset':<16} {'seeds':>5} {'ours %':>14} {'Keras LeNet-5 %':>16} {'ours s':>7} "
             f"{'Keras s':>7} {'epochs':>7} {'went on: gain':>15}  choices"]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == name]
        first = rs[0]
        choice = (f"{first['color']} {first['size'][0]}x{first['size'][1]} invert={first['invert']} "
                  f"hflip={'on' if first['hflip'] else 'off'}")
        tag = " (held out)" if DATASETS.get(name, ("", False))[1] else ""
        lines.append(f"{name + tag:<16} {len(rs):>5} {mean_sd([r['accuracy'] for r in rs]):>14} "
                     f"{mean_sd([r['keras']['accuracy'] for r in rs]):>16} "
                     f"{np.mean([r['train_seconds'] for r in rs]):>7.0f} "
                     f"{np.mean([r['keras']['train_seconds'] for r in rs]):>7.0f} {first['epochs']:>7} "
                     f"{_extension(rs):>15}  {choice}")
    return "\n".join(lines)


def run_table(names: list[str], seeds: list[int], work: Path, params: Path, mnist_source: Path | None,
              mnist_folder: Path) -> list[dict[str, Any]]:
    """Build each dataset and run every seed (each in its own process)."""
    rows = []
    for name in names:
        data = build(name, work / "data", mnist_source, mnist_folder)
        for seed in seeds:
            print(f"accuracy: {name} seed {seed} ...", file=sys.stderr, flush=True)
            rows.append(_child(name, data, work / "runs", seed, params))
            r = rows[-1]
            print(f"  ours {r['accuracy']:.4f} ({r['train_seconds']:.0f} s), Keras {r['keras']['accuracy']:.4f}",
                  file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated, of: " + ",".join(DATASETS))
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--work", default="bench-results/accuracy", help="datasets and runs (default: %(default)s)")
    parser.add_argument("--params", default="params.toml", help="params file (default: %(default)s)")
    parser.add_argument("--mnist", default="datasets/mnist", help="the exported MNIST folders")
    parser.add_argument("--out", default="bench-results", help="where accuracy.json goes")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, Path(args.data), Path(args.work), args.seed, Path(args.params))))
        return 0
    from pipeline.data import mnist

    names = [n for n in args.datasets.split(",") if n]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}")
    source = mnist.find_source(None, default=mnist.DEFAULT_RAW)
    rows = run_table(names, [int(s) for s in args.seeds.split(",")], Path(args.work), Path(args.params), source,
                     Path(args.mnist))
    publish(args.out, "accuracy", rows, format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
