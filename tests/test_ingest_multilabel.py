"""Several labels per image at ingest: a separator in the label column, 0/1 label columns, rows that add
up, the same bytes in several label folders, images with no label, and the task setting."""
import logging

import numpy as np
import pytest

from pipeline.data import ingest
from pipeline.shared.params import IngestParams

from conftest import write_image


def img(path, value=100):
    return write_image(path, np.full((12, 12), value, np.uint8))


def labels(listing):
    return {i.path: i.label for i in listing.items}


@pytest.mark.parametrize("sep", [";", "|"])
def test_separator_in_the_label_column_is_detected(tmp_path, caplog, sep):
    for k in range(3):
        img(tmp_path / f"{k}.png", 10 * k)
    (tmp_path / "labels.csv").write_text(f"path,label\n0.png,dog{sep}outdoor\n1.png, outdoor \n2.png,\n")
    with caplog.at_level(logging.INFO):
        listing = ingest.scan(tmp_path / "labels.csv")
    assert listing.task == "multi"
    # sorted and joined by ";"; an image without a label is allowed (a negative for every label)
    assert labels(listing) == {"0.png": "dog;outdoor", "1.png": "outdoor", "2.png": ""}
    assert not listing.rejected
    assert "several labels per image" in caplog.text


def test_zero_one_columns_one_per_label(tmp_path):
    for k in range(3):
        img(tmp_path / f"{k}.png", 10 * k)
    (tmp_path / "tags.csv").write_text("file,cat,dog,split\n0.png,1,1,train\n1.png,0,1,test\n2.png,0,0,\n")
    listing = ingest.scan(tmp_path / "tags.csv")
    assert listing.task == "multi"
    assert labels(listing) == {"0.png": "cat;dog", "1.png": "dog", "2.png": ""}
    assert [i.split for i in listing.items] == ["train", "test", None]


def test_rows_of_the_same_file_add_up(tmp_path):
    img(tmp_path / "a.png")
    img(tmp_path / "b.png", 50)
    (tmp_path / "m.csv").write_text("path,label\na.png,dog;grass\na.png,sky\na.png,dog\nb.png,sky\n")
    assert labels(ingest.scan(tmp_path / "m.csv")) == {"a.png": "dog;grass;sky", "b.png": "sky"}


def test_single_label_csv_is_unchanged_and_task_single_reads_the_cell_whole(tmp_path):
    img(tmp_path / "a.png")
    img(tmp_path / "b.png", 50)
    (tmp_path / "m.csv").write_text("path,label\na.png,cat\nb.png,dog\n")
    listing = ingest.scan(tmp_path / "m.csv")
    assert listing.task == "single" and labels(listing) == {"a.png": "cat", "b.png": "dog"}
    (tmp_path / "j.csv").write_text("path,label\na.png,rock|roll\n")
    single = ingest.scan(tmp_path / "j.csv", p=IngestParams(task="single"))
    assert single.task == "single" and labels(single) == {"a.png": "rock|roll"}
    # an empty label is still refused for single-label data
    (tmp_path / "e.csv").write_text("path,label\na.png,\nb.png,dog\n")
    assert "empty label" in ingest.scan(tmp_path / "e.csv").rejected[0][1]


def test_task_multi_with_a_plain_label_column(tmp_path):
    img(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,cat\n")
    listing = ingest.scan(tmp_path / "m.csv", p=IngestParams(task="multi"))
    assert listing.task == "multi" and labels(listing) == {"a.png": "cat"}


def test_configurable_separators(tmp_path):
    img(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,red/round\n")
    listing = ingest.scan(tmp_path / "m.csv", p=IngestParams(label_separators="/"))
    assert listing.task == "multi" and labels(listing) == {"a.png": "red;round"}
    with pytest.raises(ValueError, match="label_separators"):
        IngestParams(label_separators="ab")


def test_bad_rows_still_reported_in_multi_label_tables(tmp_path):
    img(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,x;y\n,x\n../outside.png,y\nmissing.png,x\n")
    listing = ingest.scan(tmp_path / "m.csv")
    reasons = " | ".join(r for _, r in listing.rejected)
    assert "empty path" in reasons and "escapes the dataset root" in reasons and "not found" in reasons
    assert labels(listing) == {"a.png": "x;y"}


def test_folders_same_bytes_in_several_label_folders_is_one_image(tmp_path):
    both = np.arange(144, dtype=np.uint8).reshape(12, 12)
    write_image(tmp_path / "dog" / "photo1.png", both)
    write_image(tmp_path / "outdoor" / "copy_of_photo1.png", both)
    img(tmp_path / "dog" / "photo2.png", 30)
    img(tmp_path / "outdoor" / "photo3.png", 200)
    multi = ingest.scan(tmp_path, p=IngestParams(task="multi"))
    assert multi.task == "multi"
    assert labels(multi) == {"dog/photo1.png": "dog;outdoor", "dog/photo2.png": "dog",
                             "outdoor/photo3.png": "outdoor"}
    assert multi.stats is not None and len(multi.stats) == len(multi.items)
    # without the setting, folders stay single-label (the audit reports the copy as a conflict)
    single = ingest.scan(tmp_path)
    assert single.task == "single" and len(single.items) == 4


def test_label_names_and_multi_hot():
    joined = ["a;b", "", "b", "a;b;c"]
    assert ingest.label_names(joined) == ["a", "b", "c"]
    y = ingest.multi_hot(joined, {"a": 0, "b": 1, "c": 2})
    assert y.tolist() == [[1, 1, 0], [0, 0, 0], [0, 1, 0], [1, 1, 1]] and y.dtype == np.uint8
