"""The report's figures, drawn with matplotlib's Agg renderer and returned as PNG bytes.

Each function takes plain data (arrays, lists, dicts) and returns a PNG; the
report writes the bytes next to ``report.html`` and inlines the same bytes.
Figures are made with ``matplotlib.figure.Figure`` (no pyplot global state).
"""
from __future__ import annotations

import io
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


def _short(label: str, n: int = 12) -> str:
    return label if len(label) <= n else label[:n - 1] + "…"


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
    ax.set_xticks(range(len(labels)), [_short(c) for c in labels], rotation=45 if len(labels) > 12 else 0,
                  ha="right" if len(labels) > 12 else "center")
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.set_title("Images per class and split")
    ax.set_ylim(0, max(bottom.max(), 1) * 1.18)  # room for the legend above the bars
    ax.legend(frameon=False, ncols=3, loc="upper center")
    return _png(fig)


def sample_grid(images: np.ndarray, y: np.ndarray, labels: Sequence[str], per_class: int = 8) -> bytes:
    """Up to ``per_class`` model-input images per class, one row per class (at most 20 classes)."""
    shown = labels[:20]
    fig = _figure(1.2 + 0.9 * per_class, 0.2 + 0.9 * len(shown))
    grid = fig.subplots(len(shown), per_class, squeeze=False)
    for row, name in enumerate(shown):
        idx = np.flatnonzero(y == row)[:per_class]
        for col in range(per_class):
            ax = grid[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(idx):
                _show(ax, images[idx[col]])
        grid[row][0].set_ylabel(_short(name), rotation=0, ha="right", va="center", fontsize=11)
    fig.suptitle("What the model sees: preprocessed training images per class", fontsize=11)
    return _png(fig)


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
        ticks = [_short(c, 8) for c in labels]
        ax.set_xticks(range(n), ticks, rotation=90 if n > 10 else 0)
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


def misclassified(images: np.ndarray, true: Sequence[str], pred: Sequence[str], conf: Sequence[float],
                  names: Sequence[str], cols: int = 8) -> bytes:
    """A gallery of misclassified images (as the model saw them): true -> predicted (confidence)."""
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
        ax.set_title(f"{_short(true[k], 6)} → {_short(pred[k], 6)}\n{conf[k]:.2f}", fontsize=9, color=BAD)
        ax.set_xlabel(_short(names[k].rsplit("/", 1)[-1], 16), fontsize=7.5)
    fig.suptitle("Worst misclassified test images: true → predicted, confidence", fontsize=11)
    return _png(fig)


def calibration(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> tuple[bytes, dict[str, Any]]:
    """Confidence histogram (right vs wrong) and reliability diagram; also the expected calibration error."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, bool)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    acc = np.array([correct[which == b].mean() if np.any(which == b) else np.nan for b in range(bins)])
    mean_conf = np.array([conf[which == b].mean() if np.any(which == b) else np.nan for b in range(bins)])
    count = np.bincount(which, minlength=bins)
    ece = float(np.nansum(count / max(len(conf), 1) * np.abs(acc - mean_conf)))
    fig = _figure(11, 3.8)
    left, right = fig.subplots(1, 2)
    left.hist([conf[correct], conf[~correct]], bins=edges, stacked=True, color=[TEST, BAD],
              label=["right", "wrong"])
    left.set_yscale("log")
    left.set_xlabel("confidence of the predicted label")
    left.set_ylabel("test images (log scale)")
    left.set_title("Confidence histogram")
    left.legend(frameon=False)
    centers = (edges[:-1] + edges[1:]) / 2
    right.bar(centers, np.nan_to_num(acc), width=1 / bins, edgecolor="white", color=TRAIN, label="accuracy in bin")
    right.plot([0, 1], [0, 1], ls="--", color="gray", label="perfect calibration")
    right.set_xlim(0, 1)
    right.set_ylim(0, 1)
    right.set_xlabel("confidence")
    right.set_ylabel("accuracy")
    right.set_title(f"Reliability diagram (ECE {ece:.3f})")
    right.legend(loc="upper left", framealpha=0.9)  # a frame: tall bars may sit behind it
    table = [{"from": float(edges[b]), "to": float(edges[b + 1]), "images": int(count[b]),
              "accuracy": None if np.isnan(acc[b]) else float(acc[b])} for b in range(bins)]
    return _png(fig), {"ece": ece, "bins": table}
