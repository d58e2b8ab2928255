"""Prepare: ingest + audit + preprocess + split a labeled image collection into a run folder.

Writes to the run folder (``--run``, default ``runs/<name of DATA>``):
``X_<split>.npy`` / ``y_<split>.npy`` for train, val and test (float32 model
input and int label indices; rows in manifest order), ``manifest.csv``
(path,label,split), ``labels.json`` (label -> index), ``rejected.csv``
(path,reason), ``dataset.json`` (counts, size/mode census, rejections,
duplicates, conflicts, leakage, copies and look-alikes, outliers, image quality,
shortcuts, warnings), the review page's ``quality.csv``, ``similar.csv`` and
``outliers.csv`` (one row per flagged image, paths as in the manifest),
``samples.png``, and last the stage marker ``prepare.json`` (with the seconds of
each audit check). Given ``train/``, ``val/``, ``test/`` folders (or a split
column) are honoured; otherwise a stratified, seeded shuffle split (scikit-learn's
``train_test_split``, reimplemented: :func:`shuffle_split`) makes them. Every file is
decoded once, and the workers take each image's audit facts while they have it;
bad files are reported, never fatal; the user's files are only read. After
decoding, the idle workers search the hash bands for candidate copies, then compute the
outliers, the flip symmetry and the samples grid, while this process finds duplicates and
leakage and sorts the candidates; the decoded arrays go to disk meanwhile. Nothing is
redone when files, params and code are unchanged.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import logging
import operator
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline import __version__
from pipeline.data import audit, census, corrections, ingest, mnist, quality, similar, split as splitting
from pipeline.data.decoding import census as census_of
from pipeline.data.decoding import beside_workers, decode_into, facts_of, keep_freed_memory, start_pool
from pipeline.data.preprocess import Meta, preprocess
from pipeline.shared import artifacts, cli, plots
from pipeline.shared import params as params_mod
from pipeline.shared import runfolder as rf
from pipeline.shared.errors import UserError
from pipeline.shared.params import ClusterParams, IngestParams, PrepareParams, PreprocessParams

log = logging.getLogger(__name__)

MARKER = rf.PREPARE
SPLITS = rf.SPLITS


# ---------------------------------------------------------------- decoding
def _pixel_meta(img: np.ndarray) -> tuple[Meta, bool]:
    """The meta of an image given as a row of pixels, and whether its canonical view is its negative."""
    hashes, thumbs, negative = similar.signatures([img])
    stats = tuple(quality.image_stats([img], [img])[0].tolist())
    return Meta(img.shape[1], img.shape[0], "L", "pixels", hashlib.sha1(img.tobytes()).hexdigest(), int(hashes[0]),
                thumbs[0].tobytes(), stats=stats), bool(negative[0])


def _reserve(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now: a full disk is then a clear OSError here,
    not a SIGBUS in a worker writing into a page the file system cannot back."""
    with open(path, "r+b") as fh:
        os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)


def _decode_to_splits(listing: ingest.Listing, by_split: dict[str, list[int]], files: dict[str, Path],
                      cfg: PreprocessParams, pool: Any, rejected: list[tuple[str, str]]) -> audit.MetaTable:
    """Decode every candidate once into row r of ``files[split]`` (item ``by_split[split][r]``).

    Returns the meta of each usable item by its index in the listing; unusable ones
    are appended to ``rejected`` (their rows stay unset and are compacted away later).
    """
    # Three flat arrays, not a tuple per file: the listing is the only per-file Python object.
    item = np.array([i for s in SPLITS for i in by_split[s]], dtype=np.int64)
    split = np.repeat(np.arange(len(SPLITS)), [len(by_split[s]) for s in SPLITS])
    row = np.concatenate([np.arange(len(by_split[s]), dtype=np.int64) for s in SPLITS])
    for s in SPLITS:
        np.lib.format.open_memmap(files[s], mode="w+", dtype=np.float32,
                                  shape=(len(by_split[s]),) + cfg.input_shape).flush()
        _reserve(files[s])
    metas = audit.MetaTable(len(listing.items))
    if listing.layout == "pixels":  # rows are parsed here: cheap next to image decoding
        outs = {s: np.load(files[s], mmap_mode="r+", allow_pickle=False) for s in SPLITS}
        slot = {int(i): (SPLITS[k], int(r)) for i, k, r in zip(item, split, row)}
        rows = tqdm(ingest.iter_pixel_images(listing.source), desc="pixels", unit="img")
        for i, (img, reason) in enumerate(rows):
            if img is None:
                rejected.append((listing.items[i].path, reason))
            elif i in slot:  # rows without a label are not candidates
                s, r = slot[i]
                outs[s][r] = preprocess(img, cfg)
                meta, metas.negative[i] = _pixel_meta(img)
                metas.put(i, meta)
        for arr in outs.values():
            arr.flush()
        return metas
    prefix = str(listing.root) + os.sep
    names = [str(files[s]) for s in SPLITS]

    def paths(i: int, j: int) -> list[str]:
        return [prefix + listing.items[k].path for k in item[i:j].tolist()]

    def targets(i: int, j: int) -> list[tuple[str, int]]:
        return [(names[k], r) for k, r in zip(split[i:j].tolist(), row[i:j].tolist())]

    pos = 0
    for chunk in decode_into(len(item), paths, targets, cfg, pool):
        slots = item[pos:pos + len(chunk)]
        for k in np.flatnonzero(~chunk.good).tolist():
            rejected.append((listing.items[int(slots[k])].path, chunk.reasons[k]))
        metas.put_chunk(slots[chunk.good], chunk)
        pos += len(chunk)
    return metas


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
    keep, held = shuffle_split(pool, n_held, seed, stratify)
    return np.sort(np.concatenate([keep, idx[single]])), np.sort(held)


