"""Trust benchmarks on the reference model (runs/mnist/model, from `make all`):

- unfamiliar inputs: the share flagged of each other kind (letters from the installed fonts,
  crops of photos, noise, Fashion-like clothing silhouettes, digits inverted at the model's
  input, and symbols from the fonts: a kind never tuned on) against the share of the MNIST test digits flagged, for our novelty score and for
  the usual baselines at the same 2%-of-validation cut (max-softmax, energy, Mahalanobis on
  the features); the raw files go through the bundle's own preprocessing;
- calibration: ECE on the test split before and after temperature scaling;
- saliency faithfulness: the deletion test of occlusion and Grad-CAM maps on test digits.

    python -m benchmarks.trust [--model runs/mnist/model] [--out bench-results]
"""
from __future__ import annotations

import argparse
import glob
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import publish


def _baselines(b: Any, out: Any, val_out: Any, f_train: np.ndarray, y_train: np.ndarray) -> dict[str, np.ndarray]:
    """Max-softmax, energy and feature Mahalanobis scores of ``out`` (higher = less familiar)."""
    del val_out
    means = np.stack([f_train[y_train == c].mean(0) for c in range(len(b.labels))])
    cen = f_train - means[y_train]
    precision = np.linalg.inv(cen.T @ cen / len(cen) + 1e-6 * np.eye(cen.shape[1]))
    d = out.features[:, None, :] - means[None]
    z = out.logits - out.logits.max(axis=1, keepdims=True)
    return {"max-softmax": 1 - out.probs.max(axis=1),
            "energy": -(np.log(np.exp(z).sum(axis=1)) + out.logits.max(axis=1)),
            "Mahalanobis (features)": np.einsum("nkd,de,nke->nk", d, precision, d).min(axis=1)}


def ood_table(model_dir: Path, ood_root: Path) -> dict[str, Any]:
    """Share flagged per kind, ours and the baselines, each at its 2%-of-validation cut."""
    from pipeline.data.preprocess import load_image
    from pipeline.model.infer import Predictor
    from pipeline.shared import bundle

    run = model_dir.parent
    b = bundle.load(model_dir)
    predictor = Predictor(b, 1024)
    x = {s: np.load(run / f"X_{s}.npy", mmap_mode="r") for s in ("train", "val", "test")}
    y_train = np.load(run / "y_train.npy")
    pick = np.sort(np.random.default_rng(0).choice(len(y_train), min(20000, len(y_train)), replace=False))
    f_train = predictor(np.asarray(x["train"][pick])).features
    sets = {"MNIST test digits": np.asarray(x["test"]), "digits inverted (model input)": 1.0 - np.asarray(x["test"][:2000])}
    for kind in sorted(p.name for p in ood_root.iterdir() if p.is_dir()):
        sets[kind] = np.stack([load_image(f, b.preprocess) for f in sorted(glob.glob(str(ood_root / kind / "*.png")))])
    val_out = predictor(np.asarray(x["val"]))
    val = {"ours": val_out.novelty, **_baselines(b, val_out, val_out, f_train, y_train[pick])}
    cuts = {k: float(np.quantile(v, 0.98)) for k, v in val.items() if k != "ours"}
    rows = {}
    for name, xs in sets.items():
        out = predictor(xs)
        scores = _baselines(b, out, val_out, f_train, y_train[pick])
        rows[name] = {"images": int(len(xs)), "ours": float((~out.familiar).mean()),
                      **{k: float((s > cuts[k]).mean()) for k, s in scores.items()}}
    return {"val_flagged_ours": float((~val_out.familiar).mean()), "rows": rows}


def ece_figures(model_dir: Path) -> dict[str, Any]:
    metrics = json.loads((model_dir.parent / "metrics.json").read_text())
    return metrics.get("calibration", {})


def deletion(model_dir: Path, n: int = 200) -> dict[str, float]:
    """Mean deletion-curve probability (lower: more faithful) of each saliency method on test digits."""
    from pipeline.model.infer import Predictor
    from pipeline.shared import bundle
    from pipeline.model.explain import METHODS, deletion_auc, saliency

    b = bundle.load(model_dir)
    predictor = Predictor(b, 256)
    x = np.load(model_dir.parent / "X_test.npy", mmap_mode="r")
    rows = np.random.default_rng(0).choice(len(x), n, replace=False)
    out = {}
    for method in METHODS:
        t0, scores = time.perf_counter(), []
        for i in rows:
            xi = np.asarray(x[i])
            cls = int(predictor(xi[None]).probs[0].argmax())
            scores.append(deletion_auc(predictor, xi, cls, saliency(predictor, xi, cls, method)))
        out[method] = {"deletion_auc": float(np.mean(scores)), "ms_per_image": 1000 * (time.perf_counter() - t0) / n}
    return out


def _inverted_files(out: Path, n: int = 1000) -> None:
    """MNIST test digits saved dark on light: the bundle's preprocessing turns them back (a digit is a digit)."""
    from PIL import Image

    from pipeline.data import mnist

    source = mnist.find_source(None, default=mnist.DEFAULT_RAW)
    if source is None:
        return
    images, _ = mnist.load_split(source, "test")
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(255 - images[i]).save(out / f"{i:04d}.png")


def format_table(result: dict[str, Any]) -> str:
    rows = result["ood"]["rows"]
    methods = list(next(iter(rows.values())))[1:]
    lines = [f"{'images':<32} {'n':>6} " + " ".join(f"{m:>22}" for m in methods)]
    for name, r in rows.items():
        lines.append(f"{name:<32} {r['images']:>6} " + " ".join(f"{100 * r[m]:>21.1f}%" for m in methods))
    c = result["calibration"]
    if c:
        lines.append(f"ECE on the test split: {c['ece_before']:.4f} before, {c['ece']:.4f} after temperature "
                     f"scaling (T = {c['temperature']:.3f})")
    for method, d in result["deletion"].items():
        lines.append(f"deletion test, {method}: mean probability {d['deletion_auc']:.3f} while hiding the most "
                     f"salient pixels first ({d['ms_per_image']:.0f} ms per image)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trust", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/mnist/model")
    parser.add_argument("--work", default="bench-results/trust", help="where the other kinds of images are built")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    from benchmarks import devsets

    ood = Path(args.work) / "ood"
    if not (ood / ".complete").is_file():
        devsets.build_ood(ood)
        _inverted_files(ood / "digit files inverted (dark on light)")
        (ood / ".complete").write_text("")
        (ood / ".marks").write_text("")  # build_ood made them too
    if not (ood / ".marks").is_file():  # a kind added later: built into an older folder too
        shutil.rmtree(ood / devsets.MARKS_KIND, ignore_errors=True)
        devsets.build_marks(ood / devsets.MARKS_KIND)
        (ood / ".marks").write_text("")
    model = Path(args.model)
    if not (model / "bundle.json").is_file():
        raise SystemExit(f"the trust benchmark needs the reference model at {model} (run `make all`)")
    result = {"ood": ood_table(model, ood), "calibration": ece_figures(model), "deletion": deletion(model)}
    table = format_table(result)
    publish(args.out, "trust", result, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
