"""Development datasets for ``make bench``: built here, from what every machine has.

Each builder writes an image collection in one of the layouts users have, so the
accuracy table measures the whole pipeline (ingest → auto choices → train), not a
model on ready arrays. All are seeded: the same call writes the same files.

| name | what | layout | why it is here |
|---|---|---|---|
| ``mnist`` | the 70k MNIST PNGs (``make mnist``) | folders, train/ + test/ | the reference |
| ``mnist100`` | 100 MNIST training digits per class; the full 10k test set | folders, train/ + test/ | small data, digits |
| ``sklearn-digits`` | scikit-learn's 1,797 8×8 digits (bundled, no download) | folders | tiny images, small set |
| ``glyphs`` | 20 letters rendered from the installed fonts, dark ink on light paper, 24–48 px; test fonts unseen in training | folders with spaces in labels, train/ + test/ | other polarity, sizes, not digits |
| ``shapes`` | 12 coloured shapes on colour/noise backgrounds, 40–72 px JPEG; colour is part of the class | CSV with odd file names | colour, symmetric classes |
| ``mnist-cluttered`` | the 70k MNIST digits, each rotated and scaled at random, with fragments of other digits and noise around it (cluttered MNIST) | folders, train/ + test/ | medium size, a harder kind where validation matches test: the budget question |
| ``mnist-mosaic`` | 30k 2x2 mosaics of MNIST digits (56 px), labelled with the set of digits present | CSV, labels joined by ``|``, split column | several labels per image |
| ``mnist-mosaic-sparse`` (held out) | 30k mosaics with cells left empty (some images have no label), digits turned, noise | CSV with one 0/1 column per label | several labels, never tuned on |
| ``symbols`` (held out) | 12 symbol characters from the fonts, coloured, on textured colour backgrounds, 32–56 px | file names (``00012_at sign.png``) | never tuned on: reported as is |
"""
from __future__ import annotations

import csv
import math
import subprocess
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

SYMBOL_FONT_WORDS = ("dingbat", "symbol", "d050000l", "math", "awesome", "emoji", "music", "kacst")


