"""corrections.csv: relabel, exclude or add a class at the next prepare; the originals are never touched."""
import csv
import hashlib
import json
import os
from pathlib import Path

import pytest

from pipeline.shared.params import PrepareParams, PreprocessParams
from pipeline.stages import prepare

from conftest import make_tree

CFG = PreprocessParams(size=(16, 16))


def checksums(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_relabel_exclude_and_new_class_without_touching_the_originals(tmp_path):
    data = make_tree(tmp_path / "data", {"cat": 8, "dog": 8})
    before = checksums(data)
    run = tmp_path / "run"
    (tmp_path / "fix.csv").write_text("path,label,suggested,score,reason\n"
                                      "cat/000.png,dog,dog,0.9,from suspects\n"
                                      f"{data / 'cat' / '001.png'},exclude,,,\n"  # the manifest's full path works too
                                      "dog/002.png,new:fox,,,\n"
                                      "dog/003.png,dog,,,\n")  # already right: nothing to do
    s = prepare.prepare(data, run, PrepareParams(workers=1, test_size=0.25), CFG, corrections=tmp_path / "fix.csv")
    assert checksums(data) == before  # nothing under DATA was written
    fixed = s.dataset["corrections"]
    assert (fixed["relabeled"], fixed["excluded"], fixed["new_labels"]) == (2, 1, ["fox"])
    manifest = {r["path"].rsplit("/", 2)[-2] + "/" + r["path"].rsplit("/", 1)[-1]: r for r in rows(run / "manifest.csv")}
    assert manifest["cat/000.png"]["label"] == "dog" and "relabeled from cat" in manifest["cat/000.png"]["note"]
    assert manifest["dog/002.png"]["label"] == "fox" and "cat/001.png" not in manifest
    assert json.loads((run / "labels.json").read_text()) == {"cat": 0, "dog": 1, "fox": 2}
    assert ("cat/001.png", "excluded by fix.csv line 3") in {(r["path"], r["reason"]) for r in rows(run / "rejected.csv")}


def test_the_run_folders_corrections_file_is_picked_up_and_a_change_redoes_prepare(tmp_path):
    data = make_tree(tmp_path / "data", {"a": 6, "b": 6})
    run = tmp_path / "run"
    assert prepare.prepare(data, run, PrepareParams(workers=1), CFG).dataset["corrections"] is None
    (run / "corrections.csv").write_text("path,label\na/000.png,b\n")
    s = prepare.prepare(data, run, PrepareParams(workers=1), CFG)
    assert not s.skipped and s.dataset["corrections"]["relabeled"] == 1
    assert prepare.prepare(data, run, PrepareParams(workers=1), CFG).skipped
    (run / "corrections.csv").write_text("path,label\na/000.png,exclude\n")
    assert prepare.prepare(data, run, PrepareParams(workers=1), CFG).dataset["corrections"]["excluded"] == 1


def test_a_decision_whose_image_is_gone_is_reported_not_fatal(tmp_path):
    """Decisions made on an earlier preparation still apply; one whose image left the dataset is reported."""
    data = make_tree(tmp_path / "data", {"a": 6, "b": 6})
    (tmp_path / "c.csv").write_text("path,label,decision\na/000.png,b,relabel\nnope/1.png,a,relabel\n"
                                    "a/001.png,a,keep\n")
    s = prepare.prepare(data, tmp_path / "run", PrepareParams(workers=1), CFG, corrections=tmp_path / "c.csv")
    fixed = s.dataset["corrections"]
    assert fixed["relabeled"] == 1 and fixed["kept"] == 1 and fixed["gone"] == ["nope/1.png"] and fixed["gone_count"] == 1


def test_a_review_changes_labels_never_the_split(tmp_path):
    """Relabeling and excluding images leaves every other image in its split (accuracies before and
    after a review are measured on the same test images)."""
    data = make_tree(tmp_path / "data", {"a": 20, "b": 20, "c": 20})
    run = tmp_path / "run"
    prepare.prepare(data, run, PrepareParams(workers=1), CFG)
    before = {r["path"]: r["split"] for r in csv.DictReader(open(run / "manifest.csv"))}
    (run / "corrections.csv").write_text("path,label\na/000.png,b\na/001.png,c\nb/002.png,exclude\nc/003.png,exclude\n")
    prepare.prepare(data, run, PrepareParams(workers=1), CFG)
    after = {r["path"]: r["split"] for r in csv.DictReader(open(run / "manifest.csv"))}
    assert {p: before[p] for p in after} == after and len(after) == len(before) - 2


def test_images_labeled_in_review_are_added_to_training_where_they_are(tmp_path):
    from pipeline.shared import runfolder as rf

    data = make_tree(tmp_path / "data", {"a": 6, "b": 6})
    new = make_tree(tmp_path / "new", {"x": 3}, seed=7)  # elsewhere; the files are not moved or copied
    files = sorted((new / "x").iterdir())
    run = tmp_path / "run"
    run.mkdir()
    (run / rf.LABELED).write_text("path,label\n" + "".join(f"{f.resolve()},a\n" for f in files[:2])
                                  + f"{tmp_path / 'gone.png'},b\n")
    s = prepare.prepare(data, run, PrepareParams(workers=1), CFG)
    assert s.dataset["labeled"]["added"] == 2 and s.dataset["labeled"]["gone_count"] == 1
    rows = [r for r in csv.DictReader(open(run / "manifest.csv")) if "labeled in review" in r["note"]]
    assert len(rows) == 2 and {r["split"] for r in rows} == {"train"} and {r["label"] for r in rows} == {"a"}
    assert sorted(Path(r["path"]).resolve() for r in rows) == [f.resolve() for f in files[:2]]
    assert sorted(p.name for p in (new / "x").iterdir()) == [f.name for f in files]  # untouched


def test_a_later_decision_on_an_image_labeled_in_review_applies(tmp_path):
    """An image labeled in review from a folder beside DATA: manifest.csv gives its normalised path (not
    DATA/../...), and a later review's decision on that path (exclude, relabel) applies at the next prepare."""
    from pipeline.shared import runfolder as rf

    data = make_tree(tmp_path / "data", {"a": 6, "b": 6})
    new = make_tree(tmp_path / "new", {"x": 2}, seed=7)
    files = sorted((new / "x").iterdir())
    run = tmp_path / "run"
    run.mkdir()
    (run / rf.LABELED).write_text("path,label\n" + "".join(f"{f.resolve()},a\n" for f in files))
    prepare.prepare(data, run, PrepareParams(workers=1), CFG)
    labeled = [r["path"] for r in rows(run / "manifest.csv") if "labeled in review" in r["note"]]
    assert sorted(labeled) == sorted(str(f.resolve()) for f in files) and not any("/../" in p for p in labeled)
    (run / "corrections.csv").write_text(f"path,label\n{labeled[0]},exclude\n{labeled[1]},b\n")
    s = prepare.prepare(data, run, PrepareParams(workers=1), CFG)
    fixed = s.dataset["corrections"]
    assert (fixed["excluded"], fixed["relabeled"], fixed["gone_count"]) == (1, 1, 0)
    now = {r["path"]: r["label"] for r in rows(run / "manifest.csv")}
    assert labeled[0] not in now and now[labeled[1]] == "b"


@pytest.mark.parametrize("text, match", [
    ("file,label\n", "must name the columns path,label"),
    ("path,label\na/000.png,bb\n", r"line 2: label 'bb' is not a label of this dataset \(write new:bb"),
    ("path,label\na/000.png,\n", "line 2: empty label"),
    ("path,label\na/000.png,b\na/000.png,exclude\n", "line 3: 'a/000.png' is also on line 2"),
    ("path,label\na/000.png,new:\n", "line 2: new: needs a class name"),
])
def test_bad_rows_are_named_by_line(tmp_path, text, match):
    data = make_tree(tmp_path / "data", {"a": 4, "b": 4})
    (tmp_path / "c.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        prepare.prepare(data, tmp_path / "run", PrepareParams(workers=1), CFG, corrections=tmp_path / "c.csv")
    with pytest.raises(ValueError, match="corrections file not found"):
        prepare.prepare(data, tmp_path / "run", PrepareParams(workers=1), CFG, corrections=tmp_path / "none.csv")


def test_the_accuracy_before_a_review_stays_the_one_before_its_first_round(tmp_path):
    """The report counts every decision so far, so its "before" is the evaluation before the first of them;
    a later round keeps it (and says what the accuracy was before that round)."""
    from pipeline.shared import artifacts
    from pipeline.shared import runfolder as rf
    from pipeline.stages.report.sections import review_section

    data = make_tree(tmp_path / "data", {"a": 6, "b": 6})
    run = tmp_path / "run"
    prepare.prepare(data, run, PrepareParams(workers=1), CFG)
    artifacts.write_json(run / rf.METRICS, {"accuracy": 0.80, "n": 10})  # an evaluation before any review
    (run / "corrections.csv").write_text("path,label\na/000.png,b\n")
    first = prepare.prepare(data, run, PrepareParams(workers=1), CFG).dataset["review"]
    assert first["accuracy_before"] == 0.80 and first["rounds"] == 1
    artifacts.write_json(run / rf.METRICS, {"accuracy": 0.90})  # retrained after the first round
    (run / "corrections.csv").write_text("path,label\na/000.png,b\na/001.png,exclude\n")
    second = prepare.prepare(data, run, PrepareParams(workers=1), CFG).dataset
    assert second["review"]["accuracy_before"] == 0.80 and second["review"]["rounds"] == 2
    assert second["review"]["accuracy_last_round"] == 0.90
    html = review_section(second, {"accuracy": 0.95})
    assert "before: <b>80.00%</b>" in html and "after: <b>95.00%</b>" in html and "2 rounds" in html and "90.00%" in html
    assert "(the same test split:" in html
    fewer = review_section(second, {"accuracy": 0.95, "n": 9})  # a test image excluded by the review
    assert "the same test split less the 1 image(s) the review excluded (10 then, 9 now)" in fewer


def test_decisions_on_relative_paths_apply_when_the_data_is_prepared_again_without_data(tmp_path, monkeypatch):
    """The review writes manifest paths (relative to where make runs); preparing the run again without DATA
    keeps DATA's form and applies them, and they also apply against DATA given as an absolute path."""
    monkeypatch.chdir(tmp_path)
    make_tree(tmp_path / "data", {"a": 6, "b": 6})
    run = tmp_path / "run"
    prepare.prepare(Path("data"), run, PrepareParams(workers=1), CFG)
    (run / "corrections.csv").write_text("path,label\ndata/a/000.png,b\ndata/a/001.png,exclude\n")
    again, _, _ = prepare._data_of(str(run))
    assert again == Path("data")  # as given, not /abs/path/data: the manifest's paths stay as they were
    for data in (again, tmp_path / "data"):
        fixed = prepare.prepare(data, run, PrepareParams(workers=1), CFG).dataset["corrections"]
        assert (fixed["relabeled"], fixed["excluded"], fixed.get("gone_count", 0)) == (1, 1, 0), data


def test_the_model_before_the_review_is_also_scored_by_the_reviewed_test_labels(tmp_path):
    """A review that relabels a test image changes the test figures without any model change: the report says how
    the model before the review scores on the reviewed labels, so that the before/after is not all credited to it."""
    import csv

    import numpy as np

    from pipeline.shared import artifacts
    from pipeline.shared import runfolder as rf
    from pipeline.stages.report.sections import review_section

    data = make_tree(tmp_path / "data", {"a": 10, "b": 10})
    run = tmp_path / "run"
    prepare.prepare(data, run, PrepareParams(workers=1), CFG)
    with open(run / "manifest.csv", newline="") as fh:
        test = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    wrong = next(r for r in test if r["label"] == "a")  # the old model says b: the review agrees
    said = ["b" if r is wrong else r["label"] for r in test]
    np.save(run / rf.PROBS, np.array([[1.0, 0.0] if s == "a" else [0.0, 1.0] for s in said], np.float32))
    artifacts.write_json(run / rf.METRICS, {"accuracy": 1 - 1 / len(test), "n": len(test)})
    relative = os.path.relpath(wrong["path"], data)
    (run / "corrections.csv").write_text(f"path,label\n{relative},b\n")
    ds = prepare.prepare(data, run, PrepareParams(workers=1), CFG).dataset
    assert ds["review"]["accuracy_before_relabeled"] == 1.0
    html = review_section(ds, {"accuracy": 1.0, "n": len(test)})
    assert "scored by the reviewed test labels: <b>100.00%</b>" in html
