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
