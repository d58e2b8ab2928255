"""The run folder's catalog (pipeline.shared.runfolder): fingerprints, markers, the default run, Prepared."""
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.preprocess import load_image
from pipeline.shared import runfolder as rf
from pipeline.shared.errors import StageError, UserError
from pipeline.shared.params import SIZE_BOUNDS, IngestParams, PrepareParams, PreprocessParams, TrainParams

from conftest import make_tree


# ---------------------------------------------------------------- fingerprints
def test_fingerprint_changes_with_each_declared_dependency_and_only_then(tmp_path):
    dep = tmp_path / "dep.txt"
    dep.write_text("one")
    base = {"upstream": ["abc"], "params": [TrainParams()], "files": [dep], "extra": [1, "x"]}
    fp = rf.fingerprint("train", **base)
    assert len(fp) == 64 and fp == rf.fingerprint("train", **base)  # stable across calls
    # the same content again (rewritten, newer mtime) is the same dependency
    dep.write_text("one")
    os.utime(dep, (1, 1))
    assert rf.fingerprint("train", **base) == fp
    # a params dataclass and its dict are the same params
    assert rf.fingerprint("train", **{**base, "params": [dataclasses.asdict(TrainParams())]}) == fp
    changed = {
        "stage": rf.fingerprint("evaluate", **base),
        "upstream": rf.fingerprint("train", **{**base, "upstream": ["abd"]}),
        "no upstream": rf.fingerprint("train", **{**base, "upstream": [None]}),
        "param field": rf.fingerprint("train", **{**base, "params": [TrainParams(batch_size=255)]}),
        "extra": rf.fingerprint("train", **{**base, "extra": [2, "x"]}),
        "file missing": rf.fingerprint("train", **{**base, "files": [tmp_path / "absent.txt"]}),
    }
    dep.write_text("two")
    changed["file content"] = rf.fingerprint("train", **base)
    for what, value in changed.items():
        assert value != fp, what
    assert len(set(changed.values())) == len(changed)  # and all differ from each other


# ---------------------------------------------------------------- markers
def test_markers_and_the_freshness_rule(tmp_path):
    marker, out = tmp_path / "stage.json", tmp_path / "out.npy"
    assert rf.read_marker(marker) == {} and not rf.is_current(marker, "fp")
    record = rf.write_marker(marker, "fp", counts={"a": 1})
    assert record == {"counts": {"a": 1}, "fingerprint": "fp"} == rf.read_marker(marker)
    assert rf.is_current(marker, "fp")
    assert not rf.is_current(marker, "other")
    assert not rf.is_current(marker, "fp", [out])  # an output is missing
    out.write_bytes(b"")
    assert rf.is_current(marker, "fp", [out])
    for bad in ("{not json", "[1, 2]", '"fp"', "\xff"):
        marker.write_text(bad, encoding="latin-1")
        assert rf.read_marker(marker) == {} and not rf.is_current(marker, "fp"), bad


def test_require_names_the_make_target(tmp_path):
    with pytest.raises(StageError, match=r"no finished train stage \(model.json missing\); run `make train`"):
        rf.require(tmp_path, "model.json", "train")
    rf.write_marker(tmp_path / "model.json", "abc", epochs=3)
    assert rf.require(tmp_path, "model.json", "train") == {"epochs": 3, "fingerprint": "abc"}


# ---------------------------------------------------------------- which run folder
@pytest.mark.parametrize("data, run", [
    ("datasets/mnist", "runs/mnist"),
    ("datasets/mnist/", "runs/mnist"),
    ("pets/labels.csv", "runs/pets"),
    ("data/pets/train.TSV", "runs/pets"),
])
def test_default_run(data, run):
    assert rf.default_run(data) == Path(run)


def test_default_run_names_the_working_folder_itself(tmp_path, monkeypatch):
    """``.``, ``..`` and a mapping file in the working folder are named after the folders they are."""
    work = tmp_path / "pets"
    work.mkdir()
    monkeypatch.chdir(work)
    assert rf.default_run(".") == Path("runs/pets") == rf.default_run("labels.csv") == rf.default_run("./labels.csv")
    assert rf.default_run("..") == Path("runs") / tmp_path.name


def test_resolve_run_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # LAST_RUN is relative to the working folder
    with pytest.raises(UserError, match=r"make prepare DATA="):
        rf.resolve_run(None)
    last = Path("runs") / "pets"
    last.mkdir(parents=True)
    rf.remember_run(last)
    assert rf.LAST_RUN.read_text().strip() == str(last)
    assert rf.resolve_run(None, stage="train") == last                      # the last run prepared
    assert rf.resolve_run(None, "datasets/mnist") == Path("runs/mnist")     # data beats the last run
    assert rf.resolve_run("runs/x", "datasets/mnist") == Path("runs/x")     # an explicit run beats both
    last.rmdir()  # the remembered run is gone: no silent default
    with pytest.raises(UserError, match="make prepare"):
        rf.resolve_run(None)


