"""Decoding any common file/mode, and the resize/scale steps, with known answers."""
import io

import numpy as np
import pytest
from PIL import Image

from pipeline.data.preprocess import ImageError, decode, load_image, load_image_safe, resize
from pipeline.shared.params import PreprocessParams

GRAY = PreprocessParams(color="grayscale", size=(28, 28), invert="false")


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_output_shape_dtype_range():
    arr = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))  # 32x32 gradient
    out = load_image(png_bytes(Image.fromarray(arr)), GRAY)
    assert out.shape == (28, 28, 1) and out.dtype == np.float32
    assert 0.0 <= out.min() < 0.1 and 0.9 < out.max() <= 1.0
    rgb = load_image(png_bytes(Image.fromarray(arr)), PreprocessParams(color="rgb", size=(20, 24)))
    assert rgb.shape == (20, 24, 3)


def test_exact_values_when_no_resize_is_needed():
    arr = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    out = load_image(png_bytes(Image.fromarray(arr)), GRAY)
    np.testing.assert_array_equal(out[..., 0], arr.astype(np.float32) / 255)


@pytest.mark.parametrize("mode, expected", [
    ("1", 255), ("L", 200), ("P", 200), ("RGB", 200), ("CMYK", 200), ("I;16", 200), ("I", 200), ("F", 200)])
def test_every_mode_decodes_to_the_right_gray(mode, expected):
    base = Image.new("L", (8, 8), 255 if mode == "1" else 200)
    if mode == "I;16":
        img = Image.fromarray(np.full((8, 8), 200 * 257, np.uint16))
        assert img.mode.startswith("I;16")
    elif mode == "I":
        img = Image.fromarray(np.full((8, 8), 200 * 257, np.int32))
    elif mode == "F":
        img = Image.fromarray(np.full((8, 8), 200 / 255, np.float32))
    else:
        img = base.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I", "F") else "PNG"
    got = decode(png_bytes(img, fmt))
    assert got.dtype == np.uint8 and got.shape == (8, 8)
    assert abs(int(got[0, 0]) - expected) <= 1


def test_rgba_and_transparent_palette_composite_on_background():
    rgba = Image.new("RGBA", (4, 4), (255, 255, 255, 0))  # fully transparent white
    assert decode(png_bytes(rgba), background=0)[0, 0] == 0
    assert decode(png_bytes(rgba), background=255)[0, 0] == 255
    half = Image.new("RGBA", (4, 4), (255, 255, 255, 128))
    assert abs(int(decode(png_bytes(half), background=0)[0, 0]) - 128) <= 1
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 255, 255] * 256)
    pal.info["transparency"] = 0
    assert decode(png_bytes(pal, transparency=0), background=0)[0, 0] == 0


def test_transparent_dark_ink_stays_visible_with_background_auto():
    """Dark ink on a transparent background (an icon, a signature): an unresolved background = "auto"
    puts it on white, never ink on black; the decoder reports the ink's gray level."""
    from pipeline.data.preprocess import decode_file

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 14:18] = (20, 20, 20, 255)  # a dark bar; the rest transparent (and black underneath)
    d = decode_file(png_bytes(Image.fromarray(rgba, "RGBA")), PreprocessParams(color="grayscale", min_side=1))
    assert d.meta.alpha and d.ink == 20
    assert d.array[0, 0] == 255 and d.array[16, 15] == 20  # paper white, ink dark (gray, as decoded)
    light = rgba.copy()
    light[8:24, 14:18] = (230, 230, 230, 255)  # light ink: onto black
    assert decode(png_bytes(Image.fromarray(light, "RGBA")))[0, 0] == 0
    opaque = rgba.copy()
    opaque[..., 3] = 255  # an alpha channel with nothing transparent: not a transparent image
    assert decode_file(png_bytes(Image.fromarray(opaque, "RGBA")), PreprocessParams(min_side=1)).ink is None


