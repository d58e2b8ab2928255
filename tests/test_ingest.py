import os

import pytest

from pipeline.data import ingest

from conftest import make_tree, write_image
import numpy as np


def test_flat_label_folders_sorted_with_nesting(tmp_path):
    make_tree(tmp_path, {"dog": 2, "cat": 1})
    write_image(tmp_path / "cat" / "deep" / "er" / "x.png", np.zeros((8, 8), np.uint8))
    listing = ingest.scan(tmp_path)
    assert [(i.path, i.label, i.split) for i in listing.items] == [
        ("cat/000.png", "cat", None), ("cat/deep/er/x.png", "cat", None),
        ("dog/000.png", "dog", None), ("dog/001.png", "dog", None)]
    assert not listing.has_splits and listing.rejected == []


def test_split_folders_are_honoured(tmp_path):
    make_tree(tmp_path, {"a": 2, "b": 2}, split="train")
    make_tree(tmp_path, {"a": 1, "b": 1}, split="test")
    make_tree(tmp_path, {"a": 1}, split="val")
    listing = ingest.scan(tmp_path)
    assert listing.has_splits
    assert sorted({(i.split, i.label) for i in listing.items}) == [
        ("test", "a"), ("test", "b"), ("train", "a"), ("train", "b"), ("val", "a")]


def test_stray_files_hidden_files_and_empty_classes_are_reported(tmp_path):
    make_tree(tmp_path, {"a": 1, "b": 1})
    (tmp_path / "README.txt").write_text("hi")
    (tmp_path / "a" / ".DS_Store").write_text("x")
    (tmp_path / "empty").mkdir()
    listing = ingest.scan(tmp_path)
    assert len(listing.items) == 2
    assert ("README.txt", "not inside a label folder") in listing.rejected
    assert ("empty", "empty label folder") in listing.rejected
    assert listing.hidden == ["a/.DS_Store"]  # passed over, and counted (prepare names them)


def test_hidden_entries_beside_split_folders_are_counted_too(tmp_path):
    for split in ("train", "test"):
        make_tree(tmp_path / split, {"a": 2, "b": 2})
    (tmp_path / ".DS_Store").write_bytes(b"mac")
    (tmp_path / "train" / ".DS_Store").write_bytes(b"mac")
    listing = ingest.scan(tmp_path)
    assert len(listing.items) == 8 and sorted(listing.hidden) == [".DS_Store", "train/.DS_Store"]


def test_hidden_folders_and_files_are_passed_over_and_listed(tmp_path):
    make_tree(tmp_path, {"a": 2, "b": 2})
    (tmp_path / ".cache").mkdir()
    (tmp_path / "a" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "a" / ".ipynb_checkpoints" / "x.png").write_bytes(b"png")
    (tmp_path / "b" / "._0.png").write_bytes(b"mac")
    listing = ingest.scan(tmp_path)
    assert len(listing.items) == 4 and sorted(listing.hidden) == [".cache", "a/.ipynb_checkpoints", "b/._0.png"]


def test_unreadable_folder_is_reported_not_fatal(tmp_path, monkeypatch):
    make_tree(tmp_path, {"a": 1, "b": 1})
    locked = tmp_path / "b" / "locked"
    locked.mkdir()
    real_scandir = os.scandir

    def scandir(path="."):  # permissions cannot lock root out, so simulate EACCES
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    listing = ingest.scan(tmp_path)
    assert ("b/locked", "unreadable folder: Permission denied") in listing.rejected
    assert len(listing.items) == 2


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="dataset not found"):
        ingest.scan(tmp_path / "nope")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="must be a folder or a .csv"):
        ingest.scan(tmp_path / "f.png")
    with pytest.raises(ValueError, match="needs a directory"):
        ingest.scan(tmp_path / "f.png", layout="folders")
    with pytest.raises(ValueError, match="unknown layout"):
        ingest.scan(tmp_path, layout="weird")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="dataset is empty"):
        ingest.scan(tmp_path / "empty")


def test_a_label_written_decomposed_is_the_same_label(tmp_path):
    """macOS writes 'triángulo' decomposed (NFD): one class with the composed name, not two that look the same."""
    import unicodedata

    composed = "triángulo"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    img = np.zeros((8, 8), np.uint8)
    for label in (composed, decomposed, "circle"):  # two folders that look the same
        write_image(tmp_path / "folders" / label / "a.png", img)
    for name in (f"{composed}_001.png", f"{decomposed}_002.png", "circle_003.png"):
        write_image(tmp_path / "files" / name, img)
    for listing in (ingest.scan(tmp_path / "folders", "folders"), ingest.scan(tmp_path / "files", "filenames")):
        assert sorted(it.label for it in listing.items) == ["circle", composed, composed]
    assert ingest.nfc(decomposed) == composed and ingest.nfc("cat") == "cat"
