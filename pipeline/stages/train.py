"""Train: fit the model on the prepared train split, validate on val, write the model bundle.

Reads the run folder written by prepare (refuses it without ``prepare.json``).
Writes ``history.csv`` (one row per epoch, rewritten atomically), the best
checkpoint, TensorBoard logs (``tensorboard/``) and the bundle ``model/``. The
recipe (:mod:`pipeline.model.recipe`) resolves ``"auto"`` settings from the data: the
number of epochs, patience, horizontal flips and class weights, logged and
recorded in ``bundle.json``. An interrupted run resumes from the last finished
epoch (Keras ``BackupAndRestore`` in ``train_backup/``); ``--fresh`` starts over.
Nothing is redone when the prepared data and params are unchanged. With ``--engine ray`` the same
training runs in Ray Train workers (:func:`train_on_ray`): each is a ``multiworker`` worker whose
``TF_CONFIG`` Ray Train sets.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.data import strokes
from pipeline.model import batches, formats, multilabel, recipe, trust
from pipeline.model.callbacks import best_so_far, extension_callback, history_callback, repair_backup
from pipeline.model.distribute import Cluster, configure_threads, make_strategy, tf_config_task
from pipeline.model.fitting import Data, compile_model, datasets
from pipeline.shared import artifacts, bundle, cli, compat
from pipeline.shared import cluster as ray_cluster
from pipeline.shared import params as params_mod
from pipeline.shared import runfolder as rf
from pipeline.shared.env import environment
from pipeline.shared.errors import UserError
from pipeline.shared.novelty_spec import NoveltySpec
from pipeline.shared.params import STRATEGIES, AugmentParams, ClusterParams, NoveltyParams, TrainParams

log = logging.getLogger(__name__)

BACKUP_DIR = rf.BACKUP
CHECKPOINT = rf.CHECKPOINT
HISTORY = rf.HISTORY
FIT_DONE = "fit_done.json"  # in the backup: the fit's result, once fitting is over (the bundle is next)
BUNDLE_DIR = rf.BUNDLE
RUNTIME_PROBE = 256        # validation images the light runtime's model is checked on
RUNTIME_TOLERANCE = 1e-4   # a larger difference of a probability from Keras' is warned about


def _callbacks(run: Path, plan: recipe.Plan, monitor: str, cluster: Cluster, extend: Any = None) -> list[Any]:
    """Early stopping on every worker; checkpoint, history, the run's extension (``extend``), TensorBoard
    and backup on the chief."""
    import keras

    # On every worker: all see the same averaged val_loss, so all stop at the same epoch.
    callbacks = [keras.callbacks.EarlyStopping(monitor=monitor, patience=plan.patience, restore_best_weights=True)]
    if not cluster.is_chief:
        return callbacks + [compat.restore_only_backup(str(run / BACKUP_DIR))]
    (run / CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
    repair_backup(run / BACKUP_DIR)
    # The backup comes last: when it says "epoch N finished", the checkpoint and the
    # history row of epoch N are already on disk. A kill between them only makes the
    # resumed run redo epoch N (its history row is then replaced, never lost).
    return [keras.callbacks.ModelCheckpoint(str(run / CHECKPOINT), monitor=monitor, save_best_only=True,
                                            initial_value_threshold=best_so_far(run / HISTORY, monitor)),
            *callbacks, history_callback(run / HISTORY), *([extend] if extend is not None else []),
            keras.callbacks.TensorBoard(str(run / rf.TENSORBOARD), write_graph=False, profile_batch=0),
            # kept when fit ends (train removes it once the bundle is written): a kill while the temperature,
            # novelty detector or bundle is written would otherwise lose the whole run
            keras.callbacks.BackupAndRestore(str(run / BACKUP_DIR), double_checkpoint=True, delete_checkpoint=False)]


def fit(run: Path, p: TrainParams, plan: recipe.Plan, data: Data, verbose: int | str = "auto",
        aug: AugmentParams | None = None, strategy: Any = None, cluster: Cluster | None = None) -> dict[str, Any]:
    """Build, compile and fit the model with checkpoints, early stopping, LR schedule and resume.

    With a ``tf.distribute`` strategy the model and optimizer are built in its scope and
    each replica takes ``batch_size`` images a step (global batch = batch_size x replicas);
    only the chief writes checkpoints, history and backups, every worker restores them.
    """
    import keras
    import tensorflow as tf

    cluster = cluster or Cluster()
    keras.utils.set_random_seed(p.seed)
    if p.deterministic:
        tf.config.experimental.enable_op_determinism()
    schedule = recipe.learning_rate(p, plan.total_steps, stretchable=True) if plan.max_epochs else None
    model = compile_model(p, plan, data, strategy, schedule)
    monitor = "val_loss" if data.has_val else "loss"
    if not data.has_val:
        log.warning("no validation split: early stopping and checkpoints watch the training loss")
    stream = batches.should_stream(p, data.x_train.nbytes + data.x_val.nbytes)
    log.info("train: %s the arrays (%.0f MB)", "streaming" if stream else "loading",
             (data.x_train.nbytes + data.x_val.nbytes) / 1e6)
    train_ds, val_ds = datasets(p, plan, aug or AugmentParams(), data, strategy, cluster, stream)
    if strategy is not None:
        compat.build_from_local_replica(model, strategy)
        log.info("train: global batch %d = %d per replica x %d replicas", plan.global_batch, p.batch_size,
                 cluster.replicas)
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    extend = extension_callback(plan, len(data.y_val), run / HISTORY, schedule) if plan.max_epochs else None
    t0, before = time.perf_counter(), _finished_epochs(run)
    model.fit(train_ds, validation_data=val_ds, epochs=_fit_epochs(run, plan, len(data.y_val)), verbose=verbose,
              shuffle=False, callbacks=_callbacks(run, plan, monitor, cluster, extend))  # train_ds reshuffles itself
    seconds = time.perf_counter() - t0
    if not cluster.is_chief:
        return {"fit_seconds": seconds}
    if not (run / CHECKPOINT).is_file():  # e.g. resumed after the last epoch finished: keep the current weights
        model.save(run / CHECKPOINT)
    rows = _history_rows(run)
    best = min(rows, key=lambda r: float(r[monitor])) if rows else {}
    # a resumed run's time counts the epochs it resumed after, as history.csv and the report do
    earlier = sum(float(r.get("seconds") or 0) for r in rows if int(r["epoch"]) <= before)
    result = {"epochs_run": len(rows), "best_epoch": int(best.get("epoch", 0)), "parameters": model.count_params(),
              "monitor": monitor, "best_" + monitor: float(best.get(monitor, "nan")),
              "fit_seconds": seconds + earlier, "epochs_planned": extend.planned if extend else plan.epochs,
              "extended": extend.notes if extend else []}
    artifacts.write_json(run / BACKUP_DIR / FIT_DONE, result)  # a kill from here on resumes after the fit
    return result


def _finished_epochs(run: Path) -> int:
    """The epochs an interrupted run's backup holds as finished (0: none)."""
    meta = run / BACKUP_DIR / "training_metadata.json"
    return int(artifacts.read_json(meta, "backup state").get("epoch", 0)) if meta.is_file() else 0


