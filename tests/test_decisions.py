"""The review's decisions on disk: the log is the truth, the files prepare reads follow it, a torn last
line is dropped, hand edits of corrections.csv are taken in, undo survives a restart."""
import csv

from pipeline.data.decisions import Decisions
from pipeline.shared import runfolder as rf


def rows(path):
    with open(path, newline="") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


def test_decisions_files_and_undo_across_instances(tmp_path):
    d = Decisions(tmp_path)
    d.decide("i1", "a/1.png", "a", "relabel", "b")
    d.decide("i2", "a/2.png", "a", "exclude", "")
    d.decide("i3", "a/3.png", "a", "keep", "")
    d.decide("n1", "/new/x.png", "", "label", "a")
    d.decide("n2", "/new/y.png", "", "skip", "")
    got = rows(tmp_path / rf.CORRECTIONS)
    assert {p: (r["label"], r["decision"]) for p, r in got.items()} == {
        "a/1.png": ("b", "relabel"), "a/2.png": ("exclude", "exclude"), "a/3.png": ("a", "keep")}
    assert {p: r["label"] for p, r in rows(tmp_path / rf.LABELED).items()} == {"/new/x.png": "a"}
    again = Decisions(tmp_path)  # a restart: the same state, and undo goes on from it
    assert again.undo().path == "/new/y.png" and again.undo().path == "/new/x.png"
    assert rows(tmp_path / rf.LABELED) == {}
    d.decide("i1", "a/1.png", "a", "relabel", "c")  # a later decision about the same image wins
    assert rows(tmp_path / rf.CORRECTIONS)["a/1.png"]["label"] == "c"


def test_a_torn_last_line_is_dropped(tmp_path):
    d = Decisions(tmp_path)
    d.decide("i1", "a/1.png", "a", "exclude", "")
    with open(tmp_path / rf.REVIEW_LOG, "a") as fh:
        fh.write('{"seq": 1, "id": "i2", "path": "a/2.pn')  # a kill in the middle of a write
    again = Decisions(tmp_path)
    assert list(again.state()) == ["a/1.png"]
    assert (tmp_path / rf.REVIEW_LOG).read_text().endswith("\n")
    again.decide("i2", "a/2.png", "a", "keep", "")
    assert list(Decisions(tmp_path).state()) == ["a/1.png", "a/2.png"]


def test_hand_edits_of_corrections_are_taken_in(tmp_path):
    (tmp_path / rf.CORRECTIONS).write_text("path,label\na/9.png,b\n")  # written by hand before any review
    d = Decisions(tmp_path)
    d.decide("i1", "a/1.png", "a", "exclude", "")
    assert set(rows(tmp_path / rf.CORRECTIONS)) == {"a/9.png", "a/1.png"}
    assert d.undo().path == "a/1.png" and d.undo() is None  # hand rows are not the review's to undo
    (tmp_path / rf.CORRECTIONS).write_text("path,label\na/9.png,c\na/5.png,exclude\n")  # edited between reviews
    Decisions(tmp_path)  # reading the store takes the hand edits in
    assert {p: r["label"] for p, r in rows(tmp_path / rf.CORRECTIONS).items()} == {"a/9.png": "c", "a/5.png": "exclude"}
    (tmp_path / rf.CORRECTIONS).write_text("path,label\na/5.png,exclude\n")  # a row deleted by hand
    assert set(Decisions(tmp_path).state()) == {"a/5.png"}
