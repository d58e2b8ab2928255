"""The prepare audit: every bad-input kind, accepted odd formats, duplicates, conflicts, leakage, summary."""
import csv
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from pipeline.shared import plots
from pipeline.shared.errors import UserError
from pipeline.shared.params import IngestParams, PrepareParams, PreprocessParams
from pipeline.stages import prepare

from conftest import make_tree, write_image

CFG = PreprocessParams(size=(16, 16))


def run_prepare(data, run, ip=None, **kw):
    return prepare.prepare(data, run, PrepareParams(workers=1, **kw), CFG, "auto", ip)


def reasons(run):
    with open(run / "rejected.csv", newline="") as fh:
        return {r["path"]: r["reason"] for r in csv.DictReader(fh)}


def test_every_bad_kind_is_rejected_with_its_reason_and_odd_formats_are_read(tmp_path, caplog):
    data = make_tree(tmp_path / "data", {"a": 5, "b": 5})
    a, b = data / "a", data / "b"
    (a / "zero.png").write_bytes(b"")
    png = (a / "000.png").read_bytes()
    (a / "truncated.png").write_bytes(png[: len(png) // 2])
    (a / "text.txt").write_text("hello")
    (a / "fake.jpg").write_text("this is not a jpeg")                    # wrong extension, not an image
    Image.new("L", (16, 16), 50).save(a / "icon.ico", format="ICO")     # an image, but unsupported
    write_image(a / "tiny.png", np.zeros((4, 4), np.uint8))              # too small
    Image.new("1", (12000, 12000)).save(a / "bomb.png")                  # 144 MP: decompression bomb
    # odd but valid: all accepted
    Image.new("CMYK", (16, 16), (0, 0, 0, 100)).save(b / "cmyk.jpg")
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(b / "deep16.png")
    Image.new("P", (16, 16), 3).save(b / "palette.gif")
    Image.new("RGBA", (16, 16), (255, 0, 0, 128)).save(b / "rgba.png")
    Image.new("L", (16, 16), 90).save(b / "really_png.jpg", format="PNG")  # wrong extension, real image
    Image.new("L", (16, 16), 90).save(b / "photo.webp")
    Image.new("L", (16, 16), 90).save(b / "scan.tif")
    Image.new("L", (16, 16), 90).save(b / "bitmap.bmp")
    run = tmp_path / "run"
    with caplog.at_level("INFO"):
        summary = run_prepare(data, run)
    assert "rejected 7 file(s) or folder(s) (2 not an image; 1 " in caplog.text  # the commonest reasons, counted
    assert "; 3 other), see " in caplog.text
    r = reasons(run)
    assert r["a/zero.png"] == "empty file (0 bytes)"
    assert r["a/truncated.png"].startswith(("truncated image", "corrupt image"))
    assert r["a/text.txt"] == "not an image (a .txt file)"  # as the file-name layout says of it
    assert r["a/fake.jpg"] == "not an image: the content does not match its .jpg extension"
    assert r["a/icon.ico"] == "unsupported image format: ICO"
    assert r["a/tiny.png"] == "too small: 4x4 px (min_side 8)"
    assert r["a/bomb.png"].startswith("decompression bomb refused")
    assert len(r) == 7
    ds = summary.dataset
    assert ds["images"] == 18 and ds["rejected"]["total"] == 7
    assert ds["rejected"]["by_reason"]["too small"] == 1
    assert ds["modes"]["CMYK"] == 1 and ds["formats"]["WEBP"] == 1
    assert ds["extension_mismatch"]["examples"] == ["b/really_png.jpg"]
    assert json.loads((run / "dataset.json").read_text())["images"] == 18


def test_duplicates_conflicts_and_leakage(tmp_path, caplog):
    data = tmp_path / "data"
    make_tree(data, {"a": 6, "b": 6}, split="train")
    make_tree(data, {"a": 2, "b": 2}, split="test", seed=5)
    same = data / "train" / "a" / "000.png"
    (data / "train" / "a" / "copy.png").write_bytes(same.read_bytes())   # duplicate within a class
    (data / "train" / "b" / "wrong.png").write_bytes(same.read_bytes())  # same image, other label
    (data / "test" / "a" / "leak.png").write_bytes(same.read_bytes())    # also in test: leakage
    run = tmp_path / "run"
    with caplog.at_level("INFO"):
        summary = run_prepare(data, run, val_size=0.0)
    ds = summary.dataset
    # every file read is accounted for: usable, rejected, or left out as leakage
    assert "; 0 of the " in caplog.text
    assert " rejected (rejected.csv); 1 val/test copy of training images left out (leakage: dataset.json)" in caplog.text
    # the conflict is in similar.csv with the copy left out of test, once, for the review page to settle
    similar_rows = list(csv.DictReader(open(run / "similar.csv")))
    assert sorted(r["path"].rsplit("/", 2)[-2] + "/" + r["path"].rsplit("/", 1)[-1] for r in similar_rows) == [
        "a/000.png", "a/copy.png", "a/leak.png", "b/wrong.png"]
    assert {r["group"] for r in similar_rows} == {"0"} and {r["kind"] for r in similar_rows} == {"copy"}
    assert ds["conflicts"]["groups"] == 1
    group = ds["conflicts"]["examples"][0]
    assert sorted(group["labels"]) == ["a", "a", "a", "b"]
    assert ds["leakage"]["images"] == 1 and ds["leakage"]["examples"][0]["path"] == "test/a/leak.png"
    assert summary.counts["test"] == {"a": 2, "b": 2}  # the leaked copy was dropped from test
    with open(run / "manifest.csv") as fh:
        assert "leak.png" not in fh.read()
    assert any("also appear in train" in w for w in ds["warnings"])
    said = next(w for w in ds["warnings"] if "more than one label" in w)
    assert re.search(r"the same file, e\.g\. \S*a/\S+\.png \(a\) = \S*b/wrong\.png \(b\);", said), said
    kept = run_prepare(data, tmp_path / "run2", IngestParams(leakage="keep"), val_size=0.0)
    assert kept.counts["test"]["a"] == 3


def test_within_class_duplicates_are_reported(tmp_path):
    data = make_tree(tmp_path / "data", {"a": 4, "b": 4})
    (data / "b" / "dup.png").write_bytes((data / "b" / "001.png").read_bytes())
    ds = run_prepare(data, tmp_path / "run", test_size=0.25).dataset
    assert ds["duplicates"]["groups"] == 1 and ds["duplicates"]["extra_copies"] == 1
    assert ds["conflicts"]["groups"] == 0


def test_summary_counts_imbalance_warning_and_sample_grid(tmp_path):
    data = make_tree(tmp_path / "data", {"big": 60, "small": 5, "naïve ✓": 12})
    run = tmp_path / "run"
    ds = run_prepare(data, run).dataset
    assert ds["counts"]["big"]["total"] == 60 and ds["imbalance_ratio"] == 12.0
    assert any(w.startswith("class imbalance") for w in ds["warnings"])
    assert any("few images" in w for w in ds["warnings"])
    assert ds["sizes"]["most_common"] == [["16x16", 77]]
    labels = json.loads((run / "labels.json").read_text(encoding="utf-8"))
    assert labels == {"big": 0, "naïve ✓": 1, "small": 2}  # any UTF-8 label
    grid = Image.open(run / "samples.png")
    cell = plots.CELL
    assert 8 * cell < grid.size[0] < 8 * cell + 300  # 8 images per class, the class names on the left
    assert 3 * cell < grid.size[1] < 4 * cell  # a row per class, under the title


def pixel_csv(path, n=40, labelled=True, dark_on_light=()):
    rng = np.random.default_rng(1)
    header = (["label"] if labelled else []) + [f"pixel{i}" for i in range(784)]
    out = io.StringIO()
    out.write(",".join(header) + "\n")
    for i in range(n):
        digit = i % 2
        img = np.zeros((28, 28), int)
        img[4:24, 10 + 4 * digit:14 + 4 * digit] = 255
        img = np.clip(img + rng.integers(0, 30, (28, 28)), 0, 255)
        img = 255 - img if i in dark_on_light else img
        out.write(",".join(map(str, ([digit] if labelled else []) + img.ravel().tolist())) + "\n")
    path.write_text(out.getvalue())
    return path


def test_prepare_from_a_pixel_csv(tmp_path):
    f = pixel_csv(tmp_path / "train.csv")
    run = tmp_path / "run"
    summary = prepare.prepare(f, run, PrepareParams(workers=1), PreprocessParams())
    assert sum(sum(c.values()) for c in summary.counts.values()) == 40
    assert summary.dataset["layout"] == "pixels" and summary.dataset["formats"] == {"pixels": 40}
    x = np.load(run / "X_train.npy")
    assert x.shape[1:] == (28, 28, 1) and x.max() <= 1.0
    with open(run / "manifest.csv") as fh:
        first = list(csv.DictReader(fh))[0]
    assert first["path"].startswith(str(tmp_path / "train.csv#"))


def test_the_census_of_a_pixel_csv_looks_at_its_rows(tmp_path):
    """Settings "auto" are chosen from a sample of the rows, as of files: rows of both polarities -> per-image."""
    plain = prepare.prepare(pixel_csv(tmp_path / "a.csv"), tmp_path / "a", PrepareParams(workers=1), PreprocessParams())
    assert plain.dataset["choices"]["invert"]["value"] == "false"
    assert "40 light on dark" in plain.dataset["choices"]["invert"]["why"]
    mixed = pixel_csv(tmp_path / "b.csv", dark_on_light=range(0, 40, 3))
    summary = prepare.prepare(mixed, tmp_path / "b", PrepareParams(workers=1), PreprocessParams())
    assert summary.dataset["choices"]["invert"]["value"] == "per-image"
    assert summary.dataset["choices"]["color"]["value"] == "grayscale"


def test_unlabelled_pixel_csv_cannot_be_prepared(tmp_path):
    f = pixel_csv(tmp_path / "test.csv", labelled=False)
    from pipeline.shared.artifacts import StageError

    with pytest.raises(StageError, match="no label column"):
        prepare.prepare(f, tmp_path / "run", PrepareParams(workers=1), PreprocessParams())
    assert not (tmp_path / "run").exists()  # no empty run folder left behind


def test_prepare_from_csv_and_filenames_layouts(tmp_path):
    root = tmp_path / "csvdata"
    for i in range(8):
        write_image(root / "imgs" / f"{i}.png", np.full((16, 16), 30 * (i % 2), np.uint8) + np.uint8(i))
    (root / "labels.csv").write_text("path,label\n" + "".join(f"imgs/{i}.png,{'odd' if i % 2 else 'even'}\n"
                                                                for i in range(8)))
    s = run_prepare(root / "labels.csv", tmp_path / "r1", test_size=0.25)
    assert s.dataset["layout"] == "csv" and sum(s.counts["test"].values()) == 2
    fn = tmp_path / "fndata"
    for i in range(8):
        write_image(fn / f"{'cat' if i % 2 else 'dog'}.{i}.png", np.full((16, 16), 20 * i, np.uint8))
    s = run_prepare(fn, tmp_path / "r2", test_size=0.25)
    assert s.dataset["layout"] == "filenames" and set(s.counts["train"]) == {"cat", "dog"}


def test_cli_layout_option_and_one_line_errors(tmp_path, capsys, caplog):
    from pipeline import __main__ as cli

    data = make_tree(tmp_path / "d", {"a": 3, "b": 3})
    assert cli.main(["prepare", "--data", str(data), "--run", str(tmp_path / "r"), "--layout", "folders",
                     "--params", "/dev/null"]) == 0
    assert "usable images: 6 in 2 classes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["prepare", "--data", str(data), "--layout", "bogus"])
    (tmp_path / "p.toml").write_text("[ingest]\nfilename_regex = '(\\\\d+)'\n")
    assert cli.main(["prepare", "--data", str(data), "--run", str(tmp_path / "r"),
                     "--params", str(tmp_path / "p.toml")]) == 2
    assert "named group (?P<label>" in caplog.text


def test_the_hold_out_split_is_scikit_learns_without_importing_it():
    """prepare's own stratified (and plain) shuffle split gives what train_test_split gives."""
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(0)
    for seed in range(60):
        n, k = int(rng.integers(6, 400)), int(rng.integers(1, 8))
        y = rng.integers(0, k, n)
        items = np.arange(n) * 3 + 1
        n_held = int(rng.integers(1, n - 1))
        counts = np.bincount(y)
        stratify = y if seed % 3 and counts[counts > 0].min() >= 2 and min(n_held, n - n_held) >= len(set(y)) else None
        want = train_test_split(items, test_size=n_held, random_state=seed, stratify=stratify)
        got = prepare.shuffle_split(items, n_held, seed, stratify)
        assert all(np.array_equal(a, b) for a, b in zip(want, got)), seed


def test_the_audit_reads_a_meta_table_like_a_list_of_metas():
    """Duplicates, leakage, the size/mode/format census and extension mismatches from the flat arrays
    equal what they are one Meta at a time."""
    from pipeline.data import audit
    from pipeline.data.preprocess import Meta

    rng = np.random.default_rng(1)
    metas = [Meta(int(rng.integers(8, 12)), 10, str(rng.choice(["L", "RGB"])), str(rng.choice(["PNG", "JPEG"])),
                  f"{int(v):040x}", alpha=bool(rng.random() < 0.1)) for v in rng.integers(0, 30, 200)]
    table = audit.MetaTable(len(metas) + 5)
    slots = rng.permutation(len(metas) + 5)[:len(metas)]
    for slot, m in zip(slots, metas):
        table.put(int(slot), m)
    view = table.take(slots)
    paths = [f"{i}.{'png' if i % 3 else 'jpg'}" for i in range(len(metas))]
    labels = [str(int(v)) for v in rng.integers(0, 2, len(metas))]
    splits = np.array(rng.choice(["train", "val", "test"], len(metas)), dtype=object)
    assert audit.duplicate_groups(paths, labels, view) == audit.duplicate_groups(paths, labels, metas)
    assert audit.find_leakage(splits, view) == audit.find_leakage(splits, metas)
    assert audit.extension_mismatches(paths, view) == audit.extension_mismatches(paths, metas)
    assert audit._census(view) == audit._census(metas)
    assert list(view) == [Meta(m.width, m.height, m.mode, m.format, m.sha1, alpha=m.alpha) for m in metas]


def test_labels_alike_but_for_case_or_spacing_are_warned_about(tmp_path):
    """`Cat` and `cat` are two classes to the model, and most likely one to whoever wrote them."""
    from pipeline.data import audit

    assert audit.look_alike_labels(["Cat", "cat", "dog", "Hot Dog", "hotdog", "bird"]) == [["Cat", "cat"],
                                                                                          ["Hot Dog", "hotdog"]]
    assert audit.look_alike_labels(["cat", "dog"]) == []
    data = make_tree(tmp_path / "data", {"cat": 6, "Cat": 6, "dog": 6})
    s = prepare.prepare(data, tmp_path / "run", PrepareParams(workers=1), PreprocessParams(size=(16, 16)))
    assert any("letter case or spacing" in w and "'Cat' / 'cat'" in w for w in s.dataset["warnings"])


def test_label_case_ignore_makes_look_alike_labels_one_class(tmp_path):
    """`[ingest] label_case = "ignore"`: Cat / cat / C AT one class, named by its most common spelling; the
    warning is gone and the files untouched. A multi-label item's labels are merged one by one."""
    from pipeline.data import ingest
    from pipeline.shared.params import IngestParams

    data = make_tree(tmp_path / "data", {"cat": 6, "Cat": 4, "C AT": 1, "dog": 6})
    s = prepare.prepare(data, tmp_path / "run", PrepareParams(workers=1), PreprocessParams(size=(16, 16)),
                        ip=IngestParams(label_case="ignore"))
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == {"cat": 0, "dog": 1}
    assert sum(s.counts[split]["cat"] for split in s.counts) == 11
    assert not any("letter case" in w for w in s.dataset["warnings"]) and (data / "Cat").is_dir()
    multi = ingest.Listing(tmp_path, "csv", [ingest.Item("a.png", "Dog;cat"), ingest.Item("b.png", "dog"),
                                             ingest.Item("c.png", "cat;dog"), ingest.Item("d.png", None)], task="multi")
    merged, groups = ingest.merge_label_case(multi)
    assert [it.label for it in merged.items] == ["cat;dog", "dog", "cat;dog", None] and groups == {"dog": ["Dog", "dog"]}
    with pytest.raises(UserError, match="label_case"):
        IngestParams(label_case="lower")


def test_classes_without_held_out_images_are_warned_about(tmp_path):
    """A class only in train/ of a given split: the test figures say nothing about it; prepare says so."""
    data = make_tree(tmp_path / "data", {"a": 12, "b": 12, "c": 12}, split="train")
    make_tree(data, {"a": 4, "b": 4}, split="test", seed=1)
    ds = run_prepare(data, tmp_path / "run").dataset
    assert "no test images of class(es) ['c']: the test figures say nothing about them" in ds["warnings"]
    assert not any(w.startswith("no val images") for w in ds["warnings"])  # val: drawn from train, every class


def test_rejected_reasons_are_counted_without_their_per_file_details():
    from pipeline.data.audit import reason_category

    assert reason_category("line 4: file not found") == "file not found"
    assert reason_category("excluded by corrections.csv line 6") == reason_category(
        "excluded by corrections.csv line 7") == "excluded by corrections.csv"
    assert reason_category("not an image (a .txt file)") == "not an image"


def test_multi_label_data_hears_of_a_label_missing_from_val_once_in_its_own_words():
    from pipeline.data import audit

    counts = {"train": {"red": 40, "yellow": 1}, "val": {"red": 5, "yellow": 0}, "test": {"red": 9, "yellow": 1}}
    ds = audit.summarize({"red": 0, "yellow": 1}, counts, [], [], [], [], [], [], "kept", 10.0, 0)
    assert not any("class(es)" in w for w in ds["warnings"])  # the single-label wording (and its confidence cut)
    y = {"train": np.array([[1, 0]] * 39 + [[1, 1]]), "val": np.array([[1, 0]] * 5), "test": np.array([[1, 1]] * 9)}
    found = audit.multi_label_findings(y, ["red", "yellow"], 5, ds["warnings"])
    assert found["task"] == "multi" and "no positive image in the val split for label(s): ['yellow']" in ds["warnings"]


def test_a_lone_leftover_reason_is_named_not_counted_as_other():
    four = [("a", "empty file (0 bytes)"), ("b", "not an image (a .txt file)"), ("c", "not an image (a .db file)"),
            ("d", "truncated image: the file ends"), ("e", "excluded by corrections.csv line 2")]
    assert prepare._reasons(four) == "2 not an image; 1 empty file; 1 truncated image; 1 excluded by corrections.csv"
    five = four + [("f", "too small: 3x3 px (min_side 8)")]
    assert prepare._reasons(five).endswith("; 2 other")


def test_copy_pairs_across_labels_name_the_groups_they_make():
    from pipeline.data import audit

    near = {"across_classes": {"copies": 12, "copy_groups": 2}, "across_splits": {"copies": 0}}
    warnings: list[str] = []
    audit.similarity_findings(near, {}, warnings)
    assert warnings == ["12 pair(s) of copies of one image carry different labels in 2 group(s) of copies "
                        "(similar.csv)"]
    warnings.clear()
    audit.similarity_findings({"across_classes": {"copies": 1, "copy_groups": 1}, "across_splits": {}}, {}, warnings)
    assert warnings == ["1 pair(s) of copies of one image carry different labels (similar.csv)"]
