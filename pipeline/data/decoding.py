"""Parallel decoding: many files through :func:`preprocess.inspect_image` in worker processes.

Kept apart from the stages so that worker processes import only what decoding
needs (no scikit-learn, no TensorFlow): a spawned worker starts in well under a second.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from pipeline.data import kernels, quality, similar
from pipeline.data.preprocess import (Decoded, ImageError, Meta, border_level, decode_file, decode_pillow, inspect_image,
                                      in_colour, is_gray_content, plain_png, polarity, preprocess_batch, read_source)
from pipeline.shared.artifacts import row_layout
from pipeline.shared.cluster import RayPool
from pipeline.shared.params import ClusterParams, PreprocessParams

CHUNK = 512  # most images per worker task: amortises inter-process overhead
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
SERIAL_BELOW = 256  # fewer images than this: no pool (its start-up would cost more than it saves) ...
SERIAL_BYTES = 4 << 20  # ... unless their files hold more than this (120 phone photos: 22 s in one process)
HEAVY_FILE = 256 << 10  # files this large (on average) are decoded in chunks as small as one file
MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb limit, as plain_png checks it
FACTS_SIDE = 1024  # the census looks at an image shrunk to at most this many px a side


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group; the parent alone reacts (and stops
    # the pool), so the workers do not each print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)  # one process per core already: OpenCV's and BLAS's own threads would only contend
    threadpool_limits(1)  # (BLAS threads that spin while idle also slow the parent's audit down)
    keep_freed_memory()


def beside_workers(pool: Any) -> Any:
    """A context for this process's own work while ``pool``'s workers use every core: its BLAS on one
    thread (idle BLAS threads spin, and took a tenth of prepare's time from the workers); as it is without
    a pool."""
    return threadpool_limits(1) if pool is not None else contextlib.nullcontext()


def keep_freed_memory() -> None:
    """Memory for many short-lived arrays of a few MB: glibc serves them from the heap and keeps what is
    freed (instead of mapping fresh pages for each array and faulting them in: a third of a decoding
    worker's time went to the kernel), and numpy does not ask for huge pages (each first touch of a 2 MB
    page zeroes all of it: the audit's pair search spent as long in the kernel as in its own code). The
    memory still stays bounded: by the largest set of arrays alive at once."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)
    except (OSError, AttributeError):  # not glibc: its defaults
        pass
    hugepages = getattr(getattr(np, "_core", None), "multiarray", None)
    if hasattr(hugepages, "_set_madvise_hugepage"):  # numpy's switch (NUMPY_MADVISE_HUGEPAGE=0 at start-up)
        hugepages._set_madvise_hugepage(False)


_outputs: dict[str, tuple[int, int, int]] = {}  # .npy path -> (fd, data offset, bytes per row)


def _open_output(path: str) -> tuple[int, int, int]:
    """The open file, data offset and row size of a float32 .npy (opened once per process)."""
    if path not in _outputs:
        # mapped only to read where the rows start; the rows are written with pwrite
        offset, row_bytes = row_layout(np.load(path, mmap_mode="r", allow_pickle=False))
        _outputs[path] = (os.open(path, os.O_WRONLY), offset, row_bytes)
    return _outputs[path]


def _close_outputs() -> None:
    for fd, _, _ in _outputs.values():
        os.close(fd)
    _outputs.clear()


class Good:
    """The usable files of a chunk as they are decoded, column by column (an object per file cost a tenth of
    a worker's time on small images)."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []
        self.width: list[int] = []
        self.height: list[int] = []
        self.mode: list[str] = []
        self.format: list[str] = []
        self.sha1: list[bytes] = []
        self.alpha: list[bool] = []
        self.stat: list[tuple[int, int] | None] = []

    def add(self, arr: np.ndarray, width: int, height: int, mode: str, fmt: str, sha1: bytes, alpha: bool,
            stat: tuple[int, int] | None) -> None:
        self.arrays.append(arr)
        self.width.append(width)
        self.height.append(height)
        self.mode.append(mode)
        self.format.append(fmt)
        self.sha1.append(sha1)
        self.alpha.append(alpha)
        self.stat.append(stat)

    def extend_plain(self, arrays: list[np.ndarray], files: kernels.Files) -> None:
        """All of ``files``, plain PNGs decoded into ``arrays`` (in the colour asked for), at once."""
        self.arrays += arrays
        self.height += [a.shape[0] for a in arrays]
        self.width += [a.shape[1] for a in arrays]
        self.mode += ["L" if a.ndim == 2 else "RGB" for a in arrays]
        self.format += ["PNG"] * len(arrays)
        self.sha1 += [hashlib.sha1(files.view(k)).digest() for k in range(len(arrays))]
        self.alpha += [False] * len(arrays)
        self.stat += files.stats

    def add_decoded(self, d: Decoded) -> None:
        m = d.meta
        self.add(d.array, m.width, m.height, m.mode, m.format, bytes.fromhex(m.sha1), m.alpha, d.stat)


class Chunk(Sequence):
    """What the workers learned about a chunk of files, in flat arrays (cheap to send to the parent
    and to store), read as ``(reason, Meta | None)`` per path like a list.

    ``reasons`` per path ("" when usable); per usable file, in order: ``width``, ``height``,
    ``mode``, ``format`` (lists of names), ``sha1`` (k, 20), ``alpha``, ``phash``, ``thumb``
    (k, 256), ``negative`` (its canonical view is its negative), ``stats`` (k, len(quality.STATS)) and
    ``file_stat`` (k, 2): the file's size and mtime in ns as read (-1 when unknown).
    """

    def __init__(self, reasons: list[str], good: Good, stack: np.ndarray | None = None) -> None:
        self.reasons = reasons
        self.good = np.array([not r for r in reasons], bool)
        self.width = np.array(good.width, np.int32)
        self.height = np.array(good.height, np.int32)
        self.mode, self.format = good.mode, good.format
        self.sha1 = np.frombuffer(b"".join(good.sha1), np.uint8).reshape(-1, 20)
        self.alpha = np.array(good.alpha, bool)
        if stack is not None:  # gray images of one shape, stacked: each check on the stack at once
            self.phash, self.thumb, self.negative = similar.signatures(stack)
            self.stats = quality.image_stats(stack, stack)
        else:
            grays = [a if a.ndim == 2 else _gray(a) for a in good.arrays]
            self.phash, self.thumb, self.negative = similar.signatures(grays)
            self.stats = quality.image_stats(good.arrays, grays)
        self.file_stat = np.array([st or (-1, -1) for st in good.stat], np.int64).reshape(-1, 2)
        self._pos = np.cumsum(self.good) - 1

    def __len__(self) -> int:
        return len(self.reasons)

    def __getitem__(self, i: int) -> tuple[str, Meta | None]:  # type: ignore[override]
        if not self.good[i]:
            return self.reasons[i], None
        k = int(self._pos[i])
        return "", Meta(int(self.width[k]), int(self.height[k]), self.mode[k], self.format[k],
                        self.sha1[k].tobytes().hex(), int(self.phash[k]), self.thumb[k].tobytes(),
                        bool(self.alpha[k]), tuple(self.stats[k].tolist()))


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


READ_AHEAD = 8 << 20  # bytes of files a worker reads before it decodes them


def _read_ahead(paths: Sequence[str]) -> Iterator[kernels.Files]:
    """The files, in groups of up to READ_AHEAD bytes, each group read before any of it is decoded: reading
    and decoding apart took a sixth less CPU on small files than file by file (each evicts the other's data
    from the CPU's caches). Compiled, a group is read in one call; a file it leaves (an error, a special
    file) is read here, and its reason is that of :func:`read_source`."""
    start = 0
    while start < len(paths):
        if kernels.LIB is not None:
            files, apart = kernels.read_files(paths[start:], READ_AHEAD)
        else:
            files, apart = _group(paths[start:])
        for k in apart:
            try:
                files.extra[k], files.stats[k] = read_source(files.paths[k])
            except ImageError as exc:
                files.reasons[k] = str(exc)
        yield files
        start += len(files.paths)


def _group(paths: Sequence[str]) -> tuple[kernels.Files, list[int]]:
    """The first of ``paths`` up to READ_AHEAD bytes, read one by one (no compiled reader)."""
    got: list[tuple[bytes, tuple[int, int] | None, str]] = []
    size = 0
    while len(got) < len(paths) and size < READ_AHEAD:
        try:
            data, stat = read_source(paths[len(got)])
            got.append((data, stat, ""))
            size += len(data)
        except ImageError as exc:
            got.append((b"", None, str(exc)))
    empty = np.zeros(len(got), np.int64)
    files = kernels.Files(paths[:len(got)], np.zeros(0, np.uint8), empty, empty)
    files.extra = {k: data for k, (data, _, reason) in enumerate(got) if not reason}
    files.stats = [stat for _, stat, _ in got]
    files.reasons = [reason for _, _, reason in got]
    return files, []


def _decode_one(files: kernels.Files, k: int, cfg: PreprocessParams, good: Good, png: np.ndarray | None) -> str:
    """Decode file ``k`` into ``good`` (``png``: its pixels, when the compiled decoder read it as a plain
    PNG); the reason it is unusable, or ""."""
    stat = files.stats[k]
    try:
        if png is not None:
            good.add(in_colour(png, cfg), png.shape[1], png.shape[0], "L" if png.ndim == 2 else "RGB", "PNG",
                     hashlib.sha1(files.view(k)).digest(), False, stat)
            return ""
        data = files.data(k)
        plain = plain_png(data, cfg)
        if plain is not None:  # the common case, without the objects decode_read makes
            arr, w, h, mode = plain
            good.add(arr, w, h, mode, "PNG", hashlib.sha1(data).digest(), False, stat)
            return ""
        good.add_decoded(decode_pillow(data, stat, files.paths[k], cfg))  # plain_png said no: not a second time
    except ImageError as exc:
        return str(exc)
    except MemoryError:
        return "image too large to decode in memory"
    return ""


def _decode_audited(paths: Sequence[str], cfg: PreprocessParams) -> tuple[np.ndarray, Chunk]:
    """Worker: decode + preprocess a chunk; the good arrays stacked, and the chunk's audit facts (the
    perceptual hash, thumbnail and quality statistics of each decoded image, a chunk at a time)."""
    good, reasons = Good(), []
    for files in _read_ahead(paths):
        pngs = kernels.decode_pngs(files, cfg.min_side, cfg.max_side, MAX_PIXELS)
        if all(png is not None for png in pngs):  # the common case: all at once
            good.extend_plain([in_colour(png, cfg) for png in pngs], files)
            reasons += [""] * len(pngs)
            continue
        for k, png in enumerate(pngs):
            reasons.append(files.reasons[k] or _decode_one(files, k, cfg, good, png))
    shapes = {a.shape for a in good.arrays}
    stack = np.stack(good.arrays) if len(shapes) == 1 and len(next(iter(shapes))) == 2 else None
    try:
        stacked = preprocess_batch(good.arrays if stack is None else stack, cfg)
    except MemoryError:  # one image too large to preprocess: then one by one, as inspect_image would
        return _decode_audited_one_by_one(paths, cfg)
    return stacked, Chunk(reasons, good, stack)


def _decode_audited_one_by_one(paths: Sequence[str], cfg: PreprocessParams) -> tuple[np.ndarray, Chunk]:
    """:func:`_decode_audited` a file at a time (an image too large to preprocess is then rejected alone)."""
    arrays, good, reasons = [], Good(), []
    for path in paths:
        arr, reason, d = inspect_image(path, cfg)
        reasons.append(reason)
        if arr is not None:
            arrays.append(arr)
            good.add_decoded(d)
    stacked = np.stack(arrays) if arrays else np.zeros((0,) + cfg.input_shape, np.float32)
    return stacked, Chunk(reasons, good)


def _decode_into(job: tuple[Sequence[str], Sequence[tuple[str, int]], PreprocessParams]) -> Chunk:
    """Worker: decode a chunk, writing each good image to its (.npy file, row); return its facts.

    Writing in the worker keeps the decoded pixels out of the pipes to the parent.
    It writes with ``pwrite``, not through a memory map: pages written through a map
    would count in the worker's resident memory until the end, growing with the data.
    Consecutive rows of one file are written at once. Rows of rejected files are left as
    they are (the caller never reads them).
    """
    paths, targets, cfg = job
    stacked, chunk = _decode_audited(paths, cfg)
    good = [t for t, ok in zip(targets, chunk.good.tolist()) if ok]
    k = 0
    try:
        while k < len(good):
            out, row = good[k]
            end = k + 1
            while end < len(good) and good[end] == (out, row + end - k):
                end += 1
            fd, offset, row_bytes = _open_output(out)
            os.pwrite(fd, np.ascontiguousarray(stacked[k:end], dtype=np.float32).tobytes(), offset + row * row_bytes)
            k = end
    finally:  # closed after each chunk: a worker that outlives the job (a Ray worker) keeps no stale file open
        _close_outputs()
    return chunk


def _decode_chunk(job: tuple[Sequence[str], PreprocessParams] | tuple[Sequence[str], PreprocessParams, bool]
                  ) -> tuple[np.ndarray, list[tuple[str, Meta | None]]]:
    """Worker: decode + preprocess a chunk; the good arrays stacked, plus (reason, meta) per path.

    With ``audit`` (prepare), each meta also carries the perceptual hash, thumbnail and statistics.
    """
    paths, cfg, audit = (*job, False)[:3]
    if audit:
        stacked, chunk = _decode_audited(paths, cfg)
        return stacked, list(chunk)
    arrays, info = [], []
    for path in paths:
        arr, reason, d = inspect_image(path, cfg)
        if arr is not None:
            arrays.append(arr)
        info.append((reason, d.meta if d else None))
    stacked = np.stack(arrays) if arrays else np.zeros((0,) + cfg.input_shape, np.float32)
    return stacked, info


def start_method() -> str:
    """How to start worker processes: ``fork`` where it is safe (Linux, one thread in this process and no
    library that keeps native threads loaded: TensorFlow, ONNX Runtime), which costs nothing; else
    ``spawn``, where each worker imports numpy, OpenCV and Pillow again (0.3-0.5 s of a core each)."""
    threaded = any(name in sys.modules for name in ("tensorflow", "onnxruntime", "torch"))
    return "fork" if sys.platform == "linux" and threading.active_count() == 1 and not threaded else "spawn"


class DecodePool:
    """Decoding workers, and how many (to size the chunks and the work in flight)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = mp.get_context(start_method()).Pool(workers, initializer=_init_worker)

    def apply_async(self, fn: Callable, args: tuple) -> Any:
        return self._pool.apply_async(fn, args)

    def close(self) -> None:
        """Stop the workers (also those still decoding)."""
        self._pool.terminate()
        self._pool.join()


def start_pool(workers: int = 0, cluster: ClusterParams | None = None) -> Any:
    """A pool of decoding workers, or None for one worker. Start it early: its start-up
    (spawn + imports) then overlaps with the caller's own work, e.g. listing files. With ``[cluster]
    engine = "ray"`` the jobs run as Ray tasks (:class:`pipeline.shared.cluster.RayPool`)."""
    if cluster is not None and cluster.engine == "ray":
        return RayPool(cluster, workers)
    workers = workers or os.cpu_count() or 1
    return DecodePool(workers) if workers > 1 else None


def decode_into(n: int, paths: Callable[[int, int], Sequence[str]],
                targets: Callable[[int, int], Sequence[tuple[str, int]]], cfg: PreprocessParams,
                pool: Any = None, desc: str = "decode") -> Iterator[Chunk]:
    """Decode the ``n`` items: ``paths(i, j)`` gives the file paths of items i..j-1, and
    ``targets(i, j)`` their (float32 .npy file, row) to write into.

    The files must exist with room for their rows. Runs in ``pool`` (from
    :func:`start_pool`) or in this process when it is None or the job is small.
    Yields the :class:`Chunk` of each chunk, in order (a sequence of ``(reason, meta)``; meta None:
    rejected, its row left unset). Paths are built a chunk at a time and at most
    two chunks per worker are in flight, so memory does not grow with the number of files.
    """
    workers = pool.workers if pool is not None else 1
    per_file = _mean_size(paths(0, min(n, 8)))
    size = max(1 if per_file >= HEAVY_FILE else 32, min(CHUNK, -(-n // (workers * 4))))
    jobs = ((paths(i, min(i + size, n)), targets(i, min(i + size, n)), cfg) for i in range(0, n, size))
    with tqdm(total=n, desc=desc, unit="img") as bar:
        try:
            if pool is None or (n < SERIAL_BELOW and n * per_file < SERIAL_BYTES):
                results: Iterator = map(_decode_into, jobs)
            else:
                results = _windowed(pool, _decode_into, jobs, 2 * workers + 1)
            for info in results:
                yield info
                bar.update(len(info))
        finally:
            _close_outputs()


def heavy(paths: Sequence[str]) -> bool:
    """Do these files (the first few of them) take long to decode one by one: large ones, photos?"""
    return _mean_size(paths[:8]) >= HEAVY_FILE


def _mean_size(paths: Sequence[str]) -> float:
    """The mean size in bytes of a few files (0 when none can be read): how heavy their decoding will be."""
    sizes = []
    for path in paths:
        try:
            sizes.append(os.stat(path).st_size)
        except OSError:
            continue
    return sum(sizes) / len(sizes) if sizes else 0.0


def _windowed(pool: Any, fn: Callable, jobs: Iterable, ahead: int) -> Iterator:
    """``pool.imap(fn, jobs)`` with at most ``ahead`` jobs submitted and not yet consumed
    (``imap`` itself would queue every job at once)."""
    pending: deque = deque()
    for job in jobs:
        pending.append(pool.apply_async(fn, (job,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


Facts = tuple[int, int, bool, int, float, "int | None"]  # width, height, gray?, polarity, paper, ink


def _facts_chunk(job: tuple[Sequence[str], PreprocessParams]) -> list[tuple[str, Facts | None]]:
    """Worker: (reason, (width, height, gray content?, polarity, border level, ink level of a transparent
    image or None)) of each file, for the census."""
    paths, cfg = job
    out: list[tuple[str, Facts | None]] = []
    for path in paths:
        try:
            d = decode_file(path, cfg, draft=FACTS_SIDE)  # a large JPEG comes out smaller: its size from the file
        except ImageError as exc:
            out.append((str(exc), None))
            continue
        except MemoryError:
            out.append(("image too large to decode in memory", None))
            continue
        w, h = d.meta.width, d.meta.height
        if (d.array.shape[1] >= d.array.shape[0]) != (w >= h):  # turned by its EXIF orientation
            w, h = h, w
        out.append(("", facts_of(d.array, d.ink, (w, h))))
    return out


def facts_of(array: np.ndarray, ink: int | None = None, size: tuple[int, int] | None = None) -> Facts:
    """The census's facts of one decoded image (uint8 HxW or HxWx3; ``ink``: a transparent image's; ``size``:
    its (width, height) when it was decoded smaller); a large one is looked at shrunk to :data:`FACTS_SIDE`
    (a 12-megapixel photo took 0.9 s, 0.03 s so)."""
    h, w = array.shape[:2]
    array = quality.shrunk(array, FACTS_SIDE)
    gray = array if array.ndim == 2 else np.asarray(array @ np.array([0.299, 0.587, 0.114], np.float32), np.uint8)
    w, h = size or (w, h)
    return w, h, is_gray_content(array), polarity(gray), border_level(gray), ink


def census(paths: Sequence[str], cfg: PreprocessParams,
           pool: DecodePool | None = None) -> list[tuple[str, Facts | None]]:
    """Decode ``paths`` as colour images (nothing kept) and return each file's facts or reason."""
    size = max(8, -(-len(paths) // ((pool.workers if pool else 1) * 2)))
    jobs = [(list(paths[i:i + size]), cfg) for i in range(0, len(paths), size)]
    if pool is None:
        results: Iterable = map(_facts_chunk, jobs)
    else:
        results = _windowed(pool, _facts_chunk, jobs, 2 * pool.workers + 1)
    return [fact for chunk in results for fact in chunk]


def decode_chunks(chunks: Iterable[Sequence[str]], cfg: PreprocessParams, pool: DecodePool | None = None,
                  ahead: int = 0) -> Iterator[tuple[np.ndarray, list[tuple[str, Meta | None]]]]:
    """Decode + preprocess each chunk of paths; yield ``(good arrays stacked, (reason, meta) per path)``.

    Chunks are yielded in order. With a pool, at most ``ahead`` chunks (default
    two per worker, plus one) are in flight, so memory stays bounded however many
    files there are, while the workers decode ahead of the caller.
    """
    jobs = ((paths, cfg) for paths in chunks)
    if pool is None:
        yield from map(_decode_chunk, jobs)
        return
    yield from _windowed(pool, _decode_chunk, jobs, ahead or 2 * pool.workers + 1)
