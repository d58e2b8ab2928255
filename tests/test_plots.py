"""Plots and images for the pages: the PNG writer."""
import io

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.shared.plots import png_bytes


def test_png_bytes_is_a_png_that_readers_decode_to_the_same_pixels():
    rng = np.random.default_rng(0)
    for shape in [(28, 28), (1, 1), (5, 7, 3), (64, 33, 3)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        data = png_bytes(img)
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), img)  # Pillow checks the CRCs
        back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(back if back.ndim == 2 else back[..., ::-1], img)


def test_png_bytes_stores_a_small_image_and_compresses_a_large_one():
    small, large = np.zeros((28, 28), np.uint8), np.zeros((200, 200), np.uint8)
    assert len(png_bytes(small)) > 28 * 29  # stored as it is: deflate's set-up costs more than it saves
    assert len(png_bytes(large)) < 1000     # 40 kB of zeros, compressed
    for img in (small, large):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(img)))), img)


def test_the_samples_grid_draws_accented_labels_with_the_figures_font():
    """Pillow's own font has no 'é': the grid uses the DejaVu Sans that matplotlib ships (as the other figures do)."""
    pytest.importorskip("matplotlib")
    from pipeline.shared import plots

    font = plots.font(14)
    assert font.getname()[0] == "DejaVu Sans"
    assert font.getmask("é").getbbox() != font.getmask("\ufffe").getbbox()  # a glyph, not the missing-glyph box
    assert plots.short("circles", 6) == "circl…" and plots.short("circle", 6) == "circle"


def test_a_gallery_title_cuts_names_only_where_it_must():
    from pipeline.shared import plots

    assert plots.pair_title("cat", "dog", 0.912) == "cat → dog\n0.91"
    long = plots.pair_title("carré rouge", "triángulo verde", 0.5)
    given, other = long.split("\n")
    assert given == "carré rouge →" and other == "triángulo ve… 0.50"  # 6 characters a name before
