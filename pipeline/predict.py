"""Apply: batch-predict a folder of images (or one image, or a pixel CSV) with a model bundle.

    pipeline predict IMAGES --model runs/<name>/model [--out FILE] [--format csv|jsonl]
                     [--top-k K] [--threshold P] [--sort-into DIR [--link]] [--resume]

Every file under IMAGES (recursively, sorted; formats detected from content, as
in ingest) gets one row: ``path`` (relative to IMAGES), ``label``,
``confidence``, ``top1_label``, ``top1_prob`` ... ``topK_prob`` and ``error``
(empty on success). A file that cannot be read gets a row with its error and
the run goes on; the exit code is 0 unless no file could be read. Each image
goes through exactly the bundle's preprocessing (:func:`preprocess.load_image`).

Rows are appended in file order, one block per batch, each block flushed to
disk when it is done: an interrupted run (Ctrl-C, kill -9) leaves a file of
the rows finished so far, and ``--resume`` skips the files already in it
(dropping a last row cut short by a kill). ``<out stem>.summary.json`` records
the model, the options, the counts per label and whether the run completed.

``--sort-into DIR`` copies (``--link``: symlinks) each image to
``DIR/<label>/<its path under IMAGES>``; originals are never moved or written,
and nothing already in DIR is overwritten.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import __version__, artifacts, bundle, decoding, ingest, params as params_mod
from .params import PredictParams, PreprocessParams
from .preprocess import preprocess

log = logging.getLogger(__name__)

DEFAULT_OUT = "predictions"
JSONL_SUFFIXES = (".jsonl", ".ndjson")


# ---------------------------------------------------------------- what to predict
@dataclass
class Inputs:
    """What ``IMAGES`` holds: ``folder`` (files under it), ``file`` (one image) or ``pixels`` (a pixel CSV)."""

    kind: str
    source: Path
    paths: list[str] = field(default_factory=list)  # row names: relative to the folder, or as given
    rejected: list[tuple[str, str]] = field(default_factory=list)  # unreadable entries found by the walk

    def file(self, path: str) -> Path:
        """The file behind a row name."""
        return self.source / path if self.kind == "folder" else self.source

    def relative(self, path: str) -> str:
        """A row's file relative to IMAGES (for --sort-into)."""
        return path if self.kind == "folder" else self.source.name


def _inside(path: Path, folder: Path) -> str | None:
    """``path`` relative to ``folder`` (POSIX) when it lies inside it, else None."""
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return None


def list_inputs(source: Path, exclude: tuple[Path, ...] = ()) -> Inputs:
    """List what to predict; ``exclude`` (our own outputs) is left out of a folder walk."""
    if not source.exists():
        raise ValueError(f"IMAGES not found: {source}")
    if source.is_file():
        if source.suffix.lower() in ingest.CSV_SUFFIXES:
            header, _, fh = ingest._open_csv(source)
            fh.close()  # type: ignore[attr-defined]
            if not ingest.is_pixel_header(header):
                raise ValueError(f"{source} is a CSV but not a pixel CSV (label?, pixel0, pixel1, ...); "
                                 "give the folder of images instead")
            return Inputs("pixels", source)
        return Inputs("file", source, [str(source)])
    rejected: list[tuple[str, str]] = []
    paths = ingest.walk_files(source, source, rejected)
    skip = [rel for rel in (_inside(p, source) for p in exclude) if rel]
    if skip:
        paths = [p for p in paths if not any(p == s or p.startswith(s + "/") for s in skip)]
    if not paths and not rejected:
        raise ValueError(f"no files found under {source}")
    return Inputs("folder", source, paths, rejected)


# ---------------------------------------------------------------- rows
def columns(k: int) -> list[str]:
    """Output columns for top-``k``."""
    top = [name for i in range(1, k + 1) for name in (f"top{i}_label", f"top{i}_prob")]
    return ["path", "label", "confidence", *top, "error"]


def make_rows(paths: list[str], reasons: list[str], probs: np.ndarray, labels: list[str], k: int,
              threshold: float, unknown: str) -> list[dict[str, Any]]:
    """One row per path; ``probs`` has one row per path without a reason, in order."""
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k] if len(probs) else np.zeros((0, k), int)
    rows, j = [], 0
    for path, reason in zip(paths, reasons):
        row: dict[str, Any] = {"path": path}
        if reason:
            row.update({"label": "", "confidence": None})
            row.update({f"top{i}_{x}": None for i in range(1, k + 1) for x in ("label", "prob")})
            row["error"] = reason
        else:
            p, order = probs[j], top[j]
            j += 1
            conf = float(p[order[0]])
            row.update({"label": labels[order[0]] if conf >= threshold else unknown, "confidence": conf})
            for i, c in enumerate(order, 1):
                row.update({f"top{i}_label": labels[c], f"top{i}_prob": float(p[c])})
            row["error"] = ""
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


