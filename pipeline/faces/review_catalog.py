"""What the review page shows: the queues of a run folder (and of a folder of new images), built once
when the page starts, and where each card's image may be read from.

The cards come from :mod:`pipeline.model.queues`; the files they name are the run's own (the manifest's
paths) or those found under ``--images``. The catalog is the only place the page's paths come from: a
request names a card by its id, never by a path, and a file is served only when it lies under the
dataset's root or the ``--images`` folder.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.data.inputs import inside, list_inputs
from pipeline.data.preprocess import inspect_image, perceptual
from pipeline.model import queues
from pipeline.model.infer import Predictor
from pipeline.shared import artifacts, bundle
from pipeline.shared import runfolder as rf
from pipeline.shared.errors import UserError

log = logging.getLogger(__name__)

TITLES = {"suspects": "Suspected label errors", "duplicates": "Copies and look-alikes", "outliers": "Outliers",
          "misclassified": "Test images the model gets wrong", "quality": "Image quality",
          "unlabeled": "New images to label"}


@dataclass
class Catalog:
    """The queues, the cards by id, the label map, and what may be served."""

    run: Path
    labels: list[str]
    queues: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    roots: list[Path] = field(default_factory=list)
    rows: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (split, row) of the prepared arrays
    new_images: dict[str, np.ndarray] = field(default_factory=dict)  # path -> model input of a new image
    prep: Any = None

    def add(self, name: str, cards: list[dict[str, Any]]) -> None:
        """A queue (kept only when it has cards: the page shows what exists for the run)."""
        if not cards:
            return
        self.queues[name] = cards
        for c in cards:
            self.by_id.setdefault(c["id"], c)

    def file(self, card_id: str) -> Path | None:
        """The file of a card, when it lies under an allowed root (None otherwise)."""
        c = self.by_id.get(card_id)
        if c is None:
            return None
        real = Path(os.path.realpath(c["path"]))
        return real if any(_inside(real, root) for root in self.roots) else None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _run_queues(cat: Catalog, prep: rf.Prepared) -> None:
    """The queues of the run's own images (each from the file its stage wrote, when there is one)."""
    run = prep.run
    suspects = queues.suspects(_rows(run / rf.SUSPECTS_RANKED))
    if suspects and rf.stale_suspects(run):
        log.warning("review: %s checked an earlier preparation of %s (labels may have changed since): "
                    "`make suspects` checks the data as it is now", rf.SUSPECTS, run)
        for c in suspects:
            c["reason"] = "checked before the last prepare: " + c["reason"]
    cat.add("suspects", suspects)
    cat.add("duplicates", queues.duplicates(_rows(run / rf.SIMILAR)))
    cat.add("outliers", queues.outliers(_rows(run / rf.OUTLIERS)))
    if (run / rf.PROBS).is_file() and (run / rf.METRICS).is_file():
        probs = artifacts.load_npy(run / rf.PROBS, "test probabilities", mmap=False)
        y, paths = prep.y("test"), prep.paths("test")
        if len(probs) == len(y) == len(paths):
            cat.add("misclassified", queues.misclassified(paths, y, probs, prep.labels))
    cat.add("quality", queues.quality(_rows(run / rf.QUALITY)))


def _groups(metas: list[tuple[int, bytes, bytes]]) -> np.ndarray:
    """A group id per new image: near-duplicates of one another share one (union of the close pairs)."""
    from pipeline.data.similar import near_duplicate_pairs

    n = len(metas)
    parent = np.arange(n)
    if n > 1:
        hashes = np.array([m[0] for m in metas], np.uint64)
        thumbs = np.stack([np.frombuffer(m[1], np.uint8) for m in metas])
        sha = np.stack([np.frombuffer(m[2], np.uint8) for m in metas])
        pairs, _ = near_duplicate_pairs(hashes, thumbs, sha)  # near-identical, not byte-identical ...
        first: dict[bytes, int] = {}
        same = []
        for i, m in enumerate(metas):  # ... and byte-identical copies
            j = first.setdefault(m[2], i)
            if j != i:
                same.append((j, i))
        for a, b in [(a, b) for a, b, _ in pairs] + same:
            ra, rb = _find(parent, a), _find(parent, b)
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([_find(parent, i) for i in range(n)])


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return int(i)


def _new_images(cat: Catalog, images: Path, model_dir: Path) -> None:
    """The queue of new images: read once, predicted with the run's model, near-duplicates grouped."""
    b = bundle.load(model_dir)
    inputs = list_inputs(images)
    paths, arrays, metas, left_out = [], [], [], []
    for rel in tqdm(inputs.paths, desc="review: new images", unit="img"):
        full = str(Path(images).resolve() / rel)  # absolute: labeled.csv names the files where they are
        if inside(Path(full), images) is None:  # a link out of the folder: never served
            left_out.append((rel, "a link to a file outside the folder"))
            continue
        x, reason, decoded = inspect_image(full, b.preprocess)
        if x is None:
            left_out.append((rel, reason))
            continue
        phash, thumb = perceptual(decoded.array)
        paths.append(full)
        arrays.append(x)
        metas.append((phash, thumb, bytes.fromhex(decoded.meta.sha1)))
    left_out += inputs.rejected
    if left_out:
        log.warning("review: %d file(s) under %s left out of the new images: %s", len(left_out), images,
                    "; ".join(f"{p}: {why}" for p, why in left_out[:5]) + (" ..." if len(left_out) > 5 else ""))
    if not paths:
        return
    x = np.stack(arrays)
    out = Predictor(b, 256)(x)
    cat.new_images = dict(zip(paths, x))
    cat.add("unlabeled", queues.unlabeled(paths, out.probs, out.familiar, _groups(metas), b.labels))


def build(run: Path, images: Path | None = None) -> Catalog:
    """The catalog of a prepared run (and of ``images``, a folder of new images, with the run's model)."""
    prep = rf.Prepared.open(run)
    if prep.multi:
        raise UserError(f"{run} is a multi-label run: the review page decides one label per image and does not "
                        "review label sets yet; suspects.csv lists each doubtful image with its suggested labels")
    dataset = prep.dataset() or {}
    root = Path(dataset.get("root") or dataset.get("data") or ".")
    cat = Catalog(run, list(prep.labels), roots=[Path(os.path.realpath(root.parent if root.is_file() else root))],
                  prep=prep)
    offset: dict[str, int] = {}
    for row in prep.manifest():
        cat.rows[row.path] = (row.split, offset.get(row.split, 0))
        offset[row.split] = offset.get(row.split, 0) + 1
    _run_queues(cat, prep)
    if images is not None:
        cat.roots.append(Path(os.path.realpath(images)))
        _new_images(cat, images, bundle.locate(run))
    log.info("review: %s", ", ".join(f"{name} {len(c)}" for name, c in cat.queues.items()) or "nothing to review")
    return cat


def model_view(cat: Catalog, card_id: str) -> np.ndarray | None:
    """The image of a card as the model sees it (the prepared row, or a new image's model input)."""
    c = cat.by_id.get(card_id)
    if c is None:
        return None
    if c["path"] in cat.new_images:
        return cat.new_images[c["path"]]
    where = cat.rows.get(c["path"])
    if where is None:  # an image the run left out (a val/test copy under another label): preprocessed now
        x, _, _ = inspect_image(c["path"], cat.prep.preprocess) if cat.file(card_id) else (None, "", None)
        return x
    return np.asarray(cat.prep.x(where[0])[where[1]])
