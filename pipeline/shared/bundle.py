"""The model bundle: the model, its label map, its preprocessing config and params, and what makes
its predictions trustworthy (calibration, the novelty detector).

A bundle folder holds :data:`MODEL`, :data:`LABELS`, :data:`PREPROCESS`, :data:`PARAMS`, optionally
:data:`CALIBRATION` (temperature, validation error and risk-coverage table) and the novelty
detector's files (:mod:`pipeline.shared.novelty_spec`), and, written last, :data:`MARKER` with the
SHA-256 of the model file. The file names are written here only. Loading checks all of it (the
hash, the label map against the model's outputs, the preprocessing against the model's input
shape) and uses Keras' ``safe_mode``. A bundle from an older version, without the optional files,
still loads (without calibration or novelty).
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.shared import artifacts
from pipeline.shared.errors import StageError
from pipeline.shared.novelty_spec import SPEC as NOVELTY
from pipeline.shared.novelty_spec import NoveltySpec
from pipeline.shared.params import PreprocessParams
from pipeline.shared.runfolder import is_prepared, labels_from_map, read_preprocess

log = logging.getLogger(__name__)

MODEL = "model.keras"
LABELS = "labels.json"
PREPROCESS = "preprocess.json"
PARAMS = "params.json"
CALIBRATION = "calibration.json"
MARKER = "bundle.json"


@dataclass
class Bundle:
    """A loaded bundle: the Keras model, labels by index, the preprocessing config, and its trust parts."""

    model: Any
    labels: list[str]
    preprocess: PreprocessParams
    info: dict[str, Any]
    calibration: dict[str, Any] | None = None
    novelty: NoveltySpec | None = None
    path: Path | None = None

    @property
    def temperature(self) -> float:
        return float((self.calibration or {}).get("temperature", 1.0))

    @property
    def sha256(self) -> str | None:
        return self.info.get("model_sha256")


def write_bundle(dest: Path, model_file: Path, labels: dict[str, int], preprocess: dict[str, Any],
                 params: dict[str, Any], info: dict[str, Any], calibration: dict[str, Any] | None = None,
                 novelty: NoveltySpec | None = None) -> None:
    """Assemble a bundle in a temp folder and move it into place (never half-written)."""
    tmp = artifacts.temp_dir_for(dest)
    try:
        shutil.copyfile(model_file, tmp / MODEL)
        artifacts.write_json(tmp / LABELS, labels)
        artifacts.write_json(tmp / PREPROCESS, preprocess)
        artifacts.write_json(tmp / PARAMS, params)
        if calibration is not None:
            artifacts.write_json(tmp / CALIBRATION, calibration)
        if novelty is not None:
            novelty.write(tmp)
        artifacts.write_json(tmp / MARKER, {**info, "model_sha256": artifacts.sha256_file(tmp / MODEL)})
        artifacts.replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_bundle(path: Path) -> bool:
    return (path / MARKER).is_file()


def locate(path: str | Path) -> Path:
    """The bundle folder ``path`` names: the folder itself, or a run folder's ``model/`` (``--model RUN``
    works); a clear error otherwise."""
    path = Path(path)
    if is_bundle(path):
        return path
    if is_bundle(path / "model"):
        return path / "model"
    if not path.exists() or is_prepared(path):
        raise StageError(f"model bundle not found: {path} (run `make train` first)")
    raise StageError(f"{path} is not a model bundle (no {MARKER}); give the bundle folder, e.g. runs/<name>/model, "
                     "or a run folder holding one")


def read_info(path: Path) -> dict[str, Any]:
    """The bundle marker, after checking the model file's hash."""
    info = artifacts.read_json(path / MARKER, f"model bundle marker ({MARKER})")
    model_file = path / MODEL
    if not model_file.is_file():
        raise StageError(f"model bundle {path} has no {MODEL}")
    if info.get("model_sha256") != artifacts.sha256_file(model_file):
        raise StageError(f"model bundle {path}: {MODEL} does not match its recorded SHA-256; "
                         "refusing to load a modified model")
    return info


def read_labels(path: Path) -> list[str]:
    """The bundle's label names by index (without loading the model)."""
    return labels_from_map(artifacts.read_json(path / LABELS, "bundle label map"), str(path))


def read_preprocess_of(path: Path) -> PreprocessParams:
    """The bundle's preprocessing config, validated (without loading the model)."""
    return read_preprocess(artifacts.read_json(path / PREPROCESS, "bundle preprocessing config"),
                           f"model bundle {path}")


def _check_model(path: Path, model: Any, labels: list[str], cfg: PreprocessParams) -> None:
    """The model's outputs must match the label map, and its input the preprocessing."""
    if model.output_shape[-1] != len(labels):
        raise StageError(f"model bundle {path}: the model has {model.output_shape[-1]} outputs "
                         f"but the label map has {len(labels)} labels")
    if tuple(model.input_shape[1:]) != tuple(cfg.input_shape):
        raise StageError(f"model bundle {path}: the model takes inputs of shape {tuple(model.input_shape[1:])} "
                         f"but its {PREPROCESS} makes {tuple(cfg.input_shape)}; the bundle is inconsistent: "
                         "retrain it (make train FRESH=1)")


def load(path: str | Path) -> Bundle:
    """Load and verify a bundle folder (hash, label map, input shape, preprocessing config; safe_mode)."""
    path = locate(path)
    info = read_info(path)
    labels = read_labels(path)
    cfg = read_preprocess_of(path)
    import keras

    model = keras.models.load_model(path / MODEL, compile=False, safe_mode=True)
    _check_model(path, model, labels, cfg)
    calibration = artifacts.read_json(path / CALIBRATION, f"bundle {CALIBRATION}") \
        if (path / CALIBRATION).is_file() else None
    novelty = NoveltySpec.read(path)
    if novelty is None:
        log.info("model bundle %s has no %s (trained by an older version): unfamiliar-input detection is "
                 "unavailable; retrain to get it", path, NOVELTY)
    return Bundle(model, labels, cfg, info, calibration, novelty, path)
