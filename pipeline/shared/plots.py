"""The report's figures, drawn with matplotlib's Agg renderer (the samples grid with Pillow) and returned as
PNG bytes.

Each function takes plain data (arrays, lists, dicts) and returns a PNG; the
report writes the bytes next to ``report.html`` and inlines the same bytes.
Figures are made with ``matplotlib.figure.Figure`` (no pyplot global state).
"""
from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

DPI = 100
TRAIN, VAL, TEST, BAD = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def short(label: str, n: int = 12) -> str:
    """A label cut to ``n`` characters, with an ellipsis when cut (never a shorter name that reads as another label)."""
    return label if len(label) <= n else label[:n - 1] + "…"


CHAR_INCHES = 0.075  # about the width of a tick label's character (the default 10 pt sans)


def _crowded(ticks: Sequence[str], inches: float) -> bool:
    """True when tick labels side by side would not fit along an axis of ``inches`` (they run together:
    seven labels of eight letters on a confusion matrix)."""
    return len(ticks) * (max((len(t) for t in ticks), default=0) + 1) * CHAR_INCHES > inches


def class_counts(counts: dict[str, dict[str, int]]) -> bytes:
    """Stacked bars: images per class and split (``{label: {split: n, ..., "total": n}}``)."""
    labels = list(counts)
    splits = [s for s in ("train", "val", "test") if any(counts[c].get(s, 0) for c in labels)]
    fig = _figure(min(12, 2.5 + 0.45 * len(labels)), 3.6)
    ax = fig.add_subplot()
    bottom = np.zeros(len(labels))
    for split, color in zip(splits, (TRAIN, VAL, TEST)):
        values = np.array([counts[c].get(split, 0) for c in labels], float)
        ax.bar(range(len(labels)), values, bottom=bottom, color=color, label=split)
        bottom += values
    ticks = [short(c) for c in labels]
    turn = len(labels) > 12 or _crowded(ticks, 0.8 * fig.get_figwidth())
    ax.set_xticks(range(len(labels)), ticks, rotation=45 if turn else 0, ha="right" if turn else "center")
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.set_title("Images per class and split")
    ax.set_ylim(0, max(bottom.max(), 1) * 1.18)  # room for the legend above the bars
    ax.legend(frameon=False, ncols=3, loc="upper center")
    return _png(fig)


CELL = 84  # px a side of each image in the samples grid (a 28 px digit drawn 3x)
TITLE = "What the model sees: preprocessed training images per class"