def _fit_epochs(run: Path, plan: recipe.Plan, n_val: int) -> int:
    """``fit``'s epochs: the plan's, or for a run that may be extended its longest, unless a resumed run
    already finished its (replayed) plan: then no more."""
    if not plan.max_epochs:
        return plan.epochs
    finished = _finished_epochs(run)
    history = [float(r["val_accuracy"]) for r in _history_rows(run)[:finished] if r.get("val_accuracy")]
    planned = recipe.planned_after(history, plan.epochs, n_val, plan.max_epochs)
    return finished if finished >= planned else plan.max_epochs


def _history_rows(run: Path) -> list[dict[str, str]]:
    if not (run / HISTORY).is_file():
        return []
    with open(run / HISTORY, newline="", encoding="utf-8") as fh:
        return sorted(csv.DictReader(fh), key=lambda r: int(r["epoch"]))


def _load(prep: rf.Prepared) -> Data:
    """The prepared train/val arrays (memory-mapped)."""
    return Data(prep.x("train"), prep.y("train"), prep.x("val"), prep.y("val"), len(prep.labels))


def _plan(prep: rf.Prepared, p: TrainParams, aug: AugmentParams, data: Data, cluster: Cluster) -> recipe.Plan:
    """Resolve the recipe's "auto" choices from the data; log each."""
    y = np.asarray(data.y_train)
    counts = y.sum(axis=0).tolist() if data.multi else np.bincount(y, minlength=data.n_classes).tolist()
    plan = recipe.plan(p, aug, len(data.x_train), counts, prep.hflip, prep.imbalance_ratio, cluster.replicas)
    if data.multi:  # the class weights weigh each label's positives against its negatives
        weights, why, few = multilabel.positive_weights(counts, len(y), p.class_weights, prep.imbalance_ratio,
                                                        prep.labels)
        plan = dataclasses.replace(plan, class_weights=weights, class_weights_why=why, warnings=plan.warnings + few)
    else:
        plan = dataclasses.replace(plan, warnings=plan.warnings + recipe.few_weighed(plan.class_weights, counts))
    log.info("train: %s (%s)", recipe.passes_in_words(plan), plan.epochs_why)
    for warning in plan.warnings:
        log.warning("train: %s", warning)
    log.info("train: horizontal flips %s (%s)", "on" if plan.hflip else "off", plan.hflip_why)
    log.info("train: class weights %s", plan.class_weights_why)
    log.info("train: %s arithmetic (%s)", plan.precision, plan.precision_why)
    return plan


