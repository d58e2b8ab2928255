"""Preview: what the model sees. A PNG grid, per class: original -> preprocessed -> augmented.

Reads the run folder written by prepare (the preprocessing config it used and
the manifest's training rows) and the ``[augment]`` section of the params file.
Writes ``<run>/preview.png`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.data import ingest
from pipeline.data.inputs import original
from pipeline.data.preprocess import ImageError, load_image, preprocess
from pipeline.shared import artifacts, cli, plots
from pipeline.shared import params as params_mod
from pipeline.shared import runfolder as rf
from pipeline.shared.params import AugmentParams, PreprocessParams

log = logging.getLogger(__name__)
CELL = 84


def _tile(arr: np.ndarray | None, cell: int = CELL) -> Image.Image:
    """A square RGB tile: the image fitted inside, on grey; a cross when there is no image."""
    tile = Image.new("RGB", (cell, cell), (200, 200, 200))
    if arr is None:
        d = ImageDraw.Draw(tile)
        d.line((0, 0, cell, cell), fill="gray")
        d.line((0, cell, cell, 0), fill="gray")
        return tile
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    img = Image.fromarray(arr).convert("RGB")
    img.thumbnail((cell, cell), Image.NEAREST if max(img.size) < cell else Image.BILINEAR)
    if max(img.size) < cell:  # small images are scaled up, pixels kept visible
        scale = cell // max(img.size)
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    tile.paste(img, ((cell - img.width) // 2, (cell - img.height) // 2))
    return tile


def augmented_versions(x: np.ndarray, aug: AugmentParams, n: int, seed: int) -> list[np.ndarray]:
    """``n`` augmented versions of one preprocessed image (as training would make them)."""
    if n == 0 or not aug.enabled:
        return []
    from pipeline.model.augment import build_augmenter
    from pipeline.model.batches import make_dataset

    augmenter = build_augmenter(aug, seed)
    if augmenter is None:
        return []
    batch = np.repeat(x[None], n, axis=0)
    out = next(iter(make_dataset(batch, np.zeros(n, np.int64), n, False, seed, augmenter)))[0]
    return list(np.asarray(out))


def _read(path: str, cfg: PreprocessParams) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(the image as a person sees it, its model input) of a manifest path (a file, or a pixel CSV's row);
    None for what cannot be read (said in the log)."""
    shown, why = original(path)
    if shown is None:
        log.warning("preview: %s: %s", path, why)
        return None, None
    try:
        return shown, preprocess(shown, cfg) if ingest.pixel_row_of(path) is not None else load_image(path, cfg)
    except (ImageError, OSError) as exc:
        log.warning("preview: %s: %s", path, exc)
        return shown, None


def preview_grid(rows: list[tuple[str, list[str]]], cfg: PreprocessParams, aug: AugmentParams, n_aug: int,
                 seed: int) -> Image.Image:
    """The grid: one row per image, with its label, original, preprocessed and augmented tiles."""
    cols = 2 + (n_aug if aug.enabled else 0)
    label_w, head = 120, 24
    n_rows = sum(len(paths) for _, paths in rows)
    grid = Image.new("RGB", (label_w + cols * (CELL + 4) + 4, head + n_rows * (CELL + 4) + 4), "white")
    draw, font = ImageDraw.Draw(grid), plots.font(12)  # the other figures' font: a label's accents drawn
    titles = ["original", "preprocessed"] + [f"augmented {i + 1}" for i in range(cols - 2)]
    for c, title in enumerate(titles):
        draw.text((label_w + c * (CELL + 4) + 4, 6), title, fill="black", font=font)
    r = 0
    for label, paths in rows:
        for path in paths:
            top = head + r * (CELL + 4)
            draw.text((6, top + CELL // 2), plots.short(label, 16), fill="black", font=font, anchor="lm")
            shown, x = _read(path, cfg)
            tiles = [shown, x] + (augmented_versions(x, aug, cols - 2, seed + r) if x is not None
                                  else [None] * (cols - 2))
            for c, arr in enumerate(tiles):
                grid.paste(_tile(arr), (label_w + c * (CELL + 4), top))
            r += 1
    return grid


def preview(run: Path, aug: AugmentParams, per_class: int = 2, n_aug: int = 4, seed: int = 42,
            out: Path | None = None) -> Path:
    """Write the preview grid of a prepared run; return its path."""
    prep = rf.Prepared.open(run)
    if aug.hflip == params_mod.AUTO:  # as training will resolve it
        aug = replace(aug, hflip=bool((prep.hflip or {}).get("hflip", False)))
    picked: dict[str, list[str]] = {name: [] for name in prep.labels}
    for row in prep.manifest():
        if row.split == "train" and len(picked.get(row.label, [None] * per_class)) < per_class:
            picked[row.label].append(row.path)
    grid = preview_grid([(name, picked[name]) for name in prep.labels], prep.preprocess, aug, n_aug, seed)
    out = out or run / rf.PREVIEW
    with artifacts.atomic_path(out, suffix=".png") as tmp:
        grid.save(tmp, format="PNG")
    log.info("preview: %d classes -> %s", len(prep.labels), out)
    return out


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    cli.add_run_options(parser)
    cli.add_params_option(parser, ", for [augment]")
    parser.add_argument("--per-class", type=int, default=2, help="images per class (default: %(default)s)")
    parser.add_argument("--augmented", type=int, default=4, help="augmented versions per image (default: %(default)s)")
    parser.add_argument("--out", help="output PNG (default: <run>/preview.png)")
    return parser


def resolve_args(args: argparse.Namespace) -> None:
    cli.resolve_run(args, "preview")


def main(args: argparse.Namespace) -> int:
    """CLI: write the preview grid."""
    run = Path(args.run)
    aug = params_mod.load(args.params, "augment", run.name)
    seed = params_mod.load(args.params, "train", run.name).seed
    cli.result(preview(run, aug, args.per_class, args.augmented, seed, Path(args.out) if args.out else None))
    return 0
