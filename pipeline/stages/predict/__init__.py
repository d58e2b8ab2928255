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
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline import __version__
from pipeline.data import decoding, ingest
from pipeline.data.inputs import Inputs, chunks, inside, list_inputs
from pipeline.model.infer import Predictor
from pipeline.model.rows import Row, Rules, columns, make_rows, rules_for
from pipeline.shared import artifacts, bundle, cli
from pipeline.shared import params as params_mod
from pipeline.shared.cluster import RayActorPool
from pipeline.shared.errors import Interrupted, UserError
from pipeline.shared.params import OUTPUT_FORMATS, ClusterParams, PredictParams
from pipeline.stages.predict import actors
from pipeline.stages.predict.output import (
    RowFile,
    Sorter,
    Tally,
    drift_warning,
    format_one,
    format_summary,
    summary_path,
)

log = logging.getLogger(__name__)

DEFAULT_OUT = "predictions"
JSONL_SUFFIXES = (".jsonl", ".ndjson")
# Options that change what a row says: a resumed run must use the same ones.
ROW_OPTIONS = ("top_k", "threshold", "target_precision", "unknown_label", "unfamiliar", "format")


# ---------------------------------------------------------------- the stage
def _check_resumable(out: Path, summary_file: Path, record: dict[str, Any]) -> None:
    """Refuse to append to a file that another model (other labels or input shape, or other weights),
    source or row options wrote."""
    if not summary_file.is_file():
        raise artifacts.StageError(f"cannot resume {out}: {summary_file} is missing, so what wrote it is "
                                   "unknown; run without --resume to start over")
    old = artifacts.read_json(summary_file, "predictions summary")
    for key, what in (("labels", "labels"), ("input_shape", "input shape")):
        if key in old and old[key] != record[key]:
            raise artifacts.StageError(f"cannot resume {out}: its rows come from a model with other {what} "
                                       f"({old[key]}, this model: {record[key]}); run without --resume to "
                                       "start over, or resume with the model that wrote it")
    now = {**record, "row_options": {k: record["params"][k] for k in ROW_OPTIONS}}
    old["row_options"] = {k: old.get("params", {}).get(k) for k in ROW_OPTIONS}
    for key in ("model_sha256", "source", "row_options", "sort_into", "link"):
        if old.get(key) != now[key]:
            raise artifacts.StageError(f"cannot resume {out}: it was written with another {key} "
                                       f"({old.get(key)!r}, now {now[key]!r}); run without --resume to start over")


@dataclass
class Job:
    """One predict run: what to read, the model, where rows go, and the counts so far."""

    source: Path
    inputs: Inputs
    predictor: Predictor
    p: PredictParams
    rules: Rules
    record: dict[str, Any]
    out: Path | None = None
    writer: RowFile | None = None
    sorter: Sorter | None = None
    done: frozenset[str] = frozenset()
    tally: Tally | None = None
    collected: list[Row] | None = None

    @property
    def labels(self) -> list[str]:
        return self.predictor.bundle.labels

    def rows(self, paths: list[str], reasons: list[str], x: np.ndarray) -> list[Row]:
        return actors.block_rows(self.predictor, self.rules, paths, reasons, x)

    def emit(self, rows: list[Row]) -> None:
        """Sort, write and count a block of rows."""
        if self.sorter is not None:  # before the rows are written: a resumed run re-places, never duplicates
            for r in rows:
                if not r.error:
                    self.sorter.place(self.inputs.file(r.path), self.inputs.relative(r.path), r.label)
        cells = [r.cells(self.rules.k, self.rules.cuts is not None) for r in rows]
        if self.writer is not None:
            self.writer.append(cells)
        else:
            self.collected.extend(rows)
        self.tally.add(cells)


def _list(source: Path, out: Path | None, sort_into: Path | None) -> Inputs:
    """What to predict, with our own outputs left out; refuses sorting a pixel CSV or into IMAGES."""
    summary_file = summary_path(out) if out is not None else None
    inputs = list_inputs(source, tuple(x for x in (out, summary_file, sort_into) if x is not None))
    if sort_into is not None and inputs.kind == "pixels":
        raise UserError("--sort-into needs image files; IMAGES is a pixel CSV")
    if sort_into is not None and inside(source, sort_into) is not None:
        raise UserError(f"--sort-into {sort_into} must not be IMAGES or a folder around it")
    return inputs


def _load(model_dir: Path, p: PredictParams, warm: bool = True) -> tuple[Predictor, Rules]:
    """The bundle, checked against the options, ready to run (``warm``: graph traced); the row rules."""
    b = bundle.load(model_dir, p.runtime)
    rules = rules_for(p, b.labels, b.calibration)
    if b.novelty is None:
        log.warning("predict: %s has no novelty model (trained by an older version): the novelty and familiar "
                    "columns stay empty", model_dir)
    predictor = Predictor(b, p.batch_size)
    if warm:
        predictor.warm_up()
    return predictor, rules


