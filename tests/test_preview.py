import pytest
from PIL import Image

from pipeline.shared import artifacts
from pipeline.shared.params import AugmentParams, PrepareParams, PreprocessParams
from pipeline.stages import prepare
from pipeline.stages.preview import CELL, preview

from conftest import make_tree


def test_preview_grid_original_preprocessed_augmented(tmp_path):
    data = make_tree(tmp_path / "d", {"a": 4, "b": 4}, size=20)
    (data / "a" / "000.png").write_bytes(b"broken now")  # a rejected file never reaches the preview
    run = tmp_path / "run"
    prepare.prepare(data, run, PrepareParams(workers=1), PreprocessParams(size=(16, 16)))
    out = preview(run, AugmentParams(enabled=True), per_class=2, n_aug=3)
    img = Image.open(out)
    assert out == run / "preview.png"
    assert img.size[1] == 24 + 4 * (CELL + 4) + 4          # 2 classes x 2 images, plus the header
    assert img.size[0] == 120 + 5 * (CELL + 4) + 4         # original, preprocessed, 3 augmented
    plain = preview(run, AugmentParams(enabled=False), per_class=1, n_aug=3, out=tmp_path / "p.png")
    assert Image.open(plain).size[0] == 120 + 2 * (CELL + 4) + 4  # augmentation off: no augmented columns


def test_preview_needs_a_prepared_run(tmp_path):
    with pytest.raises(artifacts.StageError, match="make prepare"):
        preview(tmp_path, AugmentParams())


def test_a_pixel_csv_run_is_previewed_from_its_rows(tmp_path, caplog):
    """A pixel CSV's images are rows, not files: the preview (and the review page and report, through
    inputs.original) read them from the CSV instead of showing placeholders."""
    import numpy as np

    from pipeline.data import ingest
    from pipeline.data.inputs import original

    rng = np.random.default_rng(0)
    rows = ["label," + ",".join(f"pixel{i}" for i in range(784))]
    images = []
    for i in range(12):
        img = np.zeros((28, 28), np.uint8)
        img[6:22, 8 + 8 * (i % 2):12 + 8 * (i % 2)] = 200 + rng.integers(0, 50)
        images.append(img)
        rows.append(f"{i % 2}," + ",".join(map(str, img.ravel().tolist())))
    rows.append("1," + ",".join(["x"] * 784))  # a bad row
    csv_file = tmp_path / "train.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    shown, why = original(f"{csv_file}#5")
    assert why == "" and np.array_equal(shown, images[5])
    assert original(f"{csv_file}#12") == (None, "non-numeric pixel value")
    assert original(f"{csv_file}#99")[0] is None and ingest.pixel_row_of(tmp_path / "a.png") is None
    run = tmp_path / "run"
    prepare.prepare(csv_file, run, PrepareParams(workers=1), PreprocessParams())
    with caplog.at_level("WARNING"):
        preview(run, AugmentParams(enabled=False), per_class=2)
    assert "preview:" not in caplog.text  # every tile read


def test_accented_labels_are_drawn_with_the_figures_font(tmp_path):
    """The labels column uses the other figures' font (Pillow's default one has no 'é': a box instead)."""
    pytest.importorskip("matplotlib")
    import numpy as np

    from pipeline.stages.preview import preview_grid

    data = make_tree(tmp_path / "d", {"a": 1}, size=20)
    path = str(next((data / "a").iterdir()))
    cfg = PreprocessParams(color="grayscale", size=(16, 16), invert="false", background=0)

    def labels_column(label):
        grid = preview_grid([(label, [path])], cfg, AugmentParams(enabled=False), 0, 0)
        return np.asarray(grid.convert("L"))[24:24 + CELL, :118]

    accented, missing = labels_column("carré"), labels_column("carr\ufffe")
    assert (accented < 128).any() and not np.array_equal(accented, missing)
