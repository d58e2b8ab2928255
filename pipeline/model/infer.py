"""Inference: the one path from model input to class probabilities, novelty and familiarity.

``evaluate`` (the metrics we report), ``predict`` and ``serve`` (the labels users get), ``explain``,
``export``'s agreement check and ``suspects`` all call :class:`Predictor` (or :func:`predict_probs`),
so what the bundle says about its outputs is applied in one place, the same way everywhere.

One path, two runtimes (``bundle.runtime``): the model runs in TensorFlow (the bundle's Keras model as
one compiled graph) or in ONNX Runtime (the bundle's ``model.onnx``, :class:`~pipeline.model.formats.OnnxRunner`).
Either gives the same four arrays per batch (probabilities, logits, the novelty detector's features,
the convolution features); everything after that, the nearest-neighbour distance, the strokes
classifier, the novelty score and ``familiar``, is the same numpy code for both
(:mod:`pipeline.model.novelty`), as are the rows made from them (:mod:`pipeline.model.rows`).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np

from pipeline.model import novelty
from pipeline.model.formats import CONV, FEATURES, LOGITS, PROBS, OnnxRunner
from pipeline.model.model import LOGITS_LAYER, feature_layer, strokes_layer
from pipeline.shared.bundle import ONNX, Bundle
from pipeline.shared.errors import StageError


@dataclass
class Output:
    """What the model says about a batch of images."""

    probs: np.ndarray   # (n, classes): the bundle's (calibrated) class probabilities
    logits: np.ndarray  # (n, classes): before the temperature and the softmax
    features: np.ndarray | None = None  # (n, d): the novelty detector's features (None: the model has none)
    novelty: np.ndarray | None = None   # (n,): higher = less like the training data (None: no novelty model)
    familiar: np.ndarray | None = None  # (n,) bool: novelty within the bundle's threshold
    conv: np.ndarray | None = None      # (n, ...): the convolution features (only from Predictor(conv=True))

    def take(self, start: int, stop: int) -> "Output":
        """Rows ``start:stop`` (one request's share of a batch)."""
        return Output(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[start:stop]
                         for f in fields(self)})


# ONNX Runtime's threads for one model call. One: a LeNet-size batch is too small to split well, and the other
# cores decode images (predict's workers, serve's requests); two threads measured slower on a busy 2-core CPU.
ONNX_THREADS = 1

Forward = Callable[[np.ndarray], dict[str, np.ndarray]]  # one batch -> its outputs by name (formats.OUTPUTS)


