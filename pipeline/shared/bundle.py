"""The model bundle: the model, its label map, its preprocessing config and params, and what makes
its predictions trustworthy (calibration, the novelty detector).

A bundle folder holds :data:`MODEL`, :data:`LABELS`, :data:`PREPROCESS`, :data:`PARAMS`, optionally
:data:`CALIBRATION` (temperature, validation error and risk-coverage table), the novelty
detector's files (:mod:`pipeline.shared.novelty_spec`) and :data:`RUNTIME_MODEL` (the same model as
ONNX, for the light runtime), and, written last, :data:`MARKER` with the SHA-256 of each model file.
The file names are written here only.

A bundle is loaded for one runtime (:func:`resolve_runtime`): ``tensorflow`` loads the Keras model
(``safe_mode``; the label map is checked against its outputs, the preprocessing against its input
shape); ``onnx`` reads everything else without importing TensorFlow or Keras and hands the checked
:data:`RUNTIME_MODEL` to :mod:`pipeline.model.infer`, which checks its shapes when it opens it. Either
way each model file's hash is checked. A bundle from an older version, without the optional files,
still loads (without calibration, novelty or the light runtime).
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
from pipeline.shared.errors import UserError
from pipeline.shared.params import RUNTIMES, PreprocessParams
from pipeline.shared.runfolder import is_prepared, labels_from_map, read_preprocess

log = logging.getLogger(__name__)

MODEL = "model.keras"
LABELS = "labels.json"
PREPROCESS = "preprocess.json"
PARAMS = "params.json"
CALIBRATION = "calibration.json"
MARKER = "bundle.json"
RUNTIME_MODEL = "model.onnx"  # the model for the light runtime (ONNX Runtime): probs, logits, features, conv
RUNTIME_SHA = "runtime_model_sha256"  # its hash, in MARKER (MODEL's is "model_sha256")

AUTO, TENSORFLOW, ONNX = RUNTIMES
FULL_INSTALL = "pip install '.[train]' (or make setup)"  # what brings TensorFlow and the training stack


@dataclass
class Bundle:
    """A loaded bundle: the model (Keras; None when loaded for the ONNX runtime), labels by index, the
    preprocessing config, its trust parts, and which runtime runs it."""

    model: Any
    labels: list[str]
    preprocess: PreprocessParams
    info: dict[str, Any]
    calibration: dict[str, Any] | None = None
    novelty: NoveltySpec | None = None
    path: Path | None = None
    runtime: str = TENSORFLOW
    runtime_model: Path | None = None  # RUNTIME_MODEL, hash checked (the onnx runtime reads it)

    @property
    def temperature(self) -> float:
        return float((self.calibration or {}).get("temperature", 1.0))

    @property
    def sha256(self) -> str | None:
        return self.info.get("model_sha256")


def write_bundle(dest: Path, model_file: Path, labels: dict[str, int], preprocess: dict[str, Any],
                 params: dict[str, Any], info: dict[str, Any], calibration: dict[str, Any] | None = None,
                 novelty: NoveltySpec | None = None, runtime_model: Path | None = None) -> None:
    """Assemble a bundle in a temp folder and move it into place (never half-written)."""
    tmp = artifacts.temp_dir_for(dest)
    try:
        shutil.copyfile(model_file, tmp / MODEL)
        if runtime_model is not None:
            shutil.copyfile(runtime_model, tmp / RUNTIME_MODEL)
            info = {**info, RUNTIME_SHA: artifacts.sha256_file(tmp / RUNTIME_MODEL)}
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


def add_runtime_model(path: Path, runtime_model: Path) -> None:
    """Add the light runtime's model to a bundle that has none (an older bundle): the file first, then its
    hash in the marker (atomically), so a bundle is never left claiming a file it lacks."""
    info = read_info(path)
    artifacts.write_bytes(path / RUNTIME_MODEL, Path(runtime_model).read_bytes())
    artifacts.write_json(path / MARKER, {**info, RUNTIME_SHA: artifacts.sha256_file(path / RUNTIME_MODEL)})


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
        raise StageError(f"model bundle not found: {path} (train one: `make train`; or name another: RUN=runs/<name> "
                         f"or MODEL=<the folder that holds {MARKER}>, on the command line --run or --model)")
    raise StageError(f"{path} is not a model bundle (no {MARKER}); give the bundle folder, e.g. runs/<name>/model, "
                     "or a run folder holding one")


def _check_hash(path: Path, name: str, recorded: str | None) -> None:
    if not (path / name).is_file():
        raise StageError(f"model bundle {path} has no {name}")
    if recorded != artifacts.sha256_file(path / name):
        raise StageError(f"model bundle {path}: {name} does not match its recorded SHA-256; "
                         "refusing to load a modified model")


def read_info(path: Path) -> dict[str, Any]:
    """The bundle marker, after checking the model file's hash."""
    info = artifacts.read_json(path / MARKER, f"model bundle marker ({MARKER})")
    _check_hash(path, MODEL, info.get("model_sha256"))
    return info


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def resolve_runtime(requested: str, info: dict[str, Any], path: Path, chosen: bool = True) -> str:
    """The runtime that runs this bundle: ``onnx`` or ``tensorflow``. ``auto`` takes ONNX Runtime when the
    bundle has its model (:data:`RUNTIME_MODEL`) and ``onnxruntime`` is installed; a runtime that cannot
    run here is a clear error, saying what to install or do (``chosen``: the user chose it, with a
    ``--runtime`` option that could choose the other; else the caller needs the Keras model itself)."""
    if requested not in RUNTIMES:
        raise UserError(f"--runtime must be one of {', '.join(RUNTIMES)}. Received: {requested!r}")
    has_onnx = RUNTIME_SHA in info
    if requested == AUTO:
        requested = ONNX if has_onnx and _installed("onnxruntime") else TENSORFLOW
    if requested == ONNX and not has_onnx:
        raise UserError(f"model bundle {path} has no {RUNTIME_MODEL} (trained by an older version): "
                        f"`pipeline export --model {path} --format onnx` adds it; or use --runtime tensorflow")
    if requested == ONNX and not _installed("onnxruntime"):
        raise UserError("--runtime onnx needs ONNX Runtime: pip install onnxruntime")
    if requested == TENSORFLOW and not (_installed("keras") and _installed("tensorflow")):
        hint = ("this step needs the Keras model itself" if not chosen else
                f"this bundle has no {RUNTIME_MODEL} for the light runtime: add it on a full install with "
                f"`pipeline export --model {path} --format onnx`" if not has_onnx else "or use --runtime onnx")
        raise UserError(f"the TensorFlow runtime needs the full install: {FULL_INSTALL}; {hint}")
    return requested


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


