"""Decoding and preprocessing: the one function that turns a file into model input.

Prepare, evaluate and apply all call :func:`load_image` with the preprocessing
config stored in the model bundle, so an image is seen the same way everywhere.
Order: decode (content-detected, first frame, EXIF orientation) -> mode
conversion (16-bit scaled, alpha composited on ``background``, palette
expanded) -> colour (grayscale | rgb) -> resize -> scale to [0, 1].

Transparent parts are composited onto the gray level ``background``, which prepare
chooses from the data (``"auto"``: the paper of the dataset's opaque images, else a level
that contrasts with the ink of the transparent ones, :mod:`pipeline.data.census`), so dark
ink on a transparent background never turns into dark ink on black.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.data import quality, similar
from pipeline.shared.errors import UserError
from pipeline.shared.params import PreprocessParams

# Pillow's decompression-bomb limit stays on; its warning (between 1x and 2x the
# limit) is promoted to an error so such files are rejected, never decoded.
_BOMB = (Image.DecompressionBombWarning, Image.DecompressionBombError)


# Formats we read (detected from content). Others that Pillow knows (EPS, PSD,
# ICO, ...) are reported as unsupported before any pixel is decoded.
FORMATS = ("PNG", "JPEG", "MPO", "BMP", "DIB", "GIF", "TIFF", "WEBP")


# What each image extension should contain (for reporting mismatches only:
# files are always read by content).
EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".bmp": "BMP", ".dib": "BMP",
              ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}


class ImageError(UserError):
    """A file that cannot be used as an image; ``str()`` is the reason reported."""


@dataclass(frozen=True, slots=True)  # slots: one per file, a million of them
class Meta:
    """What decoding learned about one usable file (the audit's facts).

    ``phash`` and ``thumb`` (a perceptual hash and a 16x16 gray thumbnail of the image's
    canonical view, :mod:`pipeline.data.similar`) and ``stats`` (its quality statistics,
    :data:`pipeline.data.quality.STATS`) are filled in by prepare's workers for the copy,
    outlier and quality checks; other callers leave them empty.
    """

    width: int
    height: int
    mode: str
    format: str
    sha1: str
    phash: int = 0
    thumb: bytes = b""
    alpha: bool = False  # the file has transparent parts (composited onto the background)
    stats: tuple[float, ...] = ()


@dataclass(frozen=True)
class Decoded:
    """A decoded image (uint8 HxW or HxWx3), its :class:`Meta`, and for a transparent image the gray
    level of its opaque parts (its ink; the census chooses the background from it)."""

    array: np.ndarray
    meta: Meta
    ink: int | None = None
    stat: tuple[int, int] | None = None  # the file's (size, mtime in ns) when read, for fingerprints


def read_source(source: str | os.PathLike | bytes) -> tuple[bytes, tuple[int, int] | None]:
    """The file's bytes, and its (size, mtime in ns) as read (None for bytes given): a stage's
    fingerprint takes them from here instead of a second stat of every file."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None
    try:  # read-only: user files are never written; os-level calls, twice as fast as open() for small files
        fd = os.open(source, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            size = st.st_size
            chunks = [os.read(fd, size + 1)]
            while chunks[-1] and (len(chunks) > 1 or len(chunks[0]) > size):  # it grew, or its size is unknown
                chunks.append(os.read(fd, 1 << 20))
        finally:
            os.close(fd)
    except OSError as exc:
        raise ImageError(f"unreadable file: {exc.strerror or exc}") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks), (size, st.st_mtime_ns)


_PNG_SIG = b"\x89PNG\r\n\x1a\n"


GRAY_BLOCK = 1 << 18  # pixels converted at once: a large image in bounded memory, each block in the CPU's cache


def _pil_gray(rgb: np.ndarray) -> np.ndarray:
    """RGB -> L exactly as Pillow's ``convert("L")`` computes it (ITU-R 601-2, fixed point); a large
    image a block of rows at a time (an 88-megapixel one took 2 GB and 8 s at once; 0.6 s so)."""
    h, w = rgb.shape[:2]
    out = np.empty((h, w), np.uint8)
    step = max(1, GRAY_BLOCK // w)
    for top in range(0, h, step):
        block = rgb[top:top + step]
        acc = block[..., 0] * np.uint32(19595)
        acc += block[..., 1] * np.uint32(38470)
        acc += block[..., 2] * np.uint32(7471)
        acc += 0x8000
        acc >>= 16
        out[top:top + step] = acc
    return out


def _fast_png(data: bytes, cfg: PreprocessParams, stat: tuple[int, int] | None = None) -> Decoded | None:
    """Decode a plain 8-bit gray/RGB PNG with OpenCV (3-4x faster than Pillow); None if not plain
    (:func:`plain_png`)."""
    plain = plain_png(data, cfg)
    if plain is None:
        return None
    arr, w, h, mode = plain
    return Decoded(arr, Meta(w, h, mode, "PNG", hashlib.sha1(data).hexdigest()), stat=stat)


def plain_png(data: bytes, cfg: PreprocessParams) -> tuple[np.ndarray, int, int, str] | None:
    """(array, width, height, mode) of a plain 8-bit gray/RGB PNG decoded with OpenCV; None if not plain.

    Only files whose result is provably identical to the Pillow path qualify:
    no transparency, no EXIF, no palette, 8-bit; limits are checked the same way.
    Anything else (or any decoding trouble) goes through Pillow, which gives the reasons.
    """
    if len(data) < 33 or not data.startswith(_PNG_SIG) or data[12:16] != b"IHDR":
        return None
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    if depth != 8 or ctype not in (0, 2) or b"tRNS" in data or b"eXIf" in data:
        return None
    if not (cfg.min_side <= min(w, h) and max(w, h) <= cfg.max_side) or w * h > Image.MAX_IMAGE_PIXELS:
        return None  # let the Pillow path report it with its exact reason
    # as stored: gray stays one channel, RGB comes as BGR (no alpha, no EXIF: as the two flags that name them
    # would give, a sixth sooner than IMREAD_GRAYSCALE on a small gray image)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.shape[:2] != (h, w):
        return None
    if ctype == 2:  # OpenCV's BGR: gray straight from its channels reversed (a view), else RGB
        arr = arr[..., ::-1] if cfg.color == "grayscale" else cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    return in_colour(arr, cfg), w, h, "L" if ctype == 0 else "RGB"


def in_colour(arr: np.ndarray, cfg: PreprocessParams) -> np.ndarray:
    """A plain PNG's pixels as decoded (gray, or RGB) in the colour ``cfg`` asks for, as Pillow's path gives it."""
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2) if cfg.color == "rgb" else arr
    return _pil_gray(arr) if cfg.color == "grayscale" else arr


def decode_file(source: str | os.PathLike | bytes, cfg: PreprocessParams, draft: int = 0) -> Decoded:
    """Decode a file (path or bytes) with all checks; raise ImageError with the reason. ``draft`` (for display
    only, never a model's input): a JPEG may come out smaller, down to this many px a side (decoded at a
    half, quarter or eighth of its scale: a 12-megapixel photo's thumbnail 4-8x sooner)."""
    data, stat = read_source(source)
    return decode_read(data, stat, source, cfg, draft)


def decode_read(data: bytes, stat: tuple[int, int] | None, source: str | os.PathLike | bytes,
                cfg: PreprocessParams, draft: int = 0) -> Decoded:
    """:func:`decode_file` of a file's bytes already read (``source``: where from, for the reasons)."""
    return _fast_png(data, cfg, stat) or decode_pillow(data, stat, source, cfg, draft)


def decode_pillow(data: bytes, stat: tuple[int, int] | None, source: str | os.PathLike | bytes,
                  cfg: PreprocessParams, draft: int = 0) -> Decoded:
    """:func:`decode_read` through Pillow, for bytes that are not a plain PNG (:func:`plain_png`)."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, mode, (w, h) = img.format or "?", img.mode, img.size
                if fmt not in FORMATS:
                    raise ImageError(f"unsupported image format: {fmt}")
                if min(w, h) < cfg.min_side:
                    raise ImageError(f"too small: {w}x{h} px (min_side {cfg.min_side})")
                if max(w, h) > cfg.max_side:
                    raise ImageError(f"too large: {w}x{h} px (max_side {cfg.max_side})")
                if draft and fmt in ("JPEG", "MPO"):
                    img.draft(img.mode, (draft, draft))
                img.load()
                # EXIF orientation (cheap test first: most files carry no EXIF at all)
                if "exif" in img.info or fmt in ("TIFF", "MPO"):
                    img = ImageOps.exif_transpose(img)
                arr, ink = _to_array(img, cfg.color, cfg.background)
    except ImageError:
        raise
    except _BOMB as exc:  # Pillow names twice its limit above it: the one limit said here, and the image's size
        size = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageError(f"decompression bomb refused: {int(size.group(1)) if size else 'too many'} pixels, over the "
                         f"limit of {Image.MAX_IMAGE_PIXELS} (a small file that would take that much memory)") from None
    except UnidentifiedImageError:
        ext = Path(os.fspath(source)).suffix.lower() if isinstance(source, (str, os.PathLike)) else ""
        if ext in EXTENSIONS:
            raise ImageError(f"not an image: the content does not match its {ext} extension") from None
        raise ImageError(f"not an image (a {ext} file)" if ext else "not an image (content not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error,
            ZeroDivisionError) as exc:
        # Pillow's plugins raise any of these on malformed data.
        if "truncated" in str(exc).lower() or isinstance(exc, EOFError):
            raise ImageError("truncated image: the file ends before its pixels do (an interrupted copy or "
                             "download?)") from None
        raise ImageError(f"corrupt image: {exc}") from None
    return Decoded(arr, Meta(w, h, mode, fmt, hashlib.sha1(data).hexdigest(), alpha=ink is not None), ink, stat)


def decode(source: str | os.PathLike | bytes, color: str = "grayscale", background: int | str = "auto") -> np.ndarray:
    """Decode a file to uint8 HxW (grayscale) or HxWx3 (rgb) with default limits; raise ImageError."""
    return decode_file(source, PreprocessParams(color=color, background=background, min_side=1)).array


def _composite(img: Image.Image, background: int | str) -> tuple[Image.Image, int | None]:
    """An image with an alpha channel composited onto a gray background: the given level, or
    (``"auto"``, an unresolved config) one that contrasts with this image's ink; and the ink's gray
    level (None when nothing in it is transparent)."""
    rgba = img.convert("RGBA")
    arr = np.asarray(rgba)
    if arr[..., 3].min() == 255:  # an alpha channel with nothing transparent: nothing to composite
        return rgba.convert("RGB"), None
    opaque = arr[..., 3] >= 128
    ink = int(np.median(_pil_gray(arr[..., :3])[opaque])) if opaque.any() else 0
    if background == "auto":
        background = 255 if ink < 128 else 0
    canvas = Image.new("RGBA", rgba.size, (background, background, background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB"), ink


def _to_array(img: Image.Image, color: str, background: int | str) -> tuple[np.ndarray, int | None]:
    """Convert any Pillow mode to uint8 L or RGB; and, for a transparent image, its ink's gray level."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit and 32-bit integer images are scaled from the 16-bit range;
        # float images are taken as [0, 1] when they fit, else clipped.
        if img.mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        elif img.mode != "F":
            arr = arr / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    ink = None
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        img, ink = _composite(img, background)
    target = "L" if color == "grayscale" else "RGB"
    if img.mode != target:
        img = img.convert(target)
    return np.asarray(img, dtype=np.uint8).copy(), ink


def _interpolation(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> int:
    """Area averaging when shrinking (no aliasing), bilinear when enlarging."""
    return cv2.INTER_AREA if dst_hw[0] * dst_hw[1] < src_hw[0] * src_hw[1] else cv2.INTER_LINEAR


def _resize(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    h, w = size_hw
    if img.shape[:2] == (h, w):
        return img
    return cv2.resize(img, (w, h), interpolation=_interpolation(img.shape[:2], (h, w)))


def resize(img: np.ndarray, size_hw: tuple[int, int], mode: str, background: int | str = 0) -> np.ndarray:
    """Resize to ``size_hw`` by stretching, padding (keep aspect) or centre-cropping."""
    h, w = size_hw
    ih, iw = img.shape[:2]
    if mode == "stretch":
        return _resize(img, (h, w))
    scale = min(h / ih, w / iw) if mode == "pad" else max(h / ih, w / iw)
    nh, nw = max(1, round(ih * scale)), max(1, round(iw * scale))
    scaled = _resize(img, (nh, nw))
    if mode == "pad":
        out = np.full((h, w) + img.shape[2:], 0 if background == "auto" else background, dtype=img.dtype)
        top, left = (h - nh) // 2, (w - nw) // 2
        out[top:top + nh, left:left + nw] = scaled
        return out
    top, left = (nh - h) // 2, (nw - w) // 2
    return scaled[top:top + h, left:left + w]


def _border(gray: np.ndarray) -> np.ndarray:
    """The pixels of the outer tenth of the image on each side."""
    h, w = gray.shape[:2]
    b = max(1, min(h, w) // 10)
    return np.concatenate([gray[:b].ravel(), gray[-b:].ravel(), gray[:, :b].ravel(), gray[:, -b:].ravel()])


def border_level(gray: np.ndarray) -> float:
    """The median gray level of the image's border: its paper, when it has one."""
    border = _border(gray)
    return float(np.partition(border, len(border) // 2)[len(border) // 2])


def is_dark_on_light(gray: np.ndarray) -> bool:
    """Polarity: True when the background (the border) is lighter than the image on average,
    i.e. dark ink on light paper. Ink pulls the mean away from the paper's level."""
    return border_level(gray) > float(cv2.mean(gray)[0])


def polarity(gray: np.ndarray) -> int:
    """+1: light content on a darker, even background (like MNIST); -1: dark on light (ink on
    paper); 0: no clear background (e.g. a photo), where polarity means nothing."""
    lo, med, hi = np.percentile(_border(gray), (10, 50, 90))
    mean = float(cv2.mean(gray)[0])
    if hi - lo > 48 or abs(med - mean) < 4:  # an uneven border, or nothing stands out from it
        return 0
    return 1 if med < mean else -1


def is_gray_content(img: np.ndarray) -> bool:
    """True for a gray image, also one stored as RGB (a little JPEG chroma noise allowed)."""
    if img.ndim == 2:
        return True
    spread = quality.channel_spread(img)
    return float(spread.mean()) < 3.0 and float((spread > 24).mean()) < 0.005


THUMB = similar.THUMB  # side of the audit's thumbnails (256 bytes a file)


def perceptual(img: np.ndarray) -> tuple[int, bytes]:
    """(64-bit perceptual hash, 16x16 uint8 thumbnail) of an image's canonical view: polarity, position
    and (on a plain background) scale normalised, so that copies look alike (:mod:`pipeline.data.similar`)."""
    return similar.signature(_gray(img))


def _gray(img: np.ndarray) -> np.ndarray:
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _per_channel(img: np.ndarray, fn) -> np.ndarray:
    if img.ndim == 2:
        return fn(img)
    return np.stack([fn(np.ascontiguousarray(img[..., c])) for c in range(img.shape[2])], axis=2)


def _denoise(img: np.ndarray, cfg: PreprocessParams) -> np.ndarray:
    k = cfg.denoise_kernel
    if cfg.denoise == "median":
        return cv2.medianBlur(img, k)
    if cfg.denoise == "gaussian":
        return cv2.GaussianBlur(img, (k, k), cfg.denoise_sigma)
    if cfg.denoise == "bilateral":
        return cv2.bilateralFilter(img, k, 75, 75)
    return img


def _equalize(img: np.ndarray, cfg: PreprocessParams) -> np.ndarray:
    if cfg.equalize == "none":
        return img
    op = cv2.equalizeHist if cfg.equalize == "hist" else \
        cv2.createCLAHE(clipLimit=cfg.clahe_clip, tileGridSize=(8, 8)).apply
    if img.ndim == 2:
        return op(img)
    # colour: equalize brightness only, so hues do not shift
    ycc = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb)
    ycc[..., 0] = op(np.ascontiguousarray(ycc[..., 0]))
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)


def _binarize(img: np.ndarray, cfg: PreprocessParams) -> np.ndarray:
    if cfg.binarize == "none":
        return img
    if cfg.binarize == "otsu":
        return _per_channel(img, lambda c: cv2.threshold(c, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1])
    return _per_channel(img, lambda c: cv2.threshold(c, cfg.threshold - 1, 255, cv2.THRESH_BINARY)[1])


_MORPH = {"open": cv2.MORPH_OPEN, "close": cv2.MORPH_CLOSE, "erode": cv2.MORPH_ERODE, "dilate": cv2.MORPH_DILATE}


def _morphology(img: np.ndarray, cfg: PreprocessParams) -> np.ndarray:
    if cfg.morphology == "none":
        return img
    kernel = np.ones((cfg.morph_kernel, cfg.morph_kernel), np.uint8)
    return cv2.morphologyEx(img, _MORPH[cfg.morphology], kernel)


def normalize_digit(gray: np.ndarray, size: tuple[int, int] = (28, 28)) -> np.ndarray:
    """The MNIST recipe for a real image of one digit: light ink on black, cropped to the ink,
    longer side scaled to 20/28 of the frame keeping aspect, centred on the centre of mass."""
    if is_dark_on_light(gray):
        gray = 255 - gray
    h, w = size
    t, mask = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    x0, y0, bw, bh = cv2.boundingRect(mask)  # the ink's box
    if bw == 0 or t == 0 and mask.all():
        return np.zeros((h, w), np.uint8)  # blank: nothing to centre
    crop = gray[y0:y0 + bh, x0:x0 + bw].astype(np.float32)
    # paper -> 0 and the strongest ink -> 255, keeping the anti-aliased edges
    rest = gray[mask == 0]
    paper = float(np.partition(rest, len(rest) // 2)[len(rest) // 2]) if rest.size else 0.0
    top_ink = float(crop.max())
    crop -= paper
    crop *= 255.0 / max(1.0, top_ink - paper)
    _clip(crop, 0, 255)
    box = max(1, round(min(h, w) * 20 / 28))
    scale = box / max(bh, bw)
    nh, nw = max(1, round(bh * scale)), max(1, round(bw * scale))
    small = cv2.resize(crop, (nw, nh), interpolation=_interpolation((bh, bw), (nh, nw)))
    canvas = np.zeros((h, w), np.float32)
    top, left = (h - nh) // 2, (w - nw) // 2
    canvas[top:top + nh, left:left + nw] = small
    m = cv2.moments(canvas)
    if m["m00"] > 0:
        cy, cx = m["m01"] / m["m00"], m["m10"] / m["m00"]
        # shift the centre of mass to the frame's centre, keeping the digit inside the frame (so a shift
        # of the box, with nothing but zeros around it, is the roll it once was)
        dy = min(max(round((h - 1) / 2 - cy), -top), h - nh - top)
        dx = min(max(round((w - 1) / 2 - cx), -left), w - nw - left)
        if dy or dx:
            canvas[top:top + nh, left:left + nw] = 0
            canvas[top + dy:top + dy + nh, left + dx:left + dx + nw] = small
    return _clip(np.rint(canvas, out=canvas), 0, 255).astype(np.uint8)


def _clip(a: np.ndarray, low: float, high: float) -> np.ndarray:
    """``np.clip(a, low, high)`` in place, without np.clip's checks (a tenth of its time on a small array)."""
    np.maximum(a, low, out=a)
    return np.minimum(a, high, out=a)


def preprocess(img: np.ndarray, cfg: PreprocessParams) -> np.ndarray:
    """uint8 HxW[x3] image -> float32 (height, width, channels) in [0, 1].

    Steps, in this fixed order (each off unless its param asks for it): colour
    (grayscale | rgb) -> invert (true | per-image: when dark ink on light paper) ->
    denoise (median | gaussian | bilateral) -> equalize (hist | clahe) ->
    binarize (otsu | fixed) -> morphology (erode | dilate | open | close) ->
    normalize = mnist (polarity, crop to ink, 20 px box, centre of mass) or
    resize (stretch | pad | crop) -> scale to [0, 1].
    """
    if not cfg.resolved:
        raise UserError('preprocess needs a resolved config: color and size "auto" are settled by prepare '
                        "(or give them in params)")
    if cfg.color == "grayscale" and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    elif cfg.color == "rgb" and img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    # "auto" here (not resolved by prepare: an older bundle) judges each image, like "per-image".
    if cfg.invert == "true" or (cfg.invert in ("per-image", "auto") and is_dark_on_light(_gray(img))):
        img = 255 - img
    img = _morphology(_binarize(_equalize(_denoise(img, cfg), cfg), cfg), cfg)
    if cfg.normalize == "mnist":
        out = normalize_digit(img, tuple(cfg.size))
    else:
        out = resize(img, tuple(cfg.size), cfg.resize, cfg.background)
    out = out.astype(np.float32) / np.float32(255.0)
    return out.reshape(cfg.input_shape)


def _as_is(cfg: PreprocessParams) -> bool:
    """True when ``preprocess`` of an image already at ``cfg.size`` in ``cfg.color`` only scales it to
    [0, 1] (every step off, no per-image polarity): then a batch of them is scaled at once."""
    return (cfg.invert == "false" and cfg.denoise == "none" and cfg.equalize == "none" and cfg.binarize == "none"
            and cfg.morphology == "none" and cfg.normalize != "mnist")


def preprocess_batch(images: list[np.ndarray] | np.ndarray, cfg: PreprocessParams) -> np.ndarray:
    """``np.stack([preprocess(img, cfg) for img in images])``, byte for byte, with the images that need
    nothing but scaling (already at the size, in the colour, every step off) scaled at once (``images``: a
    list, or a stack of them)."""
    out = np.empty((len(images),) + cfg.input_shape, np.float32)
    ndim = 2 if cfg.color == "grayscale" else 3
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape[1:3] == tuple(cfg.size) \
            and images.ndim == ndim + 1 and cfg.resolved and _as_is(cfg):
        np.divide(images.reshape(out.shape), np.float32(255.0), out=out, dtype=np.float32)
        return out
    plain = [i for i, img in enumerate(images) if img.shape[:2] == tuple(cfg.size) and img.ndim == ndim
             and img.dtype == np.uint8] if cfg.resolved and _as_is(cfg) else []
    if plain:
        out[plain] = (np.stack([images[i] for i in plain]).astype(np.float32)
                      / np.float32(255.0)).reshape((len(plain),) + cfg.input_shape)
    rest = set(range(len(images))) - set(plain)
    for i in sorted(rest):
        out[i] = preprocess(images[i], cfg)
    return out


def load_image(source: str | os.PathLike | bytes, cfg: PreprocessParams) -> np.ndarray:
    """Decode and preprocess one image file: THE function used by prepare, evaluate and apply."""
    return preprocess(decode_file(source, cfg).array, cfg)


def inspect_image(source: str | os.PathLike | bytes, cfg: PreprocessParams) -> tuple[np.ndarray | None, str, Decoded | None]:
    """Like :func:`load_image` but never raises: ``(array, "", info)`` or ``(None, reason, None)``."""
    try:
        d = decode_file(source, cfg)
        return preprocess(d.array, cfg), "", d
    except ImageError as exc:
        return None, str(exc), None
    except MemoryError:
        return None, "image too large to decode in memory", None


def for_display(path: str | os.PathLike, background: int | str = "auto",
                side: int = 0) -> tuple[np.ndarray | None, str]:
    """A file as a person sees it (colour, any size; transparent parts on ``background``), for galleries:
    ``(uint8 array, "")`` or ``(None, why it cannot be shown)``; ``side``: shown that small at most, so a
    large JPEG may be decoded smaller (at least ``side`` px a side)."""
    try:
        cfg = PreprocessParams(color="rgb", min_side=1, background=background)
        return decode_file(path, cfg, draft=side).array, ""
    except ImageError as exc:
        return None, str(exc)
    except MemoryError:
        return None, "image too large to decode in memory"


def load_image_safe(path: str | Path, cfg: PreprocessParams) -> tuple[np.ndarray | None, str]:
    """``(array, "")`` or ``(None, reason)``: for callers that report instead of failing."""
    arr, reason, _ = inspect_image(path, cfg)
    return arr, reason
