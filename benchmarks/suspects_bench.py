"""Suspects benchmark: planted label flips in a 10,000-image MNIST subset (2%, 5%, 10%): precision
and recall of suspects.csv at its own cut, and run time; then the full 60k MNIST training set.

    python -m benchmarks.suspects_bench [--noise 0.02,0.05,0.1] [--full]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import publish


def planted(noise: float, work: Path, params: Path) -> dict[str, Any]:
    """Build the noisy subset, prepare it, find the suspects; score them against the planted flips."""
    from benchmarks import devsets
    from pipeline.data import mnist
    from pipeline.shared import params as params_mod
    from pipeline.stages.prepare import prepare
    from pipeline.stages.suspects import suspects

    source = mnist.find_source(None, default=mnist.DEFAULT_RAW)
    data, run = work / f"noisy{int(noise * 100)}", work / f"run{int(noise * 100)}"
    flips = devsets.build_noisy_mnist(source, data, noise=noise) if not (data / ".flips.json").is_file() else None
    if flips is not None:
        (data / ".flips.json").write_text(json.dumps(flips))
    flips = json.loads((data / ".flips.json").read_text())
    load = lambda section: params_mod.load(params, section, run.name)  # noqa: E731
    prepare(data, run, load("prepare"), load("preprocess"), "auto", load("ingest"))
    t0 = time.perf_counter()
    record = suspects(run, load("suspects"), load("train"), load("augment"))
    seconds = time.perf_counter() - t0
    checked = {"/".join(r["path"].split("/")[-2:]) for r in csv.DictReader(open(run / "manifest.csv"))
               if r["split"] in ("train", "val")}
    truth = {path: true for path, true, _ in flips if path in checked}
    rows = list(csv.DictReader(open(run / "suspects.csv")))
    found = {"/".join(r["path"].split("/")[-2:]): r["suggested"] for r in rows}
    hits = [p for p in found if p in truth]
    return {"noise": noise, "images_checked": len(checked), "planted": len(truth), "flagged": len(found),
            "precision": len(hits) / max(len(found), 1), "recall": len(hits) / max(len(truth), 1),
            "suggested_right": sum(found[p] == truth[p] for p in hits) / max(len(hits), 1),
            "seconds": round(seconds, 1), "out_of_fold_accuracy": record["out_of_fold_accuracy"]}


def full_mnist(run: Path, params: Path) -> dict[str, Any]:
    """Suspects of the 60k MNIST training images (the reference run's train + val splits)."""
    from pipeline.shared import params as params_mod
    from pipeline.stages.suspects import suspects

    load = lambda section: params_mod.load(params, section, run.name)  # noqa: E731
    t0 = time.perf_counter()
    record = suspects(run, load("suspects"), load("train"), load("augment"))
    return {"images": record["images"], "flagged": record["flagged"], "seconds": round(time.perf_counter() - t0, 1),
            "out_of_fold_accuracy": record["out_of_fold_accuracy"], "top": record["top"][:20]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suspects_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--noise", default="0.02,0.05,0.1")
    parser.add_argument("--full", action="store_true", help="also the full MNIST training set (runs/mnist)")
    parser.add_argument("--run", default="runs/mnist", help="the reference run, for --full")
    parser.add_argument("--params", default="params.toml")
    parser.add_argument("--work", default="bench-results/suspects")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    rows = [planted(float(n), Path(args.work), Path(args.params)) for n in args.noise.split(",") if n]
    lines = [f"{'planted flips':>13} {'checked':>8} {'planted':>8} {'flagged':>8} {'precision':>9} {'recall':>7} "
             f"{'suggestion right':>16} {'seconds':>8}"]
    for r in rows:
        lines.append(f"{r['noise']:>12.0%} {r['images_checked']:>8} {r['planted']:>8} {r['flagged']:>8} "
                     f"{r['precision']:>9.3f} {r['recall']:>7.3f} {r['suggested_right']:>16.3f} {r['seconds']:>8.0f}")
    result: dict[str, Any] = {"planted": rows}
    if args.full:
        result["full"] = full_mnist(Path(args.run), Path(args.params))
        f = result["full"]
        lines.append(f"full MNIST training set: {f['flagged']} of {f['images']} flagged in {f['seconds']:.0f} s "
                     f"(out-of-fold accuracy {f['out_of_fold_accuracy']:.4f})")
    table = "\n".join(lines)
    publish(args.out, "suspects", result, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
