"""Parallel decoding: many files through :func:`preprocess.inspect_image` in worker processes.

Kept apart from the stages so that worker processes import only what decoding
needs (no scikit-learn, no TensorFlow): a spawned worker starts in well under a second.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from .audit import Meta
from .params import PreprocessParams
from .preprocess import inspect_image

CHUNK = 512  # most images per worker task: amortises inter-process overhead
SERIAL_BELOW = 256  # fewer images than this: no pool (its start-up would cost more than it saves)
_worker_cfg: PreprocessParams | None = None


def _init_worker(cfg: PreprocessParams, worker: bool = False) -> None:
    global _worker_cfg
    _worker_cfg = cfg
    if worker:
        # Ctrl-C reaches the whole process group; the parent alone reacts (and stops
        # the pool), so the workers do not each print a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


_outputs: dict[str, np.ndarray] = {}


def _open_output(path: str) -> np.ndarray:
    if path not in _outputs:
        _outputs[path] = np.load(path, mmap_mode="r+", allow_pickle=False)
    return _outputs[path]


def _decode_into(job: tuple[Sequence[str], Sequence[tuple[str, int]]]) -> list[tuple[str, Meta | None]]:
    """Worker: decode a chunk, writing each good image to its (.npy file, row); return (reason, meta)s.

    Writing in the worker keeps the decoded pixels out of the pipes to the parent.
    Rows of rejected files are left as they are (the caller never reads them).
    """
    paths, targets = job
    stacked, info = _decode_chunk(paths)
    k = 0
    for (reason, meta), (out, row) in zip(info, targets):
        if meta is not None:
            _open_output(out)[row] = stacked[k]
            k += 1
    for out in {t[0] for t in targets}:
        _open_output(out).flush()
    return info


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


def start_pool(cfg: PreprocessParams, workers: int = 0) -> Any:
    """A pool of decoding workers, or None for one worker. Start it early: its start-up
    (spawn + imports) then overlaps with the caller's own work, e.g. listing files."""
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        return None
    # spawn, not fork: the caller may have TensorFlow's threads running.
    return mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(cfg, True))


def decode_into(paths: Sequence[str], targets: Sequence[tuple[str, int]], cfg: PreprocessParams,
                pool: Any = None, desc: str = "decode") -> Iterator[list[tuple[str, Meta | None]]]:
    """Decode ``paths[i]`` into row ``targets[i][1]`` of the float32 .npy file ``targets[i][0]``.

    The files must exist with room for their rows. Runs in ``pool`` (from
    :func:`start_pool`) or in this process when it is None or the job is small.
    Yields the ``(reason, meta)`` list of each chunk, in order (meta None:
    rejected, its row left unset).
    """
    workers = pool._processes if pool is not None else 1
    size = max(32, min(CHUNK, -(-len(paths) // (workers * 4))))
    jobs = [(paths[i:i + size], targets[i:i + size]) for i in range(0, len(paths), size)]
    with tqdm(total=len(paths), desc=desc, unit="img") as bar:
        if pool is None or len(paths) < SERIAL_BELOW:
            _init_worker(cfg)
            results: Iterator = map(_decode_into, jobs)
        else:
            results = pool.imap(_decode_into, jobs)
        try:
            for info in results:
                yield info
                bar.update(len(info))
        finally:
            for out in {t[0] for t in targets}:
                _outputs.pop(out, None)


def decode_chunks(chunks: Iterable[Sequence[str]], cfg: PreprocessParams, pool: Any = None,
                  ahead: int = 0) -> Iterator[tuple[np.ndarray, list[tuple[str, Meta | None]]]]:
    """Decode + preprocess each chunk of paths; yield ``(good arrays stacked, (reason, meta) per path)``.

    Chunks are yielded in order. With a pool, at most ``ahead`` chunks (default
    two per worker, plus one) are in flight, so memory stays bounded however many
    files there are, while the workers decode ahead of the caller.
    """
    if pool is None:
        _init_worker(cfg)
        for paths in chunks:
            yield _decode_chunk(paths)
        return
    ahead = ahead or 2 * pool._processes + 1
    pending: deque = deque()
    for paths in chunks:
        pending.append(pool.apply_async(_decode_chunk, (paths,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()
