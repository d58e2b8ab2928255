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
A multi-label bundle's per-label thresholds go along (``calibration.json``, and ``thresholds`` in
``export.json``): a label is given when its probability reaches its threshold. ``--quantize int8`` calibrates on a seeded sample of the run's training images. The
temperature (calibrated confidence) is part of the model in every format. The folder
appears complete or not at all. The ONNX file is the bundle's own ``model.onnx`` (the light runtime's
model, copied when the bundle has it); a bundle from before it gains it here.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import logging
import shlex
import shutil
import string
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.model.formats import FORMATS, QUANTIZE, Export, Format, metadata_strings
from pipeline.model.infer import predict_probs
from pipeline.shared import artifacts, cli
from pipeline.shared import bundle as bundle_mod
from pipeline.shared import runfolder as rf
from pipeline.shared.errors import UserError

log = logging.getLogger(__name__)

REPRESENTATIVE = 300  # training images that calibrate int8 quantization
EXAMPLE = Path(__file__).with_name("predict_example.py.txt")


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose top class is the same in both probability arrays."""
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1))) if len(a) else float("nan")


def _check_options(fmt: str, quantize: str, io_type: str) -> Format:
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if quantize not in QUANTIZE:
        raise UserError(f"--quantize must be one of {', '.join(QUANTIZE)}; got {quantize!r}")
    if quantize not in FORMATS[fmt].quantize:
        allowed = [f.name for f in FORMATS.values() if quantize in f.quantize]
        raise UserError(f"--quantize {quantize} applies to --format {' or '.join(allowed)} only")
    if io_type not in ("int8", "uint8"):
        raise UserError(f"--io must be int8 or uint8; got {io_type!r}")
    return FORMATS[fmt]


def _representative(model_dir: Path, n: int = REPRESENTATIVE, seed: int = 0) -> np.ndarray | None:
    """A seeded sample of the run's training images (for int8 calibration), or None without one."""
    if not rf.is_prepared(model_dir.parent):
        return None
    x = rf.Prepared.open(model_dir.parent).x("train")
    pick = np.sort(np.random.default_rng(seed).choice(len(x), min(n, len(x)), replace=False))
    return np.asarray(x[pick], np.float32)


def _write_model(b: bundle_mod.Bundle, model_dir: Path, fmt: Format, target: Path, quantize: str,
                 io_type: str) -> None:
    if fmt.bundle_runtime and quantize == "none" and b.runtime_model is not None:
        shutil.copyfile(b.runtime_model, target)  # the bundle has this very file (hash checked): what predict runs
        return
    meta = metadata_strings(artifacts.read_json(model_dir / bundle_mod.LABELS, "labels"),
                            artifacts.read_json(model_dir / bundle_mod.PREPROCESS, "preprocessing"))
    rep = _representative(model_dir) if quantize == "int8" else None
    fmt.write(Export(b.model, model_dir / bundle_mod.MODEL, meta, quantize, rep, io_type), target)


def _write_example(folder: Path, fmt: Format, target: Path) -> None:
    """``predict_example.py``: this folder's model, its preprocessing and its labels, with one runtime."""
    text = string.Template(EXAMPLE.read_text(encoding="utf-8")).substitute(
        FORMAT=fmt.name, MODEL=target.name, RUNTIME=fmt.runtime, PIP=fmt.pip, LOADER=fmt.loader, VERSION=__version__)
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


def _measure(b: bundle_mod.Bundle, fmt: Format, target: Path, check: np.ndarray | None,
             y: np.ndarray | None) -> dict[str, Any]:
    """Agreement with the bundle, accuracy on the test split, and single-image latency in the format's runtime."""
    out: dict[str, Any] = {}
    run = fmt.read(target)
    if check is not None and len(check):
        reference = predict_probs(b, check, 1024)  # what `pipeline predict` gives
        got = run(check)
        out["agreement"] = {"images": int(len(check)), "top1_agreement": agreement(reference, got),
                            "max_abs_prob_diff": float(np.max(np.abs(reference - got)))}
        if y is not None and len(y) == len(check) and np.ndim(y) == 1:  # (multi-label: the agreement only)
            out["accuracy"] = float(np.mean(got.argmax(axis=1) == y))
            out["bundle_accuracy"] = float(np.mean(reference.argmax(axis=1) == y))
    # one image's latency needs no test split: an image of zeros in the bundle's input shape will do
    out["latency_ms"] = _latency(run, check if check is not None and len(check) else
                                 np.zeros((1, *b.preprocess.input_shape), np.float32))
    return out


def _fingerprint(b: bundle_mod.Bundle, fmt: str, quantize: str, io_type: str, check: np.ndarray | None,
                 y: np.ndarray | None) -> str:
    """What an export folder is made from: the bundle's model, the options, and the images it was checked on."""
    checked = [None if a is None else hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in (check, y)]
    return rf.fingerprint("export", upstream=[b.info.get("model_sha256")], params=[fmt, quantize, io_type],
                          extra=checked)