def _float32_checkpoint(run: Path) -> tuple[Any, bool]:
    """The best checkpoint's model made float32 if it trained in bfloat16 (the bundle's model is float32
    whatever machine trained it, for every reader and export format), and whether it was converted."""
    import keras

    from pipeline.model.model import precision_of, with_precision

    # compile=False: the bundle's model is for inference (no optimizer state in it)
    model = keras.models.load_model(run / CHECKPOINT, compile=False, safe_mode=True)
    if precision_of(model) == "float32":
        return model, False
    return with_precision(model, "float32"), True


def _save_checkpoint(run: Path, model: Any) -> None:
    with artifacts.atomic_path(run / CHECKPOINT, suffix=".keras") as tmp:
        model.save(tmp)


def _fit_trust(run: Path, data: Data, prep: rf.Prepared, np_: NoveltyParams, label_thresholds: str | float
               ) -> tuple[Any, dict[str, Any], NoveltySpec | None]:
    """Calibrate the best checkpoint (a temperature fitted on val, built into the model) and fit the
    novelty detector (:mod:`pipeline.model.trust`); the bundle's model, calibration record and novelty spec."""
    model, converted = _float32_checkpoint(run)
    if not data.has_val:
        if converted:
            _save_checkpoint(run, model)
        log.warning("train: no validation split: no calibration (temperature 1) and no novelty detector")
        calibration = {"temperature": 1.0, "fitted_on": "nothing (no validation split)"}
        if data.multi:  # each label given at probability 0.5
            calibration.update(task="multi", thresholds=[multilabel.DEFAULT_THRESHOLD] * data.n_classes)
        return model, calibration, None
    calibration, novelty = trust.fit(model, prep.labels, prep.preprocess, data.x_train, data.x_val, data.y_val,
                                     np_.flag_rate, lambda n: strokes.stroke_images(n, prep.preprocess),
                                     label_thresholds)
    _save_checkpoint(run, model)  # saved once: float32 and calibrated
    return model, calibration, novelty


