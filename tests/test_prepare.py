"""Prepare: artifacts, splits, label map, bad files, skipping, and the user's files untouched."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from pipeline.shared import artifacts
from pipeline.shared import runfolder as rf
from pipeline.shared.params import PrepareParams, PreprocessParams
from pipeline.stages import prepare

from conftest import make_tree, write_image

CFG = PreprocessParams(size=(16, 16))


def run_prepare(data, run, **kw):
    p = PrepareParams(workers=1, **kw)
    return prepare.prepare(data, run, p, CFG)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_artifacts_and_stratified_seeded_split(tmp_path):
    data = make_tree(tmp_path / "data", {"a": 20, "b": 30, "c": 10})
    run = tmp_path / "run"
    summary = run_prepare(data, run, test_size=0.2, val_size=0.25)
    for name in prepare.artifact_names() + [prepare.MARKER]:
        assert (run / name).is_file(), name
    assert json.loads((run / "labels.json").read_text()) == {"a": 0, "b": 1, "c": 2}
    # stratified: 20% of each class in test, 25% of the rest in val
    assert summary.counts["test"] == {"a": 4, "b": 6, "c": 2}
    assert summary.counts["val"] == {"a": 4, "b": 6, "c": 2}
    assert summary.counts["train"] == {"a": 12, "b": 18, "c": 6}
    rows = read_csv(run / "manifest.csv")
    assert len(rows) == 60 and set(rows[0]) == {"path", "label", "split", "note"}
    for split in prepare.SPLITS:
        x = np.load(run / f"X_{split}.npy")
        y = np.load(run / f"y_{split}.npy")
        assert x.shape == (sum(summary.counts[split].values()), 16, 16, 1) and x.dtype == np.float32
        assert [r["label"] for r in rows if r["split"] == split] == [["a", "b", "c"][i] for i in y]
    # same seed -> same split; another seed -> another split
    run2 = tmp_path / "run2"
    run_prepare(data, run2, test_size=0.2, val_size=0.25)
    assert (run / "manifest.csv").read_bytes() == (run2 / "manifest.csv").read_bytes()
    run3 = tmp_path / "run3"
    run_prepare(data, run3, test_size=0.2, val_size=0.25, seed=7)
    assert (run / "manifest.csv").read_bytes() != (run3 / "manifest.csv").read_bytes()
    assert not [p for p in run.iterdir() if artifacts.TMP_TAG in p.name]


def test_arrays_hold_the_preprocessed_pixels_of_the_manifest_rows(tmp_path):
    from pipeline.data.preprocess import load_image

    data = make_tree(tmp_path / "data", {"a": 5, "b": 5})
    run = tmp_path / "run"
    run_prepare(data, run)
    rows = read_csv(run / "manifest.csv")
    cfg = rf.read_preprocess(json.loads((run / "prepare.json").read_text())["preprocess"])
    assert (cfg.color, cfg.size, cfg.invert) == ("grayscale", (16, 16), "false")  # "auto" resolved, size as set
    for split in prepare.SPLITS:
        x = np.load(run / f"X_{split}.npy")
        for row, arr in zip([r for r in rows if r["split"] == split], x):
            np.testing.assert_array_equal(load_image(row["path"], cfg), arr)


def test_given_train_test_folders_are_honoured(tmp_path):
    data = tmp_path / "data"
    make_tree(data, {"a": 10, "b": 10}, split="train")
    make_tree(data, {"a": 3, "b": 2}, split="test", seed=1)
    run = tmp_path / "run"
    summary = run_prepare(data, run, val_size=0.2)
    assert summary.counts["test"] == {"a": 3, "b": 2}
    assert summary.counts["val"] == {"a": 2, "b": 2}
    rows = read_csv(run / "manifest.csv")
    assert all("/test/" in r["path"] for r in rows if r["split"] == "test")


def test_explicit_label_order_and_mismatch(tmp_path):
    data = make_tree(tmp_path / "data", {"a": 4, "b": 4})
    run = tmp_path / "run"
    run_prepare(data, run, labels=("b", "a"))
    assert json.loads((run / "labels.json").read_text()) == {"b": 0, "a": 1}
    with pytest.raises(ValueError, match=r"labels does not match the data.*\['c'\]"):
        run_prepare(data, tmp_path / "run2", labels=("a", "b", "c"))


def test_bad_files_are_rejected_not_fatal(tmp_path):
    data = make_tree(tmp_path / "data", {"a": 6, "b": 6})
    (data / "a" / "zero.png").write_bytes(b"")
    (data / "a" / "notes.txt").write_text("not an image")
    good = (data / "b" / "000.png").read_bytes()
    (data / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    run = tmp_path / "run"
    summary = run_prepare(data, run)
    reasons = {r["path"]: r["reason"] for r in read_csv(run / "rejected.csv")}
    assert reasons["a/zero.png"].startswith("empty file")
    assert reasons["a/notes.txt"].startswith("not an image")
    assert reasons["b/truncated.png"].startswith(("truncated image", "corrupt image"))
    assert summary.rejected == 3 and sum(sum(c.values()) for c in summary.counts.values()) == 12


def test_one_sample_class_stays_in_train(tmp_path):
    data = make_tree(tmp_path / "data", {"a": 10, "b": 10, "solo": 1})
    summary = run_prepare(data, tmp_path / "run")
    assert summary.counts["train"]["solo"] == 1


def test_fails_clearly_without_usable_images_or_with_one_class(tmp_path):
    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        (data / label / "x.png").write_bytes(b"junk")
    with pytest.raises(artifacts.StageError, match="no usable image"):
        run_prepare(data, tmp_path / "run")
    assert (tmp_path / "run" / "rejected.csv").is_file()  # the user can see why
    make_tree(data, {"a": 3})
    (data / "b" / "x.png").unlink()
    (data / "b").rmdir()
    with pytest.raises(artifacts.StageError, match="at least 2 classes"):
        run_prepare(data, tmp_path / "run")
    assert not (tmp_path / "run" / prepare.MARKER).exists()


def test_one_label_is_refused_before_decoding_with_what_to_do(tmp_path, monkeypatch):
    """Camera files in one flat folder (IMG_0001.jpg, DSC00001.JPG) read as the filenames layout give no
    label (a camera's name is not one): refused at once, counting the files without a label, and how to lay
    the images out, before a single file is decoded (and no run folder is left behind)."""
    data = tmp_path / "photos"
    data.mkdir()
    for i in range(4):
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(data / f"IMG_{i:04d}.jpg")
        Image.new("RGB", (20, 20), (0, i * 40, 0)).save(data / f"DSC{i:05d}.JPG")
    monkeypatch.setattr(prepare, "_decode_to_splits", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(artifacts.StageError) as err:
        run_prepare(data, tmp_path / "run")
    message = str(err.value)
    assert "need at least 2 classes, found no label in the file names" in message
    assert "8 file name(s) give none" in message and "folder of its own" in message and "CSV" in message
    assert not (tmp_path / "run").exists()


def test_skips_when_unchanged_and_redoes_when_data_or_params_change(tmp_path):
    data = make_tree(tmp_path / "data", {"a": 5, "b": 5})
    run = tmp_path / "run"
    assert not run_prepare(data, run).skipped
    mtime = (run / "X_train.npy").stat().st_mtime_ns
    assert run_prepare(data, run).skipped
    assert (run / "X_train.npy").stat().st_mtime_ns == mtime
    assert not run_prepare(data, run, seed=1).skipped
    write_image(data / "a" / "new.png", np.zeros((16, 16), np.uint8))
    assert not run_prepare(data, run, seed=1).skipped


def test_users_files_are_never_modified(tmp_path):
    data = make_tree(tmp_path / "data", {"a": 5, "b": 5})
    (data / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")

    def snapshot():
        return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(data.rglob("*")) if p.is_file()}

    before = snapshot()
    run_prepare(data, tmp_path / "run")
    assert snapshot() == before


def test_parallel_workers_give_the_same_arrays(tmp_path):
    data = make_tree(tmp_path / "data", {"a": 150, "b": 150}, size=12)
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    prepare.prepare(data, r1, PrepareParams(workers=1), CFG)
    prepare.prepare(data, r2, PrepareParams(workers=2), CFG)
    for split in prepare.SPLITS:
        np.testing.assert_array_equal(np.load(r1 / f"X_{split}.npy"), np.load(r2 / f"X_{split}.npy"))


def test_cli_prints_table_and_defaults_run_folder(tmp_path, monkeypatch, capsys):
    from pipeline import __main__ as cli

    make_tree(tmp_path / "mydata", {"a": 4, "b": 4})
    monkeypatch.chdir(tmp_path)
    assert cli.main(["prepare", "--data", "mydata", "--params", os.devnull]) == 0
    out = capsys.readouterr().out
    assert "label" in out and "rejected: 0" in out
    assert (tmp_path / "runs" / "mydata" / prepare.MARKER).is_file()
    assert (tmp_path / "runs" / "mydata" / "logs" / "prepare.log").is_file()
    assert cli.main(["prepare", "--data", "missing", "--params", os.devnull]) == 2


def test_cli_without_data_prepares_the_run_again_and_keeps_other_data_out(tmp_path, monkeypatch, capsys):
    """`make prepare` after a review (no DATA=) prepares the run's own data again, never MNIST into it; other
    data given for a run that holds a preparation of existing data is refused."""
    from pipeline import __main__ as cli

    make_tree(tmp_path / "mydata", {"a": 4, "b": 4})
    make_tree(tmp_path / "other", {"c": 4, "d": 4})
    monkeypatch.chdir(tmp_path)
    assert cli.main(["prepare", "--data", "mydata", "--params", os.devnull]) == 0
    marker = tmp_path / "runs" / "mydata" / prepare.MARKER
    first = json.loads(marker.read_text())
    for k, args in enumerate(([], ["--run", "runs/mydata"])):  # the last prepared run, or the one given
        write_image(tmp_path / "mydata" / "a" / f"new{k}.png", np.full((16, 16), 40 * k, np.uint8))
        assert cli.main(["prepare", *args, "--params", os.devnull]) == 0
        again = json.loads(marker.read_text())
        assert again["data"] == first["data"] == str((tmp_path / "mydata").resolve())
        assert sum(sum(c.values()) for c in again["counts"].values()) == 9 + k
    capsys.readouterr()
    assert cli.main(["prepare", "--data", "other", "--run", "runs/mydata", "--params", os.devnull]) == 2
    assert "holds a preparation of" in capsys.readouterr().err
    assert json.loads(marker.read_text())["data"] == first["data"]  # untouched
    assert cli.main(["prepare", "--run", "runs/nothing", "--params", os.devnull]) == 2


def test_cli_without_data_prepares_the_last_run_given_by_run_again(tmp_path, monkeypatch, capsys):
    """A mapping file inside a prepared folder, prepared into a run of its own (RUN=): `make prepare` then
    prepares that run again, not the folder's default run (which holds the folder's preparation)."""
    from pipeline import __main__ as cli

    make_tree(tmp_path / "photos", {"a": 4, "b": 4})
    (tmp_path / "photos" / "labels.csv").write_text(
        "path,label\n" + "".join(f"{c}/{i:03d}.png,{c}\n" for c in "ab" for i in range(3)))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["prepare", "--data", "photos", "--params", os.devnull]) == 0
    assert cli.main(["prepare", "--data", "photos/labels.csv", "--params", os.devnull]) == 2  # runs/photos: taken
    assert cli.main(["prepare", "--data", "photos/labels.csv", "--run", "runs/csvrun", "--params", os.devnull]) == 0
    capsys.readouterr()
    assert cli.main(["prepare", "--params", os.devnull]) == 0
    assert "runs/csvrun is up to date" in capsys.readouterr().err
    marker = json.loads((tmp_path / "runs" / "csvrun" / prepare.MARKER).read_text())
    assert marker["data"] == str((tmp_path / "photos" / "labels.csv").resolve())


def test_cli_a_mapping_file_then_the_folder_holding_it_is_the_same_data(tmp_path, monkeypatch):
    """DATA=pets/labels.csv, then DATA=pets (whose one mapping file it is): not refused as other data."""
    from pipeline import __main__ as cli

    for c in "ab":
        for i in range(4):
            write_image(tmp_path / "pets" / "images" / f"{c}{i}.png", np.full((16, 16), 60 * (c == "a") + 9 * i, np.uint8))
    (tmp_path / "pets" / "labels.csv").write_text(
        "filename,class\n" + "".join(f"images/{c}{i}.png,{c}\n" for c in "ab" for i in range(4)))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["prepare", "--data", "pets/labels.csv", "--params", os.devnull]) == 0
    assert cli.main(["prepare", "--data", "pets", "--params", os.devnull]) == 0


def test_cli_outside_the_project_uses_the_built_in_params(tmp_path, monkeypatch, capsys):
    """No params.toml in the working folder: the built-in defaults, said once; a params file named but
    missing is still an error."""
    from pipeline import __main__ as cli

    make_tree(tmp_path / "mydata", {"a": 4, "b": 4})
    monkeypatch.chdir(tmp_path)
    assert cli.main(["prepare", "--data", "mydata"]) == 0
    assert "the built-in defaults" in capsys.readouterr().err
    assert cli.main(["prepare", "--data", "mydata", "--params", "mine.toml"]) == 2
    assert "params file not found: mine.toml" in capsys.readouterr().err


def test_rows_without_a_split_beside_rows_with_one_go_to_train_and_the_log_says_so(caplog):
    import logging

    y = np.array([0, 1] * 10)
    given = ["test", "test", "val", "val"] + [None] * 16
    with caplog.at_level(logging.INFO):
        out = prepare.assign_splits(y, given, PrepareParams())
    assert out[:4].tolist() == ["test", "test", "val", "val"] and set(out[4:].tolist()) == {"train"}
    assert "16 item(s) without a split go to train" in caplog.text
    caplog.clear()
    assert set(prepare.assign_splits(y, [None] * 20, PrepareParams()).tolist()) == {"train", "val", "test"}
    assert "without a split" not in caplog.text  # none named: prepare splits them all
