"""Copies, look-alikes and outliers: the audit beyond identical bytes.

All start from what the decoding workers record per file (:func:`signatures`): a 64-bit
perceptual hash and a 16x16 thumbnail of the image's **canonical view**, a 32x32 image in
which copies line up:

- *polarity*: dark content on a lighter border is inverted (a negative is a copy);
- *position*: the centre of the content (what differs from the border's median level) is
  moved to the middle (a shifted or cropped copy);
- *scale*: when the border is plain (content on a background, like digits or objects on a
  table), the content is scaled to a fixed spread, :data:`SPREAD` px (a resized or cropped
  copy); a photo without a plain border keeps its scale (only centred).

Brightness and contrast do not matter: thumbnails are compared by correlation, and the
hash is the signs of the 8x8 lowest DCT frequencies against their median (pHash).

- **Near-duplicate candidates**: hashes within :data:`NEAR_BITS` bits (found through four
  16-bit bands, without comparing every pair) and thumbnails correlating at least
  :data:`CANDIDATE_CORR`.
- **Copies** (the actionable kind: leakage across splits, a label conflict across classes):
  a candidate pair that spans splits or labels passes the strict test of
  :func:`copy_similarity`, on the prepared images (what the model sees): aligned by their
  content, at the same scale in the units of the original files, the sharper one blurred to
  the other's sharpness when the files' sizes differ, correlating at least :data:`COPY_CORR`.
  Different writers' near-identical 1s in MNIST correlate up to ~0.99 there; re-encoded,
  resized, cropped, shifted, recoloured, inverted or brightness-scaled copies of one digit
  0.99-1.0 (benchmarks/bench.py ``copies``).
- **Look-alikes** (a review queue, never a warning): candidate pairs, not copies, whose
  thumbnails correlate at least :data:`LOOK_ALIKE_CORR`.
- **Outliers**: an image's score is one minus its mean thumbnail correlation with its
  :data:`K` most similar images of its class (among up to :data:`REFERENCE`); it is flagged
  (``outliers.csv``, a review queue) at a robust z-score over :data:`OUTLIER_Z` within the
  class, and *warned about* only when it stands far out of the class's own spread: its score
  beyond the class's top-1% level by more than :data:`FAR_TAIL` times that level's distance
  from the class's median, and at least :data:`FAR_SCORE`. MNIST's strangest digits (1s
  with serifs, broken strokes) stay within that; noise, a negative, a letter or a textured
  photo among digits do not. The thumbnails get their polarity back for this (:func:`as_seen`).

Why not a library: OpenCV's ``img_hash`` is only in the contrib build, which cannot be
installed beside ``opencv-python-headless`` (both are the ``cv2`` module), and
``imagehash`` adds SciPy and PyWavelets and works one PIL image at a time; these are a few
array operations on the images the workers have already decoded, a chunk at a time.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pipeline.data import kernels
from pipeline.data.quality import shrunk
from pipeline.shared.artifacts import NpyRows

SIDE = 32         # the canonical view
THUMB = SIDE // 2  # side of the stored thumbnails (256 bytes a file): 2x2 means of the view
WORK = 64         # larger images are shrunk (area) to this longer side before the canonical view
SPREAD = 8.0      # content radius (px of the canonical view) of content on a plain background
PLAIN = 32        # a plain border: the middle half of its levels within this many gray levels
NEAR_BITS = 4
CANDIDATE_CORR = 0.97
LOOK_ALIKE_CORR = 0.99
NEAR_CORR = LOOK_ALIKE_CORR  # near-duplicates of new images (the review page groups them)
COPY_CORR = 0.992
BLURS = (0.3, 0.5, 0.7, 0.9)  # Gaussian sigmas (px) tried on the sharper image of a pair of different sizes
K = 5
REFERENCE = 300
OUTLIER_Z = 5.0
SPREAD_FLOOR = 0.02  # the least spread of a class's scores: a class of near-identical images (flat shapes) has
                     # a spread near 0, and then any image a z in the hundreds
FAR_TAIL = 2.0
FAR_SCORE = 0.3  # ... and whose nearest images of its class correlate under 0.7 on average
EXAMPLES = 20
BLOCK = 2048  # rows compared at once within a large hash bucket (bounded memory)
MAX_PAIRS = 2_000_000  # candidate pairs looked at, at most (thousands of near-blank images would give billions)
PAIR_BLOCK = 1024  # pairs given the strict copy test at once
HERE_PAIRS = 50_000  # compiled, this many pairs take the copy test sooner in the caller (< 1 s) than queued behind
                     # the outlier jobs in the workers
PAIR_CHUNK = 8192  # thumbnail pairs correlated at once (their rows stay in the CPU's cache)


# ---------------------------------------------------------------- the canonical view and signatures
def _taps(n_src: int, centre: np.ndarray, scale: np.ndarray, n_dst: int, c_dst: float | np.ndarray
          ) -> np.ndarray:
    """(m, n_dst, n_src) linear interpolation: destination pixel d samples the source at
    ``centre + (d - c_dst) / scale``; taps outside the source are dropped (their weight is missing)."""
    coord = centre[:, None] + (np.arange(n_dst, dtype=np.float32)[None, :] - np.reshape(c_dst, (-1, 1))) \
        / scale[:, None]
    x0 = np.floor(coord).astype(np.int64)
    f = (coord - x0).astype(np.float32)
    m = len(centre)
    out = np.zeros((m, n_dst, n_src + 1), np.float32)  # a spare column catches the taps outside
    ii, jj = np.arange(m)[:, None], np.arange(n_dst)[None, :]
    out[ii, jj, np.where((x0 >= 0) & (x0 < n_src), x0, n_src)] = 1 - f
    out[ii, jj, np.where((x0 + 1 >= 0) & (x0 + 1 < n_src), x0 + 1, n_src)] += f
    return out[:, :, :n_src]


def _content(g: np.ndarray, level: np.ndarray) -> tuple[np.ndarray, ...]:
    """(mass, centre y, centre x, variance down, variance across) of the content: what differs from
    ``level`` by more than a noise floor (a tenth of the largest difference, at least 4 levels)."""
    m, h, w = g.shape
    wgt = g - level[:, None, None]  # in place from here: no temporary the size of the batch
    np.abs(wgt, out=wgt)
    floor = np.maximum(4.0, 0.1 * wgt.reshape(m, -1).max(axis=1))
    wgt -= floor[:, None, None]
    np.maximum(wgt, 0, out=wgt)
    wy, wx = wgt.sum(axis=2), wgt.sum(axis=1)
    mass = wy.sum(axis=1)
    safe = np.maximum(mass, 1e-6)
    ys, xs = np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32)
    # plain reductions, not matrix products: an image's result must not depend on the rest of the batch
    cy, cx = (wy * ys).sum(axis=1) / safe, (wx * xs).sum(axis=1) / safe
    vy = np.maximum((wy * (ys * ys)).sum(axis=1) / safe - cy * cy, 1e-6)
    vx = np.maximum((wx * (xs * xs)).sum(axis=1) / safe - cx * cx, 1e-6)
    return mass, cy, cx, vy, vx


def _canonical_stack(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The canonical views (m, 32, 32) float32 of same-shape gray images (m, h, w), and which ones
    were negated (dark content on a light border)."""
    g = stack.astype(np.float32)
    m, h, w = g.shape
    border = np.sort(np.concatenate([g[:, 0], g[:, -1], g[:, 1:-1, 0], g[:, 1:-1, -1]], axis=1), axis=1)
    nb = border.shape[1]
    q25, level, q75 = border[:, nb // 4], border[:, nb // 2], border[:, (3 * nb) // 4]
    flip = g.reshape(m, -1).sum(axis=1) / (h * w) < level - 4  # dark content on a light border: its negative
    mass, cy, cx, vy, vx = _content(g, level)  # |g - level| does not change with the negation
    empty = mass <= 0
    base = np.float32(SIDE / max(h, w))
    scale = np.where((q75 - q25 <= PLAIN) & ~empty, np.clip(SPREAD / np.sqrt(vy + vx), base / 4, base * 4), base)
    cy, cx = np.where(empty, (h - 1) / 2, cy), np.where(empty, (w - 1) / 2, cx)
    mid = (SIDE - 1) / 2
    warps = np.zeros((m, 2, 3), np.float32)
    warps[:, 0, 0] = warps[:, 1, 1] = scale
    warps[:, 0, 2], warps[:, 1, 2] = mid - scale * cx, mid - scale * cy
    out = np.empty((m, SIDE, SIDE), np.float32)
    levels = level.tolist()
    for i in range(m):  # one affine warp each: a C loop per image beats batched small matrix products
        cv2.warpAffine(g[i], warps[i], (SIDE, SIDE), dst=out[i], flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=levels[i])
    out[flip] = 255 - out[flip]
    return out, flip


def _dct_rows() -> np.ndarray:
    """The 8 lowest rows of the orthonormal 32-point DCT-II (as ``cv2.dct`` computes it)."""
    k, i = np.arange(8)[:, None], np.arange(SIDE)[None, :]
    rows = np.cos(np.pi * (2 * i + 1) * k / (2 * SIDE)) * np.sqrt(2 / SIDE)
    rows[0] /= np.sqrt(2)
    return np.ascontiguousarray(rows.T, dtype=np.float32)  # (32, 8)


_DCT8T = _dct_rows()
DCT_BLOCK = 64  # views transformed at once: always this many (padded), so a view's result never depends on the rest


def _low_frequencies(view: np.ndarray) -> np.ndarray:
    """(m, 64): the 8x8 lowest 2-D DCT coefficients of each (32, 32) view, row-major, as two matrix
    products over fixed-size blocks of views."""
    m = len(view)
    pad = np.zeros((-(-m // DCT_BLOCK) * DCT_BLOCK, SIDE, SIDE), np.float32)
    pad[:m] = view
    out = np.empty((len(pad), 8, 8), np.float32)
    for start in range(0, len(pad), DCT_BLOCK):
        block = pad[start:start + DCT_BLOCK]
        cols = (block.reshape(-1, SIDE) @ _DCT8T).reshape(DCT_BLOCK, SIDE, 8)  # each row's 8 low frequencies
        both = (cols.transpose(0, 2, 1).reshape(-1, SIDE) @ _DCT8T).reshape(DCT_BLOCK, 8, 8)
        out[start:start + DCT_BLOCK] = both.transpose(0, 2, 1)
    return out[:m].reshape(m, 64)


def signatures(grays: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(64-bit hashes (n,) uint64, thumbnails (n, 256) uint8, negated (n,) bool) of uint8 gray images
    (any sizes, or a stack of them); negated: the canonical view is the image's negative (dark content on a light border).

    Images of one shape are done together; an image's result does not depend on the others.
    """
    if isinstance(grays, np.ndarray) and kernels.LIB is not None and max(grays.shape[1:3]) <= WORK:
        return kernels.signatures(grays)  # a stack of images of one shape, none to shrink
    n = len(grays)
    hashes, thumbs = np.zeros(n, np.uint64), np.zeros((n, THUMB * THUMB), np.uint8)
    negative = np.zeros(n, bool)
    work = [shrunk(g, WORK) for g in grays]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, g in enumerate(work):
        groups.setdefault(g.shape, []).append(i)
    for idx in groups.values():
        stack = np.stack([work[i] for i in idx])
        if kernels.LIB is not None:  # the same steps compiled
            hashes[idx], thumbs[idx], negative[idx] = kernels.signatures(stack)
            continue
        view, negative[idx] = _canonical_stack(stack)
        small = (view[:, 0::2, 0::2] + view[:, 0::2, 1::2] + view[:, 1::2, 0::2] + view[:, 1::2, 1::2]) * 0.25  # 2x2 means
        thumbs[idx] = np.clip(small + 0.5, 0, 255).astype(np.uint8).reshape(len(idx), -1)
        low = _low_frequencies(view)
        median = np.partition(low[:, 1:], 31, axis=1)[:, 31]
        bits = np.packbits(low > median[:, None], axis=1)
        hashes[idx] = bits.view(">u8").ravel()
    return hashes, thumbs, negative


def signature(gray: np.ndarray) -> tuple[int, bytes]:
    """(64-bit hash, 16x16 thumbnail bytes) of one uint8 gray image."""
    h, t, _ = signatures([gray])
    return int(h[0]), t[0].tobytes()


# ---------------------------------------------------------------- candidate pairs
class Taken:
    """Rows ``index`` of ``table``, read like the array ``table[index]`` (length, shape, indexing) without
    copying them all: prepare's thumbnails of the images it audits are a view of its table of every file's."""

    def __init__(self, table: np.ndarray, index: np.ndarray) -> None:
        self.table, self.index = table, np.asarray(index, np.int64)
        self.shape = (len(self.index),) + table.shape[1:]
        self.dtype = table.dtype

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: Any) -> np.ndarray:
        return self.table[self.index[k]]


def _unit(thumbs: np.ndarray) -> np.ndarray:
    """Thumbnails as zero-mean, unit-norm float vectors (correlation = dot product)."""
    t = thumbs.astype(np.float32)
    t -= t.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(t, axis=1, keepdims=True)
    return t / np.where(norms > 1e-6, norms, 1.0)


def _bucket_pairs(idx: np.ndarray, hashes: np.ndarray, budget: int) -> tuple[list[np.ndarray], bool]:
    """Pairs (rows of 2) within one bucket whose hashes differ in at most NEAR_BITS bits, at most
    ``budget`` of them (a bucket of thousands of near-blank images stops early: then True)."""
    out = []
    h = hashes[idx]
    for start in range(0, len(idx), BLOCK):
        block = h[start:start + BLOCK]
        close = np.bitwise_count(block[:, None] ^ h[None, :]) <= NEAR_BITS
        close &= np.arange(len(h))[None, :] > np.arange(start, start + len(block))[:, None]  # each pair once
        per_row = np.cumsum(close.sum(axis=1))
        stop = bool(per_row[-1] > budget)
        if stop:
            close = close[:int(np.searchsorted(per_row, budget, side="right"))]
        i, j = np.nonzero(close)
        out.append(np.stack([idx[i + start], idx[j]], axis=1))
        budget -= len(i)
        if stop:
            return out, True
    return out, False


SMALL_BUCKET = 32  # buckets up to this size are paired vectorized; larger ones block by block


def _small_bucket_pairs(order: np.ndarray, key: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Close pairs within the buckets of at most SMALL_BUCKET images, all at once (most buckets)."""
    sk = key[order]
    bucket_start = np.r_[0, np.flatnonzero(np.diff(sk)) + 1]
    size = np.diff(np.r_[bucket_start, len(sk)])
    small = np.repeat(size <= SMALL_BUCKET, size)
    found = []
    for k in range(1, SMALL_BUCKET):
        same = (sk[:-k] == sk[k:]) & small[:-k]
        if not same.any():
            break
        a, b = order[:-k][same], order[k:][same]
        close = np.bitwise_count(hashes[a] ^ hashes[b]) <= NEAR_BITS
        found.append(np.stack([a[close], b[close]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), np.int64)


def band_pairs(hashes: np.ndarray, band: int, budget: int) -> tuple[np.ndarray, bool]:
    """Pairs (rows of 2, either order) of images whose 16-bit band ``band`` of the hash is equal and whose
    hashes are within NEAR_BITS bits, at most about ``budget`` of them, and whether the search stopped there."""
    if kernels.LIB is not None:
        return kernels.band_pairs(hashes, band, NEAR_BITS, budget)
    key = ((hashes >> np.uint64(16 * band)) & np.uint64(0xFFFF)).astype(np.int64)
    order = np.argsort(key, kind="stable")
    found = [np.zeros((0, 2), np.int64), _small_bucket_pairs(order, key, hashes)]
    total = len(found[-1])
    _, starts, counts = np.unique(key[order], return_index=True, return_counts=True)
    stopped = total > budget
    for start, count in zip(starts[counts > SMALL_BUCKET].tolist(), counts[counts > SMALL_BUCKET].tolist()):
        if stopped:
            break
        new, stopped = _bucket_pairs(order[start:start + count], hashes, budget - total)
        found += new
        total += sum(len(x) for x in new)
    return np.concatenate(found), stopped


BANDS = 4


def hash_pairs(hashes: np.ndarray) -> tuple[np.ndarray, bool]:
    """Pairs (i < j) whose 64-bit hashes are within NEAR_BITS bits (pairs within 3 bits are certain
    to share one of the four 16-bit bands; 4-bit pairs nearly always do), and whether the search
    stopped at MAX_PAIRS: the bands one after the other, here (:func:`hash_pair_jobs` searches them in
    parallel jobs)."""
    found, total, stopped = [], 0, False
    for band in range(BANDS):
        pairs, stopped = band_pairs(hashes, band, MAX_PAIRS - total)
        found.append(pairs)
        total += len(pairs)
        if stopped:
            break
    return _unique_pairs(np.concatenate(found), len(hashes)), stopped


def hash_pair_jobs(hashes: np.ndarray, submit: Callable) -> list[Any]:
    """The search of :func:`hash_pairs`, a job per band given to ``submit(fn, *args)`` (each up to MAX_PAIRS
    pairs); read them with :func:`gather_hash_pairs`."""
    return [submit(band_pairs, hashes, band, MAX_PAIRS) for band in range(BANDS)]


def gather_hash_pairs(jobs: list[Any], n: int) -> tuple[np.ndarray, bool]:
    """The pairs of :func:`hash_pair_jobs`' jobs, each once (i < j, in order), at most MAX_PAIRS of them."""
    found = [job.get() for job in jobs]
    pairs = _unique_pairs(np.concatenate([p for p, _ in found]), n)
    stopped = any(s for _, s in found) or len(pairs) > MAX_PAIRS
    return pairs[:MAX_PAIRS], stopped


def _unique_pairs(pairs: np.ndarray, n: int) -> np.ndarray:
    """Each pair once, as (i < j), in order: as one sorted int64 key per pair (far faster than unique rows)."""
    pairs = np.sort(pairs, axis=1)
    if not len(pairs):
        return pairs
    key = np.sort(pairs[:, 0].astype(np.int64) * n + pairs[:, 1])
    key = key[np.r_[True, key[1:] != key[:-1]]]
    return np.stack([key // n, key % n], axis=1)


def _pair_corr(pairs: np.ndarray, thumbs: np.ndarray | Taken) -> np.ndarray:
    """Thumbnail correlation of each pair: the mean and norm of each image in a pair once, then a dot product
    per pair, a cache-sized block of pairs at a time (memory: a block, whatever the number of images)."""
    if kernels.LIB is not None:
        table, index = (thumbs.table, thumbs.index) if isinstance(thumbs, Taken) else (thumbs, np.arange(len(thumbs)))
        return kernels.pair_corr(table, index, pairs)
    used = np.flatnonzero(np.bincount(pairs.ravel(), minlength=len(thumbs)))
    mean, inv = np.zeros(len(thumbs), np.float32), np.zeros(len(thumbs), np.float32)
    n = thumbs.shape[1]
    for start in range(0, len(used), PAIR_CHUNK):
        rows = used[start:start + PAIR_CHUNK]
        t = thumbs[rows].astype(np.float32)
        mean[rows] = t.mean(axis=1)
        norm = np.sqrt(np.maximum((t * t).sum(axis=1) - n * mean[rows] ** 2, 0))
        inv[rows] = np.where(norm > 1e-3, 1 / np.maximum(norm, 1e-3), 0)
    out = np.empty(len(pairs), np.float32)
    for start in range(0, len(pairs), PAIR_CHUNK):
        a, b = pairs[start:start + PAIR_CHUNK, 0], pairs[start:start + PAIR_CHUNK, 1]
        dot = np.einsum("ij,ij->i", thumbs[a].astype(np.float32), thumbs[b].astype(np.float32))
        out[start:start + len(a)] = (dot - n * mean[a] * mean[b]) * inv[a] * inv[b]
    return out


def candidate_pairs(hashes: np.ndarray, thumbs: np.ndarray | Taken, sha1: np.ndarray, cut: float = CANDIDATE_CORR,
                    near: tuple[np.ndarray, bool] | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """(pairs (p, 2), thumbnail correlations (p,), truncated): images whose hashes are within NEAR_BITS
    bits and thumbnails correlate at least ``cut``, byte-identical files left out (reported apart).
    ``near``: :func:`hash_pairs` of ``hashes`` when the caller has it already."""
    pairs, truncated = near if near is not None else hash_pairs(hashes)
    corr = _pair_corr(pairs, thumbs)
    keep = (corr >= cut) & ~(sha1[pairs[:, 0]] == sha1[pairs[:, 1]]).all(axis=1)
    return pairs[keep], corr[keep], truncated


def near_duplicate_pairs(hashes: np.ndarray, thumbs: np.ndarray, sha1: np.ndarray
                         ) -> tuple[list[tuple[int, int, float]], bool]:
    """(i, j, correlation) of look-alike (or copied) images that are not byte-identical, and whether the
    search was cut short (the review page groups new images with it)."""
    pairs, corr, truncated = candidate_pairs(hashes, thumbs, sha1, NEAR_CORR)
    return [(int(a), int(b), round(float(c), 4)) for (a, b), c in zip(pairs.tolist(), corr.tolist())], truncated


# ---------------------------------------------------------------- copies: the strict test
def pitch(width: np.ndarray, height: np.ndarray, size: Sequence[int], resize: str, normalize: str) -> np.ndarray:
    """(n, 2): the original file's pixels per prepared pixel, down and across, by how prepare resized it
    (``stretch`` scales each axis on its own; ``pad``, ``crop`` and the MNIST recipe keep the aspect)."""
    h, w = np.asarray(height, np.float32), np.asarray(width, np.float32)
    if normalize == "mnist":
        return np.ones((len(h), 2), np.float32)
    if resize == "stretch":
        return np.stack([h / size[0], w / size[1]], axis=1)
    s = (np.minimum if resize == "pad" else np.maximum)(size[0] / h, size[1] / w)
    return np.stack([1 / s, 1 / s], axis=1)


def _signed(x: np.ndarray) -> np.ndarray:
    """Model inputs (p, H, W) in [0, 1] as content: levels less the border's median, dark content on a
    lighter border negated (a negative is a copy)."""
    g = x * np.float32(255)
    p = len(g)
    border = np.concatenate([g[:, 0], g[:, -1], g[:, 1:-1, 0], g[:, 1:-1, -1]], axis=1)
    level = np.median(border, axis=1).astype(np.float32)
    sign = np.where(g.reshape(p, -1).mean(axis=1) < level - 4, -1, 1).astype(np.float32)
    return (g - level[:, None, None]) * sign[:, None, None]


def _moments(c: np.ndarray, pitch_: np.ndarray, mask: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre y, centre x, radius in the original file's pixels) of the content of each image."""
    _, cy, cx, vy, vx = _content(c if mask is None else c * mask, np.zeros(len(c), np.float32))
    return cy, cx, np.sqrt(vy * pitch_[:, 0] ** 2 + vx * pitch_[:, 1] ** 2)


def _warp(c: np.ndarray, src: tuple[np.ndarray, np.ndarray], dst: tuple[np.ndarray, np.ndarray],
          k: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``c`` resampled so that its point ``src`` lands on ``dst``, ``k`` of its pixels per new pixel
    (down, across); and where the result lies inside ``c`` (the mask)."""
    _, h, w = c.shape
    ty = _taps(h, src[0], 1 / k[0], h, dst[0])
    tx = _taps(w, src[1], 1 / k[1], w, dst[1])
    out = np.matmul(np.matmul(ty, c), tx.transpose(0, 2, 1))
    return out, (ty.sum(axis=2)[:, :, None] * tx.sum(axis=2)[:, None, :]) > 0.999


def _masked_corr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.float32)
    n = np.maximum(m.sum(axis=(1, 2)), 1)
    a = (a - ((a * m).sum(axis=(1, 2)) / n)[:, None, None]) * m
    b = (b - ((b * m).sum(axis=(1, 2)) / n)[:, None, None]) * m
    den = np.sqrt((a * a).sum(axis=(1, 2)) * (b * b).sum(axis=(1, 2)))
    return np.where(den > 0, (a * b).sum(axis=(1, 2)) / np.maximum(den, 1e-12), 0.0)


def _sharpness(c: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean absolute gradient over mean absolute content, on the common region."""
    grad = np.abs(np.diff(c, axis=1))[:, :, :-1] + np.abs(np.diff(c, axis=2))[:, :-1, :]
    m = mask[:, :-1, :-1]
    return (grad * m).sum(axis=(1, 2)) / np.maximum((np.abs(c[:, :-1, :-1]) * m).sum(axis=(1, 2)), 1e-6)


def _gauss(n: int, sigma: float) -> np.ndarray:
    x = np.arange(n, dtype=np.float32)
    g = np.exp(-0.5 * ((x[:, None] - x[None, :]) / sigma) ** 2)
    return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)


def copy_similarity(xa: np.ndarray, xb: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """The strict copy test of pairs of prepared images (p, H, W) in [0, 1], with their pitches (p, 2)
    (:func:`pitch`): the correlation of one with the other brought onto it, where both are defined; onto
    the one with the fewer original pixels per prepared pixel (the one resampled up the most), so that
    the other goes through the same kind of resampling.

    B is placed by the content's centre and scaled to A's content radius in the original files'
    pixels; the placement is refined once on the region both cover (a crop or a shift loses the
    parts beyond the frame). When the files' sizes differ (a resized or cropped copy went through
    another resampling than its original), the sharper of the two is also blurred by each of
    :data:`BLURS` and the best correlation kept; pairs of the same size are compared as they are.
    """
    if kernels.LIB is None or not len(xa):
        return _copy_similarity(xa, xb, pa, pb)
    best = kernels.copy_corr(xa, xb, pa, pb)
    resized = np.abs(pa - pb).max(axis=1) > 1e-4
    if resized.any():
        best[resized] = _copy_similarity(xa[resized], xb[resized], pa[resized], pb[resized])
    return best


def _copy_similarity(xa: np.ndarray, xb: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """:func:`copy_similarity` in numpy."""
    swap = pb.mean(axis=1) < pa.mean(axis=1)  # onto the one resampled the most: the other goes the same way
    xa, xb = np.where(swap[:, None, None], xb, xa), np.where(swap[:, None, None], xa, xb)
    pa, pb = np.where(swap[:, None], pb, pa), np.where(swap[:, None], pa, pb)
    ca, cb = _signed(xa), _signed(xb)
    ya, xa_, ra = _moments(ca, pa)
    yb, xb_, rb = _moments(cb, pb)
    k = (rb / ra * pa[:, 0] / pb[:, 0], rb / ra * pa[:, 1] / pb[:, 1])
    warped, mask = _warp(cb, (yb, xb_), (ya, xa_), k)
    y1, x1, r1 = _moments(warped, pa, mask)
    y2, x2, r2 = _moments(ca, pa, mask)
    src = (yb + k[0] * (y1 - ya), xb_ + k[1] * (x1 - xa_))
    k = (k[0] * r1 / r2, k[1] * r1 / r2)
    warped, mask = _warp(cb, src, (y2, x2), k)
    best = _masked_corr(ca, warped, mask)
    resized = np.abs(pa - pb).max(axis=1) > 1e-4
    if resized.any():
        a, b, m = ca[resized], warped[resized], mask[resized]
        blur_a = _sharpness(a, m) > _sharpness(b, m)
        for sigma in BLURS:
            gy, gx = _gauss(a.shape[1], sigma), _gauss(a.shape[2], sigma)
            a2 = np.where(blur_a[:, None, None], gy @ a @ gx.T, a)
            b2 = np.where(blur_a[:, None, None], b, gy @ b @ gx.T)
            best[resized] = np.maximum(best[resized], _masked_corr(a2, b2, m))
    return best.astype(np.float32)


# ---------------------------------------------------------------- copies and look-alikes of a dataset
TRAIN = 0  # split code of the training split (``splits`` arrays hold 0 train, 1 val, 2 test)


@dataclass(frozen=True)
class Source:
    """Where the prepared images (float32 rows) of the audited images are: the .npy ``files``, and for
    image i its file ``file_of[i]`` and row ``row_of[i]``. The copy test reads a block's images from them
    with plain reads, in whichever process runs the block."""

    files: tuple[str, ...]
    file_of: np.ndarray
    row_of: np.ndarray


def read_rows(files: Sequence[str], file_of: np.ndarray, row_of: np.ndarray) -> np.ndarray:
    """Row ``row_of[j]`` of the .npy file ``files[file_of[j]]`` for each j, as one float32 array (pread: no
    page of the files stays mapped in this process)."""
    out: np.ndarray | None = None
    for k in np.unique(file_of).tolist():
        sel = np.flatnonzero(file_of == k)
        reader = NpyRows(np.load(files[k], mmap_mode="r", allow_pickle=False))
        if out is None:
            out = np.empty((len(file_of),) + reader.shape[1:], np.float32)
        order = np.argsort(row_of[sel], kind="stable")  # front to back
        out[sel[order]] = reader.take(row_of[sel][order])
    return out if out is not None else np.zeros((0,), np.float32)


def verify_block(files: Sequence[str], file_of: np.ndarray, row_of: np.ndarray, a: np.ndarray, b: np.ndarray,
                 pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """:func:`copy_similarity` of one block of pairs (a decoding worker's job): pair j is images ``a[j]`` and
    ``b[j]`` of the block's images, read from ``files`` (see :func:`read_rows`); ``pa``, ``pb``: their pitches."""
    x = read_rows(files, file_of, row_of)
    gray = x.mean(axis=3) if x.ndim == 4 else x
    return copy_similarity(gray[a], gray[b], pa, pb)


IN_FLIGHT = 8  # blocks of the copy test given out and not yet collected (bounded memory)


def _verify(pairs: np.ndarray, source: Source, pitches: np.ndarray, submit: Callable | None = None) -> np.ndarray:
    """:func:`copy_similarity` of each pair, a block of PAIR_BLOCK pairs at a time, each block a job given to
    ``submit(fn, *args)`` (a pool's: the blocks run in parallel; default: here). A block's pairs are the same
    however it runs, and a pair's result does not depend on the rest of its block."""
    submit = submit or here
    out = np.zeros(len(pairs), np.float32)
    pending: deque = deque()
    for start in range(0, len(pairs), PAIR_BLOCK):
        block = pairs[start:start + PAIR_BLOCK]
        items, inverse = np.unique(block, return_inverse=True)
        a, b = inverse.reshape(-1, 2).T
        job = submit(verify_block, source.files, source.file_of[items], source.row_of[items], a, b,
                     pitches[block[:, 0]], pitches[block[:, 1]])
        pending.append((start, len(block), job))
        if len(pending) >= IN_FLIGHT:
            done_at, n, finished = pending.popleft()
            out[done_at:done_at + n] = finished.get()
    for done_at, n, finished in pending:
        out[done_at:done_at + n] = finished.get()
    return out


def classify_pairs(hashes: np.ndarray, thumbs: np.ndarray | Taken, sha1: np.ndarray, y: np.ndarray, splits: np.ndarray,
                   source: Source, pitches: np.ndarray, submit: Callable | None = None,
                   near: tuple[np.ndarray, bool] | None = None) -> dict[str, Any]:
    """Candidate pairs sorted into copies and look-alikes: ``pairs`` (p, 2), ``kind`` ("copy" or
    "look-alike"), ``similarity`` (the strict test's for copies, the thumbnails' for look-alikes),
    ``across_classes``, ``across_splits`` and ``with_train`` (one of the two is a training image);
    ``truncated``.

    Only pairs that span labels or splits take the strict test: a copy matters there (a label
    conflict, leakage); elsewhere a pair is a look-alike when its thumbnails correlate at least
    :data:`LOOK_ALIKE_CORR`. The strict test reads the images from ``source``, a block of pairs per job
    given to ``submit`` (see :func:`_verify`; here, compiled, up to :data:`HERE_PAIRS` pairs).
    """
    pairs, corr, truncated = candidate_pairs(hashes, thumbs, sha1, near=near)
    a, b = pairs[:, 0], pairs[:, 1]
    across_classes = y[a] != y[b]
    across_splits = splits[a] != splits[b]
    strict = np.zeros(len(pairs), np.float32)
    check = across_classes | across_splits
    compiled_here = kernels.LIB is not None and check.sum() <= HERE_PAIRS  # the workers are busy with the outliers
    strict[check] = _verify(pairs[check], source, pitches, None if compiled_here else submit)
    copy = check & (strict >= COPY_CORR)
    keep = copy | (corr >= LOOK_ALIKE_CORR)
    return {"pairs": pairs[keep], "kind": np.where(copy, "copy", "look-alike")[keep],
            "similarity": np.where(copy, strict, corr)[keep], "across_classes": across_classes[keep],
            "across_splits": across_splits[keep], "with_train": ((splits[a] == TRAIN) | (splits[b] == TRAIN))[keep],
            "checked": int(check.sum()), "truncated": truncated}


def _entry(found: dict[str, Any], k: int, paths: Sequence[str], labels: Sequence[str],
           splits: Sequence[str]) -> dict[str, Any]:
    i, j = found["pairs"][k].tolist()
    return {"paths": [paths[i], paths[j]], "labels": [labels[i], labels[j]], "splits": [splits[i], splits[j]],
            "kind": str(found["kind"][k]), "similarity": round(float(found["similarity"][k]), 4)}


def near_duplicates(found: dict[str, Any], paths: Sequence[str], labels: Sequence[str],
                    splits: Sequence[str]) -> dict[str, Any]:
    """dataset.json's near-duplicates: pairs (copies first, most similar first) within a class, across
    classes and across splits, with how many of them are copies, and the rules."""
    order = np.lexsort((-found["similarity"], found["kind"] != "copy"))
    within = ~found["across_classes"] & ~found["across_splits"]
    out: dict[str, Any] = {}
    for name, sel in (("within_class", within), ("across_classes", found["across_classes"]),
                      ("across_splits", found["across_splits"])):
        ranked = order[sel[order]]
        out[name] = {"pairs": int(sel.sum()), "copies": int((sel & (found["kind"] == "copy")).sum()),
                     "examples": [_entry(found, k, paths, labels, splits) for k in ranked[:EXAMPLES].tolist()]}
    leak = found["pairs"][found["across_splits"] & found["with_train"] & (found["kind"] == "copy")].tolist()
    out["across_splits"]["copy_images"] = len({j if splits[i] == "train" else i for i, j in leak})  # of training images
    conflicting = found["pairs"][found["across_classes"] & (found["kind"] == "copy")]
    out["across_classes"]["copy_groups"] = len(np.unique(_components(conflicting)[1])) if len(conflicting) else 0
    out["rule"] = (f"candidates: perceptual hashes within {NEAR_BITS} bits and thumbnails of the canonical view "
                   f"correlating >= {CANDIDATE_CORR}; look-alikes: thumbnails >= {LOOK_ALIKE_CORR}")
    out["copy_rule"] = (f"a pair spanning labels or splits whose prepared images, aligned by their content and "
                        f"matched in sharpness, correlate >= {COPY_CORR}")
    out["checked"], out["truncated"] = found["checked"], found["truncated"]
    return out


def _components(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, component id of each node) of the graph of ``edges`` (p, 2): the smallest node id
    reachable, by label propagation with pointer jumping."""
    nodes, inverse = np.unique(edges, return_inverse=True)
    e = inverse.reshape(-1, 2)
    comp = np.arange(len(nodes))
    while True:
        low = np.minimum(comp[e[:, 0]], comp[e[:, 1]])
        new = comp.copy()
        np.minimum.at(new, e[:, 0], low)
        np.minimum.at(new, e[:, 1], low)
        new = new[new]
        if np.array_equal(new, comp):
            return nodes, nodes[comp]
        comp = new


def with_identical(found: dict[str, Any], sha1: np.ndarray, y: np.ndarray, splits: np.ndarray) -> dict[str, Any]:
    """``found`` (:func:`classify_pairs`') with the byte-identical files that span labels or splits added as
    copies (similarity 1), each paired with the first of its bytes: the candidate search leaves them out (the
    audit reports them apart, as duplicates, conflicts and leakage), but similar.csv, the review page's
    source, shows them with the other copies."""
    key = np.ascontiguousarray(sha1).view(np.dtype((np.void, sha1.shape[1]))).ravel()
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    shared = np.flatnonzero(counts[inverse] > 1)
    order = shared[np.argsort(inverse[shared], kind="stable")]
    start = np.r_[True, inverse[order][1:] != inverse[order][:-1]] if len(order) else np.zeros(0, bool)
    head = order[start][np.cumsum(start) - 1]
    a, b = head[~start], order[~start]
    across_classes, across_splits = y[a] != y[b], splits[a] != splits[b]
    span = across_classes | across_splits
    if not span.any():
        return found
    new = {"pairs": np.stack([a[span], b[span]], axis=1), "kind": np.full(int(span.sum()), "copy"),
           "similarity": np.ones(int(span.sum()), np.float32), "across_classes": across_classes[span],
           "across_splits": across_splits[span],
           "with_train": ((splits[a] == TRAIN) | (splits[b] == TRAIN))[span]}
    return {**found, **{k: np.concatenate([found[k], v]) for k, v in new.items()}}


def groups(found: dict[str, Any]) -> list[tuple[int, int, str, float]]:
    """similar.csv's rows as (group, item, kind, similarity): groups of copies that span labels or splits,
    then groups of look-alikes that span labels; most similar group first; an item's similarity is
    its closest pair's in the group."""
    rows: list[tuple[int, int, str, float]] = []
    spans = {"copy": found["across_classes"] | found["across_splits"], "look-alike": found["across_classes"]}
    for kind in ("copy", "look-alike"):
        sel = (found["kind"] == kind) & spans[kind]
        if not sel.any():
            continue
        edges, sim = found["pairs"][sel], found["similarity"][sel]
        nodes, comp = _components(edges)
        best = np.zeros(len(nodes), np.float32)
        idx = np.searchsorted(nodes, edges)
        np.maximum.at(best, idx[:, 0], sim)
        np.maximum.at(best, idx[:, 1], sim)
        roots, first, inverse = np.unique(comp, return_index=True, return_inverse=True)
        top = np.zeros(len(roots), np.float32)
        np.maximum.at(top, inverse, best)
        rank = np.empty(len(roots), np.int64)
        rank[np.lexsort((first, -top))] = np.arange(len(roots))
        base = rows[-1][0] + 1 if rows else 0
        for m in np.lexsort((nodes, rank[inverse])).tolist():
            rows.append((base + int(rank[inverse[m]]), int(nodes[m]), kind, round(float(best[m]), 4)))
    return rows


# ---------------------------------------------------------------- outliers
def as_seen(thumbs: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Thumbnails with their polarity back (a negative is a copy, but an unusual image of its class)."""
    return np.where(negative[:, None], 255 - thumbs, thumbs)


class _Done:
    """A result computed here, read like a pool's (``.get()``)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def get(self) -> Any:
        return self.value


def here(fn: Callable, *args: Any) -> _Done:
    """Run ``fn(*args)`` now (the default of the ``submit`` arguments below, which a pool can replace)."""
    return _Done(fn(*args))


def class_scores(thumbs: np.ndarray | str, seed: int, members: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, robust z, tail) of the images of one class (see :func:`outlier_scores`): ``thumbs`` theirs,
    or a .npy file of every image's and ``members`` the class's rows (a worker then reads a block of them at
    a time, with plain reads: its memory does not grow with the class)."""
    if isinstance(thumbs, str):
        table, rows_of = NpyRows(np.load(thumbs, mmap_mode="r", allow_pickle=False)), np.asarray(members, np.int64)
        n, read = len(rows_of), lambda idx: table.take(rows_of[idx])
    else:
        n, read = len(thumbs), thumbs.__getitem__
    if n <= K + 1:
        return np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
    ref = np.arange(n) if n <= REFERENCE else np.sort(np.random.default_rng(seed).choice(n, REFERENCE, replace=False))
    ref_vecs = _unit(read(ref))
    score = np.zeros(n, np.float32)
    for start in range(0, n, BLOCK):
        rows = np.arange(start, min(start + BLOCK, n))
        sim = _unit(read(rows)) @ ref_vecs.T
        sim[rows[:, None] == ref[None, :]] = -np.inf  # not itself
        score[rows] = 1.0 - np.partition(sim, sim.shape[1] - K, axis=1)[:, -K:].mean(axis=1)
    med = float(np.median(score))
    mad = float(np.median(np.abs(score - med))) * 1.4826
    level = _tail(score)
    return score, (score - med) / max(mad, SPREAD_FLOOR), (score - level) / max(level - med, 1e-3)


def outlier_jobs(thumbs: np.ndarray, y: np.ndarray, seed: int = 0, submit: Callable = here,
                 path: str | None = None) -> list[tuple]:
    """The outlier scores of each class, one job per class given to ``submit(fn, *args)`` (a pool's, so
    that they run in parallel, beside the caller); read them with :func:`gather`. With ``path`` (a .npy
    file holding ``thumbs``), a job carries only its class's row numbers, not its thumbnails."""
    jobs = []
    for c in np.unique(y).tolist():
        members = np.flatnonzero(y == c)
        args = (path, seed + int(c), members) if path else (thumbs[members], seed + int(c))
        jobs.append((members, submit(class_scores, *args)))
    return jobs


def gather(jobs: list[tuple], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, z, tail) of all ``n`` images from the per-class jobs of :func:`outlier_jobs`."""
    out = np.zeros((3, n), np.float32)
    for members, job in jobs:
        out[:, members] = job.get()
    return out[0], out[1], out[2]


def outlier_scores(thumbs: np.ndarray, y: np.ndarray, seed: int = 0, submit: Callable = here
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, robust z within the class, tail) of every image: how unlike its class's nearest images it is
    (``thumbs`` as the images look: :func:`as_seen`); tail: how far its score lies beyond its class's
    top-1% level (:func:`_tail`), in units of that level's distance from the class's median."""
    return gather(outlier_jobs(thumbs, y, seed, submit), len(y))


def _tail(s: np.ndarray) -> float:
    """The level of a class's top 1% of scores (its top 3 at least, so that a few outliers do not set it)."""
    return float(np.quantile(s, 1 - max(0.01, 3 / len(s))))


def outliers(labels: Sequence[str], scores: tuple[np.ndarray, np.ndarray, np.ndarray], paths: Sequence[str]
             ) -> tuple[dict[str, Any], list[tuple[int, float, float]]]:
    """dataset.json's outliers (counts, the far ones, rules, first examples) and outliers.csv's rows
    (item, score, z), most unusual first (farthest beyond their class's tail), from
    :func:`outlier_scores`."""
    score, z, tail = scores
    flagged = np.flatnonzero(z > OUTLIER_Z)
    flagged = flagged[np.argsort(-tail[flagged], kind="stable")]
    is_far = (tail > FAR_TAIL) & (score >= FAR_SCORE)
    far = flagged[is_far[flagged]]
    per_class: dict[str, int] = {}
    for i in flagged.tolist():
        per_class[labels[i]] = per_class.get(labels[i], 0) + 1
    summary = {"images": int(len(flagged)), "far": int(len(far)), "per_class": per_class,
               "rule": f"robust z > {OUTLIER_Z:g} within the class",
               "far_rule": (f"a score beyond the class's top-1% level by more than {FAR_TAIL:g} times that "
                            f"level's distance from the class's median, and at least {FAR_SCORE:g}"),
               "examples": [{"path": paths[i], "label": labels[i], "z": round(float(z[i]), 2),
                             "score": round(float(score[i]), 4), "far": bool(is_far[i])}
                            for i in flagged[:EXAMPLES].tolist()]}
    rows = [(i, round(float(score[i]), 4), round(float(z[i]), 2)) for i in flagged.tolist()]
    return summary, rows


# ---------------------------------------------------------------- what a copy is
COPY_KINDS = ("jpeg", "resized up", "resized down", "cropped", "shifted", "recoloured", "inverted", "brightness")


def plant_copy(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A copy of a uint8 gray image made one of the ways :func:`copy_similarity` is built to see through
    (:data:`COPY_KINDS`): re-encoded as JPEG (quality 60-90), resized up or down, cropped by 1-3 px a side,
    shifted by 1-3 px each way (the border's level filling in), recoloured (a tint: RGB), inverted, or
    brightness-scaled. The tests and ``benchmarks/bench.py`` plant them."""
    h, w = img.shape
    if kind == "jpeg":
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(rng.integers(60, 91)))
        return np.asarray(Image.open(buf).convert("L"))
    if kind in ("resized up", "resized down"):
        f = float(rng.uniform(1.4, 2.3) if kind == "resized up" else rng.uniform(0.7, 0.86))
        size = (max(8, round(w * f)), max(8, round(h * f)))
        return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR if f > 1 else cv2.INTER_AREA)
    if kind == "cropped":
        t, b, left, r = (int(v) for v in rng.integers(1, 4, 4))
        return img[t:h - b, left:w - r].copy()
    if kind == "shifted":
        dy, dx = (int(v) for v in rng.integers(1, 4, 2) * rng.choice([-1, 1], 2))
        move = np.float32([[1, 0, dx], [0, 1, dy]])
        return cv2.warpAffine(img, move, (w, h), borderValue=int(np.median(img[0])))
    if kind == "recoloured":
        return np.clip(img[..., None] * rng.uniform(0.4, 1.0, 3), 0, 255).astype(np.uint8)
    if kind == "inverted":
        return 255 - img
    if kind == "brightness":
        return np.clip(img * rng.uniform(0.5, 0.8) + rng.uniform(0, 30), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown kind of copy {kind!r}; one of {COPY_KINDS}")