def _approximate_mode(counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of ``n_draws`` to take from each class: the floored proportional share, the rest given
    by the largest remainders, ties broken at random."""
    continuous = counts / counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add = min(len(inds), need)
            floored[rng.choice(inds, size=add, replace=False)] += 1
            need -= add
            if need == 0:
                break
    return floored.astype(int)


def shuffle_split(items: np.ndarray, n_held: int, seed: int, stratify: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held) of ``items`` with ``n_held`` held out at random, stratified by ``stratify`` when given:
    the same split as scikit-learn's ``train_test_split(items, test_size=n_held, random_state=seed,
    stratify=stratify)`` (ShuffleSplit / StratifiedShuffleSplit, tested), without importing it (a second
    of start-up), and stable whatever scikit-learn version is installed."""
    rng = np.random.RandomState(seed)
    n_keep = len(items) - n_held
    if stratify is None:
        perm = rng.permutation(len(items))
        return items[perm[n_held:]], items[perm[:n_held]]
    _, inverse, counts = np.unique(stratify, return_inverse=True, return_counts=True)
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    n_i = _approximate_mode(counts, n_keep, rng)
    t_i = _approximate_mode(counts - n_i, n_held, rng)
    keep: list[int] = []
    held: list[int] = []
    for k, members in enumerate(by_class):
        order = members.take(rng.permutation(counts[k]), mode="clip")
        keep.extend(order[:n_i[k]])
        held.extend(order[n_i[k]:n_i[k] + t_i[k]])
    return items[rng.permutation(keep)], items[rng.permutation(held)]


def assign_splits(y: np.ndarray, given: Sequence[str | None], p: PrepareParams) -> np.ndarray:
    """Split name per item: given splits are kept; missing test/val are carved from train."""
    given_arr = np.array([g or "train" for g in given], dtype=object)
    has = set(given_arr.tolist()) if any(given) else set()
    unnamed = sum(not g for g in given)
    if has and unnamed:
        log.info("prepare: %d item(s) without a split go to train, as other rows name theirs (test and val are "
                 "carved from train only when no row names them)", unnamed)
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
            raise UserError(f"[prepare] labels does not match the data: labels found but not listed "
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


def _write_rows(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Atomically write a CSV row by row (a million rows never sit in memory as one string)."""
    with artifacts.atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)


def _copy_rows(src: Path, rows: np.ndarray, path: Path, chunk: int = 4096) -> None:
    """Atomically write rows ``rows`` of the .npy file ``src`` to a .npy, chunk by chunk, with plain reads and
    writes (bounded memory: no page of either file is mapped into this process)."""
    reader = artifacts.NpyRows(np.load(src, mmap_mode="r", allow_pickle=False))
    with artifacts.atomic_path(path, suffix=".npy") as tmp:
        head = np.lib.format.open_memmap(tmp, mode="w+", dtype=reader.dtype, shape=(len(rows),) + reader.shape[1:])
        offset, row_bytes = artifacts.row_layout(head)
        del head
        _reserve(tmp)
        fd = os.open(tmp, os.O_WRONLY)
        try:
            for i in range(0, len(rows), chunk):
                os.pwrite(fd, reader.take(rows[i:i + chunk]).tobytes(), offset + i * row_bytes)
        finally:
            os.close(fd)


def _input_fingerprint(listing: ingest.Listing, read: np.ndarray | None = None) -> str:
    """Cheap fingerprint of the sources: path, label, split, size and mtime of each file.

    Sizes and mtimes come from the listing when it took them, else from ``read`` (each item's (size,
    mtime) as the decoder read the file; -1: not read), else from a stat now. Hashed a block of files
    at a time, column by column: a million files never sit in memory as one list or JSON text.
    """
    if listing.source is not None and listing.layout == "pixels":
        st = os.stat(listing.source)
        return artifacts.fingerprint(str(listing.source), st.st_size, st.st_mtime_ns)
    h = hashlib.sha256()
    stats = _file_stats(listing, read)
    for start in range(0, len(listing.items), 65536):
        block = listing.items[start:start + 65536]
        for column in ("\0".join(it.path for it in block), "\0".join(str(it.label) for it in block),
                       "\0".join(str(it.split) for it in block)):
            h.update(column.encode("utf-8", "surrogateescape") + b"\n")
        h.update(stats[start:start + 65536].tobytes())
    return artifacts.fingerprint(h.hexdigest(), listing.rejected)


def _file_stats(listing: ingest.Listing, read: np.ndarray | None) -> np.ndarray:
    """(n, 2) int64: (size, mtime in ns) of each listed file: as listed, as read, or stat now ((-1, -1): no
    such file)."""
    if listing.stats is not None:
        return np.array(listing.stats, np.int64).reshape(-1, 2)
    known = np.array(read, np.int64) if read is not None else np.full((len(listing.items), 2), -1, np.int64)
    prefix = str(listing.root) + os.sep
    for i in np.flatnonzero(known[:, 0] < 0).tolist():
        try:
            st = os.stat(prefix + listing.items[i].path)
            known[i] = st.st_size, st.st_mtime_ns
        except OSError:
            pass
    return known


def artifact_names() -> list[str]:
    return [rf.MANIFEST, rf.LABELS, rf.REJECTED, rf.DATASET, rf.QUALITY, rf.SIMILAR, rf.OUTLIERS, *rf.prepared_arrays()]


@dataclass
class Summary:
    """What prepare produced, for logs and tests."""

    counts: dict[str, dict[str, int]]
    rejected: int
    dataset: dict
    skipped: bool = False


@dataclass
class SplitPlan:
    """The candidates (items with a label) and the split each is decoded into."""

    by_split: dict[str, list[int]]
    rejected: list[tuple[str, str]]

    @property
    def order(self) -> list[int]:
        return [i for s in SPLITS for i in self.by_split[s]]


@dataclass
class Usable:
    """The usable items after decoding, their labels and audit facts."""

    good: list[int]
    labels: dict[str, int]
    metas: audit.MetaTable
    split_of: np.ndarray  # int8 per listed item: its split's index in SPLITS
    multi: bool = False  # several labels per image: an item's label is its labels joined

    def y(self, joined: Sequence[str]) -> np.ndarray:
        """The label index of each item, or (multi-label) the (N, L) multi-hot matrix."""
        if self.multi:
            return ingest.multi_hot(joined, self.labels)
        return np.array([self.labels[lab] for lab in joined], dtype=np.int64)


def prepare(data: Path, run: Path, p: PrepareParams, cfg: PreprocessParams, layout: str = "auto",
            ip: IngestParams | None = None, corrections: Path | None = None,
            cluster: ClusterParams | None = None) -> Summary:
    """Run the whole stage: list, decode once, audit, split, write artifacts, marker last.

    ``corrections`` (default: ``corrections.csv`` in the run folder, when there is one)
    relabels or excludes images before anything else looks at them. ``cluster``: where the decoding
    and the audit's jobs run (the local pool, or Ray: the same files either way).
    """
    ip = ip or IngestParams()
    if cluster is not None and cluster.engine == "ray":  # a task may run on another node: no relative paths
        data, run = Path(data).resolve(), Path(run).resolve()
    keep_freed_memory()  # the audit's arrays: from the heap, not fresh pages each time
    pool = start_pool(p.workers, cluster)  # workers start up while we list the files
    try:
        with beside_workers(pool):
            return _prepare(data, run, p, cfg, layout, ip, pool, corrections)
    finally:
        if pool is not None:
            pool.close()


def _prepare(data: Path, run: Path, p: PrepareParams, cfg: PreprocessParams, layout: str,
             ip: IngestParams, pool: Any, corrections_file: Path | None) -> Summary:
    t0 = time.perf_counter()
    done_before = (run / rf.PREPARE).is_file() and all((run / n).is_file() for n in artifact_names())
    listing, fixed, labeled = _listed(data, run, layout, ip, p, corrections_file, done_before)
    if done_before and rf.is_current(run / rf.PREPARE, _fingerprint(listing, p, cfg, ip, fixed)):
        log.info("prepare: %s is up to date with %s; skipped", run, data)
        old = rf.read_marker(run / rf.PREPARE)
        return Summary(old["counts"], old["rejected"], artifacts.read_json(run / rf.DATASET, "dataset summary"),
                       skipped=True)
    plan = _plan(listing, p, data)  # before the run folder is made: data without labels leaves none behind
    run.mkdir(parents=True, exist_ok=True)
    artifacts.remove_stale_temps(run)
    (run / rf.PREPARE).unlink(missing_ok=True)  # outputs are untrusted until the new marker is written
    added = labeled["added"] if labeled else 0
    log.info("prepare: %s layout, %d candidate(s) under %s%s", listing.layout, len(listing.items) - added, data,
             f", and {added} labeled in review ({rf.LABELED})" if added else "")
    asked = cfg  # the fingerprint's: as given, "auto" and all
    cfg, choices = _resolve(listing, plan, cfg, pool, p.seed)
    tmp_files = {s: run / f".X_{s}.npy{artifacts.TMP_TAG}{os.getpid()}" for s in SPLITS}
    tmp_files["y_train"] = run / f".y_train.npy{artifacts.TMP_TAG}{os.getpid()}"  # for the symmetry job
    try:
        metas = _decode_to_splits(listing, plan.by_split, tmp_files, cfg, pool, plan.rejected)
        log.debug("prepare: decoded after %.2fs", time.perf_counter() - t0)
        artifacts.write_text(run / rf.REJECTED, _csv_text(("path", "reason"), plan.rejected))
        if plan.rejected:
            log.warning("rejected %d file(s) or folder(s) (%s), see %s", len(plan.rejected), _reasons(plan.rejected),
                        run / rf.REJECTED)
        decoded = _usable(listing, plan, metas, p, data, run)
        bands = _hash_band_jobs(pool, decoded)  # first in the idle workers: the copy search waits for them
        flushed = artifacts.fsync_started([tmp_files[s] for s in SPLITS])  # complete: to disk while we audit
        later = _beside_audit(pool, plan, decoded, listing, tmp_files)
        audited = _audit(listing, plan, decoded, ip, cfg, tmp_files, pool, bands)
        symmetry = later["symmetry"].get()  # it reads the training file: done before that file moves
        kept, counts = _write_arrays(listing, plan, decoded, audited["dropped"], tmp_files, run, flushed)
    finally:
        for f in tmp_files.values():
            f.unlink(missing_ok=True)
    log.debug("prepare: arrays written after %.2fs", time.perf_counter() - t0)
    dataset = _summary(listing, plan, decoded, audited, counts, choices, ip, data, symmetry, run)
    dataset["corrections"] = fixed
    dataset["labeled"] = labeled
    dataset["review"] = _review_before(run, fixed, labeled, _Where(listing),
                                       kept["test"] if listing.task != "multi" else ())  # one label each: scored
    _write_outputs(run, listing, kept, decoded.labels, dataset, audited, later["samples"])
    marker = rf.write_marker(run / rf.PREPARE, _fingerprint(listing, p, asked, ip, fixed, metas.file_stat),
                             stage="prepare", version=__version__,
                             data=str(data.resolve()), data_given=str(data), layout=listing.layout, task=listing.task,
                             params=params_mod.to_dict(p),
                             ingest=params_mod.to_dict(ip), preprocess=params_mod.to_dict(cfg),
                             preprocess_choices=choices, counts=counts, rejected=len(plan.rejected),
                             dropped=len(audited["dropped"]),
                             audit_seconds={k: round(v, 3) for k, v in audited["seconds"].items()})
    _log_done(listing, data, run, marker)
    return Summary(counts, len(plan.rejected), dataset)


def _listed(data: Path, run: Path, layout: str, ip: IngestParams, p: PrepareParams, corrections_file: Path | None,
            stat: bool) -> tuple[ingest.Listing, dict[str, Any] | None, dict[str, Any] | None]:
    """The files to prepare, split, with the review's decisions applied and its labeled images added; and
    what the corrections and labeled.csv did. Sizes and mtimes (``stat``) are taken up front only to tell
    whether a finished run is up to date; otherwise the workers take them as they read each file."""
    t0 = time.perf_counter()
    listing = ingest.scan(data, layout, ip, stat=stat)
    log.debug("prepare: listed %d files in %.2fs", len(listing.items), time.perf_counter() - t0)
    if listing.hidden:  # a folder of real images named ".x" would otherwise vanish without a word
        log.info("prepare: passed over %d hidden file(s) or folder(s) (names starting with '.', e.g. %s); "
                 "rename one to include it", len(listing.hidden), ", ".join(listing.hidden[:3]))
    listing = _presplit(listing, p)  # before corrections: a review changes labels, never the split
    listing, labeled = corrections.add_labeled(listing, run / rf.LABELED)  # before: a later review decides on them
    if labeled:
        log.info("prepare: %s: %d image(s) labeled in review added to train%s", run / rf.LABELED, labeled["added"],
                 f"; {labeled['gone_count']} gone" if labeled["gone_count"] else "")
    listing, fixed = _correct(listing, corrections_file or run / rf.CORRECTIONS, corrections_file is not None)
    if ip.label_case == "ignore":
        listing, merged = ingest.merge_label_case(listing)
        for name, spellings in merged.items():
            log.info('prepare: label_case = "ignore": %s are one class, %r', " / ".join(map(repr, spellings)), name)
    return listing, fixed, labeled


def _review_before(run: Path, fixed: dict[str, Any] | None, labeled: dict[str, Any] | None,
                   where: Callable[[str], str] = str, test: Sequence[ingest.Item] = ()) -> dict[str, Any] | None:
    """The test accuracy before any of the decisions now applied, for the report's before/after (it counts
    all of them): the run's last evaluation when decisions were first applied, kept through later rounds
    of review (``rounds``; ``accuracy_last_round``: the evaluation before the latest round); and
    ``accuracy_before_relabeled``, that model's answers scored by the labels the decisions give the ``test``
    images now (how much of the difference is the test labels, not the model)."""
    if not fixed and not labeled:
        return None
    key = artifacts.fingerprint(fixed and fixed["sha256"], labeled)
    old = ((artifacts.read_json(run / rf.DATASET, "dataset summary") if (run / rf.DATASET).is_file() else {})
           .get("review") or {})
    if old.get("decisions") == key:
        return old
    metrics = rf.read_marker(run / rf.METRICS)
    now, tested = metrics.get("accuracy"), metrics.get("n")
    if not old:  # the first round of decisions
        return {"decisions": key, "accuracy_before": now, "tested_before": tested, "rounds": 1,
                "accuracy_before_relabeled": _before_relabeled(run, where, test) if now is not None else None}
    return {"decisions": key, "accuracy_before": old.get("accuracy_before"), "tested_before": old.get("tested_before"),
            "rounds": old.get("rounds", 1) + 1, "accuracy_last_round": now}


def _before_relabeled(run: Path, where: Callable[[str], str], test: Sequence[ingest.Item]) -> float | None:
    """The last evaluation's test answers (``test_probs.npy``, in the previous manifest's test order) scored by
    the labels of the ``test`` items now (None: no evaluation of this manifest, or no items: multi-label)."""
    try:
        probs = np.load(run / rf.PROBS, allow_pickle=False)
        names = rf.labels_from_map(artifacts.read_json(run / rf.LABELS, "label map"), str(run / rf.LABELS))
        with open(run / rf.MANIFEST, newline="", encoding="utf-8") as fh:
            paths = [r["path"] for r in csv.DictReader(fh) if r["split"] == "test"]
    except (OSError, ValueError, KeyError, artifacts.StageError):
        return None
    if probs.ndim != 2 or probs.shape != (len(paths), len(names)):
        return None
    now = {where(it.path): it.label for it in test}
    said = [names[k] for k in probs.argmax(axis=1).tolist()]
    scored = [label == now[path] for path, label in zip(paths, said) if path in now]
    return round(sum(scored) / len(scored), 6) if scored else None


def _presplit(listing: ingest.Listing, p: PrepareParams) -> ingest.Listing:
    """Every labeled item with its split, given or drawn (stratified, seeded) from the data as it is,
    before corrections relabel or exclude images: the test split of a dataset stays the same from one
    review to the next, so accuracies before and after compare."""
    cand = [i for i, it in enumerate(listing.items) if it.label is not None]
    if not cand or all(listing.items[i].split is not None for i in cand):
        return listing
    joined = [listing.items[i].label for i in cand]
    given = [listing.items[i].split for i in cand]
    if listing.task == "multi":  # every label keeps its share in every split
        y = ingest.multi_hot(joined, ingest.label_names(joined))
        split = splitting.assign(y, given, p.test_size, p.val_size, p.seed)
    else:
        split = assign_splits(np.unique(joined, return_inverse=True)[1], given, p)
    items = list(listing.items)
    for k, i in enumerate(cand):
        items[i] = replace(items[i], split=str(split[k]))
    return replace(listing, items=items)


def _correct(listing: ingest.Listing, path: Path, given: bool) -> tuple[ingest.Listing, dict[str, Any] | None]:
    """Apply the corrections file (given, or found in the run folder) to the listing; log what it did."""
    if not path.is_file():
        if given:
            raise artifacts.StageError(f"corrections file not found: {path}")
        return listing, None
    listing, summary = corrections.apply(listing, corrections.read(path, listing))
    log.info("prepare: %s: %d relabeled, %d excluded, %d kept as they are%s (the files under DATA are untouched)",
             path, summary["relabeled"], summary["excluded"], summary.get("kept", 0),
             f", new classes {summary['new_labels']}" if summary["new_labels"] else "")
    if summary["gone_count"]:
        log.warning("prepare: %s: %d decision(s) about images no longer in the data, not applied: %s", path,
                    summary["gone_count"], ", ".join(summary["gone"][:5]))
    return listing, summary


def _fingerprint(listing: ingest.Listing, p: PrepareParams, cfg: PreprocessParams, ip: IngestParams,
                 fixed: dict[str, Any] | None, read: np.ndarray | None = None) -> str:
    """The stage's fingerprint (``read``: each file's (size, mtime) as decoded, see :func:`_input_fingerprint`)."""
    return rf.fingerprint("prepare", upstream=[_input_fingerprint(listing, read)], params=[p, cfg, ip],
                          extra=[listing.layout, fixed["sha256"] if fixed else None])


def _plan(listing: ingest.Listing, p: PrepareParams, data: Path) -> SplitPlan:
    """Split before decoding, so each image is decoded straight into its split's array (no
    scratch copy); files that turn out unusable are compacted away after."""
    if listing.items and all(it.label is None for it in listing.items):
        raise artifacts.StageError(f"{listing.source or data} has no label column; "
                                   "an unlabelled pixel CSV can only be used for prediction")
    rejected = list(listing.rejected)
    cand = [i for i, it in enumerate(listing.items) if it.label is not None]
    rejected += [(listing.items[i].path, "no label") for i, it in enumerate(listing.items) if it.label is None]
    names, pre_y = np.unique([listing.items[i].label for i in cand], return_inverse=True) if cand else ([], [])
    if listing.task != "multi" and len(names) < 2:
        raise artifacts.StageError(_too_few_labels(listing, [str(n) for n in names], cand, data, len(rejected)))
    pre_split = assign_splits(pre_y, [listing.items[i].split for i in cand], p) if cand else np.array([])
    return SplitPlan({s: [cand[k] for k in np.flatnonzero(pre_split == s)] for s in SPLITS}, rejected)


def _too_few_labels(listing: ingest.Listing, names: list[str], cand: list[int], data: Path, unlabeled: int) -> str:
    """Why data with fewer than 2 labels cannot be learned from, said before anything is decoded, with what to do."""
    found = f"{len(names)} label ({names[0]!r})" if names else "no label"
    if listing.layout == "folders":
        where = f"{found} folder with files in {data}"
    elif listing.layout == "filenames":
        example = f"; {listing.items[cand[0]].path} gives {names[0]!r}" if names else ""
        where = (f"{found} in the file names under {data}{example}"
                 + (f"; {unlabeled} file name(s) give none" if unlabeled else ""))
    else:
        where = f"{found} in {listing.source or data}"
        if listing.rejected and len(names) < 2:  # the mapping file is there: its rows were refused, say why
            path, why = listing.rejected[0]
            return (f"{len(listing.rejected)} of the rows of {listing.source or data} were refused ("
                    + _reasons(listing.rejected) + f"; the first: {path}, {why}), so it names {found}; 2 classes "
                    "are needed. Its paths are read relative to its own folder and must stay inside it: keep the "
                    "CSV in the images' folder or above it")
    return (f"need at least 2 classes, found {where}. Put each label's images in a folder of its own "
            f"({data}/cat/..., {data}/dog/...) or list them in a CSV of path,label (README: Your own images)")


def _reasons(rejected: Sequence[tuple[str, str]], most: int = 3) -> str:
    """The commonest reasons of rejected entries with their counts ("2 file not found; 1 absolute path refused")."""
    counts = audit.reason_counts(rejected)
    most = most if len(counts) > most + 1 else len(counts)  # one reason left over: named, not "1 other"
    shown = "; ".join(f"{n} {why}" for why, n in counts[:most])
    return shown + (f"; {sum(n for _, n in counts[most:])} other" if len(counts) > most else "")


def _resolve(listing: ingest.Listing, plan: SplitPlan, cfg: PreprocessParams, pool: Any,
             seed: int) -> tuple[PreprocessParams, dict[str, Any]]:
    """Settle ``"auto"`` preprocessing from a census of (a sample of) the files; log each choice."""
    needs = params_mod.AUTO in (cfg.color, cfg.size, cfg.invert, cfg.background)
    facts: list[census.Facts] = []
    if needs and listing.layout == "pixels" and listing.source is not None:  # a sample of the rows, as of files
        rows = ingest.PixelRows(listing.source)
        got = [rows.get(k)[0] for k in census.sample(len(listing.items), seed).tolist()]
        facts = [census.Facts(*facts_of(img)) for img in got if img is not None]
    elif needs:
        order = plan.order
        picked = [order[k] for k in census.sample(len(order), seed)]
        prefix = str(listing.root) + os.sep
        look = replace(cfg, color="rgb", size=(28, 28), invert="false", normalize="none")
        got = census_of([prefix + listing.items[i].path for i in picked], look, pool)
        facts = [census.Facts(*f) for _, f in got if f is not None]
    resolved, choices = census.resolve(cfg, facts)
    for key in ("color", "size", "invert", "background"):
        log.info("prepare: %s = %s (%s)", key, choices[key]["value"], choices[key]["why"])
    return resolved, choices


def _usable(listing: ingest.Listing, plan: SplitPlan, metas: audit.MetaTable, p: PrepareParams, data: Path,
            run: Path) -> Usable:
    """The items that decoded, and the label map (refusing data with fewer than 2 classes)."""
    order = np.asarray(plan.order, np.int64)
    good = order[metas.filled[order]].tolist()
    if not good:
        raise artifacts.StageError(f"no usable image in {data} ({len(plan.rejected)} file(s) or folder(s) rejected, "
                                   f"see {run / rf.REJECTED})")
    found = [listing.items[i].label for i in good]
    multi = listing.task == "multi"
    labels = label_map(ingest.label_names(found) if multi else found, p.labels)
    if len(labels) < (1 if multi else 2):
        raise artifacts.StageError(f"need at least {'1 label' if multi else '2 classes'} with usable images; "
                                   f"found {list(labels)} in {data}")
    split_of = np.zeros(len(listing.items), np.int8)
    for k, s in enumerate(SPLITS):
        split_of[np.asarray(plan.by_split[s], np.int64)] = k
    return Usable(good, labels, metas, split_of, multi)


def _audit(listing: ingest.Listing, plan: SplitPlan, d: Usable, ip: IngestParams, cfg: PreprocessParams,
           tmp_files: dict[str, Path], pool: Any, bands: list[Any] | None = None) -> dict[str, Any]:
    """The audit of the usable items: duplicates, conflicts and leakage (and which val/test items to
    drop), then, on the items kept, copies and look-alikes, outliers, image quality and shortcuts
    (``bands``: :func:`_hash_band_jobs`, the hash search of the copies, when it runs in the workers)."""
    t0 = time.perf_counter()
    items = [listing.items[i] for i in d.good]
    paths = [it.path for it in items]
    good_metas = d.metas.take(d.good)
    splits = np.array(SPLITS, dtype=object)[d.split_of[np.asarray(d.good, np.int64)]]
    duplicates, conflicts = audit.duplicate_groups(paths, [it.label for it in items], good_metas)
    leaks = audit.find_leakage(splits, good_metas)
    leakage = [{"path": paths[a], "split": str(splits[a]), "same_as": paths[b]} for a, b in leaks]
    dropped = {d.good[a] for a, _ in leaks} if ip.leakage == "drop" else set()
    seconds = {"duplicates and leakage": time.perf_counter() - t0}
    facts = _Facts.of(listing, plan, d, dropped)
    m = d.metas
    shortcuts = _submit(pool)(quality.shortcuts_of, m.stats[facts.items], m.width[facts.items], m.height[facts.items],
                              facts.y, facts.multi, facts.split == 0, list(d.labels))  # beside the rest
    found = _similarity(facts, d, plan, cfg, tmp_files, pool, seconds, bands)
    found.update(_image_quality(facts, d, seconds, shortcuts))
    in_conflict = {p for g in conflicts for p in g["paths"]}
    return {"paths": paths, "metas": good_metas, "duplicates": duplicates, "conflicts": conflicts,
            "leakage": leakage, "dropped": dropped, "facts": facts, "seconds": seconds,
            "split_of": {p: str(s) for p, s in zip(paths, splits) if p in in_conflict}, **found}


@dataclass
class _Facts:
    """The items the similarity and quality checks look at (the usable ones, less those dropped from
    val/test): listing index, relative path, label, label index and split code of each."""

    items: np.ndarray
    paths: list[str]
    labels: list[str]
    y: np.ndarray  # the class of each; multi-label: the index of its set of labels (copies differ in it)
    split: np.ndarray
    multi: np.ndarray | None = None  # multi-label: the (N, L) multi-hot labels

    @classmethod
    def of(cls, listing: ingest.Listing, plan: SplitPlan, d: Usable, dropped: set[int]) -> "_Facts":
        items = np.array([i for i in d.good if i not in dropped], np.int64)
        labels = [listing.items[i].label for i in items.tolist()]
        y = np.unique(labels, return_inverse=True)[1].astype(np.int64) if d.multi else d.y(labels)
        return cls(items, [listing.items[i].path for i in items.tolist()], labels, y,
                   d.split_of[items], d.y(labels) if d.multi else None)


def _source(plan: SplitPlan, d: Usable, tmp_files: dict[str, Path], items: np.ndarray) -> similar.Source:
    """Where the prepared image of each of ``items`` is: its split's file and its row there."""
    row_of = np.zeros(len(d.split_of), np.int64)
    for s in SPLITS:
        idx = np.asarray(plan.by_split[s], np.int64)
        row_of[idx] = np.arange(len(idx))
    return similar.Source(tuple(str(tmp_files[s]) for s in SPLITS), d.split_of[items], row_of[items])


