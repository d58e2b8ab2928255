"""Export: a model bundle as ``.keras``, a TensorFlow SavedModel, or TensorFlow Lite.

Writes one folder (default ``<run>/export/<format>``; ``--out`` to change) holding the
model (``model.keras``, ``saved_model/`` or ``model.tflite``), the bundle's
``labels.json`` and ``preprocess.json`` (an app must prepare its images the same
way), and ``export.json``: format, quantisation, size, SHA-256, the source model's
SHA-256 and, when the run folder has its test split, how often the exported model's
top label agrees with the Keras model's on it. ``--quantize dynamic`` stores the
TFLite weights as 8-bit integers (dynamic-range quantisation: ~4x smaller, no
calibration data needed). The folder appears complete or not at all.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, artifacts, bundle as bundle_mod

log = logging.getLogger(__name__)

FORMATS = ("keras", "savedmodel", "tflite")
MODEL_NAME = {"keras": "model.keras", "savedmodel": "saved_model", "tflite": "model.tflite"}


def to_tflite(model: Any, quantize: str = "none") -> bytes:
    """The Keras model as a TFLite flatbuffer (via a temporary SavedModel)."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        model.export(Path(tmp) / "sm", format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "sm"))
        if quantize == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: dynamic range
        return converter.convert()


def tflite_predict(model_bytes: bytes, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Class probabilities from a TFLite model, ``batch`` images per call."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=model_bytes)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    probs, size = [], None
    for i in range(0, len(x), batch):
        block = np.ascontiguousarray(x[i:i + batch], dtype=np.float32)
        if len(block) != size:
            interpreter.resize_tensor_input(inp["index"], list(block.shape))
            interpreter.allocate_tensors()
            size = len(block)
        interpreter.set_tensor(inp["index"], block)
        interpreter.invoke()
        probs.append(interpreter.get_tensor(out["index"]).copy())
    return np.concatenate(probs) if probs else np.zeros((0, 0), np.float32)


def savedmodel_predict(folder: Path, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Class probabilities from an exported SavedModel's ``serve`` endpoint."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(folder))
    return np.concatenate([np.asarray(loaded.serve(tf.constant(x[i:i + batch], tf.float32)))
                           for i in range(0, len(x), batch)])


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose top class is the same in both probability arrays."""
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1))) if len(a) else float("nan")


def export(model_dir: Path, fmt: str, out: Path, quantize: str = "none", check: np.ndarray | None = None) -> dict:
    """Write the export folder ``out``; return what ``export.json`` records."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if quantize not in ("none", "dynamic"):
        raise ValueError(f"--quantize must be none or dynamic; got {quantize!r}")
    if quantize != "none" and fmt != "tflite":
        raise ValueError("--quantize applies to --format tflite only")
    b = bundle_mod.load(model_dir)
    t0 = time.perf_counter()
    tmp = artifacts.temp_dir_for(out)
    try:
        target = tmp / MODEL_NAME[fmt]
        if fmt == "keras":
            shutil.copyfile(model_dir / "model.keras", target)
        elif fmt == "savedmodel":
            b.model.export(target, format="tf_saved_model", verbose=False)
        else:
            artifacts.write_bytes(target, to_tflite(b.model, quantize))
        for name in ("labels.json", "preprocess.json"):
            shutil.copyfile(model_dir / name, tmp / name)
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) if target.is_dir() \
            else target.stat().st_size
        info: dict[str, Any] = {
            "stage": "export", "version": __version__, "format": fmt, "quantize": quantize, "file": target.name,
            "bytes": size, "source_model": str(model_dir), "source_sha256": b.info.get("model_sha256"),
            "source_bytes": (model_dir / "model.keras").stat().st_size, "seconds": 0.0,
        }
        if target.is_file():
            info["sha256"] = artifacts.sha256_file(target)
        if check is not None and len(check):
            reference = b.model.predict(check, batch_size=1024, verbose=0)
            if fmt == "tflite":
                got = tflite_predict(target.read_bytes(), check)
            elif fmt == "savedmodel":
                got = savedmodel_predict(target, check)
            else:
                got = reference
            info["agreement"] = {"images": int(len(check)), "top1_agreement": agreement(reference, got),
                                 "max_abs_prob_diff": float(np.max(np.abs(reference - got)))}
        info["seconds"] = round(time.perf_counter() - t0, 2)
        artifacts.write_json(tmp / "export.json", info)
        artifacts.replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="model bundle folder (runs/<name>/model)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="keras | savedmodel | tflite")
    parser.add_argument("--quantize", default="none", choices=("none", "dynamic"),
                        help="tflite only: dynamic-range 8-bit weights (default: %(default)s)")
    parser.add_argument("--out", help="output folder (default: <run>/export/<format>[-dynamic])")
    parser.add_argument("--no-check", action="store_true",
                        help="skip comparing the export with the Keras model on the run's test split")
    return parser


def main(args: argparse.Namespace) -> int:
    """CLI: export, compare on the test split when there is one, print the summary."""
    model_dir = Path(args.model)
    run = model_dir.parent
    suffix = "-dynamic" if args.quantize == "dynamic" else ""
    out = Path(args.out) if args.out else run / "export" / f"{args.format}{suffix}"
    check = None
    if not args.no_check and (run / "X_test.npy").is_file():
        check = artifacts.load_npy(run / "X_test.npy", "test images")
    info = export(model_dir, args.format, out, args.quantize, check)
    log.info("export: read %s; wrote %s (%s, %.1f KB)", model_dir, out / info["file"], args.format,
             info["bytes"] / 1024)
    line = f"{out / info['file']}: {info['bytes'] / 1024:.1f} KB (model.keras: {info['source_bytes'] / 1024:.1f} KB)"
    if "agreement" in info:
        a = info["agreement"]
        line += f"; top-1 agreement with the Keras model on {a['images']} test images: {a['top1_agreement']:.2%}"
    print(line)
    return 0
