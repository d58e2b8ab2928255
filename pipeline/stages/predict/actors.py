"""Predict's model on a Ray cluster (``--engine ray``): a pool of Ray actors, each holding the bundle's model.

Each actor loads the bundle once, then turns blocks of file names (``--batch-size`` files, relative to
IMAGES) into their rows: it decodes the files and runs the model exactly as the process you started does
(:func:`block_rows` is the one path from a decoded block to its rows, for both engines), so the rows are
the same. The blocks go out in turn and come back in file order (:class:`pipeline.shared.cluster.RayActorPool`);
an actor whose process dies is started again and redoes its blocks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.inputs import Inputs, file_chunks
from pipeline.model.infer import Predictor
from pipeline.model.rows import Row, Rules, make_rows, rules_for
from pipeline.shared import bundle
from pipeline.shared.cluster import RayActorPool
from pipeline.shared.params import ClusterParams, PredictParams


def block_rows(predictor: Predictor, rules: Rules, paths: list[str], reasons: list[str], x: np.ndarray) -> list[Row]:
    """The rows of a block of files: ``x`` holds the model input of those read (``reasons`` empty)."""
    out = predictor(x)
    return make_rows(paths, reasons, out.probs, predictor.bundle.labels, rules, out.novelty, out.familiar)


class PredictActor:
    """One model replica on the cluster: the bundle at ``model_dir`` with ``p``'s rules, reading under ``source``."""

    def __init__(self, source: str, model_dir: str, p: PredictParams) -> None:
        b = bundle.load(model_dir, p.runtime)
        self.inputs, self.rules = Inputs("folder", Path(source)), rules_for(p, b.labels, b.calibration)
        self.predictor = Predictor(b, p.batch_size)

    def rows(self, names: list[str]) -> list[Row]:
        """The rows of one block of files (names relative to ``source``), in their order."""
        cfg = self.predictor.bundle.preprocess
        ((paths, x, reasons),) = file_chunks(self.inputs, names, cfg, len(names), None)
        return block_rows(self.predictor, self.rules, paths, reasons, x)


def start(cluster: ClusterParams, source: Path, model_dir: Path, p: PredictParams) -> RayActorPool:
    """``p.workers`` actors (0: one per CPU of the cluster), each with the model; paths made absolute (every
    node opens them at the same place)."""
    return RayActorPool(cluster, PredictActor, (str(source.resolve()), str(model_dir.resolve()), p), p.workers)
