"""Train: fit the model on the prepared train split, validate on val, write the model bundle.

Reads the run folder written by prepare (refuses it without ``prepare.json``).
Writes ``history.csv`` (one row per epoch, rewritten atomically), the best
checkpoint, and the bundle ``model/``. An interrupted run resumes from the last
finished epoch (Keras ``BackupAndRestore`` in ``train_backup/``); ``--fresh``
starts over. Nothing is redone when the prepared data and params are unchanged.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, artifacts, bundle, params as params_mod, prepare
from .distribute import STRATEGIES, Cluster, configure_threads, make_strategy, prepare_model, tf_config_task
from .env import environment
from .params import AugmentParams, TrainParams

log = logging.getLogger(__name__)

BACKUP_DIR = "train_backup"
CHECKPOINT = "checkpoints/best.keras"
HISTORY = "history.csv"
BUNDLE_DIR = "model"


def lr_at(epoch: int, p: TrainParams) -> float:
    """Learning rate for an epoch: cosine decay from ``learning_rate`` towards 0, or constant."""
    if p.lr_schedule == "constant":
        return p.learning_rate
    return p.learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / p.epochs))


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int,
                 augmenter: Any = None, stream: bool = False, shard: tuple[int, int] = (0, 1),
                 data_threads: int = 0) -> Any:
    """A batched, prefetched tf.data pipeline over the arrays: shuffled each epoch and
    augmented on the fly if asked (only ever for the training split).

    The pipeline runs over row indices; the rows are gathered a batch at a time, from
    memory, or (``stream``) from the memory-mapped .npy, so data larger than RAM is
    read as it is needed. ``shard = (index, count)`` keeps every count-th index of
    the shuffled order, starting at index: each worker of a multi-worker run sees its
    own part, all of the same size (so all take the same number of steps).
    """
    import tensorflow as tf

    from .augment import augment_dataset

    n = len(x)
    index, count = shard
    parallel = data_threads or tf.data.AUTOTUNE
    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if count > 1:
        ds = ds.shard(count, index).take(n // count)
    ds = ds.batch(batch_size)
    if stream:
        shape = tuple(x.shape[1:])
        x_rows, y_all = artifacts.NpyRows(x), np.asarray(y, dtype=np.int64)  # labels are small: in memory

        def rows(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            idx = np.sort(idx)  # a batch is a set: read the file front to back
            return x_rows.take(idx).astype(np.float32, copy=False), y_all[idx]

        def gather(idx: Any) -> tuple[Any, Any]:
            xb, yb = tf.numpy_function(rows, [idx], (tf.float32, tf.int64), stateful=False)
            return tf.ensure_shape(xb, (None,) + shape), tf.ensure_shape(yb, (None,))

        ds = ds.map(gather, num_parallel_calls=parallel)
    else:
        xt, yt = tf.constant(np.asarray(x, dtype=np.float32)), tf.constant(np.asarray(y, dtype=np.int64))
        ds = ds.map(lambda idx: (tf.gather(xt, idx), tf.gather(yt, idx)), num_parallel_calls=parallel)
    ds = augment_dataset(ds, augmenter)
    options = tf.data.Options()
    options.deterministic = True  # parallel map, same order: same seed, same weights
    # Sharding is done above, by us: tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _available_memory() -> int:
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
    return nbytes > _available_memory() // 4


def _history_callback(path: Path) -> Any:
    import keras

    class HistoryCSV(keras.callbacks.Callback):
        """One row per finished epoch (1-based; metrics, lr, seconds), rewritten atomically.

        On resume, rows of epochs that will be re-run are dropped, so the file
        never holds duplicates or a half-written line.
        """

        def __init__(self) -> None:
            super().__init__()
            self.rows: list[dict[str, Any]] = []
            self._t0 = 0.0

        def on_train_begin(self, logs: dict | None = None) -> None:
            if path.is_file():
                with open(path, newline="", encoding="utf-8") as fh:
                    self.rows = list(csv.DictReader(fh))
            self._started = False

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            if not self._started:  # first epoch of this fit() call: the resume point
                self.rows = [r for r in self.rows if int(r["epoch"]) <= epoch]
                self._started = True
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = dict(logs or {})
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            row = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - self._t0, 3), "learning_rate": lr}
            row.update({k: float(v) for k, v in sorted(logs.items()) if k != "learning_rate"})
            self.rows.append(row)
            fields = list(dict.fromkeys(k for r in self.rows for k in r))
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)
            artifacts.write_text(path, buf.getvalue())

    return HistoryCSV()


def _restore_only(folder: Path) -> Any:
    """A non-chief worker's backup callback: it resumes from the chief's backup, writes none."""
    import keras

    class RestoreOnly(keras.callbacks.BackupAndRestore):
        def _save_model(self) -> None:
            pass

    return RestoreOnly(str(folder), delete_checkpoint=False)


def _repair_backup(folder: Path) -> None:
    """Undo a backup cut short by a kill while Keras wrote it (its writes are not atomic).

    The newest pair (weights + ``training_metadata.json``) is kept when both read;
    else the previous pair (``*.bkp``) is restored; else the backup is dropped and
    training starts over. Keras' own fallback covers only some of these cases.
    """
    meta, weights = folder / "training_metadata.json", folder / "latest.weights.h5"
    prev_meta, prev_weights = folder / f"{meta.name}.bkp", folder / f"{weights.name}.bkp"

    def valid_meta(path: Path) -> bool:
        try:
            return isinstance(json.loads(path.read_text(encoding="utf-8"))["epoch"], int)
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def valid_weights(path: Path) -> bool:
        import h5py

        try:
            with h5py.File(path, "r"):
                return True
        except (OSError, ValueError):
            return False

    if not meta.exists() and not weights.exists():
        return
    if valid_meta(meta) and valid_weights(weights):
        return
    if valid_meta(prev_meta) and valid_weights(prev_weights):
        log.warning("train: the last backup was cut short; resuming from the one before it")
        shutil.copyfile(prev_weights, weights)
        shutil.copyfile(prev_meta, meta)
    else:
        log.warning("train: the backup in %s is unreadable; starting over", folder)
        for path in (meta, prev_meta, weights, prev_weights):
            path.unlink(missing_ok=True)


def _best_so_far(history: Path, monitor: str) -> float | None:
    """Best monitored value in an existing history (so a resumed checkpoint keeps the true best)."""
    if not history.is_file():
        return None
    with open(history, newline="", encoding="utf-8") as fh:
        values = [float(r[monitor]) for r in csv.DictReader(fh) if r.get(monitor)]
    return min(values) if values else None


def fit(run: Path, p: TrainParams, n_classes: int, input_shape: tuple[int, ...],
        x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
        verbose: int | str = "auto", aug: AugmentParams | None = None, strategy: Any = None,
        cluster: Cluster | None = None) -> dict[str, Any]:
    """Build, compile and fit the model with checkpoints, early stopping, LR schedule and resume.

    With a ``tf.distribute`` strategy the model and optimizer are built in its scope and
    each replica takes ``batch_size`` images a step (global batch = batch_size x replicas);
    only the chief writes checkpoints, history and backups, every worker restores them.
    """
    import contextlib

    import keras
    import tensorflow as tf

    from .model import build_model

    cluster = cluster or Cluster()
    keras.utils.set_random_seed(p.seed)
    if p.deterministic:
        tf.config.experimental.enable_op_determinism()
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model(p.model, tuple(input_shape), n_classes, p.dropout)
        model.compile(optimizer=keras.optimizers.Adam(p.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    has_val = len(x_val) > 0
    monitor = "val_loss" if has_val else "loss"
    if not has_val:
        log.warning("no validation split: early stopping and checkpoints watch the training loss")
    ckpt = run / CHECKPOINT
    history = run / HISTORY
    callbacks = [
        keras.callbacks.LearningRateScheduler(lambda epoch: lr_at(epoch, p)),
        # On every worker: all see the same averaged val_loss, so all stop at the same epoch.
        keras.callbacks.EarlyStopping(monitor=monitor, patience=p.patience, restore_best_weights=True),
    ]
    if cluster.is_chief:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        _repair_backup(run / BACKUP_DIR)
        # The backup comes last: when it says "epoch N finished", the checkpoint and the
        # history row of epoch N are already on disk. A kill between them only makes the
        # resumed run redo epoch N (its history row is then replaced, never lost).
        callbacks[1:1] = [keras.callbacks.ModelCheckpoint(str(ckpt), monitor=monitor, save_best_only=True,
                                                          initial_value_threshold=_best_so_far(history, monitor))]
        callbacks += [_history_callback(history),
                      keras.callbacks.BackupAndRestore(str(run / BACKUP_DIR), double_checkpoint=True)]
    else:
        callbacks.append(_restore_only(run / BACKUP_DIR))
    from .augment import build_augmenter

    stream = should_stream(p, x_train.nbytes + x_val.nbytes)
    log.info("train: %s the arrays (%.0f MB)", "streaming" if stream else "loading",
             (x_train.nbytes + x_val.nbytes) / 1e6)
    # The augmentation seed differs per worker: their shards differ, so should their distortions.
    augmenter = build_augmenter(aug or AugmentParams(), p.seed + cluster.index)

    def train_data(shard: tuple[int, int]) -> Any:
        return make_dataset(x_train, y_train, p.batch_size, shuffle=True, seed=p.seed, augmenter=augmenter,
                            stream=stream, shard=shard, data_threads=p.data_threads)

    def val_data() -> Any:  # not sharded: every worker measures the whole val split, alike
        return make_dataset(x_val, y_val, p.batch_size, shuffle=False, seed=p.seed, stream=stream,
                            data_threads=p.data_threads)

    if strategy is None:
        train_ds, val_ds = train_data((0, 1)), val_data() if has_val else None
    else:
        prepare_model(model, strategy)
        train_ds = strategy.distribute_datasets_from_function(
            lambda ctx: train_data((ctx.input_pipeline_id, ctx.num_input_pipelines)),
            tf.distribute.InputOptions(experimental_fetch_to_device=True))
        val_ds = strategy.distribute_datasets_from_function(lambda ctx: val_data()) if has_val else None
        log.info("train: global batch %d = %d per replica x %d replicas", p.batch_size * cluster.replicas,
                 p.batch_size, cluster.replicas)
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    t0 = time.perf_counter()
    model.fit(train_ds, validation_data=val_ds, epochs=p.epochs, callbacks=callbacks, verbose=verbose,
              shuffle=False)  # train_ds reshuffles itself each epoch
    seconds = time.perf_counter() - t0
    if not cluster.is_chief:
        return {"fit_seconds": seconds}
    if not ckpt.is_file():  # e.g. resumed after the last epoch finished: keep the current weights
        model.save(ckpt)
    with open(history, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    best = min(rows, key=lambda r: float(r[monitor])) if rows else {}
    return {"epochs_run": len(rows), "best_epoch": int(best.get("epoch", 0)), "parameters": model.count_params(),
            "monitor": monitor, "best_" + monitor: float(best.get(monitor, "nan")), "fit_seconds": seconds}


# Knobs that change how fast training runs, not what it learns: not part of the fingerprint.
RUNTIME_KEYS = ("streaming", "intra_op_threads", "inter_op_threads", "data_threads")


def train(run: Path, p: TrainParams, fresh: bool = False, verbose: int | str = "auto",
          aug: AugmentParams | None = None) -> bool:
    """Run the stage; return False when the bundle is already up to date.

    Under ``multiworker`` every worker runs this; only the chief writes to the run folder.
    """
    aug = aug or AugmentParams()
    marker = prepare.require_prepared(run)
    configure_threads(p.intra_op_threads, p.inter_op_threads)
    strategy, cluster = make_strategy(p.strategy)  # first: multi-worker must start before other TF work
    learned = {k: v for k, v in params_mod.to_dict(p).items() if k not in RUNTIME_KEYS}
    # The number of replicas sets the global batch, so it is part of what made the model.
    fp = artifacts.fingerprint(marker.get("fingerprint"), learned, params_mod.to_dict(aug), __version__,
                               *([cluster.replicas] if strategy is not None else []))
    dest = run / BUNDLE_DIR
    if not fresh and (dest / bundle.MARKER).is_file():
        try:
            if bundle.read_info(dest).get("fingerprint") == fp:
                log.info("train: %s is up to date; skipped (FRESH=1 / --fresh to retrain)", dest)
                return False
        except artifacts.StageError as exc:
            log.warning("existing bundle ignored: %s", exc)
    if cluster.is_chief:
        _reset_or_resume(run, fp, fresh)
    # Other workers touch nothing: they restore whatever backup the chief kept (after
    # the chief's reset, since building the model waits for the chief's initial weights).

    labels = artifacts.read_json(run / "labels.json", "label map")
    bundle.labels_from_map(labels, str(run / "labels.json"))
    arrays = {name: artifacts.load_npy(run / f"{name}.npy", f"prepared array {name}")
              for name in ("X_train", "y_train", "X_val", "y_val")}
    log.info("train: %d train / %d val images, %d classes, model %s, strategy %s",
             len(arrays["X_train"]), len(arrays["X_val"]), len(labels), p.model, p.strategy)
    result = fit(run, p, len(labels), arrays["X_train"].shape[1:], arrays["X_train"], arrays["y_train"],
                 arrays["X_val"], arrays["y_val"], verbose, aug, strategy, cluster)
    if not cluster.is_chief:
        log.info("train: worker %d finished in %.1fs; the chief writes the bundle", cluster.index,
                 result["fit_seconds"])
        return True
    import keras
    import tensorflow as tf

    info = {"stage": "train", "version": __version__, "fingerprint": fp, "model": p.model,
            "input_shape": list(arrays["X_train"].shape[1:]), "n_classes": len(labels),
            "keras": keras.__version__, "tensorflow": tf.__version__, **result,
            "distribution": {"strategy": p.strategy, "workers": cluster.workers, "replicas": cluster.replicas,
                             "global_batch_size": p.batch_size * cluster.replicas},
            "environment": environment()}
    bundle.write_bundle(dest, run / CHECKPOINT, labels, marker["preprocess"],
                        {"train": params_mod.to_dict(p), "augment": params_mod.to_dict(aug),
                         "prepare": marker["params"]}, info)
    shutil.rmtree(run / BACKUP_DIR, ignore_errors=True)
    log.info("train: read X_train/y_train/X_val/y_val.npy, labels.json, prepare.json from %s", run)
    log.info("train: wrote %s (bundle), %s, %s", dest, run / HISTORY, run / CHECKPOINT)
    log.info("train: best epoch %d of %d (%s %.4f) in %.1fs -> %s", result["best_epoch"], result["epochs_run"],
             result["monitor"], result["best_" + result["monitor"]], result["fit_seconds"], dest)
    return True


def _reset_or_resume(run: Path, fp: str, fresh: bool) -> None:
    """Keep the backup of an interrupted run with the same inputs and params; else start over."""
    artifacts.remove_stale_temps(run)
    state_fp = run / BACKUP_DIR / "fingerprint.txt"
    resumable = (run / BACKUP_DIR).is_dir() and state_fp.is_file() and state_fp.read_text() == fp
    if fresh or not resumable:
        if (run / BACKUP_DIR).exists() and not fresh:
            log.info("train: inputs or params changed since the interrupted run; starting over")
        for stale in (BACKUP_DIR, "checkpoints", HISTORY):
            shutil.rmtree(run / stale, ignore_errors=True) if (run / stale).is_dir() \
                else (run / stale).unlink(missing_ok=True)
    else:
        log.info("train: resuming the interrupted run from %s", run / BACKUP_DIR)
    (run / BACKUP_DIR).mkdir(parents=True, exist_ok=True)
    artifacts.write_text(state_fp, fp)


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--run", required=True, help="run folder written by prepare")
    parser.add_argument("--params", default="params.toml", help="params file (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="discard an interrupted run and start over")
    parser.add_argument("--strategy", choices=STRATEGIES,
                        help="default (one device) | mirrored (all local GPUs) | multiworker (TF_CONFIG); "
                             "overrides [train] strategy")
    return parser


def resolve_args(args: argparse.Namespace) -> None:
    """A worker other than the chief logs to logs/train.worker<N>.log (the chief to logs/train.log)."""
    task = tf_config_task() if os.environ.get("TF_CONFIG") else None
    if task is not None and not task[2]:
        args.log_name = f"train.worker{task[0]}"


def main(args: argparse.Namespace) -> int:
    """CLI: train the bundle for a run folder."""
    name = Path(args.run).name
    p = params_mod.load(args.params, "train", name)
    if args.strategy:
        p = dataclasses.replace(p, strategy=args.strategy)
    train(Path(args.run), p, fresh=args.fresh, aug=params_mod.load(args.params, "augment", name))
    return 0
