"""What the data looks like, and the preprocessing and augmentation it calls for ("auto").

Before decoding everything, prepare decodes a seeded sample of the files (all of
them when there are at most :data:`SAMPLE`) and records, per file, its size,
whether its content is gray, its polarity (light on dark, dark on light, or no
clear background), its border's gray level and, for a transparent image, the gray level of its
ink. :func:`resolve` turns that census into the settings
``color``, ``size``, ``invert`` and ``background`` = ``"auto"`` stand for, each with the reason,
for the log, ``dataset.json`` and the bundle. After the split, :func:`symmetry`
decides ``[augment] hflip = "auto"`` from the training images' class means.
Pure functions: numbers in, choices out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.shared.params import AUTO, SIZE_BOUNDS, PreprocessParams

SAMPLE = 500          # files decoded for the census
MIXED_POLARITY = 0.1  # invert per image when the minority polarity is at least this share
SYMMETRIC = 0.7       # a class is mirror-symmetric when its mean image correlates this well with its mirror
SYMMETRIC_SHARE = 2 / 3  # ... and flips are safe when this share of the classes is
SYMMETRY_IMAGES = 5  # a class with fewer training images has no say (its mean is a drawing or two, not the class)


@dataclass(frozen=True)
class Facts:
    """What the census learned about one file."""

    width: int
    height: int
    gray: bool
    polarity: int  # +1 light on dark, -1 dark on light, 0 unclear
    paper: float = 0.0       # the gray level of its border
    ink: int | None = None   # a transparent image: the gray level of its opaque parts


def sample(n: int, seed: int, size: int = SAMPLE) -> np.ndarray:
    """Indices of the files the census decodes: all of them, or a seeded sample (sorted)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def _color(cfg: PreprocessParams, facts: list[Facts]) -> tuple[str, str]:
    if cfg.color != AUTO:
        return cfg.color, "set in params"
    if cfg.normalize == "mnist":
        return "grayscale", "normalize = 'mnist' works on gray images"
    colour = sum(not f.gray for f in facts)
    if colour == 0:
        return "grayscale", f"all {len(facts)} images looked at are gray"
    return "rgb", f"{colour} of {len(facts)} images looked at have colour"


STRETCHED = 1.25  # an image whose aspect differs from the size's by more than this is visibly distorted by stretch
STRETCHED_SHARE = 0.2  # ... and when this share of the images looked at are, the size's reason says so


def _stretched(cfg: PreprocessParams, size: tuple[int, int], facts: list[Facts]) -> str:
    """A note when ``resize = "stretch"`` distorts many images (their aspect far from the size's), else ""."""
    if cfg.resize != "stretch" or not facts:
        return ""
    target = size[1] / size[0]
    ratio = np.array([max(f.width, 1) / max(f.height, 1) / target for f in facts])
    far = float(np.mean(np.maximum(ratio, 1 / ratio) > STRETCHED))
    if far < STRETCHED_SHARE:
        return ""
    return (f"; {far:.0%} of the images looked at have another aspect, and resize = \"stretch\" distorts them: "
            "resize = \"pad\" or \"crop\" keeps each image's aspect")


def _size(cfg: PreprocessParams, facts: list[Facts]) -> tuple[tuple[int, int], str]:
    if cfg.size != AUTO:
        return (int(cfg.size[0]), int(cfg.size[1])), "set in params"
    h = int(np.median([f.height for f in facts]))
    w = int(np.median([f.width for f in facts]))
    size = fit_size(h, w)
    lo, hi = SIZE_BOUNDS
    return size, (f"median image {h} px high, {w} wide, scaled to within {lo}..{hi} px a side keeping the median's "
                  "aspect" + _stretched(cfg, size, facts))


def fit_size(h: int, w: int) -> tuple[int, int]:
    """(height, width) of an h x w image scaled as a whole so that its sides lie within SIZE_BOUNDS: its
    longer side down to the upper bound, its shorter one up to the lower bound (so a 600x300 median image
    gives 32x64, not a 64x64 squeezed to a square); only an aspect beyond the bounds' ratio is cut."""
    lo, hi = SIZE_BOUNDS
    h, w = max(h, 1), max(w, 1)
    f = min(1.0, hi / max(h, w))
    f = max(f, lo / min(h, w))
    return int(np.clip(round(h * f), lo, hi)), int(np.clip(round(w * f), lo, hi))


