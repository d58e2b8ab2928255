"""Fitting a model on prepared arrays: the compiled model, its tf.data pipelines, and the short
"fit on arrays" run that ``suspects`` trains each fold with.

``train`` (the stage) adds what a full run needs around :func:`compile_model` and
:func:`datasets`: checkpoints, early stopping, history, backup and resume, distribution.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.model import batches, multilabel, recipe
from pipeline.model.distribute import Cluster
from pipeline.shared.params import AugmentParams, TrainParams

log = logging.getLogger(__name__)

VAL_BATCH = 1024  # images per validation step
STEPS_PER_EXECUTION = 8  # steps per call into the compiled graph: fewer Python round trips per epoch


@dataclass
class Data:
    """The prepared arrays a run trains on."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int

    @property
    def has_val(self) -> bool:
        return len(self.x_val) > 0

    @property
    def multi(self) -> bool:
        """Several labels per image: ``y`` holds multi-hot rows."""
        return np.ndim(self.y_train) == 2


def compile_model(p: TrainParams, plan: recipe.Plan, data: Data, strategy: Any = None, schedule: Any = None) -> Any:
    """The model with its optimizer (learning rate ``schedule``, default the plan's), loss and metrics (built
    in the strategy's scope when there is one)."""
    import keras

    from pipeline.model.model import build_model, with_precision

    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model(p.model, tuple(data.x_train.shape[1:]), data.n_classes, p.dropout, plan.total_steps,
                            multi=data.multi)
        if plan.precision != "float32":
            model = with_precision(model, plan.precision)
        # multi-label: a binary cross-entropy per label (its positives weighted by the plan's class weights),
        # and the share of right label decisions as "accuracy"
        loss = multilabel.loss(p.label_smoothing, plan.class_weights) if data.multi else recipe.loss(p)
        metric = (keras.metrics.BinaryAccuracy(name="accuracy") if data.multi else
                  keras.metrics.CategoricalAccuracy(name="accuracy"))
        model.compile(optimizer=recipe.optimizer(p, plan.total_steps, schedule), loss=loss, metrics=[metric],
                      # Several steps per graph call (not under tf.distribute: Keras' multi-step loop
                      # fails there); no XLA: slower on CPU.
                      steps_per_execution=STEPS_PER_EXECUTION if strategy is None else 1, jit_compile=False)
    return model


def datasets(p: TrainParams, plan: recipe.Plan, aug: AugmentParams, data: Data, strategy: Any = None,
             cluster: Cluster | None = None, stream: bool = False) -> tuple[Any, Any]:
    """The training and validation tf.data pipelines (distributed under a strategy)."""
    import tensorflow as tf

    from pipeline.model.augment import build_augmenter

    cluster = cluster or Cluster()
    # The augmentation seed differs per worker: their shards differ, so should their distortions.
    augmenter = build_augmenter(dataclasses.replace(aug, hflip=plan.hflip), p.seed + cluster.index)

    def train_data(shard: tuple[int, int]) -> Any:
        return batches.make_dataset(data.x_train, data.y_train, p.batch_size, shuffle=True, seed=p.seed,
                                    augmenter=augmenter, stream=stream, shard=shard, data_threads=p.data_threads,
                                    n_classes=0 if data.multi else data.n_classes,
                                    class_weights=None if data.multi else plan.class_weights,
                                    passes=plan.passes_per_epoch)

    def val_data() -> Any:  # not sharded: every worker measures the whole val split, alike
        # Larger batches than training's: inference only (batch-norm uses its moving statistics, so the
        # batch size changes nothing but the speed), fewer steps in every epoch's validation pass.
        return batches.make_dataset(data.x_val, data.y_val, max(p.batch_size, VAL_BATCH), shuffle=False, seed=p.seed,
                                    stream=stream, data_threads=p.data_threads,
                                    n_classes=0 if data.multi else data.n_classes)

    if strategy is None:
        return train_data((0, 1)), val_data() if data.has_val else None
    train_ds = strategy.distribute_datasets_from_function(
        lambda ctx: train_data((ctx.input_pipeline_id, ctx.num_input_pipelines)),
        tf.distribute.InputOptions(experimental_fetch_to_device=True))
    return train_ds, strategy.distribute_datasets_from_function(lambda ctx: val_data()) if data.has_val else None


def epoch_bar(epochs: int, desc: str) -> Any:
    """A Keras callback showing a tqdm bar over the epochs, with its ETA."""
    import keras

    # an inner bar (under the folds' bar, say): not drawn into a log or a pipe, where its cursor moves
    # (ESC[A) would be junk; the outer bar still counts
    bar = tqdm(total=epochs, desc=desc, unit="epoch", leave=False, disable=not sys.stderr.isatty())

    class EpochBar(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{(logs or {}).get('loss', float('nan')):.3f}")

        def on_train_end(self, logs: dict | None = None) -> None:
            bar.close()

    return EpochBar()


def fit_on_arrays(x: np.ndarray, y: np.ndarray, p: TrainParams, aug: AugmentParams, n_classes: int,
                  symmetry: dict[str, Any] | None, imbalance_ratio: float, desc: str = "fit") -> Any:
    """Train a model on ``x``, ``y`` with the run's recipe (``p``; no validation, no checkpoints: a
    short fit, e.g. one of ``suspects``' folds); the trained model."""
    import keras

    data = Data(np.asarray(x), np.asarray(y), x[:0], y[:0], n_classes)
    counts = (data.y_train.sum(axis=0) if data.multi else np.bincount(data.y_train, minlength=n_classes)).tolist()
    plan = recipe.plan(p, aug, len(data.y_train), counts, symmetry, imbalance_ratio)
    keras.utils.set_random_seed(p.seed)
    model = compile_model(p, plan, data)
    train_ds, _ = datasets(p, plan, aug, data)
    model.fit(train_ds, epochs=plan.epochs, verbose=0, shuffle=False, callbacks=[epoch_bar(plan.epochs, desc)])
    return model
