"""The decoding workers' per-image loops compiled (``kernels.c``), a chunk of images per call.

``pip install`` (``make setup``) builds ``kernels.c`` into a shared library beside this file when a
C compiler and zlib's header are there; it is optional: without it (or with the environment
variable ``PIPELINE_KERNELS=off``) the numpy code does the same work, 2-3x slower per image
(docs/benchmarks.md). What each function mirrors:

- :func:`decode_pngs`: :func:`preprocess.plain_png` (OpenCV's decoder) for plain PNG files
  (8-bit gray or RGB, not interlaced, no transparency, no EXIF), the same pixels exactly; any
  other file, or one with trouble (a bad CRC, truncated data), is left to the general path;
- :func:`signatures`: :func:`similar.signatures`' canonical views, thumbnails and hashes (the
  same steps in double precision and exact bilinear taps; OpenCV's warp rounds its taps to
  1/32 px: thumbnails may differ by a level or two, a hash by a bit near its median);
- :func:`gray_stats`: :func:`quality._gray_stats`;
- :func:`pair_corr`: :func:`similar._pair_corr`, in double precision;
- :func:`band_pairs`: :func:`similar.band_pairs` (when it stops at its budget: the first ``budget`` pairs);
- :func:`copy_corr`: :func:`similar.copy_similarity` of files of the same size, in double precision.
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_NAME = "_kernels"  # the extension's module name (pyproject.toml's ext-modules)
_PTR = ctypes.c_void_p
_I64 = ctypes.c_int64


def _load() -> ctypes.CDLL | None:
    if os.environ.get("PIPELINE_KERNELS", "on").lower() in ("off", "0", "false", "no"):
        return None
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (here / f"{_NAME}{suffix}").is_file():
            try:
                lib = ctypes.CDLL(str(here / f"{_NAME}{suffix}"))
            except OSError:  # built for another platform, or damaged: the numpy code
                return None
            lib.read_files.argtypes = [_PTR, _PTR, _I64, _PTR, _I64, _PTR, _PTR, _PTR, _PTR, _PTR]
            lib.read_files.restype = _I64
            lib.png_info.argtypes = [_PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR]
            lib.png_decode.argtypes = [_PTR, _PTR, _PTR, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR]
            lib.signatures.argtypes = [_PTR, _I64, _I64, _I64, _PTR, _PTR, _PTR]
            lib.gray_stats.argtypes = [_PTR, _I64, _I64, _I64, _PTR]
            lib.pair_corr.argtypes = [_PTR, _I64, _PTR, _I64, _PTR, _I64, _PTR]
            lib.band_pairs.argtypes = [_PTR, _I64, ctypes.c_int, ctypes.c_int, _I64, _PTR, _I64, _PTR]
            lib.band_pairs.restype = _I64
            lib.copy_corr.argtypes = [_PTR, _PTR, _I64, _I64, _PTR, _PTR, _I64, _PTR]
            lib.copy_corr.restype = None
            for fn in (lib.png_info, lib.png_decode, lib.signatures, lib.gray_stats, lib.pair_corr):
                fn.restype = None
            return lib
    return None


LIB = _load()


def _p(a: np.ndarray) -> int:
    return a.ctypes.data


class Files:
    """Files read into one buffer: file k's bytes are ``blob[offs[k]:offs[k] + lens[k]]``, or ``extra[k]`` for
    a file read on its own; its (size, mtime in ns) ``stats[k]`` (None: it could not be read, ``reasons[k]``)."""

    def __init__(self, paths: Sequence[str], blob: np.ndarray, offs: np.ndarray, lens: np.ndarray) -> None:
        self.paths, self.blob, self.offs, self.lens = paths, blob, offs, lens
        self.stats: list[tuple[int, int] | None] = [None] * len(paths)
        self.reasons = [""] * len(paths)
        self.extra: dict[int, bytes] = {}
        self.memory = memoryview(blob)

    def data(self, k: int) -> bytes:
        return self.extra[k] if k in self.extra else self.blob[self.offs[k]:self.offs[k] + self.lens[k]].tobytes()

    def view(self, k: int) -> memoryview | bytes:
        """Its bytes without a copy (to hash them)."""
        if k in self.extra:
            return self.extra[k]
        start = int(self.offs[k])
        return self.memory[start:start + int(self.lens[k])]


def read_files(paths: Sequence[str], cap: int) -> tuple[Files, list[int]]:
    """The first of ``paths`` read into one buffer of ``cap`` bytes (at least one file: a larger one alone), and
    the indices of those left to the caller (errors, special files, files that changed while read)."""
    enc = [os.fsencode(p) + b"\0" for p in paths]
    path_off = np.zeros(len(enc), np.int64)
    np.cumsum(np.fromiter((len(e) for e in enc), np.int64, len(enc))[:-1], out=path_off[1:])
    names = np.frombuffer(b"".join(enc), np.uint8)
    n = len(paths)
    blob = np.empty(cap, np.uint8)
    offs, lens, size, mtime = (np.zeros(n, np.int64) for _ in range(4))
    status = np.zeros(n, np.int32)
    count = LIB.read_files(_p(names), _p(path_off), n, _p(blob), cap, _p(offs), _p(lens), _p(size), _p(mtime),
                           _p(status))
    files = Files(paths[:count], blob, offs[:count], lens[:count])
    files.stats = list(zip(size[:count].tolist(), mtime[:count].tolist()))
    return files, np.flatnonzero(status[:count]).tolist()


def decode_pngs(files: Files, min_side: int, max_side: int, max_pixels: int) -> list[np.ndarray | None]:
    """Each file's pixels (height x width, or x 3 in RGB order) when it is a plain PNG within the limits;
    None for any other file (the general path decodes it, or says why it cannot)."""
    n = len(files.paths)
    if LIB is None or not n:
        return [None] * n
    lens = files.lens.copy()
    lens[list(files.extra)] = 0  # read apart: the general path's
    w, h, ch, status = (np.zeros(n, np.int32) for _ in range(4))
    LIB.png_info(_p(files.blob), _p(files.offs), _p(lens), n, min_side, max_side, max_pixels, _p(w), _p(h), _p(ch),
                 _p(status))
    size = h.astype(np.int64) * w * ch
    out_off = np.zeros(n, np.int64)
    np.cumsum(size[:-1], out=out_off[1:])
    out = np.empty(int(size.sum()), np.uint8)
    scratch = np.empty(int(((w.astype(np.int64) * ch + 1) * h).max(initial=0)), np.uint8)
    LIB.png_decode(_p(files.blob), _p(files.offs), _p(lens), n, _p(w), _p(h), _p(ch), _p(status), _p(out),
                   _p(out_off), _p(scratch))
    shapes = zip(status.tolist(), out_off.tolist(), h.tolist(), w.tolist(), ch.tolist())
    return [out[o:o + hh * ww * c].reshape((hh, ww, 3) if c == 3 else (hh, ww)) if s == 0 else None
            for s, o, hh, ww, c in shapes]


def signatures(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hashes (m,) uint64, thumbnails (m, 256) uint8, negated (m,) bool) of same-shape uint8 gray
    images (m, h, w), as :func:`similar.signatures`."""
    stack = np.ascontiguousarray(stack, np.uint8)
    m, h, w = stack.shape
    hashes, thumbs, negative = np.zeros(m, np.uint64), np.zeros((m, 256), np.uint8), np.zeros(m, np.uint8)
    LIB.signatures(_p(stack), m, h, w, _p(hashes), _p(thumbs), _p(negative))
    return hashes, thumbs, negative.astype(bool)