# ---------------------------------------------------------------- label maps
def test_labels_from_map():
    assert rf.labels_from_map({"b": 1, "a": 0, "c": 2}, "x") == ["a", "b", "c"]
    for bad, match in [([], "non-empty JSON object"), ({}, "non-empty JSON object"), ("a", "non-empty"),
                       ({"a": 0, "b": 2}, r"indices must be 0\.\.1"), ({"a": 1, "b": 1}, r"0\.\.1"),
                       ({"a": 0, "b": "1"}, r"0\.\.1"), ({"a": 1}, r"0\.\.0")]:
        with pytest.raises(StageError, match=f"where.json: .*{match}"):
            rf.labels_from_map(bad, "where.json")


# ---------------------------------------------------------------- Prepared
SPEC = {"cat": 9, "dog": 12, "eel": 7}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from pipeline.stages.prepare import prepare

    root = tmp_path_factory.mktemp("prepared")
    data = make_tree(root / "data", SPEC)
    run = root / "run"
    prepare(data, run, PrepareParams(workers=1, seed=7), PreprocessParams(), ip=IngestParams(imbalance_ratio=3.0))
    return data, run


def test_prepared_open_exposes_the_run(prepared):
    data, run = prepared
    p = rf.Prepared.open(run)
    assert p.run == run and p.labels == sorted(SPEC) and p.label_map == {k: i for i, k in enumerate(sorted(SPEC))}
    assert p.seed == 7 and p.imbalance_ratio == 3.0
    assert p.fingerprint == json.loads((run / rf.PREPARE).read_text())["fingerprint"] != ""
    # "auto" resolved from the data: gray images, 16 px (make_tree's size) kept within the bounds
    cfg = p.preprocess
    assert cfg.resolved and cfg.color == "grayscale"
    assert cfg.size == (min(max(16, SIZE_BOUNDS[0]), SIZE_BOUNDS[1]),) * 2
    assert {"color", "size", "invert"} <= set(p.choices)
    assert p.params["seed"] == 7 and p.dataset() is not None
    rows = p.manifest()
    assert len(rows) == sum(SPEC.values())
    for split in rf.SPLITS:
        x, y, paths = p.x(split), p.y(split), p.paths(split)
        mine = [r for r in rows if r.split == split]
        assert len(x) == len(y) == len(paths) == len(mine)
        assert x.shape[1:] == cfg.input_shape
        assert list(y) == [p.label_map[r.label] for r in mine]
        for k, r in enumerate(mine):
            assert Path(r.path).parent.name == r.label
            np.testing.assert_array_equal(x[k], load_image(r.path, cfg))
    assert p.paths(*rf.SPLITS) == [r.path for s in rf.SPLITS for r in rows if r.split == s]
    assert sorted(p.paths(*rf.SPLITS)) == sorted(str(f) for f in data.rglob("*.png"))
    np.testing.assert_array_equal(p.x("train", mmap=False), p.x("train"))


def test_prepared_check_bundle(prepared):
    _, run = prepared
    p = rf.Prepared.open(run)
    p.check_bundle(list(p.labels), p.preprocess.input_shape, "the model")  # a match: no error
    other = ["cat", "dog", "fox"]
    with pytest.raises(StageError) as err:
        p.check_bundle(other, p.preprocess.input_shape, "the model")
    msg = str(err.value)
    assert "other labels" in msg and "make train" in msg
    assert all(repr(x) in msg for x in other + p.labels)
    shape = (p.preprocess.input_shape[0] + 4, p.preprocess.input_shape[1], 3)
    with pytest.raises(StageError) as err:
        p.check_bundle(p.labels, shape, "the model")
    assert str(shape) in str(err.value) and str(tuple(p.preprocess.input_shape)) in str(err.value)


def test_prepared_open_refuses_an_unfinished_run(tmp_path):
    with pytest.raises(StageError, match="make prepare"):
        rf.Prepared.open(tmp_path)
    assert not rf.is_prepared(tmp_path)


def test_suspects_of_an_earlier_preparation_are_stale(tmp_path):
    rf.write_marker(tmp_path / rf.PREPARE, "prep-2")
    assert not rf.stale_suspects(tmp_path)  # none yet
    rf.write_marker(tmp_path / rf.SUSPECTS_MARKER, "s")  # a marker from before it recorded the preparation
    assert not rf.stale_suspects(tmp_path)
    rf.write_marker(tmp_path / rf.SUSPECTS_MARKER, "s", prepared="prep-2")
    assert not rf.stale_suspects(tmp_path)
    rf.write_marker(tmp_path / rf.SUSPECTS_MARKER, "s", prepared="prep-1")
    assert rf.stale_suspects(tmp_path)