def _submit(pool: Any) -> Any:
    """``submit(fn, *args)``: in an idle decoding worker (the result: ``.get()``), or here without a pool."""
    if pool is None:
        return similar.here
    return lambda fn, *args: pool.apply_async(fn, args)


def _similarity(f: _Facts, d: Usable, plan: SplitPlan, cfg: PreprocessParams, tmp_files: dict[str, Path],
                pool: Any, seconds: dict[str, float], bands: list[Any] | None = None) -> dict[str, Any]:
    """Copies and look-alikes (dataset.json's findings, similar.csv's groups) and outliers (in the idle
    decoding workers, meanwhile: they read their class's thumbnails from a file, so that nothing queued
    for them grows with the data)."""
    m = d.metas
    thumbs = similar.Taken(m.thumb, f.items)  # no copy: read a block at a time
    thumbs_file = tmp_files["train"].with_name(f".thumbs.npy{artifacts.TMP_TAG}{os.getpid()}") if pool else None
    try:
        if thumbs_file is not None:
            _save_seen(thumbs_file, thumbs, m.negative[f.items])
        group = f.y if f.multi is None else np.zeros(len(f.y), np.int64)  # multi-label: unlike all the rest
        seen = None if thumbs_file else similar.as_seen(thumbs[:], m.negative[f.items])
        jobs = similar.outlier_jobs(seen, group, submit=_submit(pool), path=str(thumbs_file) if thumbs_file else None)
        found = _copies(f, d, plan, cfg, tmp_files, thumbs, pool, seconds, bands)
        t0 = time.perf_counter()
        scores = similar.gather(jobs, len(f.y))
    finally:
        if thumbs_file is not None:
            thumbs_file.unlink(missing_ok=True)
    odd, odd_rows = similar.outliers(f.labels, scores, f.paths)
    seconds["outliers (waited for)"] = time.perf_counter() - t0
    return {**found, "outliers": odd, "outlier_rows": odd_rows}


