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
import io
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, artifacts, bundle, params as params_mod, prepare
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
                 augmenter: Any = None) -> Any:
    """A batched, prefetched tf.data pipeline over the arrays (shuffled each epoch and
    augmented on the fly if asked: only ever for the training split)."""
    import tensorflow as tf

    from .augment import augment_dataset

    ds = tf.data.Dataset.from_tensor_slices((np.asarray(x), np.asarray(y)))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = augment_dataset(ds.batch(batch_size), augmenter)
    return ds.prefetch(tf.data.AUTOTUNE)


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
        verbose: int | str = "auto", aug: AugmentParams | None = None) -> dict[str, Any]:
    """Build, compile and fit the model with checkpoints, early stopping, LR schedule and resume."""
    import keras
    import tensorflow as tf

    from .model import build_model

    keras.utils.set_random_seed(p.seed)
    if p.deterministic:
        tf.config.experimental.enable_op_determinism()
    model = build_model(p.model, tuple(input_shape), n_classes, p.dropout)
    model.compile(optimizer=keras.optimizers.Adam(p.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    has_val = len(x_val) > 0
    monitor = "val_loss" if has_val else "loss"
    if not has_val:
        log.warning("no validation split: early stopping and checkpoints watch the training loss")
    ckpt = run / CHECKPOINT
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    history = run / HISTORY
    # The backup comes last: when it says "epoch N finished", the checkpoint and the
    # history row of epoch N are already on disk. A kill between them only makes the
    # resumed run redo epoch N (its history row is then replaced, never lost).
    _repair_backup(run / BACKUP_DIR)
    callbacks = [
        keras.callbacks.LearningRateScheduler(lambda epoch: lr_at(epoch, p)),
        keras.callbacks.ModelCheckpoint(str(ckpt), monitor=monitor, save_best_only=True,
                                        initial_value_threshold=_best_so_far(history, monitor)),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=p.patience, restore_best_weights=True),
        _history_callback(history),
        keras.callbacks.BackupAndRestore(str(run / BACKUP_DIR), double_checkpoint=True),
    ]
    from .augment import build_augmenter

    train_ds = make_dataset(x_train, y_train, p.batch_size, shuffle=True, seed=p.seed,
                            augmenter=build_augmenter(aug or AugmentParams(), p.seed))
    val_ds = make_dataset(x_val, y_val, p.batch_size, shuffle=False, seed=p.seed) if has_val else None
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    t0 = time.perf_counter()
    model.fit(train_ds, validation_data=val_ds, epochs=p.epochs, callbacks=callbacks, verbose=verbose,
              shuffle=False)  # train_ds reshuffles itself each epoch
    seconds = time.perf_counter() - t0
    if not ckpt.is_file():  # e.g. resumed after the last epoch finished: keep the current weights
        model.save(ckpt)
    with open(history, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    best = min(rows, key=lambda r: float(r[monitor])) if rows else {}
    return {"epochs_run": len(rows), "best_epoch": int(best.get("epoch", 0)), "parameters": model.count_params(),
            "monitor": monitor, "best_" + monitor: float(best.get(monitor, "nan")), "fit_seconds": seconds}


def train(run: Path, p: TrainParams, fresh: bool = False, verbose: int | str = "auto",
          aug: AugmentParams | None = None) -> bool:
    """Run the stage; return False when the bundle is already up to date."""
    aug = aug or AugmentParams()
    marker = prepare.require_prepared(run)
    fp = artifacts.fingerprint(marker.get("fingerprint"), params_mod.to_dict(p), params_mod.to_dict(aug), __version__)
    dest = run / BUNDLE_DIR
    if not fresh and (dest / bundle.MARKER).is_file():
        try:
            if bundle.read_info(dest).get("fingerprint") == fp:
                log.info("train: %s is up to date; skipped (FRESH=1 / --fresh to retrain)", dest)
                return False
        except artifacts.StageError as exc:
            log.warning("existing bundle ignored: %s", exc)
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

    labels = artifacts.read_json(run / "labels.json", "label map")
    bundle.labels_from_map(labels, str(run / "labels.json"))
    arrays = {name: artifacts.load_npy(run / f"{name}.npy", f"prepared array {name}")
              for name in ("X_train", "y_train", "X_val", "y_val")}
    log.info("train: %d train / %d val images, %d classes, model %s",
             len(arrays["X_train"]), len(arrays["X_val"]), len(labels), p.model)
    result = fit(run, p, len(labels), arrays["X_train"].shape[1:], arrays["X_train"], arrays["y_train"],
                 arrays["X_val"], arrays["y_val"], verbose, aug)
    import keras
    import tensorflow as tf

    info = {"stage": "train", "version": __version__, "fingerprint": fp, "model": p.model,
            "input_shape": list(arrays["X_train"].shape[1:]), "n_classes": len(labels),
            "keras": keras.__version__, "tensorflow": tf.__version__, **result, "environment": environment()}
    bundle.write_bundle(dest, run / CHECKPOINT, labels, marker["preprocess"],
                        {"train": params_mod.to_dict(p), "augment": params_mod.to_dict(aug),
                         "prepare": marker["params"]}, info)
    shutil.rmtree(run / BACKUP_DIR, ignore_errors=True)
    log.info("train: read X_train/y_train/X_val/y_val.npy, labels.json, prepare.json from %s", run)
    log.info("train: wrote %s (bundle), %s, %s", dest, run / HISTORY, run / CHECKPOINT)
    log.info("train: best epoch %d of %d (%s %.4f) in %.1fs -> %s", result["best_epoch"], result["epochs_run"],
             result["monitor"], result["best_" + result["monitor"]], result["fit_seconds"], dest)
    return True


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--run", required=True, help="run folder written by prepare")
    parser.add_argument("--params", default="params.toml", help="params file (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="discard an interrupted run and start over")
    return parser


def main(args: argparse.Namespace) -> int:
    """CLI: train the bundle for a run folder."""
    name = Path(args.run).name
    train(Path(args.run), params_mod.load(args.params, "train", name), fresh=args.fresh,
          aug=params_mod.load(args.params, "augment", name))
    return 0
