"""Prepare: ingest + audit + preprocess + split a labeled image collection into a run folder.

Writes to the run folder (``--run``, default ``runs/<name of DATA>``):
``X_<split>.npy`` / ``y_<split>.npy`` for train, val and test (float32 model
input and int label indices; rows in manifest order), ``manifest.csv``
(path,label,split), ``labels.json`` (label -> index), ``rejected.csv``
(path,reason), and last the stage marker ``prepare.json``. Given ``train/``,
``val/``, ``test/`` folders are honoured; otherwise a stratified, seeded
``train_test_split`` makes them. Bad files are reported, never fatal.
Nothing is redone when the files, params and code are unchanged.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from . import __version__, artifacts, ingest, params as params_mod
from .params import PrepareParams, PreprocessParams
from .preprocess import load_image_safe

log = logging.getLogger(__name__)

MARKER = "prepare.json"
SPLITS = ("train", "val", "test")
_worker_cfg: PreprocessParams | None = None


# ---------------------------------------------------------------- decoding
def _init_worker(cfg: PreprocessParams) -> None:
    global _worker_cfg
    _worker_cfg = cfg


def _decode_one(path: str) -> tuple[np.ndarray | None, str]:
    assert _worker_cfg is not None
    return load_image_safe(path, _worker_cfg)


def decode_all(paths: Sequence[str], cfg: PreprocessParams, workers: int = 0,
               desc: str = "decode") -> Iterator[tuple[np.ndarray | None, str]]:
    """Decode + preprocess each path once, in order, in worker processes; yield (array|None, reason)."""
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(paths), desc=desc, unit="img")
    try:
        if workers == 1 or len(paths) < 256:  # a pool's start-up costs more than it saves
            _init_worker(cfg)
            for p in paths:
                yield _decode_one(p)
                bar.update()
            return
        # spawn, not fork: the caller may have TensorFlow's threads running.
        ctx = mp.get_context("spawn")
        chunksize = max(1, min(256, len(paths) // (workers * 8)))
        with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg,)) as pool:
            for result in pool.imap(_decode_one, paths, chunksize=chunksize):
                yield result
                bar.update()
    finally:
        bar.close()


# ---------------------------------------------------------------- splitting
def _holdout(idx: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (keep, held) with ``fraction`` held out, stratified by ``y[idx]``.

    Classes with a single sample cannot be stratified; they stay in ``keep``.
    """
    if fraction <= 0 or len(idx) < 2:
        return idx, idx[:0]
    counts = Counter(y[idx].tolist())
    single = np.array([counts[c] < 2 for c in y[idx].tolist()], dtype=bool)
    pool = idx[~single]
    n_held = int(round(fraction * len(pool)))
    if n_held == 0 or n_held == len(pool):
        return idx, idx[:0]
    n_classes = len({c for c, n in counts.items() if n >= 2})
    stratify = y[pool] if min(n_held, len(pool) - n_held) >= n_classes else None
    if stratify is None:
        log.warning("too few samples to stratify a %.0f%% hold-out over %d classes; splitting at random",
                    fraction * 100, n_classes)
    keep, held = train_test_split(pool, test_size=n_held, random_state=seed, stratify=stratify)
    return np.sort(np.concatenate([keep, idx[single]])), np.sort(held)


def assign_splits(y: np.ndarray, given: Sequence[str | None], p: PrepareParams) -> np.ndarray:
    """Split name per item: given split folders are kept; missing test/val are carved from train."""
    given_arr = np.array([g or "train" for g in given], dtype=object)
    idx = np.arange(len(y))
    has = set(given_arr.tolist()) if any(given) else set()
    out = given_arr.copy()
    train_idx = idx[given_arr == "train"]
    if "test" not in has:
        train_idx, test_idx = _holdout(train_idx, y, p.test_size, p.seed)
        out[test_idx] = "test"
    if "val" not in has:
        train_idx, val_idx = _holdout(train_idx, y, p.val_size, p.seed)
        out[val_idx] = "val"
    return out


def label_map(found: Sequence[str], order: Sequence[str]) -> dict[str, int]:
    """Label -> index: sorted names, or the explicit ``order`` (which must match what was found)."""
    found_set = set(found)
    if order:
        missing = sorted(found_set - set(order))
        extra = sorted(set(order) - found_set)
        if missing or extra:
            raise ValueError(f"[prepare] labels does not match the data: labels found but not listed "
                             f"{missing}, listed but not found {extra}")
        return {name: i for i, name in enumerate(order)}
    return {name: i for i, name in enumerate(sorted(found_set))}


# ---------------------------------------------------------------- I/O helpers
def _csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _copy_rows(src: np.ndarray, rows: np.ndarray, path: Path, chunk: int = 4096) -> None:
    """Atomically write ``src[rows]`` to a .npy, chunk by chunk (bounded memory)."""
    with artifacts.atomic_path(path, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=(len(rows),) + src.shape[1:])
        for i in range(0, len(rows), chunk):
            out[i:i + chunk] = src[rows[i:i + chunk]]
        out.flush()
        del out


