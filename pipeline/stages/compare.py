"""Compare: several evaluated runs side by side (one column per run).

    pipeline compare runs/lenet runs/mlp runs/cnn [--out runs/compare.csv]

Rows: model, parameters, test accuracy, macro F1, epochs run, best epoch,
training time, seconds per epoch, test images, then the F1 of every class.
The table is printed and written as CSV (or Markdown when ``--out`` ends in ``.md``).
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
from pathlib import Path
from typing import Any

from pipeline.shared import artifacts, bundle, cli
from pipeline.shared import runfolder as rf
from pipeline.shared.errors import UserError

log = logging.getLogger(__name__)


def summarize_run(run: Path) -> dict[str, Any]:
    """The figures of one evaluated run (metrics.json + the bundle marker + history.csv)."""
    metrics = artifacts.read_json(run / rf.METRICS, f"metrics of {run} (run `make evaluate` first)")
    info = artifacts.read_json(run / rf.BUNDLE / bundle.MARKER, f"model bundle marker of {run}")
    seconds = []
    if (run / rf.HISTORY).is_file():
        with open(run / rf.HISTORY, newline="", encoding="utf-8") as fh:
            seconds = [float(r["seconds"]) for r in csv.DictReader(fh)]
    per = metrics.get("per_class") or metrics.get("per_label") or {}
    f1 = {name: m["f1"] if m.get("support", 1) > 0 else None for name, m in per.items()}  # None: no test images
    return {"run": str(run), "model": info.get("model", "?"), "parameters": info.get("parameters"),
            # (multi-label: the subset accuracy, every label right)
            "accuracy": metrics.get("accuracy", metrics.get("subset_accuracy")),
            "macro_f1": rf.macro_f1(per),
            "epochs": info.get("epochs_run", len(seconds)), "best_epoch": info.get("best_epoch"),
            "train_seconds": info.get("fit_seconds", sum(seconds)),
            "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
            "test_images": metrics["n"], "f1": f1}


def _fmt(value: Any, spec: str = "", plain: bool = False) -> str:
    """A figure for people (thousands separated, "–" for none), or ``plain`` for a CSV file (as numbers)."""
    if value is None:
        return "" if plain else "–"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        spec = spec or (",d" if isinstance(value, int) else ".4f")
        return format(value, spec.replace(",", "") if plain else spec)
    return str(value)


ROWS = (("model", "model", ""), ("parameters", "parameters", ",d"), ("accuracy", "test accuracy", ".4f"),
        ("macro_f1", "macro F1", ".4f"), ("epochs", "epochs run", ",d"), ("best_epoch", "best epoch", ",d"),
        ("train_seconds", "training s", ".1f"), ("seconds_per_epoch", "s per epoch", ".2f"),
        ("test_images", "test images", ",d"))


def table(runs: list[dict[str, Any]], plain: bool = False) -> list[list[str]]:
    """Rows of the side-by-side table: a header row, then one row per figure (``plain``: for a CSV file)."""
    rows = [["", *(r["run"] for r in runs)]]
    for key, label, spec in ROWS:
        rows.append([label, *(_fmt(r[key], spec, plain) for r in runs)])
    labels = list(dict.fromkeys(name for r in runs for name in r["f1"]))
    for name in labels:
        rows.append([f"F1 {name}", *(_fmt(r["f1"].get(name), ".4f", plain) for r in runs)])
    return rows


def format_text(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def format_markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]]) + "\n"


def format_csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("runs", nargs="*", type=Path, help=f"evaluated run folders (default: every one under "
                        f"{rf.RUNS}/)")
    parser.add_argument("--out", type=Path, help="where the table goes (.csv or .md; default: compare.csv "
                        "in the folder holding the first run)")
    return parser


def main(args: argparse.Namespace) -> int:
    """CLI: print and write the table."""
    if not args.runs:  # every evaluated run (names with spaces too: no shell word-splitting on the way)
        args.runs = sorted(m.parent for m in rf.RUNS.glob(f"*/{rf.METRICS}"))
    if not args.runs:
        raise UserError(f"no evaluated run under {rf.RUNS}/ (run `make evaluate` first), and none given")
    runs = [summarize_run(run) for run in args.runs]
    rows = table(runs)
    out = args.out or args.runs[0].parent / "compare.csv"
    text = format_markdown(rows) if out.suffix.lower() == ".md" else format_csv(table(runs, plain=True))
    artifacts.write_text(out, text)
    cli.result(format_text(rows))
    log.info("compare: %d runs -> %s", len(args.runs), out)
    return 0