def _runtime_model(model: Any, prep: rf.Prepared, data: Data, target: Path) -> dict[str, Any] | None:
    """Write the bundle's model for the light runtime (ONNX, :func:`pipeline.model.formats.write_runtime_model`),
    checked against Keras on validation images; what bundle.json records (None: it could not be written)."""
    probe = np.asarray((data.x_val if len(data.x_val) else data.x_train)[:RUNTIME_PROBE], np.float32)
    meta = formats.metadata_strings(prep.label_map, params_mod.to_dict(prep.preprocess))
    try:
        facts = formats.write_runtime_model(model, target, meta, probe)
    except Exception as exc:  # noqa: BLE001 - e.g. onnx/tf2onnx missing: the bundle still works, through TensorFlow
        log.warning("train: no %s for the light runtime (%s: %s); `pipeline export --format onnx` adds it later",
                    bundle.RUNTIME_MODEL, type(exc).__name__, exc)
        return None
    if facts["max_abs_prob_diff"] is not None and facts["max_abs_prob_diff"] > RUNTIME_TOLERANCE:
        log.warning("train: %s differs from the Keras model by up to %.2g in a probability", bundle.RUNTIME_MODEL,
                    facts["max_abs_prob_diff"])
    return facts


def _write_bundle(run: Path, prep: rf.Prepared, params: dict[str, Any], plan: recipe.Plan, fp: str,
                  result: dict[str, Any], cluster: Cluster, data: Data, np_: NoveltyParams) -> Path:
    import keras
    import tensorflow as tf

    model, calibration, novelty = _fit_trust(run, data, prep, np_, params["train"]["label_thresholds"])
    runtime_file = run / rf.CHECKPOINTS / bundle.RUNTIME_MODEL
    runtime = _runtime_model(model, prep, data, runtime_file)
    info = {"stage": "train", "version": __version__, "fingerprint": fp, "prepared": prep.fingerprint,
            "model": params["train"]["model"],
            "input_shape": list(data.x_train.shape[1:]), "n_classes": len(prep.labels),
            "task": "multi" if data.multi else "single",
            "keras": keras.__version__, "tensorflow": tf.__version__, **result, "plan": plan.as_dict(),
            "distribution": {"strategy": params["train"]["strategy"], "workers": cluster.workers,
                             "replicas": cluster.replicas, "global_batch_size": plan.global_batch},
            "preprocess_choices": prep.marker.get("preprocess_choices", {}), "environment": environment(),
            **({"runtime_model": runtime} if runtime else {})}
    dest = run / BUNDLE_DIR
    bundle.write_bundle(dest, run / CHECKPOINT, prep.label_map, params_mod.to_dict(prep.preprocess),
                        {**params, "prepare": prep.params}, info, calibration, novelty,
                        runtime_model=runtime_file if runtime else None)
    runtime_file.unlink(missing_ok=True)
    return dest


