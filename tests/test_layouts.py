"""The four layouts: folders (above, in test_ingest), filenames, csv and pixels; auto-detection."""
import os

import numpy as np
import pytest

from pipeline.data import ingest
from pipeline.shared.params import IngestParams

from conftest import make_tree, write_image

P = IngestParams()


def img(path, value=100, size=12):
    return write_image(path, np.full((size, size), value, np.uint8))


# ---------------------------------------------------------------- filenames
@pytest.mark.parametrize("name, label", [
    ("5_00001.png", "5"), ("00001_5.png", "5"), ("cat.123.jpg", "cat"), ("dog-7.png", "dog"),
    # labels holding delimiters: a numeric id at the start or the end, the rest is the label
    ("00123_T-shirt_top.png", "T-shirt_top"), ("Ankle_boot_00042.png", "Ankle_boot"),
    ("golden retriever 12.jpg", "golden retriever"), ("0001__bird.png", "bird"), ("00012_at sign.png", "at sign"),
    # a file manager's copy of a file is named like it
    ("0042_cat (1).png", "cat"), ("cat_12 - Copy.png", "cat"), ("cat_12 - Copy (2).jpg", "cat"),
    ("cat_12 copy 2.png", "cat"), ("cat (1).png", None),
    # ambiguous: never guessed
    ("12_34.png", None), ("cat_dog.png", None), ("a_b_c.png", None), ("plain.png", None), ("12_cat_34.png", None),
    ("1_2_3.png", None), ("7.png", None),
    # another number beside the id (which one is the id?), a camera's own name: never guessed either
    ("IMG_20230101_120000.png", None), ("cat_2023-05-01.png", None), ("cat-01-02.png", None), ("dog-7-2.png", None),
    ("class_1_0001.png", None), ("IMG_1234.JPG", None), ("DSC_0042.JPG", None), ("PXL_20240102.jpg", None),
    ("img_0001.png", "img"), ("box_3d_001.png", "box_3d"), ("T-shirt_2_top_001.png", "T-shirt_2_top"),
    # an extension given twice
    ("cat_007.png.png", "cat"), ("00012_dog.jpg.jpeg", "dog")])
def test_default_filename_rule(name, label):
    assert ingest.label_from_name(name, P) == label


def test_filename_regex_and_delimiter():
    rx = IngestParams(filename_regex=r"^img_(?P<label>[a-z]+)_\d+")
    assert ingest.label_from_name("img_cat_001.png", rx) == "cat"
    assert ingest.label_from_name("other.png", rx) is None
    delim = IngestParams(filename_delimiter="__", filename_position=-1)
    assert ingest.label_from_name("x__y__zebra.png", delim) == "zebra"
    assert ingest.label_from_name("nodelim.png", IngestParams(filename_delimiter="_", filename_position=3)) is None


def test_regex_without_label_group_is_a_clear_error():
    with pytest.raises(ValueError, match=r"named group \(\?P<label>"):
        IngestParams(filename_regex=r"(\d+)_")
    with pytest.raises(ValueError, match="not a valid regex"):
        IngestParams(filename_regex=r"(")


def test_filenames_layout_detected_and_unmatched_reported(tmp_path):
    for name in ("3_001.png", "3_002.png", "7_003.png", "mystery.png"):
        img(tmp_path / name)
    listing = ingest.scan(tmp_path)
    assert listing.layout == "filenames"
    assert [(i.path, i.label) for i in listing.items] == [("3_001.png", "3"), ("3_002.png", "3"), ("7_003.png", "7")]
    assert listing.rejected[0][0] == "mystery.png" and "gives no label" in listing.rejected[0][1]


def test_files_named_by_label_beside_one_sub_folder_are_the_filenames_layout(tmp_path):
    """One sub-folder would be one class (no classifier): the files beside it carry the labels."""
    for name in ("circle_0.png", "circle_1.png", "square_0.png", "square_1.png"):
        img(tmp_path / name)
    img(tmp_path / "sub" / "square_2.png")
    (tmp_path / "notes.txt").write_text("not counted")
    layout, why = ingest.detect_layout(tmp_path)
    assert layout == "filenames" and "beside one sub-folder (sub)" in why
    img(tmp_path / "other" / "x.png")  # two sub-folders: label folders, as before
    assert ingest.detect_layout(tmp_path)[0] == "folders"


