"""Class weights on long-tailed data: does ``[train] class_weights`` earn its default?

A long-tailed MNIST: 500, 300, 200, 120, 80, 50, 30, 20, 10 and 5 training digits for the classes 0..9
(100x from the largest to the smallest), and a balanced test set of 300 digits per class, so that the
test accuracy is the mean recall over the classes. Each seed draws its own digits and is the split and
training seed; each policy runs ``prepare``, ``train`` and ``evaluate`` with the project's params.toml,
only ``class_weights`` changed. ``auto`` resolves to ``balanced`` here (100x is over the 10x threshold).

    python -m benchmarks.imbalance_bench --seeds 1,2,3 --policies balanced,none
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import mean_sd, publish

COUNTS = (500, 300, 200, 120, 80, 50, 30, 20, 10, 5)
TEST_PER_CLASS = 300


def build(mnist: Path, out: Path, seed: int) -> Path:
    """The long-tailed training folders and the balanced test folders, drawn with ``seed`` (built once)."""
    if (out / ".complete").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    rng = random.Random(seed)
    for digit, n in enumerate(COUNTS):
        for split, count in (("train", n), ("test", TEST_PER_CLASS)):
            files = sorted((mnist / split / str(digit)).glob("*.png"))
            rng.shuffle(files)
            (out / split / str(digit)).mkdir(parents=True)
            for f in files[:count]:
                shutil.copyfile(f, out / split / str(digit) / f.name)
    (out / ".complete").touch()
    return out


def run_one(data: Path, run: Path, params: Path, policy: str, seed: int) -> dict[str, Any]:
    """prepare, train and evaluate with ``class_weights = policy``; the test accuracy and per-class recall."""
    text = params.read_text()
    text = re.sub(r'(?m)^class_weights = "\w+"', f'class_weights = "{policy}"', text)
    text = re.sub(r"(?m)^seed = \d+", f"seed = {seed}", text)
    pfile = run.parent / f"params-{run.name}.toml"
    pfile.write_text(text)
    shutil.rmtree(run, ignore_errors=True)
    for stage in ("prepare", "train", "evaluate"):
        args = [sys.executable, "-m", "pipeline", stage, "--run", str(run), "--params", str(pfile)]
        res = subprocess.run(args + (["--data", str(data)] if stage == "prepare" else []), capture_output=True,
                             text=True, cwd=run.parent)
        if res.returncode:
            raise SystemExit(f"{stage} failed ({policy}, seed {seed}):\n{res.stderr[-2000:]}")
    m = json.loads((run / "metrics.json").read_text())
    return {"policy": policy, "seed": seed, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "recall": {k: v["recall"] for k, v in m["per_class"].items()}}


def table(rows: list[dict[str, Any]], policies: list[str]) -> str:
    lines = [f"{'class_weights':14} {'seeds':>5} {'test acc. %':>14} {'macro F1 %':>14} "
             f"{'recall 5-img class %':>21} {'recall 10-img class %':>22}"]
    for pol in policies:
        mine = [r for r in rows if r["policy"] == pol]
        lines.append(f"{pol:14} {len(mine):>5} {mean_sd([r['accuracy'] for r in mine]):>14} "
                     f"{mean_sd([r['macro_f1'] for r in mine]):>14} {mean_sd([r['recall']['9'] for r in mine]):>21} "
                     f"{mean_sd([r['recall']['8'] for r in mine]):>22}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--policies", default="balanced,none")
    parser.add_argument("--mnist", default="datasets/mnist", help="the exported MNIST folders")
    parser.add_argument("--params", default="params.toml")
    parser.add_argument("--work", default="bench-results/imbalance")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    policies = args.policies.split(",")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        data = build(Path(args.mnist).resolve(), work / f"longtail-{seed}", seed)
        for pol in policies:
            rows.append(run_one(data, work / f"run-{pol}-{seed}", Path(args.params).resolve(), pol, seed))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    publish(args.out, "imbalance", rows, table(rows, policies))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