def train(run: Path, p: TrainParams, fresh: bool = False, verbose: int | str = "auto",
          aug: AugmentParams | None = None, novelty: NoveltyParams | None = None) -> bool:
    """Run the stage; return False when the bundle is already up to date.

    Under ``multiworker`` every worker runs this; only the chief writes to the run folder.
    """
    aug, novelty = aug or AugmentParams(), novelty or NoveltyParams()
    prep = rf.Prepared.open(run)
    configure_threads(p.intra_op_threads, p.inter_op_threads)
    strategy, cluster = make_strategy(p.strategy)  # first: multi-worker must start before other TF work
    # The number of replicas sets the global batch, so it is part of what made the model.
    fp = rf.fingerprint("train", upstream=[prep.fingerprint], params=[p.learned(), aug, novelty],
                        extra=[cluster.replicas] if strategy is not None else [])
    dest = run / BUNDLE_DIR
    # an interrupted run (FRESH=1 too) is continued, as its message said, even beside an up-to-date bundle
    if not fresh and not _resumable(run, fp) and rf.is_current(dest / bundle.MARKER, fp):
        log.info("train: %s is up to date; skipped (FRESH=1 / --fresh to retrain)", dest)
        return False
    if cluster.is_chief:
        _reset_or_resume(run, fp, fresh)
    # Other workers touch nothing: they restore whatever backup the chief kept (after
    # the chief's reset, since building the model waits for the chief's initial weights).
    data = _load(prep)
    plan = _plan(prep, p, aug, data, cluster)
    if strategy is not None or not data.has_val:  # goes on only on one device, with a validation split to watch
        plan = dataclasses.replace(plan, max_epochs=0)
    log.info("train: %d train / %d val images, %d %s, model %s, strategy %s", len(data.x_train), len(data.x_val),
             len(prep.labels), "labels" if data.y_train.ndim == 2 else "classes", p.model, p.strategy)
    if strategy is None and (run / BACKUP_DIR / FIT_DONE).is_file():  # interrupted after fitting: the rest only
        log.info("train: the interrupted run had finished fitting (%s); writing its bundle", run / CHECKPOINT)
        result = artifacts.read_json(run / BACKUP_DIR / FIT_DONE, "finished fit")
    else:
        result = fit(run, p, plan, data, verbose, aug, strategy, cluster)
    if not cluster.is_chief:
        log.info("train: worker %d finished in %.1fs; the chief writes the bundle", cluster.index,
                 result["fit_seconds"])
        return True
    params = {"train": params_mod.to_dict(p), "augment": params_mod.to_dict(aug), "novelty": params_mod.to_dict(novelty)}
    dest = _write_bundle(run, prep, params, plan, fp, result, cluster, data, novelty)
    shutil.rmtree(run / BACKUP_DIR, ignore_errors=True)
    log.info("train: read X_train/y_train/X_val/y_val.npy, labels.json, prepare.json from %s", run)
    log.info("train: wrote %s (bundle), %s, %s, %s", dest, run / HISTORY, run / CHECKPOINT, run / rf.TENSORBOARD)
    log.info("train: best epoch %d of %d (%s %.4f) in %.1fs -> %s", result["best_epoch"], result["epochs_run"],
             result["monitor"], result["best_" + result["monitor"]], result["fit_seconds"], dest)
    _say_if_by_heart(run, len(prep.labels), data)
    return True


def _say_if_by_heart(run: Path, n_labels: int, data: Data) -> None:
    """Warn now, not only in the report, when the model learned its training images by heart (one label each)."""
    said = (recipe.learned_by_heart(rf.read_history(run), n_labels, data.x_train.shape[-1] == 3)
            if data.y_train.ndim == 1 else None)
    if said:
        log.warning("train: %s", said)


def train_on_ray(run: Path, p: TrainParams, cp: ClusterParams, fresh: bool = False, aug: AugmentParams | None = None,
                 novelty: NoveltyParams | None = None) -> None:
    """:func:`train` in ``[cluster] train_workers`` Ray Train workers at once, under ``multiworker`` (Ray Train's
    ``TensorflowTrainer`` sets each worker's ``TF_CONFIG``): the same training, backup and bundle, written by
    worker 0 alone; Ray Train's own records go to ``<run>/logs/ray``. The run folder must be where every node
    sees it at the same path."""
    if p.strategy == "mirrored":
        raise UserError('--engine ray trains with strategy "multiworker" (a worker per Ray Train worker); '
                        'use --strategy multiworker or default, or --engine local for "mirrored"')
    rf.Prepared.open(run)  # an unprepared run folder is one line here, before any worker starts
    config = {"run": str(run.resolve()), "p": dataclasses.replace(p, strategy="multiworker"), "fresh": fresh,
              "aug": aug or AugmentParams(), "novelty": novelty or NoveltyParams()}
    n = ray_cluster.train_workers(cp, _ray_worker, config, cp.train_workers, run / rf.LOGS / "ray")
    log.info("train: %d Ray Train worker(s) finished; %s", n, run / BUNDLE_DIR)


