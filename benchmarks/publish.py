"""Write ``docs/benchmarks.md`` from the benchmarks' results (the last step of ``make bench``).

Every part of ``make bench`` prints a table and keeps it as ``bench-results/<name>.txt`` (and
``.json``). This script puts each table into its section of ``docs/benchmarks.md`` (between
``<!-- bench:<name> -->`` and ``<!-- /bench:<name> -->``), with the date, the CPU and the command
that made it. A part that did not run this time (``BENCH=`` picks parts) keeps its last published
table, and what the file says between the sections stays. Only this script writes the tables: the docs link to
the file, they do not repeat it.

    python -m benchmarks.publish [--results bench-results] [--doc docs/benchmarks.md]
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from pathlib import Path

from pipeline.model import recipe

AUDIT_COMMAND = ("python -m benchmarks.bench --steps prepare,prepare_numpy,prepare_unaudited,keras_read,copies,audit_cost "
                 "--repeat 5 --serve-clients '' --no-install-size --out bench-results/audit")  # both machines' tables
# name -> (title, what it measures, the command that makes it)
PARTS = {
    "accuracy": ("Accuracy: the default recipe against plain Keras, 3 seeds",
                 "Every (dataset, seed) runs prepare, train and evaluate with the project's params.toml in a fresh "
                 "process (the seed is the split and the training seed), then the plain Keras LeNet-5 tutorial recipe "
                 "on the very same split. Test accuracy, mean ± sd over the seeds; `symbols` is held out (never tuned "
                 "on).", "python -m benchmarks.accuracy --seeds 1,2,3"),
    "bench": ("Stages: throughput, wall time, peak memory",
              "Each stage on the MNIST reference data next to the plain Keras way of doing the same, in the same run, "
              "each measurement in a fresh child process (its peak RSS is its own).",
              "python -m benchmarks.bench --data datasets/mnist"),
    "runtime": ("The light runtime (ONNX Runtime) against TensorFlow, one run",
                "The runtime steps of the stages benchmark alone (they are also in its full run): a cold `pipeline "
                "predict` of one PNG, the 10,000 MNIST test PNGs from the shell, start-up included, `pipeline serve` "
                "with 1 and 8 concurrent clients (the clients run on the same cores; each configuration 3 times, "
                "interleaved: the tables show the first run, the `ratio:` lines the mean +- sd of all three), and "
                "the install size of the runtime-only venv.",
                "python -m benchmarks.bench --steps cold_onnx,cold_tf,folder_onnx,folder_tf --out bench-results/runtime"),
    "audit": ("Prepare and its audit against one Keras pass",
              "A fresh prepare of the 70,000 MNIST PNGs (decode, audit, split, write) and one "
              "`image_dataset_from_directory` pass over the same folders, the fastest of 5 interleaved runs of each "
              "(and the ratio of each round's pair, run back to back); "
              "the copies planted into 6,000 digits that prepare finds, and what it warns about on the clean 70k; "
              "the CPU cost of each of the audit's checks, prepare with the audit's per-image work blanked "
              "(its share of the wall time), and prepare without the compiled kernels (what a machine without a C "
              "compiler runs).",
              AUDIT_COMMAND),
    "audit_avx2": ("Prepare and its audit against one Keras pass, on a CPU with AVX2 only",
                   "The same measurement as the section above, on another machine of the same size whose CPU has "
                   "AVX2 but not AVX-512 (TensorFlow's kernels and bfloat16 differ most there).",
                   AUDIT_COMMAND),
    "multilabel_suspects": ("Suspects on multi-label data: planted wrong tags",
                            "3% of N training mosaics (2x2 MNIST digits, labelled with the digits present) get "
                            "one tag wrong, a digit added or removed; `make suspects` with the defaults; precision and "
                            "recall of the flagged (image, label) decisions, and the precision of the first ranked "
                            "ones (the review queue's order).",
                            "python -m benchmarks.multilabel_bench --suspects [--planted-images N] [--params FILE]"),
    "firsthour": ("A user's first hour: a messy folder of letters",
                  "A folder as a new user has one (letters in 37 fonts, PNG and JPEG of 28-140 px, transparent PNGs, a "
                  "broken JPEG, a README.txt, three wrong labels), run as the README says: prepare, train, evaluate, "
                  "suspects. The held-out variant (other letters and fonts) was never tuned on.",
                  "python -m benchmarks.firsthour --seeds 1,2,3"),
    "review": ("Review: find, show, fix, retrain",
               "5% of the labels of a 10,000-image MNIST subset flipped at random; a reviewer accepts every suggestion "
               "of the suspects queue through the review API; prepare, train and evaluate again. The confirmed label "
               "errors of the MNIST test set in the reference run's queue; the first screen of a 50,000-card queue.",
               "python -m benchmarks.review_bench --reference runs/mnist"),
    "trust": ("Trust: unfamiliar inputs, calibration, saliency",
              "The reference model's novelty flag on kinds of images it never saw, against max-softmax, energy and "
              "Mahalanobis scores at the same 2%-of-validation cut; calibration error; the deletion test of the "
              "saliency maps.", "python -m benchmarks.trust --model runs/mnist/model"),
    "suspects": ("Suspects: planted label errors",
                 "Label errors planted at random into MNIST subsets; precision and recall of `make suspects`.",
                 "python -m benchmarks.suspects_bench --full --run runs/mnist"),
    "multilabel": ("Several labels per image: the default recipe against plain Keras, 3 seeds",
                   "2x2 mosaics of MNIST digits labelled with the set of digits present (24k train, 6k test, 56x56) "
                   "and a held-out variant never tuned on (empty cells, turned digits, noise, 0/1 label columns): "
                   "prepare, train and evaluate with the defaults, then a plain Keras sigmoid LeNet-5 on the very same "
                   "split (thresholds 0.5). mAP and macro F1 on the test split, mean ± sd over the seeds.",
                   "python -m benchmarks.multilabel_bench --seeds 1,2,3"),
    "cluster": ("The Ray engine against the local one, one machine",
                "prepare of a synthetic folder with [cluster] engine = local and ray (a one-node Ray cluster on "
                "loopback), each in its own process; Ray's fixed cost; suspects' 5 folds one after another and as "
                "Ray tasks; a projection of 10M images from the measured per-image cost.",
                "python -m benchmarks.cluster_bench --images N (the count is in the table)"),
    "cluster_memory": ("Memory as the data grows: the local engine and Ray",
                       "prepare of a synthetic folder at each size with [cluster] engine = local and ray (a fresh "
                       "one-node Ray cluster on loopback per size), each in its own process: the peak RSS of the "
                       "stage's process (the driver) and the largest of its workers' (the pool's processes, or the "
                       "node's Ray worker processes).",
                       "python -m benchmarks.cluster_bench --memory 20000,200000"),
    "imbalance": ("Class weights on long-tailed data",
                  "A long-tailed MNIST (500, 300, 200, 120, 80, 50, 30, 20, 10 and 5 training digits for the classes "
                  "0..9; 300 test digits a class, so the test accuracy is the mean recall), prepare, train and evaluate "
                  "with the project's params.toml, only `[train] class_weights` changed (`auto` is `balanced` here); "
                  "mean ± sd over the seeds, each its own draw, split and training seed.",
                  "python -m benchmarks.imbalance_bench --seeds 1,2,3"),
    "export": ("Export: every format against the bundle",
               "Each export format read back in its own runtime: size, top-1 agreement with the bundle and accuracy on "
               "the test split, single-image latency.", "python -m benchmarks.export_bench --model runs/mnist/model"),
}
MAKE_NAMES = {"bench": "stages", "runtime": "stages", "audit": "stages", "audit_avx2": "stages", "multilabel_suspects": "multilabel",
              "cluster_memory": "cluster"}  # a part's name in `make bench BENCH=` where it differs from its file's


HEADER = ("# Benchmarks\n\nThis file is written by `make bench` (`python -m benchmarks.publish`); do not edit it by "
          "hand. Each table says when and on which machine it was measured; compare figures within one table.\n")


def vector_units(flags: list[str]) -> str:
    """The widest vector arithmetic of a CPU with these flags, in words (the figures of one machine and
    another differ most by it: TensorFlow's kernels, bfloat16 training)."""
    if any(flag in flags for flag in recipe.BF16_FLAGS):
        return "AVX-512 with bfloat16"
    return next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), "")