def load(path: str | Path, runtime: str | None = None) -> Bundle:
    """Load and verify a bundle folder for ``runtime`` (:func:`resolve_runtime`; None: TensorFlow, which the
    caller needs): the hashes, label map, preprocessing config and, for TensorFlow, the Keras model
    (safe_mode) against them."""
    path = locate(path)
    info = read_info(path)
    labels = read_labels(path)
    cfg = read_preprocess_of(path)
    runtime = resolve_runtime(runtime or TENSORFLOW, info, path, chosen=runtime is not None)
    model = runtime_model = None
    if RUNTIME_SHA in info:
        _check_hash(path, RUNTIME_MODEL, info[RUNTIME_SHA])
        runtime_model = path / RUNTIME_MODEL
    if runtime == TENSORFLOW:
        import keras

        model = keras.models.load_model(path / MODEL, compile=False, safe_mode=True)
        _check_model(path, model, labels, cfg)
    calibration = artifacts.read_json(path / CALIBRATION, f"bundle {CALIBRATION}") \
        if (path / CALIBRATION).is_file() else None
    novelty = NoveltySpec.read(path)
    if novelty is None:
        log.info("model bundle %s has no %s (trained by an older version): unfamiliar-input detection is "
                 "unavailable; retrain to get it", path, NOVELTY)
    return Bundle(model, labels, cfg, info, calibration, novelty, path, runtime, runtime_model)
