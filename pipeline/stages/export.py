"""Export: a model bundle as ``.keras``, a TensorFlow SavedModel, TensorFlow Lite or ONNX.

    pipeline export --model runs/<name>/model --format keras|savedmodel|tflite|onnx
                    [--quantize none|dynamic|float16|int8] [--io int8|uint8] [--out DIR]

Writes one folder (default ``<run>/export/<format>[-<quantize>]``) holding the model
(``model.keras``, ``saved_model/``, ``model.tflite`` or ``model.onnx``), the bundle's
``labels.json`` and ``preprocess.json`` (also inside the file for TFLite and ONNX), a
``predict_example.py`` that turns an image into a label with only this folder (numpy,
Pillow and the format's runtime), and ``export.json``: format, quantisation, size,
SHA-256, the single-image latency in the format's own runtime and, on the run's test
split, how often the exported model's top label agrees with the bundle's (the
same images through :func:`pipeline.model.infer.predict_probs`) and its accuracy.
``--quantize int8`` calibrates on a seeded sample of the run's training images. The
temperature (calibrated confidence) is part of the model in every format. The folder
appears complete or not at all.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import string
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.model.infer import predict_probs
from pipeline.shared import artifacts, cli
from pipeline.shared import bundle as bundle_mod
from pipeline.shared import runfolder as rf
from pipeline.shared.errors import UserError
from pipeline.stages import exporters
from pipeline.stages.exporters import FORMATS, MODEL_NAME, QUANTIZE

log = logging.getLogger(__name__)

REPRESENTATIVE = 300  # training images that calibrate int8 quantization
EXAMPLE = Path(__file__).with_name("templates") / "predict_example.py.txt"
RUNTIMES = {"keras": "keras", "savedmodel": "tensorflow", "tflite": "ai_edge_litert", "onnx": "onnxruntime"}


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose top class is the same in both probability arrays."""
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1))) if len(a) else float("nan")


def _check_options(fmt: str, quantize: str, io_type: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if quantize not in QUANTIZE:
        raise UserError(f"--quantize must be one of {', '.join(QUANTIZE)}; got {quantize!r}")
    if quantize != "none" and fmt != "tflite":
        raise UserError("--quantize applies to --format tflite only")
    if io_type not in ("int8", "uint8"):
        raise UserError(f"--io must be int8 or uint8; got {io_type!r}")


def _representative(model_dir: Path, n: int = REPRESENTATIVE, seed: int = 0) -> np.ndarray | None:
    """A seeded sample of the run's training images (for int8 calibration), or None without one."""
    x_file = model_dir.parent / rf.x_file("train")
    if not x_file.is_file():
        return None
    x = artifacts.load_npy(x_file, "train images")
    pick = np.sort(np.random.default_rng(seed).choice(len(x), min(n, len(x)), replace=False))
    return np.asarray(x[pick], np.float32)


def _write_model(b: bundle_mod.Bundle, model_dir: Path, fmt: str, target: Path, quantize: str, io_type: str) -> None:
    meta = exporters.metadata_strings(artifacts.read_json(model_dir / "labels.json", "labels"),
                                      artifacts.read_json(model_dir / "preprocess.json", "preprocessing"))
    if fmt == "keras":
        shutil.copyfile(model_dir / "model.keras", target)
    elif fmt == "savedmodel":
        b.model.export(target, format="tf_saved_model", verbose=False)
    elif fmt == "onnx":
        exporters.to_onnx(b.model, target, {k.removesuffix(".json"): v for k, v in meta.items()})
    else:
        rep = _representative(model_dir) if quantize == "int8" else None
        flat = exporters.to_tflite(b.model, quantize, rep, io_type)
        artifacts.write_bytes(target, exporters.with_tflite_metadata(flat, {k: v.encode() for k, v in meta.items()}))


def _write_example(folder: Path, fmt: str, target: Path) -> None:
    """``predict_example.py``: this folder's model, its preprocessing and its labels, with one runtime."""
    text = string.Template(EXAMPLE.read_text(encoding="utf-8")).substitute(
        FORMAT=fmt, MODEL=target.name, RUNTIME=RUNTIMES[fmt], VERSION=__version__)
    artifacts.write_text(folder / "predict_example.py", text)


def _latency(run: Any, x: np.ndarray, repeat: int = 200) -> float:
    """Median milliseconds for one image, after a warm-up."""
    one = np.asarray(x[:1], np.float32)
    for _ in range(5):
        run(one)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run(one)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1000, 3)