def _open_output(job: Job, resume: bool, started: float) -> None:
    """Start (or, resuming, continue) the output file; the rows already there count as done."""
    job.tally, job.collected = Tally(), []
    if job.out is None:
        return
    summary_file = summary_path(job.out)
    if resume and job.out.is_file():
        _check_resumable(job.out, summary_file, job.record)
    job.writer = RowFile(job.out, columns(job.rules.k, job.rules.cuts is not None), job.p.format)
    previous = job.writer.start(resume)
    job.done = frozenset(r["path"] for r in previous)
    job.tally.add(previous)
    if previous:
        log.info("predict: resuming %s: %d rows already there", job.out, len(previous))
    artifacts.write_json(summary_file, {**job.record, "status": "running", "started": started})


def _run(job: Job, pool: Any) -> tuple[int, float]:
    """Predict every row still to do; (new rows, seconds)."""
    todo = [x for x in job.inputs.paths if x not in job.done]
    walk_errors = [(x, reason) for x, reason in job.inputs.rejected if x not in job.done]
    total = len(todo) + len(walk_errors) if job.inputs.kind != "pixels" else None
    log.info("predict: %s (%s) with %s (%s): %s to predict%s", job.source, job.inputs.kind, job.record["model"],
             job.predictor.runtime,
             f"{total} file{'' if total == 1 else 's'}" if total is not None else "the rows of a pixel CSV",
             f", {len(job.done)} done before" if job.done else "")
    if walk_errors:
        job.emit(make_rows([x for x, _ in walk_errors], [r for _, r in walk_errors], np.zeros((0, len(job.labels))),
                           job.labels, job.rules))
    t0, n_new = time.perf_counter(), 0
    with tqdm(total=total, desc="predict", unit="img") as bar:
        try:
            for rows in _blocks(job, todo, pool):
                job.emit(rows)
                n_new += len(rows)
                bar.update(len(rows))
        except KeyboardInterrupt:
            log.error("predict: interrupted after %d new rows%s", n_new,
                      f"; {job.out} holds every finished row, re-run with --resume to continue" if job.out else "")
            raise Interrupted from None
    return n_new, time.perf_counter() - t0


def _blocks(job: Job, todo: list[str], pool: Any) -> Iterator[list[Row]]:
    """The rows still to do, a block of ``batch_size`` files at a time, in file order: made here (decoded in
    ``pool``, or here when it is None), or by the model actors of the Ray engine."""
    size = job.p.batch_size
    if isinstance(pool, RayActorPool):
        return pool.map("rows", (todo[i:i + size] for i in range(0, len(todo), size)))
    blocks = chunks(job.inputs, todo, job.predictor.bundle.preprocess, size, pool, set(job.done))
    return (job.rows(paths, reasons, x) for paths, x, reasons in blocks)


def _start_pool(inputs: Inputs, model_dir: Path, p: PredictParams, cluster: ClusterParams | None) -> Any:
    """What helps this process: a folder of at least two batches (or of large files: photos) is decoded by the
    local pool or, with the Ray engine, decoded and predicted by model actors on the cluster; None: all here."""
    if inputs.kind != "folder" or (len(inputs.paths) < 2 * p.batch_size and not inputs.heavy()):
        return None
    if cluster is not None and cluster.engine == "ray":
        return actors.start(cluster, inputs.source, model_dir, p)
    return decoding.start_pool(p.workers) if p.workers != 1 else None


def _finish(job: Job, started: float, n_new: int, seconds: float) -> dict[str, Any]:
    """The run summary, written beside the output (or returned with the rows when there is none)."""
    summary = {**job.record, "status": "complete", "started": started, "finished": time.time(),
               **job.tally.as_dict(), "new_rows": n_new, "seconds": round(seconds, 3),
               "images_per_s": round(n_new / seconds, 1) if seconds > 0 else None}
    novelty = job.predictor.bundle.novelty
    summary["expected_unfamiliar"] = novelty.flag_rate if novelty else None
    summary["drift"] = drift_warning(summary["unfamiliar_share"], novelty.flag_rate, summary["predicted"]) \
        if novelty else ""
    if summary["drift"]:
        log.warning("predict: %s", summary["drift"])
    sorter = job.sorter
    if sorter is not None:
        summary.update({"sorted": sorter.placed, "sort_existing": sorter.existing})
    log.info("predict: read %d file%s from %s, model %s", n_new, "" if n_new == 1 else "s", job.source,
             job.record["model"])
    if job.out is None:
        summary["rows_list"] = job.collected
        return summary
    artifacts.write_json(summary_path(job.out), summary)
    log.info("predict: wrote %d rows to %s (%d before), %s%s", n_new, job.out, len(job.done), summary_path(job.out),
             f"; sorted {sorter.placed} into {sorter.dest} ({sorter.existing} there already)" if sorter else "")
    return summary


