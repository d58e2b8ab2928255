"""The rows of ``predictions.csv`` / ``.jsonl``: columns, one row per file, appending blocks of
rows durably, reading them back to resume, and the counts of a run.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared import artifacts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rules:
    """How a row is labelled: top-k, the confidence cut and its label, what unfamiliar images get."""

    k: int
    threshold: float = 0.0
    unknown: str = "unknown"
    unfamiliar: str = "flag"  # flag: keep the best label | unknown: the unknown label


def columns(k: int) -> list[str]:
    """Output columns for top-``k``."""
    top = [name for i in range(1, k + 1) for name in (f"top{i}_label", f"top{i}_prob")]
    return ["path", "label", "confidence", *top, "novelty", "familiar", "error"]


def make_rows(paths: list[str], reasons: list[str], probs: np.ndarray, labels: list[str], rules: Rules,
              novelty: np.ndarray | None = None, familiar: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One row per path; ``probs`` (and ``novelty``/``familiar``, None when the model has no novelty
    score) have one row per path without a reason, in order."""
    k = rules.k
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k] if len(probs) else np.zeros((0, k), int)
    rows, j = [], 0
    for path, reason in zip(paths, reasons):
        row: dict[str, Any] = {"path": path}
        if reason:
            row.update({"label": "", "confidence": None})
            row.update({f"top{i}_{x}": None for i in range(1, k + 1) for x in ("label", "prob")})
            row.update({"novelty": None, "familiar": None, "error": reason})
        else:
            p, order = probs[j], top[j]
            conf = float(p[order[0]])
            known = familiar is None or bool(familiar[j])
            sure = conf >= rules.threshold and (known or rules.unfamiliar == "flag")
            row.update({"label": labels[order[0]] if sure else rules.unknown, "confidence": conf})
            for i, c in enumerate(order, 1):
                row.update({f"top{i}_label": labels[c], f"top{i}_prob": float(p[c])})
            row.update({"novelty": None if novelty is None else float(novelty[j]),
                        "familiar": None if familiar is None else ("true" if known else "false"), "error": ""})
            j += 1
        rows.append(row)
    return rows


