"""Training-loop helpers that outlive a kill: the per-epoch history file, a backup cut short
by a kill repaired, and the best monitored value so far (so a resumed checkpoint keeps the true best)."""
from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.model import recipe
from pipeline.shared import artifacts

log = logging.getLogger(__name__)


def history_callback(path: Path) -> Any:
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


def _val_accuracy(path: Path, finished: int) -> list[float]:
    """The validation accuracy of the first ``finished`` epochs in a history file."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= finished and r.get("val_accuracy")]
    return [float(r["val_accuracy"]) for r in sorted(rows, key=lambda r: int(r["epoch"]))]


def extension_callback(plan: recipe.Plan, n_val: int, history: Path, schedule: Any) -> Any:
    """Stops the run at its planned last epoch, and lengthens the plan (and stretches the learning-rate
    schedule) while validation still improves (:func:`pipeline.model.recipe.extension`). ``fit`` runs
    with ``epochs=plan.max_epochs``. A resumed run replays the decisions from ``history``."""
    import keras

    class Extend(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.planned, self.val, self.notes = plan.epochs, [], []

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            if self.val or epoch == 0:
                return
            self.val = _val_accuracy(history, epoch)  # resumed after `epoch` finished epochs
            self.planned = recipe.planned_after(self.val, plan.epochs, n_val, plan.max_epochs)
            recipe.stretch(schedule, self.planned * plan.steps_per_epoch)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.val.append(float((logs or {}).get("val_accuracy", 0.0)))
            step = recipe.extension(self.val, self.planned, n_val, plan.max_epochs)
            if step:
                self.planned = step[0]
                self.notes.append(step[1])
                recipe.stretch(schedule, self.planned * plan.steps_per_epoch)
                log.info("train: %s", step[1])
            if epoch + 1 >= self.planned:
                self.model.stop_training = True

    return Extend()


def repair_backup(folder: Path) -> None:
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


def best_so_far(history: Path, monitor: str) -> float | None:
    """Best monitored value in an existing history (so a resumed checkpoint keeps the true best)."""
    if not history.is_file():
        return None
    with open(history, newline="", encoding="utf-8") as fh:
        values = [float(r[monitor]) for r in csv.DictReader(fh) if r.get(monitor)]
    return min(values) if values else None
