"""Every use of a library's private API, in one place, with the versions it was verified on.

Each shim below touches a name that Keras does not promise to keep. :data:`PATCHED`
lists them; :func:`missing` says which have disappeared, and a test fails loudly when
one has (``tests/test_compat.py``), so a Keras release that breaks a shim is caught
before a user's multi-worker training hangs. ``pyproject.toml`` bounds ``keras`` and
``tensorflow-cpu`` to the releases verified here.

Verified on: keras 3.15.1, tensorflow-cpu 2.21.0 (2026-11).
"""
from __future__ import annotations

import importlib
from typing import Any

VERIFIED = {"keras": "3.15.1", "tensorflow": "2.21.0"}

# (module, attribute path, why we touch it)
PATCHED: tuple[tuple[str, str, str], ...] = (
    ("keras.callbacks", "BackupAndRestore._save_model",
     "a non-chief worker restores the chief's backup but must never write one"),
    ("keras.src.backend.tensorflow.trainer", "TensorFlowTrainer._maybe_symbolic_build",
     "multi-worker fit: build the model from one replica's first batch (keras-team/keras#20585)"),
    ("keras.src.backend.tensorflow.trainer", "reduce_per_replica",
     "multi-worker fit: average scalar metrics with axis=None (keras-team/keras#20585)"),
    ("keras.src.backend.tensorflow.trainer", "_collective_all_reduce_multi_worker",
     "tells a multi-worker collective strategy apart (used by the reduce patch)"),
)


def _resolve(module: str, path: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def missing() -> list[str]:
    """The patched names that no longer exist in the installed Keras (empty when all are there)."""
    gone = []
    for module, path, _ in PATCHED:
        try:
            _resolve(module, path)
        except (ImportError, AttributeError):
            gone.append(f"{module}.{path}")
    return gone


def restore_only_backup(folder: str) -> Any:
    """A ``BackupAndRestore`` that restores a backup but never writes one (a non-chief worker)."""
    import keras

    class RestoreOnly(keras.callbacks.BackupAndRestore):
        def _save_model(self) -> None:  # private: see PATCHED
            pass

    return RestoreOnly(folder, delete_checkpoint=False)


def build_from_local_replica(model: Any, strategy: Any) -> None:
    """Let Keras 3 ``fit`` build ``model`` under a multi-worker strategy.

    Keras builds the model's training state from the first batch, which it averages
    over all replicas with a collective reduce that MultiWorkerMirroredStrategy rejects
    for a nested (x, y) batch (keras-team/keras#20585). The first local replica's
    batch has the same shapes, which is all the build needs. Set on this model only.
    """
    import tensorflow as tf

    original = model._maybe_symbolic_build  # private: see PATCHED

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


def patch_multiworker_reduce() -> None:
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
