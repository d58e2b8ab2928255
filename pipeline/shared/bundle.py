"""The model bundle: ``model.keras`` + label map + preprocessing config + params.

A bundle folder holds ``model.keras``, ``labels.json``, ``preprocess.json``,
``params.json``, optionally ``calibration.json`` (temperature, validation error and
risk-coverage table) and ``novelty.json`` (the unfamiliar-input score and its
threshold, with ``novelty_reference.npy`` and ``novelty_head.npy``), and, written last,
``bundle.json`` with the SHA-256 of ``model.keras``.
Loading checks all of it and uses Keras' ``safe_mode``. A bundle from an older
version, without the optional files, still loads (without calibration or novelty).
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.shared import artifacts
from pipeline.shared import params as params_mod
from pipeline.shared.params import PreprocessParams

log = logging.getLogger(__name__)

MARKER = "bundle.json"
CALIBRATION = "calibration.json"
NOVELTY = "novelty.json"
NOVELTY_REFERENCE = "novelty_reference.npy"
NOVELTY_HEAD = "novelty_head.npy"


@dataclass
class Bundle:
    """A loaded bundle: the Keras model, labels by index, and the preprocessing config."""

    model: Any
    labels: list[str]
    preprocess: PreprocessParams
    info: dict[str, Any]
    calibration: dict[str, Any] | None = None
    novelty: dict[str, Any] | None = None
    novelty_reference: Any = None  # np.ndarray: the novelty detector's training features
    novelty_head: Any = None       # np.ndarray: its strokes classifier, packed (None: a two-detector bundle)


def labels_from_map(mapping: Any, where: str) -> list[str]:
    """Validate a label map {name: index} (indices 0..n-1) and return names by index."""
    if not isinstance(mapping, dict) or not mapping:
        raise artifacts.StageError(f"{where}: label map must be a non-empty JSON object")
    by_index = sorted(mapping.items(), key=lambda kv: kv[1] if isinstance(kv[1], int) else -1)
    if [i for _, i in by_index] != list(range(len(mapping))):
        raise artifacts.StageError(f"{where}: label indices must be 0..{len(mapping) - 1}")
    return [name for name, _ in by_index]


def write_bundle(dest: Path, model_file: Path, labels: dict[str, int], preprocess: dict[str, Any],
                 params: dict[str, Any], info: dict[str, Any], extras: dict[str, Any] | None = None,
                 arrays: dict[str, Any] | None = None) -> None:
    """Assemble a bundle in a temp folder and move it into place (never half-written).

    ``extras``: more JSON files of the bundle by name (calibration.json, novelty.json);
    ``arrays``: ``.npy`` files by name (never pickled).
    """
    tmp = artifacts.temp_dir_for(dest)
    try:
        shutil.copyfile(model_file, tmp / "model.keras")
        artifacts.write_json(tmp / "labels.json", labels)
        artifacts.write_json(tmp / "preprocess.json", preprocess)
        artifacts.write_json(tmp / "params.json", params)
        for name, content in (extras or {}).items():
            artifacts.write_json(tmp / name, content)
        for name, array in (arrays or {}).items():
            artifacts.save_npy(tmp / name, array)
        artifacts.write_json(tmp / MARKER, {**info, "model_sha256": artifacts.sha256_file(tmp / "model.keras")})
        artifacts.replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_info(path: Path) -> dict[str, Any]:
    """The bundle marker, after checking the model file's hash."""
    info = artifacts.read_json(path / MARKER, "model bundle marker (bundle.json)")
    model_file = path / "model.keras"
    if not model_file.is_file():
        raise artifacts.StageError(f"model bundle {path} has no model.keras")
    if info.get("model_sha256") != artifacts.sha256_file(model_file):
        raise artifacts.StageError(f"model bundle {path}: model.keras does not match its recorded SHA-256; "
                                   "refusing to load a modified model")
    return info


def _require(path: Path) -> None:
    if not path.is_dir():
        raise artifacts.StageError(f"model bundle not found: {path} (run `make train` first)")


def read_preprocess_dict(config: Any, where: str = "preprocessing config") -> PreprocessParams:
    """A recorded (resolved) preprocessing config, validated."""
    try:
        cfg = params_mod.from_dict(PreprocessParams, "preprocess", config)
    except (ValueError, TypeError) as exc:
        raise artifacts.StageError(f"{where}: bad preprocessing config: {exc}") from None
    if not cfg.resolved:
        raise artifacts.StageError(f'{where}: color and size must be resolved, not "auto"')
    return cfg


def read_preprocess(path: Path) -> PreprocessParams:
    """The bundle's preprocessing config, validated (without loading the model)."""
    _require(path)
    return read_preprocess_dict(artifacts.read_json(path / "preprocess.json", "bundle preprocessing config"),
                                f"model bundle {path}")


def load(path: str | Path) -> Bundle:
    """Load and verify a bundle folder (hash, label map, preprocessing config; safe_mode)."""
    path = Path(path)
    _require(path)
    info = read_info(path)
    labels = labels_from_map(artifacts.read_json(path / "labels.json", "bundle label map"), str(path))
    cfg = read_preprocess(path)
    import keras

    model = keras.models.load_model(path / "model.keras", compile=False, safe_mode=True)
    if model.output_shape[-1] != len(labels):
        raise artifacts.StageError(f"model bundle {path}: model has {model.output_shape[-1]} outputs "
                                   f"but the label map has {len(labels)} labels")
    optional = {name: artifacts.read_json(path / name, f"bundle {name}") if (path / name).is_file() else None
                for name in (CALIBRATION, NOVELTY)}
    reference = head = None
    if optional[NOVELTY] is not None:
        reference = artifacts.load_npy(path / NOVELTY_REFERENCE, "novelty reference", mmap=False)
        if "strokes" in optional[NOVELTY].get("detectors", []):
            head = artifacts.load_npy(path / NOVELTY_HEAD, "novelty strokes classifier", mmap=False)
    else:
        log.info("model bundle %s has no %s (trained by an older version): unfamiliar-input detection is "
                 "unavailable; retrain to get it", path, NOVELTY)
    return Bundle(model, labels, cfg, info, optional[CALIBRATION], optional[NOVELTY], reference, head)