def gray_stats(stack: np.ndarray) -> np.ndarray:
    """(m, 5) float32 p01, p50, p99, sharpness and entropy of same-shape uint8 gray images (m, h, w), as
    :func:`quality._gray_stats`."""
    stack = np.ascontiguousarray(stack, np.uint8)
    m, h, w = stack.shape
    out = np.zeros((m, 5), np.float32)
    LIB.gray_stats(_p(stack), m, h, w, _p(out))
    return out


def pair_corr(table: np.ndarray, index: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(p,) float32: the correlation of the uint8 thumbnails ``table[index[a]]`` and ``table[index[b]]`` of each
    pair (a, b), as :func:`similar._pair_corr`."""
    table = np.ascontiguousarray(table, np.uint8)
    index = np.ascontiguousarray(index, np.int64)
    pairs = np.ascontiguousarray(pairs, np.int64)
    out = np.zeros(len(pairs), np.float32)
    LIB.pair_corr(_p(table), table.shape[1], _p(index), len(index), _p(pairs), len(pairs), _p(out))
    return out


def band_pairs(hashes: np.ndarray, band: int, near_bits: int, budget: int) -> tuple[np.ndarray, bool]:
    """:func:`similar.band_pairs`: pairs (i < j) whose 16-bit band ``band`` is equal and whose hashes differ in
    at most ``near_bits`` bits, bucket by bucket, at most ``budget`` of them (and whether there were more)."""
    hashes = np.ascontiguousarray(hashes, np.uint64)
    stopped = np.zeros(1, np.int32)
    cap = 1 << 16
    while True:
        out = np.empty((cap, 2), np.int64)
        found = LIB.band_pairs(_p(hashes), len(hashes), band, near_bits, budget, _p(out), cap, _p(stopped))
        if found < 0:
            raise MemoryError("band_pairs")
        if found <= cap:
            return out[:found], bool(stopped[0])
        cap = found


def copy_corr(xa: np.ndarray, xb: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """(p,) float32: :func:`similar.copy_similarity` of the pairs of prepared gray images (p, H, W) ``xa[j]``,
    ``xb[j]`` with their pitches (p, 2), without its blur sweep (it applies to files of different sizes)."""
    xa, xb = np.ascontiguousarray(xa, np.float32), np.ascontiguousarray(xb, np.float32)
    pa, pb = np.ascontiguousarray(pa, np.float64), np.ascontiguousarray(pb, np.float64)
    p, h, w = xa.shape
    out = np.zeros(p, np.float32)
    LIB.copy_corr(_p(xa), _p(xb), h, w, _p(pa), _p(pb), p, _p(out))
    return out
