"""Prepare: ingest + audit + preprocess + split a labeled image collection into a run folder.

Writes to the run folder (``--run``, default ``runs/<name of DATA>``):
``X_<split>.npy`` / ``y_<split>.npy`` for train, val and test (float32 model
input and int label indices; rows in manifest order), ``manifest.csv``
(path,label,split), ``labels.json`` (label -> index), ``rejected.csv``
(path,reason), ``dataset.json`` (counts, size/mode census, rejections,
duplicates, conflicts, leakage, warnings), ``samples.png``, and last the stage
marker ``prepare.json``. Given ``train/``, ``val/``, ``test/`` folders (or a
split column) are honoured; otherwise a stratified, seeded ``train_test_split``
makes them. Every file is decoded once; bad files are reported, never fatal;
the user's files are only read. Nothing is redone when files, params and code
are unchanged.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
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

from . import __version__, artifacts, audit, ingest, params as params_mod
from .audit import Meta
from .params import IngestParams, PrepareParams, PreprocessParams
from .preprocess import inspect_image, preprocess

log = logging.getLogger(__name__)

MARKER = "prepare.json"
SPLITS = ("train", "val", "test")
CHUNK = 128  # images per worker task: amortises inter-process overhead
Result = tuple[np.ndarray | None, str, Meta | None]
_worker_cfg: PreprocessParams | None = None


# ---------------------------------------------------------------- decoding
def _init_worker(cfg: PreprocessParams) -> None:
    global _worker_cfg
    _worker_cfg = cfg


def _decode_chunk(paths: Sequence[str]) -> tuple[np.ndarray, list[tuple[str, Meta | None]]]:
    """Worker: decode + preprocess a chunk; the good arrays stacked, plus (reason, meta) per path."""
    assert _worker_cfg is not None
    arrays, info = [], []
    for path in paths:
        arr, reason, d = inspect_image(path, _worker_cfg)
        if arr is not None:
            arrays.append(arr)
        info.append((reason, Meta(d.width, d.height, d.mode, d.format, d.sha1) if d else None))
    stacked = np.stack(arrays) if arrays else np.zeros((0,) + _worker_cfg.input_shape, np.float32)
    return stacked, info


def decode_files(paths: Sequence[str], cfg: PreprocessParams, workers: int = 0) -> Iterator[Result]:
    """Decode + preprocess each file once, in order, in worker processes; yield (array|None, reason, meta)."""
    workers = workers or os.cpu_count() or 1
    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    with tqdm(total=len(paths), desc="decode", unit="img") as bar:
        if workers == 1 or len(paths) < 2 * CHUNK:  # a pool's start-up would cost more than it saves
            _init_worker(cfg)
            results: Iterator = map(_decode_chunk, chunks)
            pool = None
        else:
            # spawn, not fork: the caller may have TensorFlow's threads running.
            pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(cfg,))
            results = pool.imap(_decode_chunk, chunks)
        try:
            for stacked, info in results:
                k = 0
                for reason, meta in info:
                    if meta is None:
                        yield None, reason, None
                    else:
                        yield stacked[k], "", meta
                        k += 1
                bar.update(len(info))
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()


def decode_pixels(source: Path, cfg: PreprocessParams) -> Iterator[Result]:
    """Rows of a pixel CSV through the same preprocessing; yield (array|None, reason, meta)."""
    for img, reason in tqdm(ingest.iter_pixel_images(source), desc="pixels", unit="img"):
        if img is None:
            yield None, reason, None
        else:
            meta = Meta(img.shape[1], img.shape[0], "L", "pixels", hashlib.sha1(img.tobytes()).hexdigest())
            yield preprocess(img, cfg), "", meta


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
    """Split name per item: given splits are kept; missing test/val are carved from train."""
    given_arr = np.array([g or "train" for g in given], dtype=object)
    has = set(given_arr.tolist()) if any(given) else set()
    out = given_arr.copy()
    train_idx = np.flatnonzero(given_arr == "train")
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


def _input_fingerprint(listing: ingest.Listing) -> str:
    """Cheap fingerprint of the sources: path, label, split, size and mtime of each file."""
    if listing.source is not None and listing.layout == "pixels":
        st = os.stat(listing.source)
        return artifacts.fingerprint(str(listing.source), st.st_size, st.st_mtime_ns)
    if listing.stats is not None:
        return artifacts.fingerprint([(it.path, it.label, it.split) for it in listing.items], listing.stats,
                                     listing.rejected)
    stats = []
    for item in listing.items:
        try:
            st = os.stat(listing.root / item.path)
            stats.append((item.path, item.label, item.split, st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((item.path, item.label, item.split, -1, -1))
    return artifacts.fingerprint(stats, listing.rejected)


def artifact_names() -> list[str]:
    names = ["manifest.csv", "labels.json", "rejected.csv", "dataset.json"]
    return names + [f"{a}_{s}.npy" for s in SPLITS for a in ("X", "y")]


@dataclass
class Summary:
    """What prepare produced, for logs and tests."""

    counts: dict[str, dict[str, int]]
    rejected: int
    dataset: dict
    skipped: bool = False


def prepare(data: Path, run: Path, p: PrepareParams, cfg: PreprocessParams, layout: str = "auto",
            ip: IngestParams | None = None) -> Summary:
    """Run the whole stage: list, decode once, audit, split, write artifacts, marker last."""
    ip = ip or IngestParams()
    listing = ingest.scan(data, layout, ip)
    marker_path = run / MARKER
    fp = artifacts.fingerprint(_input_fingerprint(listing), params_mod.to_dict(p), params_mod.to_dict(cfg),
                               params_mod.to_dict(ip), listing.layout, __version__)
    if marker_path.is_file() and all((run / n).is_file() for n in artifact_names()):
        try:
            old = artifacts.read_json(marker_path, "prepare marker")
        except artifacts.StageError:
            old = {}
        if old.get("fingerprint") == fp:
            log.info("prepare: %s is up to date with %s; nothing to do", run, data)
            dataset = artifacts.read_json(run / "dataset.json", "dataset summary")
            return Summary(old["counts"], old["rejected"], dataset, skipped=True)

    run.mkdir(parents=True, exist_ok=True)
    artifacts.remove_stale_temps(run)
    marker_path.unlink(missing_ok=True)  # outputs are untrusted until the new marker is written
    log.info("prepare: %s layout, %d candidate(s) under %s", listing.layout, len(listing.items), data)
    if listing.items and all(it.label is None for it in listing.items):
        raise artifacts.StageError(f"{listing.source or data} has no label column; "
                                   "an unlabelled pixel CSV can only be used for prediction")

    rejected = list(listing.rejected)
    where = listing.source.parent if listing.layout == "pixels" and listing.source else listing.root
    where_s = str(where)
    shape = cfg.input_shape
    good: list[int] = []
    metas: list[Meta] = []
    # All decoded images go to one scratch memmap (bounded RAM), then per split.
    tmp_all = run / f".decoded{artifacts.TMP_TAG}{os.getpid()}.npy"
    try:
        buf = np.lib.format.open_memmap(tmp_all, mode="w+", dtype=np.float32,
                                        shape=(max(1, len(listing.items)),) + shape)
        if listing.layout == "pixels":
            results = decode_pixels(listing.source, cfg)
        else:
            root_s = str(listing.root)
            results = decode_files([os.path.join(root_s, it.path) for it in listing.items], cfg, p.workers)
        for i, (arr, reason, meta) in enumerate(results):
            item = listing.items[i]
            if arr is None:
                rejected.append((item.path, reason))
            elif item.label is None:
                rejected.append((item.path, "no label"))
            else:
                buf[len(good)] = arr
                good.append(i)
                metas.append(meta)
        buf.flush()
        artifacts.write_text(run / "rejected.csv", _csv_text(("path", "reason"), rejected))
        if rejected:
            log.warning("rejected %d file(s), see %s", len(rejected), run / "rejected.csv")
        items = [listing.items[i] for i in good]
        if not items:
            raise artifacts.StageError(f"no usable image in {data} ({len(rejected)} file(s) rejected, "
                                       f"see {run / 'rejected.csv'})")
        labels = label_map([it.label for it in items], p.labels)
        if len(labels) < 2:
            raise artifacts.StageError(f"need at least 2 classes with usable images; found {list(labels)} in {data}")
        y = np.array([labels[it.label] for it in items], dtype=np.int64)
        splits = assign_splits(y, [it.split for it in items], p)
        paths = [it.path for it in items]
        duplicates, conflicts = audit.duplicate_groups(paths, [it.label for it in items], metas)
        leaks = audit.find_leakage(splits, metas)
        leakage = [{"path": paths[i], "split": str(splits[i]), "same_as": paths[j]} for i, j in leaks]
        if leaks and ip.leakage == "drop":
            splits[[i for i, _ in leaks]] = "dropped"
        manifest_rows = []
        counts: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            rows = np.flatnonzero(splits == split)
            _copy_rows(buf, rows, run / f"X_{split}.npy")
            artifacts.save_npy(run / f"y_{split}.npy", y[rows])
            manifest_rows += [(os.path.join(where_s, items[r].path), items[r].label, split) for r in rows]
            per = Counter(items[r].label for r in rows)
            counts[split] = {name: per.get(name, 0) for name in labels}
        del buf
    finally:
        tmp_all.unlink(missing_ok=True)
    action = "dropped from val/test" if ip.leakage == "drop" else "kept"
    dataset = audit.summarize(labels, counts, paths, metas, rejected, duplicates, conflicts, leakage, action,
                              ip.imbalance_ratio)
    dataset.update({"data": str(data), "layout": listing.layout})
    for warning in dataset["warnings"]:
        log.warning("%s", warning)
    if sum(counts["test"].values()) == 0:
        log.warning("the test split is empty: evaluate will have nothing to measure")
    x_train = artifacts.load_npy(run / "X_train.npy", "train images")
    y_train = np.load(run / "y_train.npy")
    with artifacts.atomic_path(run / "samples.png", suffix=".png") as tmp:
        audit.sample_grid(x_train, y_train, list(labels)).save(tmp, format="PNG")
    artifacts.write_text(run / "manifest.csv", _csv_text(("path", "label", "split"), manifest_rows))
    artifacts.write_json(run / "labels.json", labels)
    artifacts.write_json(run / "dataset.json", dataset)
    artifacts.write_json(marker_path, {
        "stage": "prepare", "version": __version__, "fingerprint": fp, "data": str(data.resolve()),
        "layout": listing.layout, "params": params_mod.to_dict(p), "ingest": params_mod.to_dict(ip),
        "preprocess": params_mod.to_dict(cfg), "counts": counts, "rejected": len(rejected),
    })
    totals = {s: sum(c.values()) for s, c in counts.items()}
    log.info("prepare: %d usable images in %d classes -> train %d, val %d, test %d; %d rejected",
             len(items), len(labels), totals["train"], totals["val"], totals["test"], len(rejected))
    return Summary(counts, len(rejected), dataset)


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--data", required=True, help="dataset folder, or a .csv/.tsv file")
    parser.add_argument("--layout", default="auto", choices=ingest.LAYOUTS,
                        help="auto | folders | filenames | csv | pixels (default: %(default)s)")
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
    """CLI: read params, run prepare, print the dataset table."""
    p = params_mod.load(args.params, "prepare")
    cfg = params_mod.load(args.params, "preprocess")
    ip = params_mod.load(args.params, "ingest")
    data = Path(args.data)
    run = Path(args.run or default_run(data))
    summary = prepare(data, run, p, cfg, args.layout, ip)
    print(audit.format_summary(summary.dataset))
    print(f"run folder: {run}")
    return 0