# ---------------------------------------------------------------- inference
def _compiled(model: Any) -> Any:
    """The model's forward pass as one TensorFlow graph (inference mode)."""
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False))


def _infer(forward: Any, x: np.ndarray, batch: int, n_out: int) -> np.ndarray:
    """Class probabilities, in calls of exactly ``batch`` images (the last one zero-padded).

    A fixed batch shape means one traced graph, and the same arithmetic for an
    image whether or not a run was resumed.
    """
    n = len(x)
    if n == 0:
        return np.zeros((0, n_out), np.float32)
    pad = -n % batch
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    out = [forward(x[i:i + batch]).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out)[:n]


def _stack(arrays: list[np.ndarray], cfg: PreprocessParams) -> np.ndarray:
    return np.stack(arrays) if arrays else np.zeros((0, *cfg.input_shape), np.float32)


def _pixel_chunks(source: Path, cfg: PreprocessParams, size: int,
                  done: set[str]) -> Iterator[tuple[list[str], np.ndarray, list[str]]]:
    """Blocks of (row names, preprocessed arrays, reasons) from a pixel CSV, skipping ``done`` rows."""
    names: list[str] = []
    arrays: list[np.ndarray] = []
    reasons: list[str] = []
    for i, (img, reason) in enumerate(ingest.iter_pixel_images(source)):
        name = f"{source.name}#{i}"
        if name in done:
            continue
        names.append(name)
        reasons.append(reason)
        if img is not None:
            arrays.append(preprocess(img, cfg))
        if len(names) == size:
            yield names, _stack(arrays, cfg), reasons
            names, arrays, reasons = [], [], []
    if names:
        yield names, _stack(arrays, cfg), reasons


def _file_chunks(inputs: Inputs, paths: list[str], cfg: PreprocessParams, size: int,
                 pool: Any) -> Iterator[tuple[list[str], np.ndarray, list[str]]]:
    blocks = [paths[i:i + size] for i in range(0, len(paths), size)]
    files = ([str(inputs.file(p)) for p in block] for block in blocks)
    for block, (stacked, info) in zip(blocks, decoding.decode_chunks(files, cfg, pool)):
        yield block, stacked, [reason for reason, _ in info]


# ---------------------------------------------------------------- the stage
# Options that change what a row says: a resumed run must use the same ones.
ROW_OPTIONS = ("top_k", "threshold", "unknown_label", "format")