def _measure(b: bundle_mod.Bundle, fmt: str, target: Path, check: np.ndarray | None,
             y: np.ndarray | None) -> dict[str, Any]:
    """Agreement with the bundle, accuracy on the test split, and single-image latency in the format's runtime."""
    out: dict[str, Any] = {}
    run = exporters.runner(fmt, target)
    if check is not None and len(check):
        reference = predict_probs(b, check, 1024)  # what `pipeline predict` gives
        got = run(check)
        out["agreement"] = {"images": int(len(check)), "top1_agreement": agreement(reference, got),
                            "max_abs_prob_diff": float(np.max(np.abs(reference - got)))}
        if y is not None and len(y) == len(check):
            out["accuracy"] = float(np.mean(got.argmax(axis=1) == y))
            out["bundle_accuracy"] = float(np.mean(reference.argmax(axis=1) == y))
        out["latency_ms"] = _latency(run, check)
    return out


def export(model_dir: Path, fmt: str, out: Path, quantize: str = "none", check: np.ndarray | None = None,
           y: np.ndarray | None = None, io_type: str = "int8") -> dict[str, Any]:
    """Write the export folder ``out``; return what ``export.json`` records."""
    _check_options(fmt, quantize, io_type)
    b = bundle_mod.load(model_dir)
    t0 = time.perf_counter()
    tmp = artifacts.temp_dir_for(out)
    try:
        target = tmp / MODEL_NAME[fmt]
        _write_model(b, model_dir, fmt, target, quantize, io_type)
        for name in ("labels.json", "preprocess.json"):
            shutil.copyfile(model_dir / name, tmp / name)
        _write_example(tmp, fmt, target)
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) if target.is_dir() \
            else target.stat().st_size
        info: dict[str, Any] = {
            "stage": "export", "version": __version__, "format": fmt, "quantize": quantize, "file": target.name,
            "bytes": size, "source_model": str(model_dir), "source_sha256": b.info.get("model_sha256"),
            "source_bytes": (model_dir / "model.keras").stat().st_size, "runtime": RUNTIMES[fmt],
            "metadata_inside": fmt in ("tflite", "onnx"), **({"io": io_type} if quantize == "int8" else {})}
        if target.is_file():
            info["sha256"] = artifacts.sha256_file(target)
        info.update(_measure(b, fmt, target, check, y))
        info["seconds"] = round(time.perf_counter() - t0, 2)
        artifacts.write_json(tmp / "export.json", info)
        artifacts.replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="model bundle folder (runs/<name>/model)")
    parser.add_argument("--format", required=True, choices=FORMATS, help=" | ".join(FORMATS))
    parser.add_argument("--quantize", default="none", choices=QUANTIZE,
                        help="tflite only: dynamic (8-bit weights), float16, int8 (full integer, calibrated on the "
                             "run's training images) (default: %(default)s)")
    parser.add_argument("--io", default="int8", choices=("int8", "uint8"),
                        help="--quantize int8: input and output type (default: %(default)s)")
    parser.add_argument("--out", help="output folder (default: <run>/export/<format>[-<quantize>])")
    parser.add_argument("--no-check", action="store_true",
                        help="skip comparing the export with the bundle on the run's test split")
    return parser


def main(args: argparse.Namespace) -> int:
    """CLI: export, compare on the test split when there is one, print the summary."""
    model_dir = Path(args.model)
    run = model_dir.parent
    suffix = f"-{args.quantize}" if args.quantize != "none" else ""
    out = Path(args.out) if args.out else run / rf.EXPORT / f"{args.format}{suffix}"
    check = y = None
    if not args.no_check and (run / rf.x_file("test")).is_file():
        check = artifacts.load_npy(run / rf.x_file("test"), "test images")
        y = np.asarray(artifacts.load_npy(run / rf.y_file("test"), "test labels"))
    info = export(model_dir, args.format, out, args.quantize, check, y, args.io)
    log.info("export: read %s; wrote %s (%s, %.1f KB)", model_dir, out / info["file"], args.format,
             info["bytes"] / 1024)
    line = f"{out / info['file']}: {info['bytes'] / 1024:.1f} KB (model.keras: {info['source_bytes'] / 1024:.1f} KB)"
    if "agreement" in info:
        a = info["agreement"]
        line += (f"; top-1 agreement with the bundle on {a['images']} test images: {a['top1_agreement']:.2%}; "
                 f"{info['latency_ms']:.2f} ms per image in {info['runtime']}")
    cli.result(line)
    cli.result(f"try it: python {out / 'predict_example.py'} IMAGE")
    return 0


if __name__ == "__main__":
    import sys

    from pipeline.shared import cli

    sys.exit(cli.run_module("export"))