def _input_fingerprint(root: Path, items: Sequence[ingest.Item]) -> str:
    """Cheap fingerprint of the source files: relative path, size and mtime of each."""
    stats = []
    for item in items:
        try:
            st = os.stat(root / item.path)
            stats.append((item.path, item.label, item.split, st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((item.path, item.label, item.split, -1, -1))
    return artifacts.fingerprint(stats)


def artifact_names() -> list[str]:
    names = ["manifest.csv", "labels.json", "rejected.csv"]
    return names + [f"{a}_{s}.npy" for s in SPLITS for a in ("X", "y")]


@dataclass
class Summary:
    """What prepare produced, for logs and tests."""

    counts: dict[str, dict[str, int]]
    rejected: int
    skipped: bool = False


def prepare(data: Path, run: Path, p: PrepareParams, cfg: PreprocessParams, layout: str = "auto") -> Summary:
    """Run the whole stage: list, decode once, audit, split, write artifacts, marker last."""
    listing = ingest.scan(data, layout)
    marker_path = run / MARKER
    fp = artifacts.fingerprint(_input_fingerprint(data, listing.items), params_mod.to_dict(p),
                               params_mod.to_dict(cfg), layout, __version__)
    if marker_path.is_file() and all((run / n).is_file() for n in artifact_names()):
        try:
            old = artifacts.read_json(marker_path, "prepare marker")
        except artifacts.StageError:
            old = {}
        if old.get("fingerprint") == fp:
            log.info("prepare: %s is up to date with %s; nothing to do", run, data)
            return Summary(old["counts"], old["rejected"], skipped=True)

    run.mkdir(parents=True, exist_ok=True)
    artifacts.remove_stale_temps(run)
    marker_path.unlink(missing_ok=True)  # outputs are untrusted until the new marker is written
    log.info("prepare: %d candidate files under %s", len(listing.items), data)

    rejected = list(listing.rejected)
    shape = cfg.input_shape
    good: list[int] = []
    # All decoded images go to one scratch memmap (bounded RAM), then per split.
    tmp_all = run / f".decoded{artifacts.TMP_TAG}{os.getpid()}.npy"
    try:
        buf = np.lib.format.open_memmap(tmp_all, mode="w+", dtype=np.float32,
                                        shape=(max(1, len(listing.items)),) + shape)
        paths = [str(data / it.path) for it in listing.items]
        for i, (arr, reason) in enumerate(decode_all(paths, cfg, p.workers)):
            if arr is None:
                rejected.append((listing.items[i].path, reason))
            else:
                buf[len(good)] = arr
                good.append(i)
        buf.flush()
        artifacts.write_text(run / "rejected.csv", _csv_text(("path", "reason"), rejected))
        if rejected:
            reasons = Counter(r for _, r in rejected)
            log.warning("rejected %d file(s) (see %s): %s", len(rejected), run / "rejected.csv",
                        "; ".join(f"{n}x {r}" for r, n in reasons.most_common(5)))
        items = [listing.items[i] for i in good]
        if not items:
            raise artifacts.StageError(f"no usable image in {data} ({len(rejected)} file(s) rejected, "
                                       f"see {run / 'rejected.csv'})")
        labels = label_map([it.label for it in items], p.labels)
        if len(labels) < 2:
            raise artifacts.StageError(f"need at least 2 classes with usable images; found {list(labels)} in {data}")
        y = np.array([labels[it.label] for it in items], dtype=np.int64)
        splits = assign_splits(y, [it.split for it in items], p)
        manifest_rows = []
        counts: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            rows = np.flatnonzero(splits == split)
            _copy_rows(buf, rows, run / f"X_{split}.npy")
            artifacts.save_npy(run / f"y_{split}.npy", y[rows])
            manifest_rows += [(str(data / items[r].path), items[r].label, split) for r in rows]
            per = Counter(items[r].label for r in rows)
            counts[split] = {name: per.get(name, 0) for name in labels}
        del buf
    finally:
        tmp_all.unlink(missing_ok=True)
    if not counts["test"] or sum(counts["test"].values()) == 0:
        log.warning("the test split is empty: evaluate will have nothing to measure")
    artifacts.write_text(run / "manifest.csv", _csv_text(("path", "label", "split"), manifest_rows))
    artifacts.write_json(run / "labels.json", labels)
    artifacts.write_json(marker_path, {
        "stage": "prepare", "version": __version__, "fingerprint": fp, "data": str(data.resolve()),
        "layout": layout, "params": params_mod.to_dict(p), "preprocess": params_mod.to_dict(cfg),
        "counts": counts, "rejected": len(rejected),
    })
    totals = {s: sum(c.values()) for s, c in counts.items()}
    log.info("prepare: %d usable images in %d classes -> train %d, val %d, test %d; %d rejected",
             len(items), len(labels), totals["train"], totals["val"], totals["test"], len(rejected))
    return Summary(counts, len(rejected))


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--data", required=True, help="dataset folder")
    parser.add_argument("--layout", default="auto", help="auto | folders (default: %(default)s)")
    parser.add_argument("--run", help="run folder (default: runs/<name of DATA>)")
    parser.add_argument("--params", default="params.toml", help="params file (default: %(default)s)")
    return parser


def default_run(data: str | Path) -> Path:
    """``runs/<basename of DATA without extension>``, as the Makefile computes it."""
    return Path("runs") / Path(str(data).rstrip("/")).stem


def resolve_args(args: argparse.Namespace) -> None:
    """Fill in the run folder default (used by the CLI before logging starts)."""
    args.run = args.run or str(default_run(args.data))


def main(args: argparse.Namespace) -> int:
    """CLI: read params, run prepare, print the split table."""
    p = params_mod.load(args.params, "prepare")
    cfg = params_mod.load(args.params, "preprocess")
    data = Path(args.data)
    run = Path(args.run or default_run(data))
    summary = prepare(data, run, p, cfg, args.layout)
    width = max(len(k) for k in next(iter(summary.counts.values()))) if summary.counts else 5
    print(f"{'label':<{max(width, 5)}} " + " ".join(f"{s:>7}" for s in SPLITS))
    for label in summary.counts["train"]:
        print(f"{label:<{max(width, 5)}} " + " ".join(f"{summary.counts[s][label]:>7}" for s in SPLITS))
    print(f"rejected: {summary.rejected}  (run folder: {run})")
    return 0
