"""Training on more than one device or machine with TensorFlow's own ``tf.distribute``.

``default``: no strategy (one device). ``mirrored``: ``tf.distribute.MirroredStrategy``,
one replica per local GPU (or the CPU). ``multiworker``:
``tf.distribute.MultiWorkerMirroredStrategy`` configured by the standard ``TF_CONFIG``
environment variable, e.g. for the second of two workers::

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 1}}'

The chief (worker 0, or the task of type ``chief``) alone writes files; every worker
reads the same prepared run folder and restores the same backup.

Also the knobs for TensorFlow's own thread pools.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

STRATEGIES = ("default", "mirrored", "multiworker")


@dataclass(frozen=True)
class Cluster:
    """Where this process sits: its worker index, how many workers, whether it writes files."""

    index: int = 0
    workers: int = 1
    is_chief: bool = True
    replicas: int = 1  # model replicas in sync over all workers


def tf_config_task(env: dict[str, str] | None = None) -> tuple[int, int, bool] | None:
    """(index among the workers, number of workers, is chief) from ``TF_CONFIG``; None when unset.

    A task of type ``chief`` counts as a worker (index 0); without one, worker 0 is the chief.
    Raises ValueError naming what is wrong with a malformed ``TF_CONFIG``.
    """
    raw = (env if env is not None else os.environ).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
        cluster, task = cfg["cluster"], cfg["task"]
        kind, index = task["type"], int(task["index"])
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"TF_CONFIG is not valid ({exc!r}); expected "
                         '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}') from None
    if kind not in ("chief", "worker"):
        raise ValueError(f"TF_CONFIG task type {kind!r}: only 'chief' and 'worker' take part in training")
    members = chiefs + workers
    offset = len(chiefs) if kind == "worker" else 0
    if not 0 <= index < len(cluster.get(kind, [])):
        raise ValueError(f"TF_CONFIG task index {index} is not in the cluster's {kind} list ({members})")
    position = offset + index
    return position, len(members), position == 0


def configure_threads(intra_op: int, inter_op: int) -> None:
    """Set TensorFlow's thread pools (0 keeps TF's default: all cores). Must run before TF does any work;
    the ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS`` variables do the same for any stage."""
    import tensorflow as tf

    for value, setter, name in ((intra_op, tf.config.threading.set_intra_op_parallelism_threads, "intra_op_threads"),
                                (inter_op, tf.config.threading.set_inter_op_parallelism_threads, "inter_op_threads")):
        if value:
            try:
                setter(value)
            except RuntimeError:  # TF already started in this process (e.g. a test): keep what it has
                log.warning("train: %s = %d not applied: TensorFlow was already initialised", name, value)


def make_strategy(name: str) -> tuple[Any, Cluster]:
    """The ``tf.distribute`` strategy for ``name`` (None for ``default``) and this process's place."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")
    if name == "default":
        return None, Cluster()
    import tensorflow as tf

    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        return strategy, Cluster(replicas=strategy.num_replicas_in_sync)
    task = tf_config_task()
    if task is None:
        raise ValueError("--strategy multiworker needs the TF_CONFIG environment variable on every worker "
                         '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                         '"task": {"type": "worker", "index": 0}}); see the README')
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"cannot start MultiWorkerMirroredStrategy: {exc}") from None
    _patch_keras_multiworker_reduce()
    index, workers, is_chief = task
    log.info("train: worker %d of %d%s, %d replicas in sync", index, workers, " (chief)" if is_chief else "",
             strategy.num_replicas_in_sync)
    return strategy, Cluster(index, workers, is_chief, strategy.num_replicas_in_sync)


def prepare_model(model: Any, strategy: Any) -> None:
    """Let Keras 3 ``fit`` a model under a multi-worker strategy.

    Keras builds the model's training state from the first batch, which it averages
    over all replicas with a collective reduce that MultiWorkerMirroredStrategy rejects
    for a nested (x, y) batch (keras-team/keras#20585). The first local replica's
    batch has the same shapes, which is all the build needs. Set on this model only.
    """
    import tensorflow as tf

    original = model._maybe_symbolic_build

    def build(iterator: Any = None, data_batch: Any = None) -> Any:
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, batch)
                break
        return original(data_batch=data_batch)

    model._maybe_symbolic_build = build


def _patch_keras_multiworker_reduce() -> None:
    """Keras 3 averages the per-step metrics of a multi-worker run with ``axis=0``, which fails
    for the scalar metrics every model has (keras-team/keras#20585). Average them with
    ``axis=None`` instead: the mean over all replicas, the same number on every worker,
    so early stopping and checkpoints decide alike everywhere. Other strategies untouched."""
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer.reduce_per_replica, "_pipeline_patched", False):
        return
    original = trainer.reduce_per_replica

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            import tensorflow as tf

            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica._pipeline_patched = True  # type: ignore[attr-defined]
    trainer.reduce_per_replica = reduce_per_replica