def _invert(cfg: PreprocessParams, color: str, facts: list[Facts]) -> tuple[str, str]:
    if cfg.invert != AUTO:
        return cfg.invert, "set in params"
    if color != "grayscale":
        return "false", "colour images: polarity is left as it is"
    light, dark = sum(f.polarity > 0 for f in facts), sum(f.polarity < 0 for f in facts)
    counts = f"{light} light on dark, {dark} dark on light, {len(facts) - light - dark} unclear"
    clear = light + dark
    if clear < len(facts) / 2:
        return "false", f"most images have no clear background ({counts})"
    if min(light, dark) >= MIXED_POLARITY * clear:
        return "per-image", f"polarity varies ({counts}): each image is turned light on dark"
    return "false", f"one polarity ({counts})"


CONTRAST = 64  # transparent images go onto the opaque images' paper only when their ink stands out from it


def _background(cfg: PreprocessParams, facts: list[Facts]) -> tuple[int, str]:
    """The gray level under transparent parts (and padding): the paper of the opaque images, else the
    level that contrasts with the transparent images' ink."""
    if cfg.background != AUTO:
        return int(cfg.background), "set in params"
    papers = [f.paper for f in facts if f.ink is None and f.polarity != 0]
    inks = [f.ink for f in facts if f.ink is not None]
    ink = float(np.median(inks)) if inks else None
    if papers:
        level = int(round(float(np.median(papers))))
        if ink is None:
            return level, f"the paper of the {len(papers)} opaque images with a clear background"
        if abs(level - ink) >= CONTRAST:
            return level, (f"the paper of the {len(papers)} opaque images, under the ink (gray {ink:.0f}) of "
                           f"the {len(inks)} transparent one(s)")
    if ink is not None:
        return (255 if ink < 128 else 0), (f"contrasts with the ink (gray {ink:.0f}) of the {len(inks)} transparent "
                                           "image(s)")
    return 0, "no transparent images, no clear paper: black padding"


def resolve(cfg: PreprocessParams, facts: list[Facts]) -> tuple[PreprocessParams, dict[str, dict[str, Any]]]:
    """The settings ``"auto"`` stands for, and for each the value and the reason (for the record)."""
    looked = facts or [Facts(28, 28, True, 0)]  # nothing decodable: the stage reports that; keep a valid config
    color, why_color = _color(cfg, looked)
    size, why_size = _size(cfg, looked)
    invert, why_invert = _invert(cfg, color, looked)
    background, why_background = _background(cfg, looked)
    whys = {"color": why_color, "size": why_size, "invert": why_invert, "background": why_background}
    if not facts:  # not a census of an image that is not there
        whys = {key: why if why == "set in params" else "no image could be looked at: the default"
                for key, why in whys.items()}
    values = {"color": color, "size": list(size), "invert": invert, "background": background}
    choices = {**{key: {"value": values[key], "why": whys[key]} for key in values},
               "census": {"images": len(facts), "transparent": sum(f.ink is not None for f in facts)}}
    return replace(cfg, color=color, size=size, invert=invert, background=background), choices


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-12 else 1.0


def class_means(x: np.ndarray, y: np.ndarray, n_classes: int, chunk: int = 8192) -> np.ndarray:
    """Mean image of each class, or of each label's positives when ``y`` is multi-hot (a chunk at a time:
    ``x`` may be memory-mapped and large). Rows labelled -1 (or with no label set) are left out.

    Each chunk's sums are one float32 matrix product of its class indicators with its rows (a seventh of
    the time of float64 sums by class), added up over the chunks in float64."""
    sums = np.zeros((n_classes, int(np.prod(x.shape[1:]))), np.float64)
    counts = np.zeros(n_classes, np.int64)
    for i in range(0, len(x), chunk):
        yb = np.asarray(y[i:i + chunk])
        if not len(yb):
            continue
        if yb.ndim == 2:
            member = yb.T.astype(np.float32)
        else:
            ok = np.flatnonzero(yb >= 0)
            member = np.zeros((n_classes, len(yb)), np.float32)
            member[yb[ok], ok] = 1
        sums += member @ np.asarray(x[i:i + chunk], np.float32).reshape(len(yb), -1)
        counts += member.sum(axis=1).astype(np.int64)
    return (sums / np.maximum(counts, 1)[:, None]).reshape(n_classes, *x.shape[1:])