def test_exif_orientation_is_applied():
    arr = np.zeros((10, 20), np.uint8)  # wide image
    arr[:, :5] = 255
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode(png_bytes(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.shape == (20, 10)  # now tall
    assert out[:5].mean() > 200 and out[-5:].mean() < 50  # left band rotated to the top


def test_gif_first_frame_and_content_not_extension(tmp_path):
    frames = [Image.new("L", (6, 6), v) for v in (10, 250)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert abs(int(decode(buf.getvalue())[0, 0]) - 10) <= 2
    mislabelled = tmp_path / "really_a_png.jpg"
    mislabelled.write_bytes(png_bytes(Image.new("L", (5, 5), 77)))
    assert decode(mislabelled)[0, 0] == 77


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"hello, not an image", "not an image"),
    (png_bytes(Image.new("L", (64, 64), 9))[:80], "truncated image: the file ends"),
    (png_bytes(Image.new("RGB", (64, 64), (9, 90, 200)), "JPEG")[:200], "truncated image: the file ends"),
])
def test_bad_files_raise_image_error_with_reason(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode(data)
    arr, why = load_image_safe(_write_tmp(data), GRAY)
    assert arr is None and reason in why


def _write_tmp(data: bytes):
    import tempfile
    f = tempfile.NamedTemporaryFile(delete=False, suffix=".png")
    f.write(data)
    f.close()
    return f.name


def test_decompression_bomb_is_refused_limit_kept():
    before = Image.MAX_IMAGE_PIXELS
    big = png_bytes(Image.new("1", (12000, 12000)))  # 144M pixels > 89M limit, tiny file
    with pytest.raises(ImageError, match=f"decompression bomb refused: 144000000 pixels, over the limit of {before} "):
        decode(big)
    huge = png_bytes(Image.new("1", (15000, 15000)))  # over twice the limit: Pillow names twice it; we the one limit
    with pytest.raises(ImageError, match=f"225000000 pixels, over the limit of {before} "):
        decode(huge)
    assert Image.MAX_IMAGE_PIXELS == before


def test_missing_file_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="unreadable file"):
        decode(tmp_path / "nope.png")


def test_resize_modes_known_answers():
    img = np.zeros((10, 20), np.uint8)
    img[:, 10:] = 255  # right half white
    stretched = resize(img, (10, 10), "stretch")
    assert stretched.shape == (10, 10) and stretched[:, :5].max() == 0 and stretched[:, 5:].min() == 255
    padded = resize(img, (20, 20), "pad", background=7)
    assert padded.shape == (20, 20)
    assert (padded[:5] == 7).all() and (padded[-5:] == 7).all()  # 10x20 -> 10x20 centred, bands above/below
    cropped = resize(img, (10, 10), "crop")
    assert cropped.shape == (10, 10) and cropped[:, :5].max() == 0 and cropped[:, 5:].min() == 255


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("color", ["grayscale", "rgb"])
@pytest.mark.parametrize("size", [(37, 23), (701, 613)])  # the second: converted to gray a block of rows at a time
def test_fast_png_path_matches_pillow_exactly(mode, color, size):
    from pipeline.data import preprocess as pp

    rng = np.random.default_rng(3)
    shape = size if mode == "L" else (*size, 3)
    data = png_bytes(Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode))
    cfg = PreprocessParams(color=color, size=(28, 28), invert="false")
    fast = pp._fast_png(data, cfg)
    assert fast is not None and fast.meta.mode == mode
    with Image.open(io.BytesIO(data)) as img:
        slow, _ = pp._to_array(img, color, 0)
    np.testing.assert_array_equal(fast.array, slow)


def test_fast_png_path_declines_what_it_cannot_do_identically():
    from pipeline.data import preprocess as pp

    cfg = GRAY
    rgba = png_bytes(Image.new("RGBA", (10, 10)))
    pal = png_bytes(Image.new("P", (10, 10)))
    deep = png_bytes(Image.fromarray(np.zeros((10, 10), np.uint16)))
    tiny = png_bytes(Image.new("L", (4, 4)))
    for data in (rgba, pal, deep, tiny, b"\x89PNG\r\n\x1a\n" + b"\x00" * 30):
        assert pp._fast_png(data, cfg) is None


def test_a_large_jpeg_for_display_is_decoded_smaller_but_never_below_the_side_asked(tmp_path):
    """Thumbnails (review cards, the report) of phone photos: JPEG's reduced-scale decoding; the model's input
    (no side) stays the full decode; an EXIF-rotated photo is still turned."""
    from pipeline.data.preprocess import for_display

    rng = np.random.default_rng(5)
    photo = Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: shown 1200 wide, 1600 high
    photo.save(tmp_path / "p.jpg", quality=80, exif=exif)
    full, _ = for_display(tmp_path / "p.jpg")
    small, why = for_display(tmp_path / "p.jpg", side=224)
    assert why == "" and full.shape == (1600, 1200, 3)
    assert small.shape[2] == 3 and 224 <= min(small.shape[:2]) and max(small.shape[:2]) < 1600
    assert small.shape[0] > small.shape[1]  # turned as the full one