def _save_seen(path: Path, thumbs: similar.Taken, negative: np.ndarray, block: int = 65536) -> None:
    """``np.save(path, similar.as_seen(thumbs, negative))`` a block at a time (no second copy of them all)."""
    with open(path, "wb") as fh:  # a handle: np.save would add ".npy" to the temp name
        np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(thumbs.dtype),
                                                  "fortran_order": False, "shape": thumbs.shape})
        for i in range(0, len(thumbs), block):
            seen, neg = thumbs[i:i + block], negative[i:i + block]  # a copy: turned back in place
            seen[neg] = 255 - seen[neg]
            fh.write(np.ascontiguousarray(seen).data)


def _copies(f: _Facts, d: Usable, plan: SplitPlan, cfg: PreprocessParams, tmp_files: dict[str, Path],
            thumbs: similar.Taken, pool: Any, seconds: dict[str, float], bands: list[Any] | None = None
            ) -> dict[str, Any]:
    """Copies and look-alikes: dataset.json's findings and similar.csv's groups (the strict copy test's
    blocks of pairs in the decoding workers, in parallel; and the hash search's bands, when ``bands``)."""
    t0 = time.perf_counter()
    m = d.metas
    hashed = None
    if bands is not None:  # pairs among all the usable items: those among the items kept, renumbered
        pairs, stopped = similar.gather_hash_pairs(bands, len(d.good))
        at = np.full(len(d.good), -1, np.int64)
        at[np.isin(np.asarray(d.good, np.int64), f.items)] = np.arange(len(f.items))
        pairs = at[pairs]
        hashed = (pairs[(pairs >= 0).all(axis=1)], stopped)
    source = _source(plan, d, tmp_files, f.items)
    pitches = similar.pitch(m.width[f.items], m.height[f.items], cfg.size, cfg.resize, cfg.normalize)
    pairs = similar.classify_pairs(m.phash[f.items], thumbs, m.sha1[f.items], f.y, f.split, source, pitches,
                                   _submit(pool), hashed)
    near = similar.near_duplicates(pairs, f.paths, f.labels, [SPLITS[k] for k in f.split.tolist()])
    seconds["copies and look-alikes"] = time.perf_counter() - t0
    return {"near_duplicates": near,
            "groups": similar.groups(similar.with_identical(pairs, m.sha1[f.items], f.y, f.split))}