def export(model_dir: Path, fmt: str, out: Path, quantize: str = "none", check: np.ndarray | None = None,
           y: np.ndarray | None = None, io_type: str = "int8") -> dict[str, Any]:
    """Write the export folder ``out``; return what ``export.json`` records."""
    form = _check_options(fmt, quantize, io_type)
    model_dir = bundle_mod.locate(model_dir)
    if quantize == "int8" and not rf.is_prepared(model_dir.parent):  # said before TensorFlow loads
        raise UserError(f"--quantize int8 calibrates on the training images of the run the model was trained in, "
                        f"and {model_dir} is not in a prepared run folder: export it from there "
                        "(--model runs/<name>/model)")
    b = bundle_mod.load(model_dir)
    model_dir = b.path
    fp = _fingerprint(b, fmt, quantize, io_type, check, y)
    if rf.is_current(out / rf.EXPORT_MARKER, fp, [out / form.file, out / "predict_example.py"]):
        log.info("export: %s is up to date with %s; skipped", out, model_dir)
        return {**rf.read_marker(out / rf.EXPORT_MARKER), "skipped": True}
    t0 = time.perf_counter()
    tmp = artifacts.temp_dir_for(out)
    try:
        target = tmp / form.file
        _write_model(b, model_dir, form, target, quantize, io_type)
        for name in (bundle_mod.LABELS, bundle_mod.PREPROCESS):
            shutil.copyfile(model_dir / name, tmp / name)
        thresholds = (b.calibration or {}).get("thresholds")
        if thresholds is not None:  # multi-label: each label's threshold travels with the model
            shutil.copyfile(model_dir / bundle_mod.CALIBRATION, tmp / bundle_mod.CALIBRATION)
        _write_example(tmp, form, target)
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) if target.is_dir() \
            else target.stat().st_size
        info: dict[str, Any] = {
            "stage": "export", "version": __version__, "format": fmt, "quantize": quantize, "file": target.name,
            "bytes": size, "source_model": str(model_dir), "source_sha256": b.info.get("model_sha256"),
            "source_bytes": (model_dir / bundle_mod.MODEL).stat().st_size, "runtime": form.runtime,
            "metadata_inside": form.metadata_inside, **({"io": io_type} if quantize == "int8" else {}),
            **({"task": "multi", "thresholds": thresholds} if thresholds is not None else {})}
        if target.is_file():
            info["sha256"] = artifacts.sha256_file(target)
        info.update(_measure(b, form, target, check, y))
        info["seconds"] = round(time.perf_counter() - t0, 2)
        info["added_to_bundle"] = form.bundle_runtime and quantize == "none" and b.runtime_model is None
        artifacts.write_json(tmp / rf.EXPORT_MARKER, {**info, "fingerprint": fp})
        artifacts.replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if info["added_to_bundle"]:  # an older bundle: it gains its model for the light runtime
        bundle_mod.add_runtime_model(model_dir, out / form.file)
        log.info("export: added %s to the bundle %s: predict and serve can now run it without TensorFlow",
                 form.file, model_dir)
    return info


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", type=Path, help="model bundle folder, or a run folder holding one (default: the "
                        "model of the last prepared run)")
    cli.add_run_options(parser)
    parser.add_argument("--format", default="tflite", choices=FORMATS,
                        help=" | ".join(FORMATS) + " (default: %(default)s, as make export)")
    parser.add_argument("--quantize", default="none", choices=QUANTIZE,
                        help="tflite only: dynamic (8-bit weights), float16, int8 (full integer, calibrated on the "
                             "run's training images) (default: %(default)s)")
    parser.add_argument("--io", default="int8", choices=("int8", "uint8"),
                        help="--quantize int8: input and output type (default: %(default)s)")
    parser.add_argument("--out", help="output folder (default: <run>/export/<format>[-<quantize>], or "
                        "export/<format>[-<quantize>] here for a bundle outside a run folder)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip comparing the export with the bundle on the run's test split")
    return parser


def resolve_args(args: argparse.Namespace) -> None:
    cli.resolve_model(args, "export")


def main(args: argparse.Namespace) -> int:
    """CLI: export, compare on the test split when there is one, print the summary."""
    model_dir = Path(args.model)
    suffix = f"-{args.quantize}" if args.quantize != "none" else ""
    # a bundle outside a run folder: here, as predict does (never inside the bundle)
    out = Path(args.out) if args.out else \
        (Path(args.run) if args.run else Path()) / rf.EXPORT / f"{args.format}{suffix}"
    check = y = None
    if not args.no_check and args.run:
        prep = rf.Prepared.open(args.run)
        check, y = prep.x("test"), prep.y("test")
    elif not args.no_check:
        log.info("export: %s is not in a run folder, so there is no test split to compare the export with the "
                 "bundle on; give --run RUN (the run it was trained in) for that", model_dir)
    info = export(model_dir, args.format, out, args.quantize, check, y, args.io)
    if not info.get("skipped"):
        log.info("export: read %s; wrote %s (%s, %.1f KB)", model_dir, out / info["file"], args.format,
                 info["bytes"] / 1024)
    line = f"{out / info['file']}: {info['bytes'] / 1024:.1f} KB ({bundle_mod.MODEL}: {info['source_bytes'] / 1024:.1f} KB)"
    if "agreement" in info:
        a = info["agreement"]
        line += f"; top-1 agreement with the bundle on {a['images']} test images: {a['top1_agreement']:.2%}"
    if "latency_ms" in info:
        line += f"; {info['latency_ms']:.2f} ms per image in {info['runtime']}"
    cli.result(line)
    example = shlex.join([sys.executable, str(out / "predict_example.py")])  # a path with a space: quoted
    cli.result(f"try it: {example} IMAGE  (elsewhere: pip install numpy pillow "
               f"{FORMATS[args.format].pip}, then python predict_example.py IMAGE)")
    return 0