def _encode(rows: list[dict[str, Any]], cols: list[str], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps({c: (round(r[c], 6) if isinstance(r[c], float) else r[c]) for c in cols},
                                  ensure_ascii=False) + "\n" for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow([f"{r[c]:.6f}" if isinstance(r[c], float) else ("" if r[c] is None else r[c]) for c in cols])
    return buf.getvalue()


def _header(cols: list[str], fmt: str) -> str:
    return "" if fmt == "jsonl" else ",".join(cols) + "\n"


def read_rows(path: Path, cols: list[str], fmt: str) -> tuple[list[dict[str, Any]], bool]:
    """The rows of an output file we wrote, and whether its last row was cut short (then left out).

    Every row ends with a newline, so a file not ending in one was cut by a kill
    in the middle of a write; so was a last row with too few fields.
    """
    text = path.read_text(encoding="utf-8")
    cut = not text.endswith("\n")
    if fmt == "jsonl":
        lines = text.split("\n")[:-1]  # the last piece is "" or the cut line
        rows = []
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise artifacts.StageError(f"cannot resume {path}: line {n} is not JSON ({exc})") from None
            if not isinstance(row, dict) or list(row) != cols:
                raise artifacts.StageError(f"cannot resume {path}: line {n} does not have the fields "
                                           f"{','.join(cols)} (another top-k?); run without --resume")
            rows.append(row)  # values as written, so a rewrite reproduces them exactly
        return rows, cut
    records = list(csv.reader(io.StringIO(text)))
    if not records or records[0] != cols:
        raise artifacts.StageError(f"cannot resume {path}: its columns are not {','.join(cols)} "
                                   "(another top-k, or not written by this tool); run without --resume")
    body = records[1:]
    if body and (cut or len(body[-1]) != len(cols)):
        body, cut = body[:-1], True
    bad = next((n for n, r in enumerate(body, 2) if len(r) != len(cols)), None)
    if bad:
        raise artifacts.StageError(f"cannot resume {path}: row {bad} has the wrong number of fields")
    return [dict(zip(cols, r)) for r in body], cut


class RowFile:
    """The output file: the header is written atomically, then blocks of rows are appended, each fsynced."""

    def __init__(self, path: Path, cols: list[str], fmt: str) -> None:
        self.path, self.cols, self.fmt = path, cols, fmt
        self._fh: Any = None

    def start(self, resume: bool) -> list[dict[str, Any]]:
        """Open for appending; return the rows already there (resume) or start an empty file."""
        rows: list[dict[str, Any]] = []
        if resume and self.path.is_file():
            rows, cut = read_rows(self.path, self.cols, self.fmt)
            if cut:  # the last row was cut by a kill: rewrite the file without it
                log.info("predict: dropping an incomplete last row of %s", self.path)
                artifacts.write_text(self.path, _header(self.cols, self.fmt) + _encode(rows, self.cols, self.fmt))
        else:
            artifacts.write_text(self.path, _header(self.cols, self.fmt))
        self._fh = open(self.path, "a", encoding="utf-8", newline="")
        return rows

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append a block of rows and push it to disk (one write: rows stay whole)."""
        self._fh.write(_encode(rows, self.cols, self.fmt))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def summary_path(out: Path) -> Path:
    """Where the run summary of an output file goes: ``<stem>.summary.json`` beside it."""
    return out.with_name(f"{out.stem}.summary.json")


@dataclass
class Tally:
    """Counts per predicted label and errors by reason (the text before the first colon)."""

    counts: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    unfamiliar: int = 0
    judged: int = 0  # rows with a novelty score

    def add(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            if r["error"]:
                self.errors[str(r["error"]).split(":")[0]] += 1
                continue
            self.counts[r["label"]] += 1
            if r.get("familiar") not in (None, ""):
                self.judged += 1
                self.unfamiliar += str(r["familiar"]).lower() == "false"

    def as_dict(self) -> dict[str, Any]:
        predicted, errors = sum(self.counts.values()), sum(self.errors.values())
        return {"rows": predicted + errors, "predicted": predicted, "errors": errors,
                "counts": dict(sorted(self.counts.items())), "errors_by_reason": dict(self.errors.most_common()),
                "unfamiliar": self.unfamiliar if self.judged else None,
                "unfamiliar_share": round(self.unfamiliar / self.judged, 4) if self.judged else None}


def format_summary(s: dict[str, Any], out: Path | None) -> str:
    """Counts per predicted label and errors by reason, for the console."""
    lines = [f"{s['rows']} files: {s['predicted']} predicted, {s['errors']} unreadable"
             + (f" -> {out}" if out else "")]
    if s.get("new_rows"):
        lines.append(f"this run: {s['new_rows']} files in {s['seconds']:.2f} s ({s['images_per_s']:.0f} img/s)")
    width = max([5, *(len(k) for k in s["counts"])])
    lines += [f"  {label:<{width}} {n:>8}" for label, n in s["counts"].items()]
    lines += [f"  error: {reason}: {n}" for reason, n in s["errors_by_reason"].items()]
    if s.get("unfamiliar") is not None:
        lines.append(f"unfamiliar: {s['unfamiliar']} of {s['predicted']} ({s['unfamiliar_share']:.1%}; "
                     f"about {s.get('expected_unfamiliar', 0.02):.0%} of images like the training data are)")
    if s.get("drift"):
        lines.append(f"WARNING: {s['drift']}")
    if "sorted" in s:
        lines.append(f"sorted into {s['sort_into']}: {s['sorted']} new, {s['sort_existing']} already there")
    return "\n".join(lines)


def format_one(row: dict[str, Any], k: int) -> str:
    if row["error"]:
        return f"{row['path']}: error: {row['error']}"
    top = ", ".join(f"{row[f'top{i}_label']} {row[f'top{i}_prob']:.4f}" for i in range(1, k + 1))
    familiar = "" if row.get("familiar") is None else (
        f"  novelty {row['novelty']:.3f} ({'familiar' if row['familiar'] == 'true' else 'UNFAMILIAR'})")
    return f"{row['path']}: {row['label']} ({row['confidence']:.4f})  top-{k}: {top}{familiar}"


def drift_warning(unfamiliar_share: float | None, expected: float, n: int) -> str:
    """A warning when a whole set of images looks unlike the training data (dataset drift)."""
    if unfamiliar_share is None or n < 20 or unfamiliar_share < max(0.25, 5 * expected):
        return ""
    return (f"{unfamiliar_share:.0%} of these images look unlike the training data (about {expected:.0%} of "
            "familiar images are flagged): are they the same kind of images the model was trained on?")
