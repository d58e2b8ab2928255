"""Fuzzing (hypothesis): thousands of mutated images through the decoder that prepare and predict use.

Mutations: bit flips, truncation, random bytes after a valid header, and huge
declared sizes. Every file must come back as an array in range or as a reported
reason: never an uncaught exception, never a hang (a time limit per file).
"""
import io
import signal
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from pipeline.data.preprocess import inspect_image
from pipeline.shared.params import PredictParams, PreprocessParams
from pipeline.stages.predict import predict

SECONDS_PER_FILE = 15  # a hang, not a slow file: generous enough for a loaded 2-core machine


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    gray = Image.fromarray(rng.integers(0, 255, (24, 20), dtype=np.uint8))
    rgb = Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 255, (16, 16, 4), dtype=np.uint8))
    return {
        "png_gray": _encode(gray, "PNG"), "png_rgb": _encode(rgb, "PNG"), "png_rgba": _encode(rgba, "PNG"),
        "png_palette": _encode(rgb.convert("P"), "PNG"),
        "png_16bit": _encode(Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16)), "PNG"),
        "jpeg": _encode(rgb, "JPEG", quality=80), "jpeg_cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "gif": _encode(rgb.convert("P"), "GIF"), "bmp": _encode(rgb, "BMP"), "tiff": _encode(gray, "TIFF"),
        "webp": _encode(rgb, "WEBP"),
    }


SEEDS = _seeds()


def _huge(data: bytes, kind: str, w: int, h: int, fix_crc: bool) -> bytes:
    """Patch the declared width/height of a file (PNG, BMP, GIF); other formats get the sizes appended."""
    b = bytearray(data)
    if kind.startswith("png"):
        b[16:24] = struct.pack(">II", w, h)
        if fix_crc:
            b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    elif kind == "bmp":
        b[18:26] = struct.pack("<II", w, h)  # read as signed: 2**32 - 1 is a top-down -1
    elif kind == "gif":
        b[6:10] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)
    else:
        b += struct.pack(">II", w, h)
    return bytes(b)


@st.composite
def mutated(draw) -> bytes:
    kind = draw(st.sampled_from(sorted(SEEDS)))
    data = SEEDS[kind]
    how = draw(st.sampled_from(["flip", "truncate", "header+random", "huge"]))
    if how == "flip":
        b = bytearray(data)
        for pos in draw(st.lists(st.integers(0, len(b) - 1), min_size=1, max_size=12)):
            b[pos] ^= 1 << draw(st.integers(0, 7))
        return bytes(b)
    if how == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if how == "header+random":
        return data[:draw(st.integers(1, 64))] + draw(st.binary(min_size=0, max_size=4096))
    side = st.one_of(st.integers(1, 70000), st.sampled_from([0, 2**16 - 1, 2**31 - 1, 2**32 - 1, 9000, 30000]))
    return _huge(data, kind, draw(side), draw(side), draw(st.booleans()))


class Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise Hang(f"decoding took longer than {SECONDS_PER_FILE} s")


@pytest.fixture
def time_limit():
    """Arm a per-call alarm: a decoder that hangs fails the test instead of stalling it."""
    old = signal.signal(signal.SIGALRM, _on_alarm)

    def arm():
        signal.setitimer(signal.ITIMER_REAL, SECONDS_PER_FILE)

    yield arm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


CONFIGS = [PreprocessParams(color="grayscale", size=(28, 28), invert="false"),
           PreprocessParams(color="rgb", size=(28, 28), invert="false", resize="pad"),
           PreprocessParams(normalize="mnist", color="grayscale", size=(28, 28), invert="per-image", denoise="median",
                            equalize="clahe")]


@settings(max_examples=2500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=mutated(), which=st.integers(0, len(CONFIGS) - 1))
@pytest.mark.slow
def test_mutated_files_are_decoded_or_reported_never_raised(time_limit, data, which):
    cfg = CONFIGS[which]
    time_limit()
    try:
        arr, reason, info = inspect_image(data, cfg)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if arr is None:
        assert reason and info is None
    else:
        assert reason == "" and arr.shape == cfg.input_shape and arr.dtype == np.float32
        assert np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1


@settings(max_examples=4, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(files=st.lists(mutated(), min_size=40, max_size=40))
@pytest.mark.slow
def test_the_apply_path_gives_one_row_per_mutated_file(shade_bundle, tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("fuzz")
    for i, data in enumerate(files):
        (folder / f"{i:03d}.png").write_bytes(data)
    s = predict(folder, shade_bundle, folder.parent / f"{folder.name}.csv", PredictParams(workers=2, batch_size=8))
    assert s["rows"] == len(files) and s["predicted"] + s["errors"] == len(files)