def predict(source: Path, model_dir: Path, out: Path | None, p: PredictParams, sort_into: Path | None = None,
            link: bool = False, resume: bool = False, cluster: ClusterParams | None = None) -> dict[str, Any]:
    """Predict every image in ``source``, appending rows to ``out`` (None: return them as ``rows_list``).
    ``cluster``: where the files are decoded and the model runs (this machine: the local pool and this process;
    Ray: model actors on the cluster): the same rows, in the same order.

    Returns the run summary (also written beside ``out``): what made it, counts
    per label, errors by reason and timing.
    """
    started = time.time()
    inputs = _list(source, out, sort_into)
    # The decoding workers (or the model actors) start up while the model loads here.
    pool = _start_pool(inputs, model_dir, p, cluster)
    job = None
    try:
        predictor, rules = _load(model_dir, p, warm=not isinstance(pool, RayActorPool))
        if sort_into is not None and rules.cuts is not None:
            raise UserError("--sort-into needs a single-label model: an image of this multi-label model may have "
                            "several labels, or none")
        record = {"stage": "predict", "version": __version__, "source": str(source.resolve()),
                  "model": str(model_dir.resolve()), "model_sha256": predictor.bundle.info["model_sha256"],
                  "runtime": predictor.runtime,
                  "labels": predictor.bundle.labels, "input_shape": list(predictor.bundle.preprocess.input_shape),
                  "params": {**params_mod.to_dict(p), "top_k": rules.k}, "threshold": {"value": rules.threshold, **rules.how},
                  "columns": columns(rules.k, rules.cuts is not None), "sort_into": str(sort_into.resolve()) if sort_into else None,
                  "link": link}
        job = Job(source, inputs, predictor, p, rules, record, out,
                  sorter=Sorter(sort_into, link) if sort_into is not None else None)
        _open_output(job, resume, started)
        n_new, seconds = _run(job, pool)
    finally:
        if job is not None and job.writer is not None:
            job.writer.close()
        if pool is not None:
            pool.close()
    return _finish(job, started, n_new, seconds)


# ---------------------------------------------------------------- CLI
def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("images", type=Path, help="a folder of images (walked recursively), one image, or a pixel CSV")
    parser.add_argument("--model", type=Path, help="model bundle folder, or a run folder holding one "
                        "(default: the model of the last prepared run)")
    cli.add_run_options(parser)
    parser.add_argument("--out", type=Path, help="output file (default: <run>/predictions.csv beside the "
                        "bundle; one image: none, the result is printed)")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, help="output format (default: from --out's "
                        "suffix, else [predict] format)")
    cli.add_rule_options(parser)
    cli.add_runtime_option(parser)
    parser.add_argument("--batch-size", type=int, help="images per model call (default 512)")
    parser.add_argument("--workers", type=int, help="decoding processes (0: one per CPU core)")
    parser.add_argument("--sort-into", type=Path, help="copy each image into DIR/<label>/")
    parser.add_argument("--link", action="store_true", help="with --sort-into: symlink instead of copying")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run: skip files already in --out")
    cli.add_params_option(parser, ", [predict] section")
    cli.add_engine_option(parser)
    return parser


def resolve_args(args: argparse.Namespace) -> None:
    """The bundle (``--model``, else the run's) and its run folder (for the log and the default output)."""
    cli.resolve_model(args, "predict")


def main(args: argparse.Namespace) -> int:
    """CLI: predict, print the summary (one image: its result); exit 1 when no file could be read."""
    extra = {"batch_size": args.batch_size, "workers": args.workers, "format": args.format}
    if args.format is None and args.out is not None and args.out.suffix.lower() in JSONL_SUFFIXES:
        extra["format"] = "jsonl"
    p = cli.predict_params(args, Path(args.run).name if args.run else None, extra)
    if args.link and args.sort_into is None:
        raise UserError("--link needs --sort-into DIR")
    single = args.images.is_file() and args.images.suffix.lower() not in ingest.CSV_SUFFIXES
    out = args.out
    if out is None and not single:
        base = Path(args.run) if args.run else Path(".")
        out = base / f"{DEFAULT_OUT}.{'jsonl' if p.format == 'jsonl' else 'csv'}"
    if out is None and args.resume:
        raise UserError("--resume needs an output file (--out)")
    s = predict(args.images, args.model, out, p, args.sort_into, args.link, args.resume,
                cli.cluster_params(args, Path(args.run).name if args.run else None))
    cli.result(format_one(s["rows_list"][0]) if single and out is None else format_summary(s, out))
    if s["rows"] and not s["predicted"]:
        log.error("predict: none of the %d files could be read as an image", s["rows"])
        return 2  # bad input, as the README's exit codes say (1 is a bug); each row holds its file's reason
    return 0