class Predictor:
    """A bundle's model in its runtime, called on batches of at most ``batch_size`` images.

    TensorFlow runs one compiled graph on fixed-size batches (traced once; an image gets the same
    arithmetic whatever else is in its batch, so a resumed run, which starts at a batch boundary, writes
    the same rows; on some CPUs its place in the batch changes a probability in the 8th digit); ONNX
    Runtime gives each image the same result whatever the batch size, so it runs the batch as it is.
    """

    def __init__(self, b: Bundle, batch_size: int = 512, novelty: bool = True, conv: bool = False) -> None:
        self.bundle, self.batch_size, self.keep_conv = b, batch_size, conv
        self.n_classes = len(b.labels)
        self._forward, has = (_onnx_forward(b) if b.runtime == ONNX else _tf_forward(b.model, batch_size))
        # novelty=False: probabilities only (evaluate, export's check), no novelty work at all. A model
        # without features (an older bundle) has no novelty score.
        self.spec = b.novelty if novelty and FEATURES in has else None
        if self.spec is not None and self.spec.uses_strokes and CONV not in has:
            raise StageError(f"model bundle {b.path}: its novelty detector reads convolution features the model "
                             "does not give; retrain it (make train FRESH=1)")

    @property
    def runtime(self) -> str:
        return self.bundle.runtime

    @property
    def scores_novelty(self) -> bool:
        return self.spec is not None

    def warm_up(self) -> None:
        """Run the model once now (TensorFlow traces its graph), e.g. before a server takes requests."""
        self(np.zeros((1, *self.bundle.preprocess.input_shape), np.float32))

    def __call__(self, x: np.ndarray) -> Output:
        n = len(x)
        parts: dict[str, list[np.ndarray]] = {}
        for i in range(0, n, self.batch_size):
            block = np.asarray(x[i:i + self.batch_size], np.float32)  # one batch in memory (x may be memory-mapped)
            for key, value in self._forward(block).items():
                parts.setdefault(key, []).append(value)
        got = {key: np.concatenate(p) for key, p in parts.items()}
        probs = got.get(PROBS, np.zeros((0, self.n_classes), np.float32))
        # an older model without a logits layer: its log-probabilities stand in
        logits = got[LOGITS] if LOGITS in got else np.log(np.maximum(probs, 1e-12))
        out = Output(probs, logits, got.get(FEATURES), conv=got.get(CONV) if self.keep_conv else None)
        if self.spec is not None:
            out.novelty, out.familiar = self._novelty(np.asarray(x, np.float32), got)
        return out

    def _novelty(self, x: np.ndarray, got: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The bundle's novelty score and ``familiar`` (numpy, the same for both runtimes)."""
        if not len(x):
            return np.zeros(0, np.float32), np.zeros(0, bool)
        spec = self.spec
        with _one_blas_thread():
            strokes = novelty.strokes_logits(spec.head, got[CONV]) if spec.uses_strokes else None
            return novelty.score(spec, x, got[FEATURES], strokes=strokes)


@functools.cache
def _blas_controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


_PINNED: list[Any] = []  # pin_blas_thread's limit, held for the life of the process


def pin_blas_thread() -> None:
    """numpy's BLAS on one thread from now on, in this process (a server that only scores novelty): each
    model call then skips setting and restoring the limit (:func:`_one_blas_thread`)."""
    controller = _blas_controller()
    if controller is not None and not _PINNED:
        _PINNED.append(controller.limit(limits=1, user_api="blas"))


def _one_blas_thread() -> Any:
    """numpy's BLAS on one thread while it scores novelty: the matrices of a batch are small, and the other
    cores decode images (predict's workers, serve's requests). Measured on a busy 2-core CPU: one image's
    nearest-neighbour distance 0.05 ms on one thread, 2 ms on two; a batch of 512, 8 ms against 22 ms."""
    controller = None if _PINNED else _blas_controller()
    return controller.limit(limits=1, user_api="blas") if controller is not None else contextlib.nullcontext()


def _onnx_forward(b: Bundle) -> tuple[Forward, set[str]]:
    """The bundle's ``model.onnx`` in ONNX Runtime, checked against the label map and the preprocessing."""
    runner = OnnxRunner(b.runtime_model, ONNX_THREADS)
    width, shape = runner.output_width, runner.input_shape
    if PROBS not in runner.names or (isinstance(width, int) and width != len(b.labels)):
        raise StageError(f"model bundle {b.path}: its {b.runtime_model.name} has outputs {runner.names} of "
                         f"{width} classes but the label map has {len(b.labels)} labels")
    if tuple(shape) != tuple(b.preprocess.input_shape):
        raise StageError(f"model bundle {b.path}: its {b.runtime_model.name} takes inputs of shape {tuple(shape)} "
                         f"but its preprocessing makes {tuple(b.preprocess.input_shape)}; the bundle is inconsistent")
    return runner.outputs, set(runner.names)


def _tf_forward(model: Any, batch: int) -> tuple[Forward, set[str]]:
    """The Keras model as one compiled graph on fixed batches of ``batch`` (the last one zero-padded)."""
    import tensorflow as tf

    forward, has = _layers_forward(model)
    graph = tf.function(lambda x: forward(x))

    def run(block: np.ndarray) -> dict[str, np.ndarray]:
        n = len(block)
        if n < batch:  # zero-padded to the traced shape
            block = np.concatenate([block, np.zeros((batch - n, *block.shape[1:]), np.float32)])
        return {key: np.asarray(value)[:n] for key, value in graph(block).items()}
    return run, has


def _layers_forward(model: Any) -> tuple[Callable[[Any], dict[str, Any]], set[str]]:
    """The model as a function of the images returning its probabilities and, by name, the logits, the
    features and the convolution features (:data:`pipeline.model.formats.OUTPUTS`, those it has)."""
    names = [layer.name for layer in model.layers]
    taps = {name: key for key, name in ((LOGITS, LOGITS_LAYER if LOGITS_LAYER in names else None),
                                        (FEATURES, feature_layer(model)), (CONV, strokes_layer(model)))
            if name is not None}

    def forward(x: Any) -> dict[str, Any]:
        out = {}
        for layer in model.layers:  # a Sequential model: the layers in order
            x = layer(x, training=False)
            if layer.name in taps:
                out[taps[layer.name]] = x
        return {PROBS: x, **out}
    return forward, {PROBS, *taps.values()}


def predict_probs(b: Bundle, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Class probabilities of ``x`` (already preprocessed) with the bundle's model."""
    return Predictor(b, batch_size, novelty=False)(x).probs


def agreement(a: Output, b: Output) -> dict[str, Any]:
    """How two runs over the same images agree (e.g. the two runtimes): the share with the same top label
    and the same ``familiar``, and the largest difference of a probability."""
    n = len(a.probs)
    out: dict[str, Any] = {"images": int(n), "top1": float(np.mean(a.probs.argmax(1) == b.probs.argmax(1))) if n else None,
                           "max_abs_prob_diff": float(np.max(np.abs(a.probs - b.probs))) if n else None}
    if a.familiar is not None and b.familiar is not None:
        out["familiar"] = float(np.mean(a.familiar == b.familiar)) if n else None
        out["max_abs_novelty_diff"] = float(np.max(np.abs(a.novelty - b.novelty))) if n else None
    return out
