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

from pipeline.shared import compat
from pipeline.shared.errors import UserError
from pipeline.shared.params import STRATEGIES

log = logging.getLogger(__name__)



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
        raise UserError(f"TF_CONFIG is not valid ({exc!r}); expected "
                         '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}') from None
    if kind not in ("chief", "worker"):
        raise UserError(f"TF_CONFIG task type {kind!r}: only 'chief' and 'worker' take part in training")
    members = chiefs + workers
    offset = len(chiefs) if kind == "worker" else 0
    if not 0 <= index < len(cluster.get(kind, [])):
        raise UserError(f"TF_CONFIG task index {index} is not in the cluster's {kind} list ({members})")
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
        raise UserError(f"strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")
    if name == "default":
        return None, Cluster()
    import tensorflow as tf

    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        return strategy, Cluster(replicas=strategy.num_replicas_in_sync)
    task = tf_config_task()
    if task is None:
        raise UserError("--strategy multiworker needs the TF_CONFIG environment variable on every worker "
                         '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                         '"task": {"type": "worker", "index": 0}}); see the README')
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"cannot start MultiWorkerMirroredStrategy: {exc}") from None
    compat.patch_multiworker_reduce()
    index, workers, is_chief = task
    log.info("train: worker %d of %d%s, %d replicas in sync", index, workers, " (chief)" if is_chief else "",
             strategy.num_replicas_in_sync)
    return strategy, Cluster(index, workers, is_chief, strategy.num_replicas_in_sync)