def _ray_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: :func:`train` as a ``multiworker`` worker started by hand runs it (its log: the
    chief's ``logs/train.log``, the others' ``logs/train.worker<N>.log``)."""
    os.environ.pop("TF_USE_LEGACY_KERAS", None)  # set by Ray Train for tf.keras 2; this project uses Keras 3
    task = tf_config_task()
    cli.file_logging("train" if task is None or task[2] else f"train.worker{task[0]}", config["run"])
    logging.getLogger().setLevel(logging.INFO)
    train(Path(config["run"]), config["p"], config["fresh"], 2, config["aug"], config["novelty"])


def _resumable(run: Path, fp: str) -> bool:
    """An interrupted run with these inputs and params left its backup (a finished run removes it)."""
    return (run / BACKUP_DIR).is_dir() and rf.is_current(run / rf.BACKUP_STATE, fp)


def _reset_or_resume(run: Path, fp: str, fresh: bool) -> None:
    """Keep the backup of an interrupted run with the same inputs and params; else start over."""
    artifacts.remove_stale_temps(run)
    resumable = _resumable(run, fp)
    if fresh or not resumable:
        if (run / BACKUP_DIR).exists() and not fresh:
            log.info("train: inputs or params changed since the interrupted run; starting over")
        for stale in (BACKUP_DIR, rf.CHECKPOINTS, HISTORY, rf.TENSORBOARD):
            shutil.rmtree(run / stale, ignore_errors=True) if (run / stale).is_dir() \
                else (run / stale).unlink(missing_ok=True)
    else:
        log.info("train: resuming the interrupted run from %s", run / BACKUP_DIR)
    (run / BACKUP_DIR).mkdir(parents=True, exist_ok=True)
    rf.write_marker(run / rf.BACKUP_STATE, fp, stage="train (interrupted runs resume from here)")



def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    cli.add_run_options(parser)
    cli.add_params_option(parser)
    parser.add_argument("--fresh", action="store_true", help="discard an interrupted run and start over")
    parser.add_argument("--epochs", type=_epochs_arg, metavar="N",
                        help='passes over the training images; overrides [train] epochs (default "auto": a step '
                             "budget from the data)")
    parser.add_argument("--strategy", choices=STRATEGIES,
                        help="default (one device) | mirrored (all local GPUs) | multiworker (TF_CONFIG); "
                             "overrides [train] strategy")
    cli.add_engine_option(parser)
    return parser


def _epochs_arg(text: str) -> int | str:
    if text == params_mod.AUTO:
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'--epochs takes a whole number or "auto". Received: {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--epochs must be >= 1. Received: {value}")
    return value


def resolve_args(args: argparse.Namespace) -> None:
    """The run folder; a worker other than the chief logs to logs/train.worker<N>.log (the chief to
    logs/train.log)."""
    cli.resolve_run(args, "train")
    task = tf_config_task() if os.environ.get("TF_CONFIG") else None
    if task is not None and not task[2]:
        args.log_name = f"train.worker{task[0]}"


def main(args: argparse.Namespace) -> int:
    """CLI: train the bundle for a run folder."""
    name = Path(args.run).name
    p = params_mod.load(args.params, "train", name)
    if args.strategy:
        p = dataclasses.replace(p, strategy=args.strategy)
    if args.epochs is not None:
        p = dataclasses.replace(p, epochs=args.epochs)
    aug, novelty = params_mod.load(args.params, "augment", name), params_mod.load(args.params, "novelty", name)
    cp = cli.cluster_params(args, name)
    if cp.engine == "ray":
        train_on_ray(Path(args.run), p, cp, args.fresh, aug, novelty)
    else:
        train(Path(args.run), p, fresh=args.fresh, aug=aug, novelty=novelty)
    return 0
