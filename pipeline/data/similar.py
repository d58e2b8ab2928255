"""Near-duplicates and outliers: the audit beyond identical bytes.

Both work on what the decoding workers record per file (:func:`preprocess.perceptual`):
a 64-bit perceptual hash and a 16x16 thumbnail of the image centred on its content.

- **Near-duplicates** (resized, re-encoded, slightly shifted copies): pairs whose hashes
  differ in at most :data:`NEAR_BITS` bits (found through four 16-bit bands, without
  comparing every pair) *and* whose thumbnails correlate at least :data:`NEAR_CORR`.
  The second test matters on small images: thousands of distinct handwritten 1s share
  a hash, but not a thumbnail that close. Each pair is within a class, across classes
  (a label conflict) or across splits (leakage).
- **Outliers**: images unlike the rest of their class: an image's score is one minus its
  mean correlation with its :data:`K` most similar images of the class (among up to
  :data:`REFERENCE` of them), and it is flagged when that is far above the class's own
  scores (robust z-score over :data:`OUTLIER_Z`).

Why not a library: OpenCV's ``img_hash`` is only in the contrib build, which cannot be
installed beside ``opencv-python-headless`` (both are the ``cv2`` module), and
``imagehash`` adds SciPy and PyWavelets and works one PIL image at a time; the DCT hash
is a few lines on the image the worker has already decoded.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

NEAR_BITS = 4
NEAR_CORR = 0.99
K = 5
REFERENCE = 1000
OUTLIER_Z = 5.0
EXAMPLES = 20
BLOCK = 2048  # rows compared at once within a large hash bucket (bounded memory)
MAX_PAIRS = 2_000_000  # candidate pairs looked at, at most (thousands of near-blank images would give billions)


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
        a, b = order[:-k][same], order[k:][same]
        close = np.bitwise_count(hashes[a] ^ hashes[b]) <= NEAR_BITS
        found.append(np.stack([a[close], b[close]], axis=1))
    return np.concatenate(found)


def hash_pairs(hashes: np.ndarray) -> tuple[np.ndarray, bool]:
    """Pairs (i < j) whose 64-bit hashes are within NEAR_BITS bits (pairs within 3 bits are certain
    to share one of the four 16-bit bands; 4-bit pairs nearly always do), and whether the search
    stopped at MAX_PAIRS."""
    found, total = [np.zeros((0, 2), np.int64)], 0
    for band in range(4):
        key = ((hashes >> np.uint64(16 * band)) & np.uint64(0xFFFF)).astype(np.int64)
        order = np.argsort(key, kind="stable")
        found.append(_small_bucket_pairs(order, key, hashes))
        total += len(found[-1])
        _, starts, counts = np.unique(key[order], return_index=True, return_counts=True)
        stopped = total > MAX_PAIRS
        for start, count in zip(starts[counts > SMALL_BUCKET].tolist(), counts[counts > SMALL_BUCKET].tolist()):
            if stopped:
                break
            new, stopped = _bucket_pairs(order[start:start + count], hashes, MAX_PAIRS - total)
            found += new
            total += sum(len(x) for x in new)
        if stopped:
            break
    pairs = np.concatenate(found)
    pairs.sort(axis=1)
    return (np.unique(pairs, axis=0) if len(pairs) else pairs), stopped


def near_duplicate_pairs(hashes: np.ndarray, thumbs: np.ndarray, sha1: np.ndarray
                         ) -> tuple[list[tuple[int, int, float]], bool]:
    """(i, j, correlation) of near-duplicate images that are not byte-identical (those are reported
    apart), and whether the search was cut short."""
    pairs, truncated = hash_pairs(hashes)
    out: list[tuple[int, int, float]] = []
    used = np.unique(pairs)  # mean and norm of each thumbnail in a pair, computed once
    mean, inv = np.zeros(len(thumbs), np.float32), np.zeros(len(thumbs), np.float32)
    for start in range(0, len(used), 65536):
        rows = used[start:start + 65536]
        t = thumbs[rows].astype(np.float32)
        mean[rows] = t.mean(axis=1)
        norm = np.sqrt(np.maximum((t * t).sum(axis=1) - t.shape[1] * mean[rows] ** 2, 0))
        inv[rows] = np.where(norm > 1e-3, 1 / np.maximum(norm, 1e-3), 0)
    n = thumbs.shape[1]
    for start in range(0, len(pairs), 65536):
        chunk = pairs[start:start + 65536]
        a, b = chunk[:, 0], chunk[:, 1]
        dot = np.einsum("ij,ij->i", thumbs[a].astype(np.float32), thumbs[b].astype(np.float32))
        corr = (dot - n * mean[a] * mean[b]) * inv[a] * inv[b]
        same_bytes = (sha1[chunk[:, 0]] == sha1[chunk[:, 1]]).all(axis=1)
        keep = (corr >= NEAR_CORR) & ~same_bytes
        out += [(int(a), int(b), round(float(c), 4)) for (a, b), c in zip(chunk[keep], corr[keep])]
    return out, truncated


def near_duplicates(paths: Sequence[str], labels: Sequence[str], splits: Sequence[str], hashes: np.ndarray,
                    thumbs: np.ndarray, sha1: np.ndarray) -> dict[str, Any]:
    """Near-duplicate pairs, sorted into within a class, across classes and across splits (dataset.json)."""
    kinds: dict[str, list[dict[str, Any]]] = {"within_class": [], "across_classes": [], "across_splits": []}
    pairs, truncated = near_duplicate_pairs(hashes, thumbs, sha1)
    for a, b, corr in pairs:
        entry = {"paths": [paths[a], paths[b]], "labels": [labels[a], labels[b]], "splits": [splits[a], splits[b]],
                 "similarity": corr}
        if labels[a] != labels[b]:
            kinds["across_classes"].append(entry)
        if splits[a] != splits[b] and "train" in (splits[a], splits[b]):
            kinds["across_splits"].append(entry)
        if labels[a] == labels[b] and splits[a] == splits[b]:
            kinds["within_class"].append(entry)
    out: dict[str, Any] = {kind: {"pairs": len(found), "examples": sorted(found, key=lambda e: -e["similarity"])[:EXAMPLES]}
                           for kind, found in kinds.items()}
    out["rule"] = f"perceptual hash within {NEAR_BITS} bits and thumbnails correlating >= {NEAR_CORR}"
    out["truncated"] = truncated
    return out


def outlier_scores(thumbs: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(score, robust z within the class) of every image: how unlike its class's nearest images it is."""
    score = np.zeros(len(y), np.float32)
    z = np.zeros(len(y), np.float32)
    rng = np.random.default_rng(seed)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if len(members) <= K + 1:
            continue
        ref = members if len(members) <= REFERENCE else np.sort(rng.choice(members, REFERENCE, replace=False))
        ref_vecs = _unit(thumbs[ref])
        for start in range(0, len(members), BLOCK):
            rows = members[start:start + BLOCK]
            sim = _unit(thumbs[rows]) @ ref_vecs.T
            sim[rows[:, None] == ref[None, :]] = -np.inf  # not itself
            top = np.sort(sim, axis=1)[:, -K:]
            score[rows] = 1.0 - top.mean(axis=1)
        s = score[members]
        med = float(np.median(s))
        mad = float(np.median(np.abs(s - med))) * 1.4826
        z[members] = (s - med) / max(mad, 1e-3)
    return score, z


def outliers(paths: Sequence[str], labels: Sequence[str], y: np.ndarray, thumbs: np.ndarray) -> dict[str, Any]:
    """Images unlike the rest of their class (dataset.json), most unusual first."""
    score, z = outlier_scores(thumbs, y)
    flagged = np.flatnonzero(z > OUTLIER_Z)
    flagged = flagged[np.argsort(-z[flagged], kind="stable")]
    per_class: dict[str, int] = {}
    for i in flagged.tolist():
        per_class[labels[i]] = per_class.get(labels[i], 0) + 1
    return {"images": int(len(flagged)), "per_class": per_class, "rule": f"robust z > {OUTLIER_Z:g} within the class",
            "examples": [{"path": paths[i], "label": labels[i], "z": round(float(z[i]), 2),
                          "score": round(float(score[i]), 4)} for i in flagged[:EXAMPLES].tolist()]}