class _Rows:
    """A .npy file's rows read on demand with plain reads (no memory map: its pages never count as
    the reader's memory), enough of an array for :func:`class_means`."""

    def __init__(self, path: str) -> None:
        head = np.load(path, mmap_mode="r", allow_pickle=False)
        self.path, self.shape, self.dtype = path, head.shape, head.dtype
        self.offset = head.offset if hasattr(head, "offset") else 0
        self.row = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self.ndim = len(self.shape)
        del head

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + start * self.row)
            data = fh.read(max(stop - start, 0) * self.row)
        return np.frombuffer(data, self.dtype).reshape((-1,) + self.shape[1:])


def symmetry_of(x_path: str, y_path: str, labels: list[str]) -> dict[str, Any]:
    """:func:`symmetry` of the prepared training arrays in these .npy files, read a chunk at a time
    (prepare runs it in an idle decoding worker, on the rows labelled 0 or more)."""
    return symmetry(_Rows(x_path), np.load(y_path, allow_pickle=False), labels)  # type: ignore[arg-type]


def symmetry(x: np.ndarray, y: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Are horizontal flips label-preserving here? From the training images' class means.

    A class is mirror-symmetric when its mean image (less the mean of all classes; of two classes, less
    their mean level) correlates with its own mirror image at least :data:`SYMMETRIC`. Flips are safe when
    most classes are (:data:`SYMMETRIC_SHARE`) and no class's mirror looks more like
    another class than itself (a mirrored ``b`` is a ``d``). Digits and letters: no;
    clothing, objects, shapes seen from the front: yes.
    """
    y = np.asarray(y)
    if y.ndim == 2:  # multi-label: every label's positives, each label a class (a flip must suit them all)
        present = np.flatnonzero(y.sum(axis=0) > 0)
    else:
        present = np.unique(y[y >= 0]) if len(y) else np.array([], int)
    if len(present) < 2:
        return {"hflip": False, "why": "fewer than 2 classes with training images", "per_class": {}}
    counts = y.sum(axis=0) if y.ndim == 2 else np.bincount(y[y >= 0], minlength=len(labels))
    present = present[counts[present] >= SYMMETRY_IMAGES]
    if len(present) < 2:
        return {"hflip": False, "per_class": {},
                "why": f"fewer than 2 classes with {SYMMETRY_IMAGES} training images or more: too few to judge"}
    means = class_means(x, y, len(labels))[present]
    # less what all classes share (the background, a frame); of two classes that leaves each the other's
    # negative, one verdict for both: then less their mean level only
    centred = means - (means.mean(axis=0) if len(present) > 2 else means.mean())
    mirrored = centred[:, :, ::-1]
    per_class, turns_into = {}, {}
    for k, c in enumerate(present):
        per_class[labels[c]] = round(_corr(centred[k], mirrored[k]), 3)
        like = [_corr(mirrored[k], centred[j]) for j in range(len(present))]
        nearest = int(np.argmax(like))
        # A mirror that is clearly another class (b -> d), not just a little nearer to it.
        if nearest != k and like[nearest] >= SYMMETRIC and like[nearest] - like[k] >= 0.1:
            turns_into[labels[c]] = labels[present[nearest]]
    n_sym = sum(v >= SYMMETRIC for v in per_class.values())
    share = n_sym / len(per_class)
    need = 1.0 if y.ndim == 2 else SYMMETRIC_SHARE  # multi-label: one flip turns every label of an image
    if turns_into:
        why = "a mirrored class looks like another: " + ", ".join(f"{a} -> {b}" for a, b in turns_into.items())
    elif share >= need:
        why = f"{n_sym} of {len(per_class)} classes are mirror-symmetric"
    else:
        why = (f"only {n_sym} of {len(per_class)} classes are mirror-symmetric; flips need "
               f"{'all' if need == 1 else f'at least {math.ceil(need * len(per_class) - 1e-9)}'} of them")
    return {"hflip": bool(share >= need and not turns_into), "why": why,
            "symmetric_classes": n_sym, "per_class": per_class, "mirror_looks_like": turns_into}
