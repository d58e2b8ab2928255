"""The novelty detector as the bundle stores it: one typed spec, its files, written and read here.

``train`` fits it (:func:`pipeline.model.novelty.fit` returns a :class:`NoveltySpec`), the bundle
writes and reads it through :meth:`NoveltySpec.write` / :meth:`NoveltySpec.read`, and inference
(:mod:`pipeline.model.infer`, :mod:`pipeline.model.novelty`) reads its fields. Three files, no pickle:

- ``novelty.json``: the detectors, the image-statistics model, each detector's quantile table, the
  cut (``threshold``) and the share of familiar images it flags (``flag_rate``), and what it was
  fitted on;
- ``novelty_reference.npy``: the nearest-neighbour detector's training features (unit rows);
- ``novelty_head.npy``: the strokes classifier (one hidden layer), packed as (d + 3, hidden) =
  W1, b1, w2, [b2, 0, ...] by :func:`pack_head`; :func:`unpack_head` is the one place that reads it.

A spec written before the sum of surprises (``val_median``/``val_p98``, the larger of two scores)
still reads and scores.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared import artifacts
from pipeline.shared.errors import StageError
from pipeline.shared.params import NoveltyParams

SPEC = "novelty.json"
REFERENCE = "novelty_reference.npy"
HEAD = "novelty_head.npy"
FILES = (SPEC, REFERENCE, HEAD)
STROKES = "strokes"  # the detector that reads the strokes classifier


def pack_head(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: float) -> np.ndarray:
    """The strokes classifier's layers as one (d + 3, hidden) float32 array."""
    d, hidden = w1.shape
    packed = np.zeros((d + 3, hidden), np.float32)
    packed[:d], packed[d], packed[d + 1], packed[d + 2, 0] = w1, b1, w2, b2
    return packed


def unpack_head(head: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The strokes classifier's layers (W1 (d, h), b1 (h,), w2 (h,), b2) from :func:`pack_head`'s array."""
    head = np.asarray(head, np.float32)
    d = head.shape[0] - 3
    return head[:d], head[d], head[d + 1], float(head[d + 2, 0])


@dataclass(frozen=True)
class NoveltySpec:
    """A fitted novelty detector: what it scores with, where its cut lies, and what it was fitted on."""

    detectors: tuple[str, ...]
    threshold: float                    # novelty above this: unfamiliar
    flag_rate: float                    # the share of familiar (validation) images the cut flags
    stats_mean: np.ndarray              # (S,) the training images' statistics: mean ...
    stats_precision: np.ndarray         # (S, S) ... and inverse covariance
    reference: np.ndarray               # (R, d) unit feature rows of training images
    tail_levels: np.ndarray | None = None     # (L,) surprise levels of the quantile tables
    tail_quantiles: np.ndarray | None = None  # (D, L) each detector's raw score at those levels
    head: np.ndarray | None = None      # the strokes classifier, packed (None: two detectors)
    legacy: dict[str, Any] = field(default_factory=dict)  # val_median/val_p98 of a spec from before the tables
    facts: dict[str, Any] = field(default_factory=dict)   # what it was fitted on (for the record)

    @property
    def uses_strokes(self) -> bool:
        return STROKES in self.detectors

    @functools.cached_property
    def reference_t(self) -> np.ndarray:
        """The reference rows transposed, contiguous (d, R): the nearest-neighbour product's right operand
        (made once; a transposed view makes that product about twice as slow on small blocks)."""
        return np.ascontiguousarray(np.asarray(self.reference, np.float32).T)

    def head_layers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """The strokes classifier's layers (W1 (d, h), b1 (h,), w2 (h,), b2)."""
        return unpack_head(self.head)

    def to_json(self) -> dict[str, Any]:
        """``novelty.json``'s content."""
        out: dict[str, Any] = {"detectors": list(self.detectors), "threshold": float(self.threshold),
                               "flag_rate": float(self.flag_rate), "stats_mean": self.stats_mean.tolist(),
                               "stats_precision": self.stats_precision.tolist(), **self.legacy, **self.facts}
        if self.tail_levels is not None:
            out["tail_levels"] = self.tail_levels.tolist()
            out["tail_quantiles"] = self.tail_quantiles.tolist()
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """The ``.npy`` files by name."""
        return {REFERENCE: self.reference, **({HEAD: self.head} if self.head is not None else {})}

    def write(self, folder: Path) -> None:
        """Write the spec's files into ``folder`` (each atomically)."""
        artifacts.write_json(folder / SPEC, self.to_json())
        for name, array in self.arrays().items():
            artifacts.save_npy(folder / name, array)

    @classmethod
    def read(cls, folder: Path) -> "NoveltySpec | None":
        """The spec in ``folder`` (None when it has none: a bundle from before the detector)."""
        if not (folder / SPEC).is_file():
            return None
        raw = artifacts.read_json(folder / SPEC, f"bundle {SPEC}")
        try:
            detectors = tuple(raw["detectors"])
            reference = artifacts.load_npy(folder / REFERENCE, "novelty reference", mmap=False)
            head = artifacts.load_npy(folder / HEAD, "novelty strokes classifier", mmap=False) \
                if STROKES in detectors else None
            tables = "tail_levels" in raw
            known = {"detectors", "threshold", "flag_rate", "stats_mean", "stats_precision", "tail_levels",
                     "tail_quantiles", "val_median", "val_p98"}
            return cls(detectors, float(raw["threshold"]), float(raw.get("flag_rate", NoveltyParams().flag_rate)),
                       np.asarray(raw["stats_mean"]), np.asarray(raw["stats_precision"]), reference,
                       np.asarray(raw["tail_levels"]) if tables else None,
                       np.asarray(raw["tail_quantiles"]) if tables else None, head,
                       {k: raw[k] for k in ("val_median", "val_p98") if k in raw},
                       {k: v for k, v in raw.items() if k not in known})
        except (KeyError, TypeError, ValueError) as exc:
            raise StageError(f"{folder / SPEC} is malformed ({type(exc).__name__}: {exc})") from None