def _dejavu() -> str | None:
    """The DejaVu Sans file that matplotlib ships (accents, Greek, Cyrillic; found without importing it), if any."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    return str(path) if path.is_file() else None


def font(size: int) -> Any:
    """The font of the grids drawn with Pillow (samples, preview): DejaVu Sans where matplotlib is installed
    (the labels' accents drawn, as in the other figures), else Pillow's own scalable font, else its small
    bitmap one (a Pillow without FreeType)."""
    from PIL import ImageFont

    try:
        dejavu = _dejavu()
        return ImageFont.truetype(dejavu, size) if dejavu else ImageFont.load_default(size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def view_u8(img: np.ndarray) -> np.ndarray:
    """A model input (H, W, 1|3) in [0, 1] as the image a person sees: uint8 (H, W) or (H, W, 3), rounded."""
    img = np.clip(np.asarray(img, np.float32), 0, 1)
    return ((img[..., 0] if img.shape[-1] == 1 else img) * np.float32(255) + np.float32(0.5)).astype(np.uint8)


def _cell(img: np.ndarray) -> Any:
    """One model-input image (H, W, 1|3) in [0, 1] as a CELL x CELL PIL image (pixels kept sharp)."""
    from PIL import Image

    tile = Image.fromarray(view_u8(img))
    h, w = img.shape[:2]
    fit = CELL / max(h, w)
    size = (max(1, round(w * fit)), max(1, round(h * fit)))
    return tile.resize(size, Image.Resampling.NEAREST if fit >= 1 else Image.Resampling.BOX)


def sample_grid(images: np.ndarray, y: np.ndarray, labels: Sequence[str], per_class: int = 8) -> bytes:
    """Up to ``per_class`` model-input images per class (per label when ``y`` is multi-hot), one row per
    class (at most 20 classes), the class names on the left: one tiled picture, drawn with Pillow
    (milliseconds; prepare draws it for every run)."""
    from PIL import Image, ImageDraw

    shown = labels[:20]
    y = np.asarray(y)
    gap, label_font, title_font = 6, font(14), font(15)
    names = [short(name) for name in shown]
    left = 16 + max([int(label_font.getlength(n)) for n in names] or [0])
    top = 34
    width = max(left + per_class * (CELL + gap) + 10, int(title_font.getlength(TITLE)) + 20)
    canvas = Image.new("RGB", (width, top + len(shown) * (CELL + gap) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((canvas.width // 2, 8), TITLE, fill="black", font=title_font, anchor="ma")
    for row, name in enumerate(names):
        y0 = top + row * (CELL + gap)
        draw.text((left - 10, y0 + CELL // 2), name, fill="black", font=label_font, anchor="rm")
        idx = np.flatnonzero(y[:, row] if y.ndim == 2 else y == row)[:per_class]
        for col, i in enumerate(idx):
            tile = _cell(images[i])
            canvas.paste(tile, (left + col * (CELL + gap) + (CELL - tile.width) // 2, y0 + (CELL - tile.height) // 2))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def _show(ax: Any, img: np.ndarray) -> None:
    img = np.clip(np.asarray(img, np.float32), 0, 1)
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")


def curves(history: list[dict[str, float]], best_epoch: int | None) -> bytes:
    """Loss, accuracy, learning rate and seconds per epoch; the best epoch marked on each."""
    from matplotlib.ticker import MaxNLocator

    epochs = [int(r["epoch"]) for r in history]
    fig = _figure(11, 6.4)
    axes = fig.subplots(2, 2)
    panels = [
        (axes[0][0], "Loss", "loss (cross-entropy)", [("loss", "train", TRAIN), ("val_loss", "validation", VAL)]),
        (axes[0][1], "Accuracy", "accuracy", [("accuracy", "train", TRAIN), ("val_accuracy", "validation", VAL)]),
        (axes[1][0], "Learning rate", "learning rate", [("learning_rate", "learning rate", TRAIN)]),
        (axes[1][1], "Time per epoch", "seconds", [("seconds", "seconds", TRAIN)]),
    ]
    for ax, title, ylabel, series in panels:
        for key, name, color in series:
            values = [r.get(key) for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", ms=3, color=color,
                        label=name)
        if best_epoch:
            ax.axvline(best_epoch, color="gray", ls="--", lw=1, label=f"best epoch ({best_epoch})")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=9)
    if any(r.get("learning_rate") for r in history):
        axes[1][0].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return _png(fig)


def confusion(cm: np.ndarray, labels: Sequence[str]) -> bytes:
    """Two heatmaps: counts, and each row divided by its total (recall on the diagonal)."""
    cm = np.asarray(cm)
    n = len(labels)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(7.5, max(4.0, 0.45 * n + 1.5))
    fig = _figure(2 * side + 0.8, side + 0.3)
    for ax, data, title, fmt in zip(fig.subplots(1, 2), (cm, norm), ("Counts", "Row-normalised (recall)"),
                                    ("d", ".2f")):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=data.max() if fmt == "d" else 1)
        ticks = [short(c, 8) for c in labels]
        ax.set_xticks(range(n), ticks, rotation=90 if n > 10 or _crowded(ticks, 0.8 * side) else 0)
        ax.set_yticks(range(n), ticks)
        ax.set_xlabel("predicted label")
        ax.set_ylabel("true label")
        ax.set_title(title)
        if n <= 20:  # numbers stay readable up to about 20 classes
            cut = data.max() / 2 if data.max() else 1
            for i in range(n):
                for j in range(n):
                    if fmt == "d" or data[i, j] >= 0.005:  # no "0.00" for a stray image
                        ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=8 if n > 10 else 9,
                                color="white" if data[i, j] > cut else "black")
        fig.colorbar(im, ax=ax, shrink=0.8)
    return _png(fig)


def gallery(images: np.ndarray, titles: Sequence[str], names: Sequence[str], suptitle: str, cols: int = 8,
            overlays: Sequence[np.ndarray] | None = None) -> bytes:
    """Images as the model saw them, each with a title and its file name (and a saliency overlay)."""
    n = len(images)
    rows = max(1, -(-n // cols))
    fig = _figure(1.45 * cols, 2.05 * rows + 0.4)
    grid = fig.subplots(rows, cols, squeeze=False)
    for k in range(rows * cols):
        ax = grid[k // cols][k % cols]
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.set_axis_off()
            continue
        _show(ax, images[k])
        if overlays is not None:
            ax.imshow(overlays[k], cmap="jet", alpha=0.4, vmin=0, vmax=1, interpolation="bilinear",
                      extent=(-0.5, images[k].shape[1] - 0.5, images[k].shape[0] - 0.5, -0.5))
        ax.set_title(titles[k], fontsize=9, color=BAD)
        ax.set_xlabel(short(names[k].rsplit("/", 1)[-1], 16), fontsize=7.5)
    fig.suptitle(suptitle, fontsize=11)
    return _png(fig)


def pr_curves(y: np.ndarray, probs: np.ndarray, labels: Sequence[str], cuts: Sequence[float],
              most: int = 12) -> bytes:
    """Multi-label: the precision-recall curve of each label with a positive (the first ``most``), each
    label's threshold marked."""
    y = np.asarray(y, bool)
    order = [j for j in range(y.shape[1]) if y[:, j].any()][:most]
    fig = _figure(6.4, 4.4)
    ax = fig.subplots()
    for j in order:
        rank = np.argsort(-probs[:, j], kind="stable")
        hits = np.cumsum(y[rank, j])
        precision, recall = hits / np.arange(1, len(rank) + 1), hits / y[:, j].sum()
        line, = ax.plot(recall, precision, lw=1.2, label=short(labels[j]))
        at = int(np.searchsorted(-probs[rank, j], -cuts[j], side="right")) - 1
        if at >= 0:
            ax.plot(recall[at], precision[at], "o", color=line.get_color(), ms=4)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.set_title("Precision-recall per label (dot: the label's threshold)", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    return _png(fig)


TITLE_CHARS = 18  # about what a gallery tile's title holds on a line


def pair_title(given: str, other: str, value: float) -> str:
    """A gallery tile's two-line title: ``given → other`` and a number, each name cut only where it must be."""
    if len(given) + len(other) + 3 <= TITLE_CHARS:
        return f"{given} → {other}\n{value:.2f}"
    return f"{short(given, TITLE_CHARS - 2)} →\n{short(other, TITLE_CHARS - 5)} {value:.2f}"


def misclassified(images: np.ndarray, true: Sequence[str], pred: Sequence[str], conf: Sequence[float],
                  names: Sequence[str], cols: int = 8, overlays: Sequence[np.ndarray] | None = None) -> bytes:
    """A gallery of misclassified images (as the model saw them): true -> predicted (confidence)."""
    titles = [pair_title(t, p, c) for t, p, c in zip(true, pred, conf)]
    return gallery(images, titles, names, "Worst misclassified test images: true → predicted, confidence", cols,
                   overlays)


def _reliability(ax: Any, conf: np.ndarray, correct: np.ndarray, bins: int, title: str) -> float:
    """One reliability diagram on ``ax``; returns its expected calibration error."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip((conf * bins).astype(int), 0, bins - 1)
    acc = np.array([correct[which == b].mean() if np.any(which == b) else np.nan for b in range(bins)])
    mean_conf = np.array([conf[which == b].mean() if np.any(which == b) else np.nan for b in range(bins)])
    count = np.bincount(which, minlength=bins)
    ece = float(np.nansum(count / max(len(conf), 1) * np.abs(acc - mean_conf)))
    centers = (edges[:-1] + edges[1:]) / 2
    ax.bar(centers, np.nan_to_num(acc), width=1 / bins, edgecolor="white", color=TRAIN, label="accuracy in bin")
    ax.plot([0, 1], [0, 1], ls="--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} (ECE {ece:.3f})")
    ax.legend(loc="upper left", framealpha=0.9)  # a frame: tall bars may sit behind it
    return ece


def calibration(probs: np.ndarray, y: np.ndarray, before: np.ndarray | None = None,
                bins: int = 15) -> tuple[bytes, dict[str, Any]]:
    """Confidence histogram (right vs wrong) and reliability diagrams before and after temperature
    scaling (``before``: the uncalibrated probabilities); also the expected calibration errors."""
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    fig = _figure(15 if before is not None else 11, 3.8)
    axes = fig.subplots(1, 3 if before is not None else 2)
    left = axes[0]
    edges = np.linspace(0, 1, bins + 1)
    left.hist([conf[correct], conf[~correct]], bins=edges, stacked=True, color=[TEST, BAD], label=["right", "wrong"])
    left.set_yscale("log")
    left.set_xlabel("confidence of the predicted label")
    left.set_ylabel("test images (log scale)")
    left.set_title("Confidence histogram")
    left.legend(frameon=False)
    out: dict[str, Any] = {}
    if before is not None:
        out["ece_before"] = _reliability(axes[1], before.max(axis=1), before.argmax(axis=1) == y, bins,
                                         "Before temperature scaling")
    out["ece"] = _reliability(axes[-1], conf, correct, bins, "Reliability" if before is None else "After")
    return _png(fig), out


def risk_coverage(table: dict[str, list[float]], marked: float | None = None) -> bytes:
    """Accuracy of the predictions kept against the share kept, as the confidence cut rises."""
    fig = _figure(6.5, 3.8)
    ax = fig.add_subplot()
    ax.plot(table["coverage"], table["precision"], color=TRAIN, marker=".", ms=3)
    if marked is not None and table["threshold"]:
        k = int(np.argmin(np.abs(np.asarray(table["threshold"]) - marked)))
        ax.plot([table["coverage"][k]], [table["precision"][k]], "o", color=BAD,
                label=f"cut {marked:.3f}: {table['coverage'][k]:.1%} kept, {table['precision'][k]:.2%} right")
        ax.legend(frameon=False, loc="lower left")
    ax.set_xlim(0, 1.01)
    ax.set_xlabel("share of test images kept (confidence above the cut)")
    ax.set_ylabel("accuracy of those kept")
    ax.set_title("Risk-coverage")
    ax.grid(alpha=0.3)
    return _png(fig)


EXPLANATION_INCHES = (10, 3.6)  # the explanation figure: three panels side by side
STORED_BYTES = 4096  # png_bytes stores up to this many bytes of pixels uncompressed (a 28x28 RGB view fits)


def explanation(x: np.ndarray, heat: np.ndarray, top: Sequence[tuple[str, float]], title: str) -> bytes:
    """The input as the model saw it, the same with the saliency map over it, and the top-k bars."""
    fig = _figure(*EXPLANATION_INCHES)
    left, mid, right = fig.subplots(1, 3, width_ratios=[1, 1, 1.3])
    for ax in (left, mid):
        ax.set_xticks([])
        ax.set_yticks([])
        _show(ax, x)
    im = mid.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
    fig.colorbar(im, ax=mid, shrink=0.8, label="saliency (relative)")
    left.set_title("what the model saw")
    mid.set_title("saliency")
    names = [short(label, 16) for label, _ in top][::-1]
    right.barh(names, [p for _, p in top][::-1], color=TRAIN)
    right.set_xlim(0, 1)
    right.set_xlabel("probability")
    right.set_title("top-k")
    fig.suptitle(title, fontsize=11)
    return _png(fig)


def png_bytes(img: np.ndarray, level: int = 1) -> bytes:
    """An 8-bit grayscale (H, W) or RGB (H, W, 3) image as PNG: the chunks written here (no filters). Up to
    :data:`STORED_BYTES` of pixels are stored as they are (a deflate stream of one stored block): deflate's
    set-up alone costs more than a small image's whole encoding (measured 15 us against 0.5 us for 28x28),
    for some 600 bytes more. Larger images are compressed with zlib at ``level``. For a small image, a
    fraction of the time of OpenCV's encoder (whose set-up dominates)."""
    img = np.ascontiguousarray(img, np.uint8)
    h, w = img.shape[:2]
    rows = np.zeros((h, 1 + img[0].size), np.uint8)  # each row: filter type 0, then its bytes
    rows[:, 1:] = img.reshape(h, -1)
    raw = rows.tobytes()
    if len(raw) <= STORED_BYTES:  # zlib header (no compression), one final stored block, Adler-32
        data = (b"\x78\x01\x01" + struct.pack("<HH", len(raw), 0xFFFF ^ len(raw)) + raw
                + struct.pack(">I", zlib.adler32(raw)))
    else:
        data = zlib.compress(raw, level)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))
    header = struct.pack(">IIBBBBB", w, h, 8, 0 if img.ndim == 2 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def overlay_png(x: np.ndarray, heat: np.ndarray, scale: int = 4) -> bytes:
    """A small PNG of the image with its saliency map blended in (for the web page), via OpenCV."""
    import cv2

    img = np.clip(np.asarray(x, np.float32), 0, 1)
    rgb = np.repeat(img, 3, axis=2) if img.shape[-1] == 1 else img
    colour = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)[..., ::-1] / 255.0
    blend = (0.55 * rgb + 0.45 * colour) * 255
    h, w = blend.shape[:2]
    big = cv2.resize(blend.astype(np.uint8), (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".png", big[..., ::-1])
    return buf.tobytes()


THUMB = 72  # px: the longer side of the report's thumbnails of files


def thumbnail_png(img: np.ndarray, side: int = THUMB) -> bytes:
    """A small PNG of an image (uint8 gray or RGB), its longer side ``side`` px (small images are enlarged
    with visible pixels), for the report's galleries of files."""
    from PIL import Image

    pil = Image.fromarray(np.asarray(img, np.uint8))
    scale = side / max(pil.size)
    size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
    pil = pil.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()