def test_filenames_with_split_folders(tmp_path):
    img(tmp_path / "train" / "cat.1.png")
    img(tmp_path / "train" / "dog.2.png")
    img(tmp_path / "test" / "cat.3.png")
    listing = ingest.scan(tmp_path)
    assert listing.layout == "filenames"
    assert [(i.path, i.label, i.split) for i in listing.items] == [
        ("test/cat.3.png", "cat", "test"), ("train/cat.1.png", "cat", "train"), ("train/dog.2.png", "dog", "train")]


# ---------------------------------------------------------------- csv
def test_csv_label_and_path_columns_go_by_their_common_names(tmp_path):
    # a folder holding images/ and a mapping file with `filename,class`: a mapping file, not a label folder
    for name in ("a", "b", "c"):
        img(tmp_path / "images" / f"{name}.png")
    (tmp_path / "labels.csv").write_text("filename,class\nimages/a.png,cat\nimages/b.png,dog\nimages/c.png,dog\n")
    listing = ingest.scan(tmp_path)
    assert listing.layout == "csv" and [(i.path, i.label) for i in listing.items] == [
        ("images/a.png", "cat"), ("images/b.png", "dog"), ("images/c.png", "dog")]
    (tmp_path / "labels.csv").write_text("file_name,category,label\nimages/a.png,x,cat\nimages/b.png,y,dog\n")
    assert [i.label for i in ingest.scan(tmp_path / "labels.csv").items] == ["cat", "dog"]  # `label` first
    (tmp_path / "labels.csv").write_text("filename,kind\nimages/a.png,cat\n")
    with pytest.raises(ValueError, match="csv_label_column"):
        ingest.scan(tmp_path / "labels.csv")


def test_csv_layout_sniffed_delimiter_split_column_and_auto_detect(tmp_path):
    img(tmp_path / "images" / "a.png")
    img(tmp_path / "images" / "b.png")
    img(tmp_path / "images" / "c.png")
    f = tmp_path / "labels.tsv"
    f.write_text("file\tclass\tsplit\nimages/a.png\tcat\ttrain\nimages/b.png\tdog\tTest\nimages/c.png\tdog\t\n")
    listing = ingest.scan(f, p=IngestParams(csv_label_column="class"))
    assert listing.layout == "csv" and listing.root == tmp_path
    assert [(i.path, i.label, i.split) for i in listing.items] == [
        ("images/a.png", "cat", "train"), ("images/b.png", "dog", "test"), ("images/c.png", "dog", None)]
    g = tmp_path / "semi.csv"
    g.write_text("label;path\ncat;images/a.png\n")
    assert [(i.path, i.label) for i in ingest.scan(g).items] == [("images/a.png", "cat")]


def test_csv_rows_are_checked_one_by_one(tmp_path):
    root = tmp_path / "ds"
    img(root / "ok.png")
    img(root / "twice.png")
    img(root / "fight.png")
    img(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "link_out.png")
    rows = [
        "path,label",
        "ok.png,a",
        f"{tmp_path / 'outside.png'},a",     # absolute
        "../outside.png,a",                   # escapes with ..
        "link_out.png,a",                     # symlink out of the root
        "missing.png,a",                      # missing file
        "twice.png,b", "twice.png,b",         # duplicate row
        "fight.png,a", "fight.png,b",         # conflicting labels
        ",a", "ok2.png,",                     # empty path / label
    ]
    (root / "map.csv").write_text("\n".join(rows) + "\n")
    listing = ingest.scan(root / "map.csv")
    assert [(i.path, i.label) for i in listing.items] == [("ok.png", "a"), ("twice.png", "b")]
    reasons = [r for _, r in listing.rejected]
    assert any("absolute path refused" in r for r in reasons)
    assert sum("escapes the dataset root" in r for r in reasons) == 2  # .. and the symlink
    assert any("file not found" in r for r in reasons)
    assert any("duplicate row (same file and label as line 7)" in r for r in reasons)
    assert any("conflicting labels for the same file: 'a' (line 9), 'b' (line 10)" in r for r in reasons)
    assert any("empty path" in r for r in reasons) and any("empty label" in r for r in reasons)


