"""``predictions.csv`` / ``.jsonl``: appending blocks of rows (:class:`pipeline.model.rows.Row`, as
their output cells) durably, reading them back to resume, and the counts and summary of a run.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.model.rows import MULTI_JOIN, Row
from pipeline.shared import artifacts

log = logging.getLogger(__name__)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6f}"
    return "" if value is None else value


def _encode(rows: list[dict[str, Any]], cols: list[str], fmt: str) -> str:
    """Rows (output cells) as CSV lines, or JSON lines (familiar a JSON boolean)."""
    if fmt == "jsonl":
        return "".join(json.dumps({c: (round(r[c], 6) if isinstance(r[c], float) else r[c]) for c in cols},
                                  ensure_ascii=False) + "\n" for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow([_csv_cell(r[c]) for c in cols])
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
    images: int = 0  # rows predicted (a multi-label image counts once, whatever its labels)

    def add(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            if r["error"]:
                self.errors[str(r["error"]).split(":")[0]] += 1
                continue
            self.images += 1
            if "labels" in r:  # multi-label: each label counted (an image may have several, or none)
                self.counts.update(r["labels"].split(MULTI_JOIN) if r["labels"] else ["(no label)"])
            else:
                self.counts[r["label"]] += 1
            if r.get("familiar") not in (None, ""):  # a bool, or "true"/"false" read back from a CSV
                self.judged += 1
                self.unfamiliar += str(r["familiar"]).lower() == "false"

    def as_dict(self) -> dict[str, Any]:
        predicted, errors = self.images, sum(self.errors.values())
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
                     f"about {s['expected_unfamiliar']:.0%} of images like the training data are)")
    if "sorted" in s:
        lines.append(f"sorted into {s['sort_into']}: {s['sorted']} new, {s['sort_existing']} already there")
    return "\n".join(lines)


def format_one(row: Row) -> str:
    """One image's prediction as a line."""
    if row.error:
        return f"{row.path}: error: {row.error}"
    top = ", ".join(f"{label} {prob:.4f}" for label, prob in row.top)
    familiar = "" if row.familiar is None else (
        f"  novelty {row.novelty:.3f} ({'familiar' if row.familiar else 'UNFAMILIAR: unlike the training images'})")
    return f"{row.path}: {row.label} ({row.confidence:.4f})  top-{len(row.top)}: {top}{familiar}"


def drift_warning(unfamiliar_share: float | None, expected: float, n: int) -> str:
    """A warning when a whole set of images looks unlike the training data (dataset drift)."""
    if unfamiliar_share is None or n < 20 or unfamiliar_share < max(0.25, 5 * expected):
        return ""
    return (f"{unfamiliar_share:.0%} of these images look unlike the training data (about {expected:.0%} of "
            "familiar images are flagged): are they the same kind of images the model was trained on?")


# ---------------------------------------------------------------- sorting into folders
def _safe_name(label: str) -> str:
    """A label as one folder name (labels from CSVs may hold path separators)."""
    name = "".join("_" if ch in "/\\\0" else ch for ch in label).strip()
    return "_" if name in ("", ".", "..") else name


class Sorter:
    """Copies (or symlinks) images into ``dest/<label>/<relative path>``; never overwrites."""

    def __init__(self, dest: Path, link: bool) -> None:
        self.dest, self.link = dest, link
        self.placed = self.existing = 0

    def place(self, src: Path, rel: str, label: str) -> None:
        target = self.dest / _safe_name(label) / rel
        if target.exists() or target.is_symlink():
            self.existing += 1  # e.g. placed by the interrupted run being resumed
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.link:
            try:
                os.symlink(src.resolve(), target)
            except FileExistsError:
                self.existing += 1
                return
        else:
            tmp = target.with_name(f".{target.name}{artifacts.TMP_TAG}{os.getpid()}")
            try:
                shutil.copy2(src, tmp)
                os.link(tmp, target)  # fails if the target appeared meanwhile: no overwrite
            except FileExistsError:
                self.existing += 1
                return
            except OSError:  # no hard links on this file system
                if target.exists():
                    self.existing += 1
                    return
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        self.placed += 1
