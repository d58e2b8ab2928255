"""What predict reads (pipeline.data.inputs): folders, one file, pixel CSVs, and their blocks of model input."""
import numpy as np
import pytest

from pipeline.data import inputs
from pipeline.data.preprocess import load_image, preprocess
from pipeline.shared.errors import UserError
from pipeline.shared.params import PreprocessParams

from conftest import write_image

CFG = PreprocessParams(color="grayscale", size=(8, 8), invert="false")


def _img(seed, shape=(10, 10)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_list_inputs_walks_a_folder_skipping_hidden_files_and_our_outputs(tmp_path):
    src = tmp_path / "images"
    for k, rel in enumerate(["z.png", "a/1.png", "a/b/2.png", "b/3.png", "out/preds.png"]):
        write_image(src / rel, _img(k))
    (src / "predictions.csv").write_text("path,label\n")
    (src / ".DS_Store").write_bytes(b"\0")
    write_image(src / ".cache" / "x.png", _img(9))
    write_image(src / "a" / ".hidden.png", _img(10))
    got = inputs.list_inputs(src)
    assert got.kind == "folder" and got.source == src and got.rejected == []
    # relative POSIX paths, sorted by name with a folder's files before its sub-folders; hidden ones skipped
    assert got.paths == ["predictions.csv", "z.png", "a/1.png", "a/b/2.png", "b/3.png", "out/preds.png"]
    # our own outputs (a file and a folder under IMAGES) are left out; one outside IMAGES changes nothing
    kept = inputs.list_inputs(src, exclude=(src / "predictions.csv", src / "out", tmp_path / "elsewhere.csv"))
    assert kept.paths == ["z.png", "a/1.png", "a/b/2.png", "b/3.png"]
    assert kept.file("a/b/2.png") == src / "a" / "b" / "2.png" and kept.relative("a/1.png") == "a/1.png"


def test_exclude_matches_whole_path_components(tmp_path):
    src = tmp_path / "images"
    for k, rel in enumerate(["out/1.png", "outside/2.png", "out.png"]):
        write_image(src / rel, _img(k))
    assert inputs.list_inputs(src, exclude=(src / "out",)).paths == ["out.png", "outside/2.png"]


def test_list_inputs_on_one_image_file(tmp_path):
    f = write_image(tmp_path / "one.png", _img(0))
    got = inputs.list_inputs(f)
    assert got.kind == "file" and got.paths == [str(f)]
    assert got.file(str(f)) == f and got.relative(str(f)) == "one.png"


def _pixel_csv(path, rows, label=True):
    side = 4
    header = (["label"] if label else []) + [f"pixel{i}" for i in range(side * side)]
    lines = [",".join(header)] + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_list_inputs_on_a_pixel_csv(tmp_path):
    f = _pixel_csv(tmp_path / "px.csv", [[3] + list(range(16))])
    got = inputs.list_inputs(f)
    assert got.kind == "pixels" and got.source == f and got.paths == []
    unlabeled = _pixel_csv(tmp_path / "nolabel.csv", [list(range(16))], label=False)
    assert inputs.list_inputs(unlabeled).kind == "pixels"


def test_list_inputs_refuses_a_csv_that_is_not_pixels(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("path,label\na.png,cat\n")
    with pytest.raises(UserError, match=r"labels\.csv is a CSV but not a pixel CSV.*give the folder of images"):
        inputs.list_inputs(f)


def test_list_inputs_refuses_a_missing_path_and_an_empty_folder(tmp_path):
    with pytest.raises(UserError, match="IMAGES not found: .*nope"):
        inputs.list_inputs(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no files found under .*empty"):
        inputs.list_inputs(empty)
    (empty / ".hidden.png").write_bytes(b"x")  # hidden files do not count
    with pytest.raises(UserError, match="no files found"):
        inputs.list_inputs(empty)
    write_image(empty / "only.png", _img(0))
    with pytest.raises(UserError, match="no files found"):  # everything excluded
        inputs.list_inputs(empty, exclude=(empty / "only.png",))


def test_inside(tmp_path):
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    assert inputs.inside(folder / "sub" / "x.png", folder) == "sub/x.png"
    assert inputs.inside(folder / "sub" / ".." / "y.png", folder) == "y.png"  # resolved first
    assert inputs.inside(folder, folder) == "."
    assert inputs.inside(tmp_path / "other.png", folder) is None
    assert inputs.inside(tmp_path / "f2" / "x.png", folder) is None  # a name prefix is not inside


def test_chunks_over_a_folder_give_blocks_with_reasons(tmp_path):
    src = tmp_path / "images"
    names = [f"{k}.png" for k in range(7)]
    for k, name in enumerate(names):
        write_image(src / name, _img(k, (9 + k, 12)))
    (src / "2.png").write_bytes(b"not an image")
    (src / "5.png").write_bytes(b"")
    listed = inputs.list_inputs(src)
    size = 3
    blocks = list(inputs.chunks(listed, listed.paths, CFG, size, None, set()))
    assert [len(b[0]) for b in blocks] == [3, 3, 1]
    assert [n for b in blocks for n in b[0]] == listed.paths == names
    for block_names, arrays, reasons in blocks:
        assert len(reasons) == len(block_names)
        good = [n for n, r in zip(block_names, reasons) if not r]
        assert [n for n, r in zip(block_names, reasons) if r] == [n for n in block_names if n in ("2.png", "5.png")]
        assert arrays.shape == (len(good), *CFG.input_shape)
        for k, n in enumerate(good):
            np.testing.assert_array_equal(arrays[k], load_image(src / n, CFG))
    # only the rows still to do are decoded
    todo = ["6.png", "0.png"]
    (only,) = list(inputs.chunks(listed, todo, CFG, size, None, set()))
    assert only[0] == todo and only[2] == ["", ""]
    np.testing.assert_array_equal(only[1], np.stack([load_image(src / n, CFG) for n in todo]))


def test_large_files_are_decoded_a_few_a_job_and_put_together_into_the_same_blocks(tmp_path):
    """Photos: every worker gets some of a block (one job a block kept one worker busy for all of it)."""
    class Pool:  # runs each job here, counting its files
        workers = 2

        def __init__(self):
            self.jobs = []

        def apply_async(self, fn, args):
            self.jobs.append(len(args[0][0]))
            result = fn(*args)
            return type("Done", (), {"get": lambda _: result})()

    rng = np.random.default_rng(4)
    src = tmp_path / "photos"
    for k in range(10):
        write_image(src / f"{k}.png", rng.integers(0, 256, (400, 500, 3), dtype=np.uint8))  # ~600 KB each
    (src / "3.png").write_bytes(b"not an image")
    listed = inputs.list_inputs(src)
    pool = Pool()
    pooled = list(inputs.chunks(listed, listed.paths, CFG, 8, pool, set()))
    here = list(inputs.chunks(listed, listed.paths, CFG, 8, None, set()))
    assert max(pool.jobs) == 1 and len(pool.jobs) == 10  # 8 // (2 workers x 4): one file a job
    assert [b[0] for b in pooled] == [b[0] for b in here] and [b[2] for b in pooled] == [b[2] for b in here]
    for (_, a, _), (_, b, _) in zip(pooled, here):
        np.testing.assert_array_equal(a, b)


def test_pixel_chunks_skip_done_rows_and_report_bad_ones(tmp_path):
    rows = [[k] + [(17 * k + i) % 256 for i in range(16)] for k in range(5)]
    rows[3][5] = 300  # out of range: a bad row
    f = _pixel_csv(tmp_path / "px.csv", rows)
    done = {"px.csv#1"}
    listed = inputs.list_inputs(f)
    blocks = list(inputs.chunks(listed, [], CFG, 2, None, done))
    want = [f"px.csv#{i}" for i in range(5) if f"px.csv#{i}" not in done]
    assert [len(b[0]) for b in blocks] == [2, 2]
    assert [n for b in blocks for n in b[0]] == want
    for names, arrays, reasons in blocks:
        good = [int(n.split("#")[1]) for n, r in zip(names, reasons) if not r]
        bad = [n for n, r in zip(names, reasons) if r]
        assert bad == (["px.csv#3"] if "px.csv#3" in names else [])
        expected = [preprocess(np.array(rows[i][1:], np.uint8).reshape(4, 4), CFG) for i in good]
        assert arrays.shape == (len(good), *CFG.input_shape)
        for a, e in zip(arrays, expected):
            np.testing.assert_array_equal(a, e)
    # direct call; everything done: nothing to yield
    assert [b[0] for b in inputs.pixel_chunks(f, CFG, 10, set())] == [[f"px.csv#{i}" for i in range(5)]]
    assert list(inputs.pixel_chunks(f, CFG, 10, {f"px.csv#{i}" for i in range(5)})) == []