def test_csv_with_windows_paths_is_read(tmp_path):
    """An Excel or Windows export writes images\\cat.png: read as images/cat.png where that file is."""
    img(tmp_path / "images" / "sub" / "c1.png")
    img(tmp_path / "images" / "d1.png", 30)
    (tmp_path / "m.csv").write_text("path,label\r\nimages\\sub\\c1.png,cat\r\nimages\\d1.png,dog\r\n"
                                    "images\\gone.png,dog\r\nC:\\data\\x.png,cat\r\n")
    listing = ingest.scan(tmp_path / "m.csv")
    assert sorted(it.path for it in listing.items) == ["images/d1.png", "images/sub/c1.png"]
    reasons = dict(listing.rejected)
    assert "file not found" in reasons["images/gone.png"] and "absolute path refused" in reasons["C:\\data\\x.png"]


def test_a_csv_whose_rows_are_all_refused_says_why(tmp_path):
    from pipeline.shared.errors import UserError
    from pipeline.shared.params import PrepareParams, PreprocessParams
    from pipeline.stages import prepare

    (tmp_path / "m.csv").write_text("path,label\nno/a.png,cat\n../b.png,dog\n/abs/c.png,dog\n")
    with pytest.raises(UserError) as err:
        prepare.prepare(tmp_path / "m.csv", tmp_path / "run", PrepareParams(workers=1), PreprocessParams())
    said = str(err.value)
    assert said.startswith("3 of the rows of ") and "m.csv were refused (1 file not found; 1 path escapes" in said
    assert "1 absolute path refused; the first: no/a.png, line 2: file not found), so it names no label" in said
    assert "rejected.csv" not in said and "keep the CSV in the images' folder or above it" in said
    assert not (tmp_path / "run").exists()  # nothing written: so nothing to point at


def test_csv_without_the_named_columns_is_a_clear_error(tmp_path):
    (tmp_path / "m.csv").write_text("image,kind\nx.png,a\n")
    with pytest.raises(ValueError, match=r"no label column 'label' or 'labels' .*'class_name'; "
                                         r"columns found: \['image', 'kind'\]"):
        ingest.scan(tmp_path / "m.csv")
    with pytest.raises(ValueError, match="no path column 'where'"):
        ingest.scan(tmp_path / "m.csv", p=IngestParams(csv_path_column="where", csv_label_column="kind"))


