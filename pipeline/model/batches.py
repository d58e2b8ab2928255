"""The tf.data pipeline over prepared arrays, used by train, suspects and preview: shuffled,
sharded for multi-worker runs, gathered a batch at a time from memory or streamed from the
.npy file, augmented (training split only), with one-hot targets and class weights."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from pipeline.shared import artifacts
from pipeline.shared.params import TrainParams


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int,
                 augmenter: Any = None, stream: bool = False, shard: tuple[int, int] = (0, 1),
                 data_threads: int = 0, n_classes: int = 0, class_weights: list[float] | None = None,
                 passes: int = 1) -> Any:
    """A batched, prefetched tf.data pipeline over the arrays: shuffled each epoch and
    augmented on the fly if asked (only ever for the training split).

    The pipeline runs over row indices; the rows are gathered a batch at a time, from
    memory, or (``stream``) from the memory-mapped .npy, so data larger than RAM is
    read as it is needed. ``shard = (index, count)`` keeps every count-th index of
    the shuffled order, starting at index: each worker of a multi-worker run sees its
    own part, all of the same size (so all take the same number of steps). With
    ``n_classes`` the labels become one-hot (for label smoothing), with
    ``class_weights`` each batch also carries per-image weights. ``passes``: one iteration goes over
    the data that many times, each pass in a new order (an epoch of several passes, for small data).
    """
    import tensorflow as tf

    from pipeline.model.augment import augment_dataset

    n = len(x)
    index, count = shard
    parallel = data_threads or os.cpu_count() or 1
    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if count > 1:
        ds = ds.shard(count, index).take(n // count)
    ds = ds.batch(batch_size)
    if passes > 1:  # after batching: every pass has its own (possibly smaller) last batch, as one pass alone
        ds = ds.repeat(passes)
    ds = ds.map(_gather(x, y, stream), num_parallel_calls=parallel)
    ds = augment_dataset(ds, augmenter)
    if n_classes:
        ds = ds.map(_targets(n_classes, class_weights), num_parallel_calls=parallel)
    options = tf.data.Options()
    options.deterministic = True  # parallel map, same order: same seed, same weights
    # tf.data's autotuner stalls whole epochs on 2 cores (an epoch took 2.7 s or 5.1 s at
    # random); fixed parallelism is steady. README "Training details".
    options.autotune.enabled = False
    # Sharding is done above, by us: tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(2)


def _gather(x: np.ndarray, y: np.ndarray, stream: bool) -> Any:
    """A batch of row indices -> (images, labels), from memory or read from the .npy file."""
    import tensorflow as tf

    y_type = np.float32 if np.ndim(y) == 2 else np.int64  # multi-label: multi-hot rows, the targets as they are
    if not stream:
        xt, yt = tf.constant(np.asarray(x, dtype=np.float32)), tf.constant(np.asarray(y, dtype=y_type))
        return lambda idx: (tf.gather(xt, idx), tf.gather(yt, idx))
    shape, y_shape = tuple(x.shape[1:]), tuple(np.shape(y)[1:])
    x_rows, y_all = artifacts.NpyRows(x), np.asarray(y, dtype=y_type)  # labels are small: in memory

    def rows(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.sort(idx)  # a batch is a set: read the file front to back
        return x_rows.take(idx).astype(np.float32, copy=False), y_all[idx]

    def gather(idx: Any) -> tuple[Any, Any]:
        xb, yb = tf.numpy_function(rows, [idx], (tf.float32, tf.as_dtype(y_type)), stateful=False)
        return tf.ensure_shape(xb, (None,) + shape), tf.ensure_shape(yb, (None,) + y_shape)

    return gather


def _targets(n_classes: int, class_weights: list[float] | None) -> Any:
    """(images, labels) -> (images, one-hot labels[, per-image class weights])."""
    import tensorflow as tf

    if class_weights is None:
        return lambda xb, yb: (xb, tf.one_hot(yb, n_classes))
    w = tf.constant(class_weights, tf.float32)
    return lambda xb, yb: (xb, tf.one_hot(yb, n_classes), tf.gather(w, yb))


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable), or total physical memory."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def should_stream(p: TrainParams, nbytes: int) -> bool:
    """Stream from disk when asked, or (auto) when the arrays would take over a quarter of free memory."""
    if p.streaming != "auto":
        return p.streaming == "on"
    return nbytes > available_memory() // 4