@dataclass
class Tally:
    """Counts per predicted label and errors by reason (the text before the first colon)."""

    counts: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)

    def add(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            if r["error"]:
                self.errors[str(r["error"]).split(":")[0]] += 1
            else:
                self.counts[r["label"]] += 1

    def as_dict(self) -> dict[str, Any]:
        predicted, errors = sum(self.counts.values()), sum(self.errors.values())
        return {"rows": predicted + errors, "predicted": predicted, "errors": errors,
                "counts": dict(sorted(self.counts.items())), "errors_by_reason": dict(self.errors.most_common())}


def _check_resumable(out: Path, summary_file: Path, record: dict[str, Any]) -> None:
    """Refuse to append to a file that another model, source or row options wrote."""
    if not summary_file.is_file():
        raise artifacts.StageError(f"cannot resume {out}: {summary_file} is missing, so what wrote it is "
                                   "unknown; run without --resume to start over")
    old = artifacts.read_json(summary_file, "predictions summary")
    now = {**record, "row_options": {k: record["params"][k] for k in ROW_OPTIONS}}
    old["row_options"] = {k: old.get("params", {}).get(k) for k in ROW_OPTIONS}
    for key in ("model_sha256", "source", "row_options", "sort_into", "link"):
        if old.get(key) != now[key]:
            raise artifacts.StageError(f"cannot resume {out}: it was written with another {key} "
                                       f"({old.get(key)!r}, now {now[key]!r}); run without --resume to start over")


def predict(source: Path, model_dir: Path, out: Path | None, p: PredictParams, sort_into: Path | None = None,
            link: bool = False, resume: bool = False) -> dict[str, Any]:
    """Predict every image in ``source``, appending rows to ``out`` (None: return them as ``rows_list``).

    Returns the run summary (also written beside ``out``): what made it, counts
    per label, errors by reason and timing.
    """
    started = time.time()
    summary_file = summary_path(out) if out is not None else None
    inputs = list_inputs(source, tuple(x for x in (out, summary_file, sort_into) if x is not None))
    if sort_into is not None and inputs.kind == "pixels":
        raise ValueError("--sort-into needs image files; IMAGES is a pixel CSV")
    if sort_into is not None and _inside(source, sort_into) is not None:
        raise ValueError(f"--sort-into {sort_into} must not be IMAGES or a folder around it")
    cfg = bundle.read_preprocess(model_dir)
    # The decoding workers start up (a second or so) while TensorFlow loads the model.
    use_pool = inputs.kind == "folder" and len(inputs.paths) >= 2 * p.batch_size and p.workers != 1
    pool = decoding.start_pool(cfg, p.workers) if use_pool else None
    writer = None
    try:
        b = bundle.load(model_dir)
        k, n_out = min(p.top_k, len(b.labels)), len(b.labels)
        if p.threshold > 0 and p.unknown_label in b.labels:
            raise ValueError(f"unknown_label {p.unknown_label!r} is also a label of the model; choose another name")
        forward = _compiled(b.model)
        _infer(forward, np.zeros((1, *cfg.input_shape), np.float32), p.batch_size, n_out)  # trace it up front
        record = {"stage": "predict", "version": __version__, "source": str(source.resolve()),
                  "model": str(model_dir.resolve()), "model_sha256": b.info["model_sha256"],
                  "params": {**params_mod.to_dict(p), "top_k": k}, "columns": columns(k),
                  "sort_into": str(sort_into.resolve()) if sort_into else None, "link": link}
        tally, collected, done = Tally(), [], set()
        if out is not None:
            if resume and out.is_file():
                _check_resumable(out, summary_file, record)
            writer = RowFile(out, columns(k), p.format)
            previous = writer.start(resume)
            done = {r["path"] for r in previous}
            tally.add(previous)
            if previous:
                log.info("predict: resuming %s: %d rows already there", out, len(previous))
            artifacts.write_json(summary_file, {**record, "status": "running", "started": started})
        sorter = Sorter(sort_into, link) if sort_into is not None else None

        def emit(rows: list[dict[str, Any]]) -> None:
            if sorter is not None:  # before the rows are written: a resumed run re-places, never duplicates
                for r in rows:
                    if not r["error"]:
                        sorter.place(inputs.file(r["path"]), inputs.relative(r["path"]), r["label"])
            if writer is not None:
                writer.append(rows)
            else:
                collected.extend(rows)
            tally.add(rows)

        todo = [x for x in inputs.paths if x not in done]
        walk_errors = [(x, reason) for x, reason in inputs.rejected if x not in done]
        total = len(todo) + len(walk_errors) if inputs.kind != "pixels" else None
        log.info("predict: %s (%s) with %s: %s to predict%s", source, inputs.kind, model_dir,
                 f"{total} files" if total is not None else "the rows of a pixel CSV",
                 f", {len(done)} done before" if done else "")
        if walk_errors:
            emit(make_rows([x for x, _ in walk_errors], [r for _, r in walk_errors],
                           np.zeros((0, n_out)), b.labels, k, p.threshold, p.unknown_label))
        chunks = (_pixel_chunks(source, cfg, p.batch_size, done) if inputs.kind == "pixels"
                  else _file_chunks(inputs, todo, cfg, p.batch_size, pool))
        t0, n_new = time.perf_counter(), 0
        with tqdm(total=total, desc="predict", unit="img") as bar:
            try:
                for paths, x, reasons in chunks:
                    emit(make_rows(paths, reasons, _infer(forward, x, p.batch_size, n_out), b.labels, k,
                                   p.threshold, p.unknown_label))
                    n_new += len(paths)
                    bar.update(len(paths))
            except KeyboardInterrupt:
                log.error("predict: interrupted after %d new rows%s", n_new,
                          f"; {out} holds every finished row, re-run with --resume to continue" if out else "")
                raise
        seconds = time.perf_counter() - t0
    finally:
        if writer is not None:
            writer.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    summary = {**record, "status": "complete", "started": started, "finished": time.time(), **tally.as_dict(),
               "new_rows": n_new, "seconds": round(seconds, 3),
               "images_per_s": round(n_new / seconds, 1) if seconds > 0 else None}
    if sorter is not None:
        summary.update({"sorted": sorter.placed, "sort_existing": sorter.existing})
    log.info("predict: read %d files from %s, model %s", n_new, source, model_dir)
    if out is not None:
        artifacts.write_json(summary_file, summary)
        log.info("predict: wrote %d rows to %s (%d before), %s%s", n_new, out, len(done), summary_file,
                 f"; sorted {sorter.placed} into {sort_into} ({sorter.existing} there already)" if sorter else "")
    else:
        summary["rows_list"] = collected
    return summary


def format_summary(s: dict[str, Any], out: Path | None) -> str:
    """Counts per predicted label and errors by reason, for the console."""
    lines = [f"{s['rows']} files: {s['predicted']} predicted, {s['errors']} unreadable"
             + (f" -> {out}" if out else "")]
    if s.get("new_rows"):
        lines.append(f"this run: {s['new_rows']} files in {s['seconds']:.2f} s ({s['images_per_s']:.0f} img/s)")
    width = max([5, *(len(k) for k in s["counts"])])
    lines += [f"  {label:<{width}} {n:>8}" for label, n in s["counts"].items()]
    lines += [f"  error: {reason}: {n}" for reason, n in s["errors_by_reason"].items()]
    if "sorted" in s:
        lines.append(f"sorted into {s['sort_into']}: {s['sorted']} new, {s['sort_existing']} already there")
    return "\n".join(lines)


def _format_one(row: dict[str, Any], k: int) -> str:
    if row["error"]:
        return f"{row['path']}: error: {row['error']}"
    top = ", ".join(f"{row[f'top{i}_label']} {row[f'top{i}_prob']:.4f}" for i in range(1, k + 1))
    return f"{row['path']}: {row['label']} ({row['confidence']:.4f})  top-{k}: {top}"


# ---------------------------------------------------------------- CLI
def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("images", type=Path, help="a folder of images (walked recursively), one image, or a pixel CSV")
    parser.add_argument("--model", type=Path, required=True, help="model bundle folder (runs/<name>/model)")
    parser.add_argument("--out", type=Path, help="output file (default: <run>/predictions.csv beside the "
                        "bundle; one image: none, the result is printed)")
    parser.add_argument("--format", choices=("csv", "jsonl"), help="output format (default: from --out's "
                        "suffix, else [predict] format)")
    parser.add_argument("--top-k", type=int, help="top-k labels and probabilities per row (default 3)")
    parser.add_argument("--threshold", type=float, help="confidence below this -> the unknown label")
    parser.add_argument("--unknown-label", help="the label for low-confidence predictions (default: unknown)")
    parser.add_argument("--batch-size", type=int, help="images per model call (default 512)")
    parser.add_argument("--workers", type=int, help="decoding processes (0: one per CPU core)")
    parser.add_argument("--sort-into", type=Path, help="copy each image into DIR/<label>/")
    parser.add_argument("--link", action="store_true", help="with --sort-into: symlink instead of copying")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run: skip files already in --out")
    parser.add_argument("--params", default="params.toml",
                        help="params file, [predict] section (default: %(default)s)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    return parser


def resolve_args(args: argparse.Namespace) -> None:
    """The run folder (for the log and the default output) is the bundle's parent, when that is a run."""
    parent = args.model.parent
    args.run = str(parent) if (parent / "prepare.json").is_file() else None


def _resolve_params(args: argparse.Namespace) -> PredictParams:
    """[predict] (with the run's overrides), then the options given on the command line."""
    # A bundle can be applied anywhere: without the default params file, the defaults hold.
    path = args.params if args.params != "params.toml" or Path(args.params).is_file() else None
    p = params_mod.load(path, "predict", Path(args.run).name if args.run else None)
    given = {"top_k": args.top_k, "threshold": args.threshold, "unknown_label": args.unknown_label,
             "batch_size": args.batch_size, "workers": args.workers, "format": args.format}
    if args.format is None and args.out is not None and args.out.suffix.lower() in JSONL_SUFFIXES:
        given["format"] = "jsonl"
    return replace(p, **{key: v for key, v in given.items() if v is not None})


def main(args: argparse.Namespace) -> int:
    """CLI: predict, print the summary (one image: its result); exit 1 when no file could be read."""
    p = _resolve_params(args)
    if args.link and args.sort_into is None:
        raise ValueError("--link needs --sort-into DIR")
    single = args.images.is_file() and args.images.suffix.lower() not in ingest.CSV_SUFFIXES
    out = args.out
    if out is None and not single:
        base = Path(args.run) if args.run else Path(".")
        out = base / f"{DEFAULT_OUT}.{'jsonl' if p.format == 'jsonl' else 'csv'}"
    if out is None and args.resume:
        raise ValueError("--resume needs an output file (--out)")
    s = predict(args.images, args.model, out, p, args.sort_into, args.link, args.resume)
    if single and out is None:
        print(_format_one(s["rows_list"][0], s["params"]["top_k"]))
    else:
        print(format_summary(s, out))
    if s["rows"] and not s["predicted"]:
        log.error("predict: none of the %d files could be read as an image", s["rows"])
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