def test_unknown_split_value_is_reported(tmp_path):
    img(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label,split\na.png,x,holdout\n")
    listing = ingest.scan(tmp_path / "m.csv")
    assert listing.items == [] and "unknown split 'holdout'" in listing.rejected[0][1]


# ---------------------------------------------------------------- pixels
def pixel_csv(path, rows, labelled=True, side=28):
    header = (["label"] if labelled else []) + [f"pixel{i}" for i in range(side * side)]
    lines = [",".join(header)] + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pixels_layout_detected_labelled_and_unlabelled(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[d] + rng.integers(0, 256, 784).tolist() for d in (3, 1, 3)]
    f = pixel_csv(tmp_path / "train.csv", rows)
    listing = ingest.scan(f)
    assert listing.layout == "pixels" and listing.pixel_shape == (28, 28)
    assert [(i.path, i.label) for i in listing.items] == [("train.csv#0", "3"), ("train.csv#1", "1"), ("train.csv#2", "3")]
    images = list(ingest.iter_pixel_images(f))
    assert images[1][0].shape == (28, 28) and images[1][0].dtype == np.uint8
    np.testing.assert_array_equal(images[1][0].ravel(), rows[1][1:])
    g = pixel_csv(tmp_path / "test.csv", [r[1:] for r in rows], labelled=False)
    assert all(i.label is None for i in ingest.scan(g).items)


def test_pixel_rows_with_bad_values_are_reported(tmp_path):
    f = pixel_csv(tmp_path / "p.csv", [[1] + [0] * 784, [1] + [300] + [0] * 783, [1] + ["x"] + [0] * 783, [1, 2, 3]])
    reasons = [r for _, r in ingest.iter_pixel_images(f)]
    assert reasons == ["", "pixel values must be integers in 0..255", "non-numeric pixel value",
                       "row has 3 values, header has 785"]


def test_non_square_pixel_csv_is_a_clear_error(tmp_path):
    (tmp_path / "p.csv").write_text("label," + ",".join(f"pixel{i}" for i in range(20)) + "\n1" + ",0" * 20 + "\n")
    with pytest.raises(ValueError, match="20 pixel columns; expected a square"):
        ingest.scan(tmp_path / "p.csv")


def test_folder_with_one_csv_is_detected_as_csv(tmp_path):
    make_tree(tmp_path / "imgs", {"x": 1})
    (tmp_path / "imgs" / "x" / "000.png").rename(tmp_path / "a.png")
    (tmp_path / "map.csv").write_text("path,label\na.png,x\n")
    (tmp_path / "imgs" / "x").rmdir()
    (tmp_path / "imgs").rmdir()
    assert ingest.detect_layout(tmp_path)[0] == "csv"
    assert ingest.scan(tmp_path).items[0].label == "x"


def test_a_mapping_csv_beside_an_images_folder_is_the_csv_layout(tmp_path):
    """labels.csv + images/… (how many datasets ship) is detected as csv, not as one folder per label."""
    root = tmp_path / "ds"
    img(root / "images" / "a1.png", 30)
    img(root / "images" / "b1.png", 200)
    (root / "labels.csv").write_text("file,label\nimages/a1.png,a\nimages/b1.png,b\n")
    assert ingest.detect_layout(root)[0] == "csv"
    listing = ingest.scan(root)
    assert listing.layout == "csv" and sorted(i.label for i in listing.items) == ["a", "b"]
    (root / "notes.csv").write_text("x,y\n1,2\n")  # another table, but not a mapping: still the mapping file
    layout, why = ingest.detect_layout(root)
    assert layout == "csv" and "notes.csv: no path and label columns" in why
    (root / "more.csv").write_text("path,label\nimages/a1.png,a\n")  # two mapping files: which? an error
    with pytest.raises(ValueError, match="several mapping files"):
        ingest.detect_layout(root)


def test_a_readme_beside_named_images_is_not_a_mapping_file(tmp_path, caplog):
    """A folder of A_0001.png-style files with a README.txt: the file-name layout, and the text files are
    rejected as what they are (a user's first hour)."""
    for i, label in enumerate("AABB"):
        img(tmp_path / f"{label}_{i:04d}.png", 40 + 60 * (label == "B"))
    (tmp_path / "README.txt").write_text("My letters.\nScanned in 2024.\n")
    (tmp_path / "notes.txt").write_text("todo")
    with caplog.at_level("INFO"):
        listing = ingest.scan(tmp_path)
    assert listing.layout == "filenames" and sorted(i.label for i in listing.items) == ["A", "A", "B", "B"]
    assert dict(listing.rejected) == {"README.txt": "not an image (a .txt file)", "notes.txt": "not an image (a .txt file)"}
    assert "layout: filenames" in caplog.text and "LAYOUT=" in caplog.text and "README.txt" in caplog.text


def test_the_csv_layout_forced_on_a_folder_without_a_mapping_file_says_so(tmp_path):
    """A note (notes.txt) beside label folders is not taken for the mapping file."""
    root = tmp_path / "photos"
    (root / "cats").mkdir(parents=True)
    (root / "notes.txt").write_text("hi\n")
    with pytest.raises(ValueError, match=r"no mapping file in .*photos.*\(looked at: notes.txt\).*LAYOUT=folders"):
        ingest.scan(root, "csv")