def _cpu(cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo, encoding="utf-8") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        model = ""
    units = vector_units(recipe.cpu_flags(cpuinfo))
    return f"{model or 'unknown CPU'}, {os.cpu_count()} cores" + (f", {units}" if units else "")


def section(name: str, table: str, when: str) -> str:
    """A part's section: its title, what it measures, the table, when and how it was made."""
    title, what, command = PARTS[name]
    return (f"<!-- bench:{name} -->\n## {title}\n\n{what}\n\n```\n{table.rstrip()}\n```\n\n"
            f"Measured {when} on {_cpu()} with `{command}` (`make bench BENCH={MAKE_NAMES.get(name, name)}`).\n"
            f"<!-- /bench:{name} -->\n")


def publish(results: Path, doc: Path) -> list[str]:
    """Replace each part's section of ``doc`` with its newest table (dated by when its result was written),
    in place: what the file says between the sections (notes written by hand) stays. A part the file does
    not have yet is added at the end. Returns the parts found in ``results``."""
    text = doc.read_text(encoding="utf-8") if doc.is_file() else HEADER + "\n"
    updated = []
    for name in PARTS:
        txt = results / f"{name}.txt"
        if not txt.is_file():
            continue
        when = datetime.date.fromtimestamp(txt.stat().st_mtime).isoformat()
        new = section(name, txt.read_text(encoding="utf-8"), when)
        old = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->\n?", re.S)
        text = old.sub(lambda _: new, text, count=1) if old.search(text) else text.rstrip("\n") + "\n\n" + new
        updated.append(name)
    tmp = doc.with_name(f".{doc.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(doc)
    return updated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.publish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="bench-results", help="where the parts left their tables")
    parser.add_argument("--doc", default="docs/benchmarks.md", help="the file to write")
    args = parser.parse_args(argv)
    updated = publish(Path(args.results), Path(args.doc))
    print(f"{args.doc}: {', '.join(updated) or 'nothing new'} updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