def _image_quality(f: _Facts, d: Usable, seconds: dict[str, float], shortcuts: Any) -> dict[str, Any]:
    """The image-quality issues (per issue: flagged positions in ``f`` and scores) and the shortcuts (the job
    ``shortcuts``, in a decoding worker)."""
    t0 = time.perf_counter()
    m = d.metas
    issues = quality.issues(m.stats[f.items], m.width[f.items], m.height[f.items])
    seconds["image quality"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = shortcuts.get()
    seconds["shortcuts (waited for)"] = time.perf_counter() - t0
    return {"quality": issues, "shortcuts": found}


def _write_arrays(listing: ingest.Listing, plan: SplitPlan, d: Usable, dropped: set[int], tmp_files: dict[str, Path],
                  run: Path, flushed: Callable[[], None]) -> tuple[dict[str, list[ingest.Item]], dict[str, dict[str, int]]]:
    """Move each split's decoded array into place (compacted when rows were dropped), write its labels.
    ``flushed()`` waits until the decoded arrays are on disk (:func:`artifacts.fsync_started`)."""
    flushed()
    kept_items: dict[str, list[ingest.Item]] = {}
    counts: dict[str, dict[str, int]] = {}
    for s in SPLITS:
        ok = d.metas.filled[np.asarray(plan.by_split[s], np.int64)]
        keep = [r for r, i in enumerate(plan.by_split[s]) if ok[r] and i not in dropped]
        final = run / rf.x_file(s)
        if len(keep) == len(plan.by_split[s]):
            os.replace(tmp_files[s], final)  # every row was written (and is on disk): the file is final as it is
        else:
            _copy_rows(tmp_files[s], np.array(keep, np.int64), final)
        kept = [listing.items[plan.by_split[s][r]] for r in keep]
        y = d.y([it.label for it in kept])
        artifacts.save_npy(run / rf.y_file(s), y)
        kept_items[s] = kept
        per = dict(zip(d.labels, y.reshape(-1, len(d.labels)).sum(axis=0).tolist())) if d.multi else \
            Counter(it.label for it in kept)
        counts[s] = {name: int(per.get(name, 0)) for name in d.labels}
    return kept_items, counts


def _hash_band_jobs(pool: Any, d: Usable) -> list[Any] | None:
    """The copy search's hash pairs among the usable items, a job per band in the idle decoding workers
    (None without workers: then the search runs in this process)."""
    if pool is None:
        return None
    return similar.hash_pair_jobs(d.metas.phash[np.asarray(d.good, np.int64)], _submit(pool))


def _beside_audit(pool: Any, plan: SplitPlan, d: Usable, listing: ingest.Listing,
                  tmp_files: dict[str, Path]) -> dict[str, Any]:
    """The jobs that need only the decoded training images, in the idle decoding workers while this
    process audits: the class symmetry (it reads the training file, with a label file beside it: -1 or
    no label where a file was unusable) and the samples grid (matplotlib is not needed for it)."""
    train = np.asarray(plan.by_split["train"], np.int64)
    ok = d.metas.filled[train]
    labels = [listing.items[i].label for i in train[ok].tolist()]
    y_ok = d.y(labels)
    y = np.full((len(train),) + y_ok.shape[1:], -1 if y_ok.ndim == 1 else 0, np.int64)
    y[ok] = y_ok
    y_file = tmp_files["y_train"]
    with open(y_file, "wb") as fh:  # a handle: np.save would add ".npy" to the temp name
        np.save(fh, y)
    submit = _submit(pool)
    shown = range(min(20, len(d.labels)))
    rows = np.unique(np.concatenate([np.flatnonzero(y[:, c] if y.ndim == 2 else y == c)[:SAMPLES_PER_CLASS]
                                     for c in shown] or [np.zeros(0, np.int64)]))
    x = artifacts.NpyRows(np.load(tmp_files["train"], mmap_mode="r", allow_pickle=False)).take(rows)  # all it shows
    symmetry = submit(census.symmetry_of, str(tmp_files["train"]), str(y_file), list(d.labels))
    return {"symmetry": symmetry,
            "samples": submit(plots.sample_grid, x, y[rows], list(d.labels), SAMPLES_PER_CLASS)}


SAMPLES_PER_CLASS = 8


def _summary(listing: ingest.Listing, plan: SplitPlan, d: Usable, a: dict[str, Any], counts: dict[str, dict[str, int]],
             choices: dict[str, Any], ip: IngestParams, data: Path, symmetry: dict[str, Any], run: Path
             ) -> dict[str, Any]:
    """``dataset.json``: the audit's findings, the resolved choices and the class symmetry."""
    action = "dropped from val/test" if ip.leakage == "drop" else "kept"
    dataset = audit.summarize(d.labels, counts, a["paths"], a["metas"], plan.rejected, a["duplicates"],
                              a["conflicts"], a["leakage"], action, ip.imbalance_ratio, 0 if d.multi else 10)
    if d.multi:
        y = {s: np.load(run / rf.y_file(s), allow_pickle=False) for s in SPLITS}
        dataset.update(audit.multi_label_findings(y, list(d.labels), ip.min_positives, dataset["warnings"]))
        dataset["images"] = sum(len(v) for v in y.values())
    dataset.update(audit.similarity_findings(a["near_duplicates"], a["outliers"], dataset["warnings"]))
    f = a["facts"]
    dataset.update(audit.quality_findings(a["quality"], a["shortcuts"], f.paths, f.labels,
                                          [SPLITS[k] for k in f.split.tolist()], dataset["warnings"]))
    log.info("prepare: horizontal flips %s (%s)", "label-preserving" if symmetry["hflip"] else "not safe",
             symmetry["why"])
    dataset.update({"task": listing.task, "data": str(data), "root": str(listing.root), "layout": listing.layout,
                    "choices": {**choices, "hflip": symmetry}})
    for warning in dataset["warnings"]:
        log.warning("%s", warning)
    if sum(counts["test"].values()) == 0:
        log.warning("the test split is empty: evaluate will have nothing to measure")
    return dataset


class _Where:
    """An item's path as manifest.csv writes it: joined to the folder it is relative to (``prefix``; an image
    labeled in review outside that folder: normalised, not ``<DATA>/../...``)."""

    def __init__(self, listing: ingest.Listing) -> None:
        where = listing.source.parent if listing.layout == "pixels" and listing.source else listing.root
        self.prefix = str(where) + os.sep

    def __call__(self, rel: str) -> str:
        return os.path.normpath(self.prefix + rel) if rel.startswith("../") else self.prefix + rel


_PATH, _LABEL, _NOTE = (operator.attrgetter(name) for name in ("path", "label", "note"))


def _write_review(run: Path, listing: ingest.Listing, a: dict[str, Any]) -> None:
    """quality.csv, similar.csv and outliers.csv: the audit's findings one row per image, paths as in
    manifest.csv, for the review page."""
    f, full = a["facts"], _Where(listing)

    def who(k: int) -> tuple[str, str, str]:
        return full(f.paths[k]), f.labels[k], SPLITS[int(f.split[k])]

    _write_rows(run / rf.QUALITY, ("path", "label", "split", "issue", "score"),
                ((*who(k), issue, sc) for issue, (idx, scores) in a["quality"].items()
                 for k, sc in zip(idx.tolist(), scores.tolist())))
    settle = _dropped_conflicts(a, full)
    shown = {r[1] for r in settle}  # each image in one group
    rest = [(group, *who(k), kind, sim) for group, k, kind, sim in a["groups"] if full(f.paths[k]) not in shown]
    sizes = Counter(r[0] for r in rest)
    still = dict.fromkeys(r[0] for r in rest if sizes[r[0]] > 1)  # groups that keep two images or more
    number = {g: n for n, g in enumerate(still, len({r[0] for r in settle}))}
    _write_rows(run / rf.SIMILAR, ("group", "path", "label", "split", "kind", "similarity"),
                [*settle, *((number[r[0]], *r[1:]) for r in rest if r[0] in number)])
    _write_rows(run / rf.OUTLIERS, ("path", "label", "split", "score", "z"),
                ((*who(k), score, z) for k, score, z in a["outlier_rows"]))


def _dropped_conflicts(a: dict[str, Any], full: Callable[[str], str]) -> list[tuple[int, str, str, str, str, float]]:
    """similar.csv's first groups: identical files under different labels of which the leakage check left a
    val/test copy out (the groups among the images kept miss it), so that the review page can settle them."""
    kept = set(a["facts"].paths)
    out: list[tuple[int, str, str, str, str, float]] = []
    for group in (g for g in a["conflicts"] if not set(g["paths"]) <= kept):
        out += [(len({r[0] for r in out}), full(path), label, a["split_of"][path], "copy", 1.0)
                for path, label in zip(group["paths"], group["labels"])]
    return out


def _write_outputs(run: Path, listing: ingest.Listing, kept: dict[str, list[ingest.Item]], labels: dict[str, int],
                   dataset: dict[str, Any], audited: dict[str, Any], samples: Any) -> None:
    """Manifest, label map, the review files, samples (``samples.get()``) and the dataset summary (the
    marker follows)."""
    full = _Where(listing)
    _write_review(run, listing, audited)
    _write_rows(run / rf.MANIFEST, ("path", "label", "split", "note"),
                itertools.chain.from_iterable(
                    zip([full(p) if p.startswith("../") else full.prefix + p for p in map(_PATH, kept[s])],
                        map(_LABEL, kept[s]), itertools.repeat(s), map(_NOTE, kept[s])) for s in SPLITS))
    artifacts.write_json(run / rf.LABELS, labels)
    artifacts.write_bytes(run / rf.SAMPLES, samples.get())
    artifacts.write_json(run / rf.DATASET, dataset)


def _log_done(listing: ingest.Listing, data: Path, run: Path, marker: dict[str, Any]) -> None:
    # images per split (a multi-label run's counts are of each label's positives)
    totals = {s: len(np.load(run / rf.y_file(s), mmap_mode="r")) for s in SPLITS}
    log.info("prepare: read %d %s (%s layout) under %s", len(listing.items),
             "rows" if listing.layout == "pixels" else "files", listing.layout, data)
    log.info("prepare: wrote %s into %s", ", ".join([*artifact_names(), rf.PREPARE]), run)
    dropped = marker.get("dropped", 0)
    # usable + rejected of the read + dropped = read; the rest of rejected.csv was never a candidate
    others = min(len(listing.rejected), marker["rejected"])
    rejected = f"{marker['rejected'] - others} of the {len(listing.items)} read rejected" + (
        f", and {others} other entr{'y' if others == 1 else 'ies'} refused before reading ({_reasons(listing.rejected)})"
        if others else "")
    log.info("prepare: %d usable images in %d %s -> train %d, val %d, test %d; %s (rejected.csv)%s",
             sum(totals.values()), len(marker["counts"]["train"]),
             "labels" if marker.get("task") == "multi" else "classes", totals["train"], totals["val"], totals["test"],
             rejected, f"; {dropped} val/test cop{'y' if dropped == 1 else 'ies'} of training images left "
             "out (leakage: dataset.json)" if dropped else "")


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--data", help="dataset folder, or a .csv/.tsv file (default: the data of --run, else of the "
                        f"last prepared run, else {mnist.DEFAULT_OUT})")
    parser.add_argument("--layout", default="auto", choices=ingest.LAYOUTS,
                        help="auto | folders | filenames | csv | pixels (default: %(default)s)")
    parser.add_argument("--run", help="run folder (default: runs/<name of DATA>; for a mapping file, the name of "
                        "the folder holding it)")
    cli.add_params_option(parser)
    parser.add_argument("--corrections", type=Path, help="path,label rows that relabel (or exclude) images "
                        "(default: corrections.csv in the run folder, when there is one)")
    cli.add_engine_option(parser)
    return parser


def resolve_args(args: argparse.Namespace) -> None:
    """The run folder: ``--run``, else the dataset's (the one default-run rule). Without ``--data``, the
    data that the run (given, else the last prepared one) was prepared from, in its layout unless one is
    given; with no run yet, MNIST."""
    if args.data is None:
        data, layout, folder = _data_of(args.run)
        args.data, args.layout = str(data), layout if args.layout == "auto" else args.layout
        args.run = args.run or folder  # that run again (a RUN= given to it once is not its data's default run)
        log.info("prepare: DATA not given: preparing %s again (DATA=... prepares another)", args.data)
    args.run = str(rf.resolve_run(args.run, args.data))


def _data_of(run: str | None) -> tuple[Path, str, str | None]:
    """The data a run folder was prepared from, its layout and the folder (``run``, else the last prepared run),
    else the reference set (and no folder: its default run)."""
    if run is None and not rf.LAST_RUN.is_file():
        return mnist.DEFAULT_OUT, "auto", None
    folder = rf.resolve_run(run, None, "prepare")
    done = rf.read_marker(folder / rf.PREPARE)
    if not done.get("data"):
        raise UserError(f"{folder} has no finished preparation to repeat: give DATA=<your images> (or --data)")
    given = Path(done.get("data_given") or done["data"])
    # DATA as it was given (relative, say), when it still names the same data from here: the manifest's paths,
    # and the decisions made on them, stay as they were
    data = given if given.resolve() == Path(done["data"]) else Path(done["data"])
    return data, str(done.get("layout") or "auto"), str(folder)


def _check_same_data(data: Path, run: Path) -> None:
    """Refuse to prepare other data into a run folder that holds a preparation of data that still exists
    (``make prepare RUN=runs/mine DATA=datasets/mnist`` would replace it, and leave its decisions stranded)."""
    marker = run / rf.PREPARE
    if not marker.is_file():
        return
    before, now = Path(rf.read_marker(marker).get("data") or ""), data.resolve()
    same = before == now or (before.parent == now and before.is_file())  # a mapping file, then the folder holding it
    if not same and before.exists():  # (a folder, then a mapping file in it: other data, perhaps other labels)
        raise UserError(f"{run} holds a preparation of {before}, not of {data}: leave DATA out (or give "
                        f"{before}) to prepare it again, or give another RUN= for {data}")


def main(args: argparse.Namespace) -> int:
    """CLI: read params, run prepare, print the dataset table; the run becomes the default of later stages."""
    data = Path(args.data)
    run = Path(args.run)
    _check_same_data(data, run)
    p = params_mod.load(args.params, "prepare", run.name)
    cfg = params_mod.load(args.params, "preprocess", run.name)
    ip = params_mod.load(args.params, "ingest", run.name)
    summary = prepare(data, run, p, cfg, args.layout, ip, args.corrections, cli.cluster_params(args, run.name))
    rf.remember_run(run)
    cli.result(audit.format_summary(summary.dataset))
    cli.result(f"run folder: {run} (the default of `make train`, `make evaluate`, ... from now on)")
    return 0