# ---------------------------------------------------------------- fonts
def installed_fonts() -> list[str]:
    """Paths of the installed TrueType/OpenType fonts (``fc-list``), symbol fonts left out, sorted."""
    try:
        out = subprocess.run(["fc-list", "--format", "%{file}\n"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    files = {line.strip() for line in out.splitlines() if line.strip().lower().endswith((".ttf", ".otf"))}
    return sorted(f for f in files if not any(w in f.lower() for w in SYMBOL_FONT_WORDS))


def _has_glyphs(font: ImageFont.FreeTypeFont, chars: str) -> bool:
    """True when every char renders as something other than the font's 'missing glyph' box."""
    missing = np.asarray(font.getmask("\U0010fffd"))
    for ch in chars:
        mask = np.asarray(font.getmask(ch))
        if mask.size == 0 or mask.max() == 0 or (mask.shape == missing.shape and np.array_equal(mask, missing)):
            return False
    return True


def usable_fonts(chars: str, size: int = 48) -> list[str]:
    """Installed fonts that have every one of ``chars``."""
    out = []
    for path in installed_fonts():
        try:
            font = ImageFont.truetype(path, size)
        except OSError:
            continue
        if _has_glyphs(font, chars):
            out.append(path)
    return out


def render_glyph(ch: str, font_path: str, rng: np.random.Generator, canvas: int = 96) -> np.ndarray:
    """A float mask (0..1, canvas x canvas) of one character: random scale, rotation and position."""
    font = ImageFont.truetype(font_path, int(canvas * rng.uniform(0.45, 0.75)))
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((0, 0), ch, font=font)
    x = (canvas - (right - left)) / 2 - left + rng.uniform(-0.08, 0.08) * canvas
    y = (canvas - (bottom - top)) / 2 - top + rng.uniform(-0.08, 0.08) * canvas
    draw.text((x, y), ch, fill=255, font=font)
    m = cv2.getRotationMatrix2D((canvas / 2, canvas / 2), rng.uniform(-10, 10), 1.0)
    return cv2.warpAffine(np.asarray(img, np.float32) / 255.0, m, (canvas, canvas))


def _texture(rng: np.random.Generator, side: int, channels: int) -> np.ndarray:
    """A smooth random background (0..1): a colour gradient plus low-frequency blobs and fine noise."""
    yy, xx = np.mgrid[0:side, 0:side] / max(side - 1, 1)
    a, b = rng.random(channels), rng.random(channels)
    angle = rng.uniform(0, 2 * math.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    base = a * (1 - t) + b * t
    blobs = cv2.resize(rng.random((4, 4, channels)).astype(np.float32), (side, side),
                       interpolation=cv2.INTER_CUBIC).reshape(side, side, channels)
    out = 0.7 * base + 0.3 * blobs + rng.normal(0, 0.03, (side, side, channels))
    return np.clip(out, 0, 1)


def _save(path: Path, arr: np.ndarray, quality: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.clip(arr * 255 + 0.5, 0, 255).astype(np.uint8))
    if quality:
        img.save(path, format="JPEG", quality=quality)
    else:
        img.save(path)


# ---------------------------------------------------------------- builders
def build_mnist100(mnist_source: Path, out: Path, per_class: int = 100, seed: int = 0) -> Path:
    """``per_class`` MNIST training digits per class in ``train/``, the full 10k test set in ``test/``."""
    from pipeline.data import mnist

    images, labels = mnist.load_split(mnist_source, "train")
    rng = np.random.default_rng(seed)
    for digit in range(10):
        for i in rng.choice(np.flatnonzero(labels == digit), per_class, replace=False):
            _save(out / "train" / str(digit) / f"{i:05d}.png", images[i] / 255.0)
    images, labels = mnist.load_split(mnist_source, "test")
    for i, (img, lab) in enumerate(zip(images, labels)):
        _save(out / "test" / str(int(lab)) / f"{i:05d}.png", img / 255.0)
    return out


def build_sklearn_digits(out: Path) -> Path:
    """scikit-learn's bundled 8x8 digits (16 gray levels), one folder per digit."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, lab) in enumerate(zip(d.images, d.target)):
        _save(out / str(int(lab)) / f"digit_{i:04d}.png", img / 16.0)
    return out


GLYPHS = {f"upper {c}": c for c in "ABCDEFGHIJ"} | {f"lower {c}": c for c in "abdeghmnrt"}


def build_glyphs(out: Path, train_per_class: int = 500, test_per_class: int = 120, seed: int = 0) -> Path:
    """Letters from the installed fonts as dark ink on light paper, 24-48 px; the test fonts are not in train."""
    rng = np.random.default_rng(seed)
    fonts = usable_fonts("".join(GLYPHS.values()))
    if len(fonts) < 8:
        raise SystemExit(f"glyphs needs at least 8 fonts with Latin letters; found {len(fonts)} (install fonts-*)")
    order = rng.permutation(len(fonts))
    n_test = max(2, len(fonts) // 5)
    groups = {"test": [fonts[i] for i in order[:n_test]], "train": [fonts[i] for i in order[n_test:]]}
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for label, ch in GLYPHS.items():
            for i in range(n):
                mask = render_glyph(ch, groups[split][int(rng.integers(len(groups[split])))], rng)
                side = int(rng.integers(24, 49))
                mask = cv2.resize(mask, (side, side), interpolation=cv2.INTER_AREA)
                paper = rng.uniform(0.7, 1.0) - 0.15 * _texture(rng, side, 1)[..., 0]
                ink = rng.uniform(0.0, 0.3)
                img = paper * (1 - mask) + ink * mask + rng.normal(0, 0.02, mask.shape)
                _save(out / split / label / f"{i:04d}.png", np.clip(img, 0, 1))
    return out


COLOURS = {"red": (0.85, 0.12, 0.1), "orange": (0.95, 0.5, 0.1), "pink": (0.9, 0.35, 0.6)}
SHAPES = ("circle", "square", "triangle", "ring")


def _shape_mask(shape: str, side: int, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((side, side), np.float32)
    c = side / 2 + rng.uniform(-0.15, 0.15, 2) * side
    r = side * rng.uniform(0.14, 0.32)
    centre = (int(c[0]), int(c[1]))
    if shape == "circle":
        cv2.circle(mask, centre, int(r), 1.0, -1, cv2.LINE_AA)
    elif shape == "ring":
        cv2.circle(mask, centre, int(r), 1.0, max(2, int(r / 3)), cv2.LINE_AA)
    else:
        k = 4 if shape == "square" else 3
        a0 = rng.uniform(0, 2 * math.pi)
        pts = np.array([[c[0] + r * math.cos(a0 + 2 * math.pi * j / k), c[1] + r * math.sin(a0 + 2 * math.pi * j / k)]
                        for j in range(k)], np.int32)
        cv2.fillPoly(mask, [pts], 1.0, cv2.LINE_AA)
    return mask


def build_shapes(out: Path, per_class: int = 150, seed: int = 0) -> Path:
    """Coloured shapes on colour/noise backgrounds with a faint distractor shape (JPEG, 40-72 px),
    listed in ``labels.csv``; the class is colour + shape (``red circle``, ``pink_square``...), in
    close colours, so colour matters."""
    rng = np.random.default_rng(seed)
    rows = []
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            label = f"{colour} {shape}" if shape in ("circle", "ring") else f"{colour}_{shape}"
            for i in range(per_class):
                side = int(rng.integers(40, 73))
                bg = 0.35 + 0.5 * _texture(rng, side, 3)
                other = _shape_mask(SHAPES[int(rng.integers(len(SHAPES)))], side, rng)[..., None] * 0.5
                bg = bg * (1 - other) + rng.random(3) * other  # a faint distractor in a random colour
                m = _shape_mask(shape, side, rng)[..., None]
                tint = np.clip(np.array(rgb) + rng.normal(0, 0.1, 3), 0, 1)
                img = np.clip(bg * (1 - m) + tint * m + rng.normal(0, 0.04, m.shape[:2] + (3,)), 0, 1)
                name = f"img {i:04d} ({colour[0]}{shape[:2]}).jpg"
                _save(out / "images" / name, img, quality=int(rng.integers(70, 95)))
                rows.append((f"images/{name}", label))
    order = rng.permutation(len(rows))
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(("file", "label"))
        w.writerows(rows[i] for i in order)
    return out


SYMBOLS = {"at sign": "@", "ampersand": "&", "hash": "#", "dollar": "$", "percent": "%", "question": "?",
           "exclamation": "!", "plus": "+", "equals": "=", "section": "§", "asterisk": "*", "pilcrow": "¶"}


def build_symbols(out: Path, per_class: int = 200, seed: int = 0) -> Path:
    """HELD OUT (never tuned on): coloured symbols from the fonts on textured colour backgrounds,
    32-56 px, the label in the file name after a numeric id (``00012_at sign.png``)."""
    rng = np.random.default_rng(seed + 1000)
    fonts = usable_fonts("".join(SYMBOLS.values()))
    if len(fonts) < 4:
        raise SystemExit(f"symbols needs at least 4 fonts with these symbols; found {len(fonts)}")
    k = 0
    for label, ch in SYMBOLS.items():
        for _ in range(per_class):
            mask = render_glyph(ch, fonts[int(rng.integers(len(fonts)))], rng)
            side = int(rng.integers(32, 57))
            mask = cv2.resize(mask, (side, side), interpolation=cv2.INTER_AREA)[..., None]
            bg = _texture(rng, side, 3)
            ink = rng.random(3)
            while np.abs(ink - bg.mean(axis=(0, 1))).sum() < 0.6:  # legible: ink unlike the background
                ink = rng.random(3)
            _save(out / f"{k:05d}_{label}.png", bg * (1 - mask) + ink * mask)
            k += 1
    return out


def build_noisy_mnist(mnist_source: Path, out: Path, per_class: int = 1000, noise: float = 0.02,
                      seed: int = 0) -> list[tuple[str, str, str]]:
    """``per_class`` MNIST training digits per class in label folders, with ``noise`` of them moved to a
    random wrong class (planted label errors). Returns (path under ``out``, true label, given label)
    of each flipped image; the truth is not written into the dataset."""
    from pipeline.data import mnist

    images, labels = mnist.load_split(mnist_source, "train")
    rng = np.random.default_rng(seed)
    picked = np.concatenate([rng.choice(np.flatnonzero(labels == d), per_class, replace=False) for d in range(10)])
    flip = set(rng.choice(picked, int(round(noise * len(picked))), replace=False).tolist())
    flips = []
    for i in picked.tolist():
        given = int(labels[i])
        if i in flip:
            given = int((given + rng.integers(1, 10)) % 10)
            flips.append((f"{given}/{i:05d}.png", str(int(labels[i])), str(given)))
        _save(out / str(given) / f"{i:05d}.png", images[i] / 255.0)
    return flips


def _turned(digit: np.ndarray, rng: np.random.Generator, side: int) -> np.ndarray:
    """A digit (0..1) rotated by up to 45 degrees and scaled by 0.8-1.15, centred on a ``side`` canvas with
    a small random shift."""
    angle, scale = rng.uniform(-45, 45), rng.uniform(0.8, 1.15)
    shift = rng.uniform(-2, 2, 2)
    m = cv2.getRotationMatrix2D((13.5, 13.5), angle, scale)
    m[:, 2] += (side - 28) / 2 + shift
    return cv2.warpAffine(digit.astype(np.float32), m, (side, side), flags=cv2.INTER_LINEAR)


def _clutter(images: np.ndarray, rng: np.random.Generator, side: int, pieces: int = 3, piece: int = 8
             ) -> np.ndarray:
    """``pieces`` random 8x8 fragments of other digits scattered over a ``side`` canvas, and a little noise."""
    canvas = np.zeros((side, side), np.float32)
    for _ in range(pieces):
        src = images[rng.integers(len(images))] / 255.0
        y, x = rng.integers(4, 28 - piece - 4, 2)
        ty, tx = rng.integers(0, side - piece, 2)
        canvas[ty:ty + piece, tx:tx + piece] = np.maximum(canvas[ty:ty + piece, tx:tx + piece],
                                                          src[y:y + piece, x:x + piece])
    return canvas + rng.uniform(0, 0.1, canvas.shape).astype(np.float32)


def build_mnist_cluttered(mnist_source: Path, out: Path, seed: int = 0) -> Path:
    """All 70k MNIST digits, each turned and scaled at random among fragments of other digits and noise,
    28x28, in ``train/`` and ``test/`` label folders (the original split)."""
    from pipeline.data import mnist

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        images, labels = mnist.load_split(mnist_source, split)
        for i, (img, lab) in enumerate(zip(images, labels)):
            arr = np.maximum(_turned(img / 255.0, rng, 28), _clutter(images, rng, 28))
            _save(out / split / str(int(lab)) / f"{i:05d}.png", np.clip(arr, 0, 1))
    return out


# ---------------------------------------------------------------- several labels per image
MOSAIC_SPLITS = {"train": 24000, "test": 6000}


def build_mnist_mosaic(mnist_source: Path, out: Path, seed: int = 0, held_out: bool = False) -> Path:
    """MNIST digits in a 2x2 mosaic (56x56), labelled with the set of digits present (``labels.csv``: path,
    labels joined by ``|``, split): 24k train and 6k test images, the training mosaics from MNIST's
    training digits and the test mosaics from its test digits. ``held_out``: the variant never tuned on:
    each cell empty with probability 0.35 (some images have no label at all), digits turned and scaled,
    noise, labels as 0/1 columns."""
    from pipeline.data import mnist

    rng = np.random.default_rng(seed + (1000 if held_out else 0))
    rows = []
    for split, n in MOSAIC_SPLITS.items():
        images, labels = mnist.load_split(mnist_source, split)
        for i in range(n):
            picks = rng.integers(len(images), size=4)
            present = rng.random(4) >= 0.35 if held_out else np.ones(4, bool)
            canvas = np.zeros((56, 56), np.float32)
            for cell, (k, here) in enumerate(zip(picks, present)):
                if here:
                    digit = _turned(images[k] / 255.0, rng, 28) if held_out else images[k] / 255.0
                    y, x = divmod(cell, 2)
                    canvas[28 * y:28 * y + 28, 28 * x:28 * x + 28] = digit
            if held_out:
                canvas = np.clip(canvas + rng.uniform(0, 0.12, canvas.shape), 0, 1)
            name = f"{split}/{i:05d}.png"
            _save(out / name, canvas)
            rows.append((name, sorted({str(int(labels[k])) for k, h in zip(picks, present) if h}), split))
    _mosaic_table(out / "labels.csv", rows, flags=held_out)
    return out / "labels.csv"


def _mosaic_table(path: Path, rows: list[tuple[str, list[str], str]], flags: bool) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        if flags:
            w.writerow(["path", *[f"digit {d}" for d in range(10)], "split"])
            w.writerows([name, *[int(str(d) in labs) for d in range(10)], split] for name, labs, split in rows)
        else:
            w.writerow(["path", "label", "split"])
            w.writerows([name, "|".join(labs), split] for name, labs, split in rows)


LETTERS = "ABCDEFGHJKLMNPQRTUVWXYabcdefhkmnprtuvwy"  # letters; the few that are digit look-alikes are left out (O I S Z)


def _photos(rng: np.random.Generator, n: int, side: int) -> list[np.ndarray]:
    """Random crops of scikit-learn's two bundled photos, at random scales (RGB uint8)."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    out = []
    for _ in range(n):
        img = photos[int(rng.integers(len(photos)))]
        size = int(rng.integers(40, min(img.shape[:2])))
        y, x = rng.integers(0, img.shape[0] - size), rng.integers(0, img.shape[1] - size)
        out.append(cv2.resize(img[y:y + size, x:x + size], (side, side), interpolation=cv2.INTER_AREA))
    return out


def _noise(rng: np.random.Generator, n: int, side: int) -> list[np.ndarray]:
    """Uniform, Gaussian and smoothed noise (gray uint8)."""
    out = []
    for k in range(n):
        raw = rng.random((side, side)).astype(np.float32)
        if k % 3 == 1:
            raw = np.clip(rng.normal(0.5, 0.2, (side, side)), 0, 1).astype(np.float32)
        elif k % 3 == 2:
            raw = cv2.GaussianBlur(raw, (0, 0), float(rng.uniform(1, 4)))
            raw = (raw - raw.min()) / max(float(np.ptp(raw)), 1e-6)
        out.append((raw * 255).astype(np.uint8))
    return out


CLOTHING = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def clothing_image(kind: str, rng: np.random.Generator, side: int = 28) -> np.ndarray:
    """A Fashion-MNIST-like silhouette, light on black: garments and bags are left-right
    symmetric, shoes point left (as in Fashion-MNIST)."""
    s = side / 28.0
    img = np.zeros((side, side), np.float32)

    def poly(pts):
        cv2.fillPoly(img, [np.array([[(x + rng.uniform(-1, 1)) * s, (y + rng.uniform(-1, 1)) * s]
                                     for x, y in pts], np.int32)], 1.0)

    if kind in ("tshirt", "shirt", "pullover", "coat"):
        cuff = 22 if kind in ("pullover", "coat") else 10
        poly([(9, 4), (19, 4), (19, 26 if kind == "coat" else 24), (9, 26 if kind == "coat" else 24)])
        poly([(9, 4), (3, cuff), (6, cuff + 2), (9, 9)])
        poly([(19, 4), (25, cuff), (22, cuff + 2), (19, 9)])
        if kind == "shirt":
            cv2.line(img, (int(14 * s), int(4 * s)), (int(14 * s), int(24 * s)), 0.4, 1)
    elif kind == "trouser":
        poly([(8, 3), (20, 3), (20, 8), (8, 8)])
        poly([(8, 8), (13, 8), (12, 26), (8, 26)])
        poly([(15, 8), (20, 8), (20, 26), (16, 26)])
    elif kind == "dress":
        poly([(11, 3), (17, 3), (23, 26), (5, 26)])
    elif kind == "bag":
        poly([(5, 10), (23, 10), (23, 24), (5, 24)])
        cv2.ellipse(img, (int(14 * s), int(10 * s)), (int(5 * s), int(5 * s)), 0, 180, 360, 1.0, max(1, int(2 * s)))
    elif kind == "sneaker":
        poly([(2, 18), (14, 14), (20, 10), (26, 11), (26, 22), (2, 22)])
    elif kind == "sandal":
        poly([(2, 20), (26, 17), (26, 22), (2, 23)])
        poly([(8, 20), (12, 12), (14, 12), (11, 20)])
        poly([(18, 18), (21, 11), (23, 11), (22, 18)])
    else:  # boot
        poly([(12, 2), (24, 2), (25, 24), (2, 24), (3, 18), (12, 15)])
    texture = 0.6 + 0.4 * cv2.GaussianBlur(rng.random((side, side)).astype(np.float32), (0, 0), 1.5)
    return np.clip(img * texture * 255, 0, 255).astype(np.uint8)


def build_ood(out: Path, per_kind: int = 1000, seed: int = 0) -> Path:
    """Images of other kinds than digits, one folder per kind, as files a user would have:
    ``letters`` (fonts, dark ink on paper, 64 px), ``photos`` (crops of photos, 64 px colour),
    ``noise`` (28 px), ``clothing`` (Fashion-MNIST-like silhouettes, light on black, 28 px) and
    symbols and Greek letters (from the fonts, like ``letters``: a kind kept aside when the
    novelty detector was designed, never tuned on)."""
    rng = np.random.default_rng(seed + 2000)
    fonts = usable_fonts(LETTERS)
    for i in range(per_kind):
        mask = render_glyph(LETTERS[i % len(LETTERS)], fonts[int(rng.integers(len(fonts)))], rng)
        paper = 0.95 - 0.1 * rng.random()
        _save(out / "letters" / f"{i:04d}.png", cv2.resize(paper * (1 - mask), (64, 64), interpolation=cv2.INTER_AREA))
    for i, img in enumerate(_photos(rng, per_kind, 64)):
        _save(out / "photos" / f"{i:04d}.png", img / 255.0)
    for i, img in enumerate(_noise(rng, per_kind, 28)):
        _save(out / "noise" / f"{i:04d}.png", img / 255.0)
    for i in range(per_kind):
        _save(out / "clothing" / f"{i:04d}.png", clothing_image(CLOTHING[i % len(CLOTHING)], rng) / 255.0)
    build_marks(out / MARKS_KIND, per_kind, seed)
    return out


MARKS = ("#$%&*+<=>?@{}~", "αβγδζηθλμξπσφψωΓΔΘΛΞΠΣΦΨΩ")  # each group from the fonts that have all of it
MARKS_KIND = "symbols and Greek (held out)"


def build_marks(out: Path, n: int = 1000, seed: int = 0) -> Path:
    """Punctuation and Greek letters rendered from the installed fonts, dark ink on paper, 64 px."""
    rng = np.random.default_rng(seed + 3000)
    groups = [(chars, usable_fonts(chars)) for chars in MARKS]
    groups = [(chars, fonts) for chars, fonts in groups if fonts]
    for i in range(n if groups else 0):
        chars, fonts = groups[i % len(groups)]
        mask = render_glyph(chars[(i // len(groups)) % len(chars)], fonts[int(rng.integers(len(fonts)))], rng)
        paper = 0.95 - 0.1 * rng.random()
        _save(out / f"{i:04d}.png", cv2.resize(paper * (1 - mask), (64, 64), interpolation=cv2.INTER_AREA))
    return out
