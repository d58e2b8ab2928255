"""Explain: why the model gave this label, as a saliency map over the image it saw.

    pipeline explain IMAGE [--model runs/<name>/model] [--out overlay.png] [--method occlusion|gradcam]

Writes the input as the model saw it with the map overlaid (default: an occlusion map, see
:mod:`pipeline.model.explain` and docs/trust.md), and prints the label, the top-k and, like
``pipeline predict``, the novelty score and whether the image looks familiar (an unfamiliar image's
map explains a guess). ``--model`` defaults to the last prepared run's bundle (``--model RUN`` works).
The occlusion map runs in either runtime (``--runtime``); Grad-CAM needs TensorFlow's gradients.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.preprocess import ImageError, load_image
from pipeline.model.explain import METHODS, saliency
from pipeline.model.infer import Predictor
from pipeline.shared import artifacts, cli, plots
from pipeline.shared import bundle as bundle_mod
from pipeline.shared.errors import UserError

log = logging.getLogger(__name__)


def explain(image: Path, model_dir: Path, out: Path, method: str = "occlusion", top_k: int = 3,
            runtime: str = bundle_mod.AUTO, label: str | None = None) -> dict[str, Any]:
    """Write the overlay PNG for one image: what ``label`` (default: the most probable one) rests on; return
    the label explained, the top-k, novelty, familiar and the method."""
    if method == "gradcam":  # gradients of the Keras model
        if runtime == bundle_mod.ONNX:
            raise UserError("--method gradcam needs the model's gradients: --runtime tensorflow (or auto)")
        runtime = bundle_mod.TENSORFLOW
    b = bundle_mod.load(model_dir, runtime)
    if label is not None and label not in b.labels:
        raise UserError(f"--label {label!r} is not a label of this model: {', '.join(b.labels)}")
    try:
        x = load_image(image, b.preprocess)
    except ImageError as exc:
        raise UserError(f"{image}: {exc}") from None
    predictor = Predictor(b, 256)
    got = predictor(x[None])
    probs = got.probs[0]
    order = np.argsort(-probs, kind="stable")[:max(1, min(top_k, len(b.labels)))]
    cls = int(order[0]) if label is None else b.labels.index(label)
    heat = saliency(predictor, x, cls, method)
    top = [(b.labels[i], float(probs[i])) for i in order]
    familiar = None if got.familiar is None else bool(got.familiar[0])
    title = f"{method} map: what the label {b.labels[cls]!r} rests on"
    if familiar is False:
        title += " (UNFAMILIAR image: the label is a guess)"
    artifacts.write_bytes(out, plots.explanation(x, heat, top, title))
    return {"image": str(image), "label": b.labels[cls], "top_k": top, "method": method, "out": str(out),
            "novelty": None if got.novelty is None else float(got.novelty[0]), "familiar": familiar}


def describe(r: dict[str, Any]) -> str:
    """One line: label, top-k, novelty and familiarity (as ``pipeline predict`` prints them), the map."""
    top = ", ".join(f"{label} {p:.4f}" for label, p in r["top_k"])
    familiar = "" if r["familiar"] is None else (
        f"  novelty {r['novelty']:.3f} ({'familiar' if r['familiar'] else 'UNFAMILIAR: unlike the training images'})")
    return f"{r['image']}: {r['label']}  top-{len(r['top_k'])}: {top}{familiar}  ({r['method']} map -> {r['out']})"


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("image", type=Path, help="an image file")
    parser.add_argument("--model", type=Path, help="model bundle folder, or a run folder (default: the last "
                        "prepared run's model)")
    cli.add_run_options(parser)
    parser.add_argument("--out", type=Path, help="the overlay PNG (default: <image name>.explain.png here)")
    parser.add_argument("--method", choices=METHODS, default="occlusion", help="saliency method (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=3, help="labels listed (default: %(default)s)")
    parser.add_argument("--label", help="the label to explain (default: the most probable one; with several labels "
                        "per image, any of them)")
    cli.add_runtime_option(parser)
    return parser


def resolve_args(args: argparse.Namespace) -> None:
    cli.resolve_model(args, "explain")


def main(args: argparse.Namespace) -> int:
    """CLI: write the overlay, print the label, top-k and novelty."""
    out = args.out or Path(f"{args.image.stem}.explain.png")
    cli.result(describe(explain(args.image, args.model, out, args.method, args.top_k, args.runtime or bundle_mod.AUTO,
                                args.label)))
    return 0
