"""Export: every format read back by its own runtime and checked against the bundle; labels and
preprocessing inside the file; predict_example.py gives pipeline predict's labels."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.model import formats

from conftest import cli

pytestmark = pytest.mark.slow  # every export format is written and read back after a real (tiny) training

FORMATS = [("keras", "none"), ("savedmodel", "none"), ("tflite", "none"), ("tflite", "dynamic"),
           ("tflite", "float16"), ("tflite", "int8"), ("onnx", "none")]


@pytest.fixture(scope="module")
def export_run(trained_run, tmp_path_factory):
    """The tiny MNIST run's prepared data, trained to convergence (12 epochs): quantisation is
    judged on a model that has learned something, as users export them (the shared fixture's
    short run leaves many near-ties between two digits)."""
    import shutil

    from pipeline.shared.params import TrainParams
    from pipeline.stages.train import train

    src, _ = trained_run
    run = tmp_path_factory.mktemp("export") / "run"
    run.mkdir()
    for f in [*src.glob("*.npy"), src / "prepare.json", src / "labels.json", src / "dataset.json"]:
        shutil.copy(f, run / f.name)
    train(run, TrainParams(epochs=12, batch_size=32, patience=12), verbose=0)
    return run


@pytest.fixture(scope="module")
def exports(export_run, tmp_path_factory):
    """Every format exported once (through the CLI), by (format, quantize)."""
    from pipeline.faces.commands import main

    root = tmp_path_factory.mktemp("exports")
    out = {}
    for fmt, quantize in FORMATS:
        folder = root / f"{fmt}-{quantize}"
        assert main(["export", "--model", str(export_run / "model"), "--format", fmt, "--quantize", quantize,
                     "--out", str(folder)]) == 0
        out[(fmt, quantize)] = folder
    return out


@pytest.mark.parametrize("fmt, quantize", FORMATS)
def test_each_format_agrees_with_the_bundle_in_its_own_runtime(export_run, exports, fmt, quantize):
    out = exports[(fmt, quantize)]
    info = json.loads((out / "export.json").read_text())
    assert info["agreement"]["images"] == 300
    assert info["agreement"]["top1_agreement"] >= 0.99, info
    assert info["latency_ms"] > 0 and 0 <= info["accuracy"] <= 1
    assert {p.name for p in out.iterdir()} == {info["file"], "labels.json", "preprocess.json", "export.json",
                                               "predict_example.py"}
    assert (out / "labels.json").read_text() == (export_run / "model" / "labels.json").read_text()
    print(f"\n{fmt} ({quantize}): {info['bytes'] / 1024:.1f} KB, agreement {info['agreement']['top1_agreement']:.2%}, "
          f"{info['latency_ms']:.3f} ms/image in {info['runtime']}")


def test_sizes_and_integer_types(exports):
    size = {k: json.loads((v / "export.json").read_text())["bytes"] for k, v in exports.items()}
    assert size[("tflite", "dynamic")] < 0.5 * size[("tflite", "none")]
    assert size[("tflite", "int8")] < 0.5 * size[("tflite", "none")]
    assert size[("tflite", "float16")] < 0.7 * size[("tflite", "none")]
    runner = formats.TFLiteRunner((exports[("tflite", "int8")] / "model.tflite").read_bytes())
    assert runner.inp["dtype"] == np.int8 and runner.out["dtype"] == np.int8


def test_labels_and_preprocessing_travel_inside_the_file(export_run, exports):
    labels = json.loads((export_run / "model" / "labels.json").read_text())
    cfg = json.loads((export_run / "model" / "preprocess.json").read_text())
    for quantize in ("none", "int8"):
        meta = formats.tflite_metadata((exports[("tflite", quantize)] / "model.tflite").read_bytes())
        assert json.loads(meta["labels.json"]) == labels and json.loads(meta["preprocess.json"]) == cfg
    onnx_meta = formats.OnnxRunner(exports[("onnx", "none")] / "model.onnx").metadata
    assert json.loads(onnx_meta["labels"]) == labels and json.loads(onnx_meta["preprocess"]) == cfg


@pytest.mark.parametrize("fmt, quantize", [("keras", "none"), ("savedmodel", "none"), ("tflite", "int8"),
                                           ("onnx", "none")])
def test_predict_example_gives_pipeline_predicts_labels(export_run, exports, tiny_mnist, tmp_path, fmt, quantize):
    """Only the exported folder: a copy elsewhere, run as a script, on a few test PNGs."""
    import shutil

    folder = tmp_path / "shipped"
    shutil.copytree(exports[(fmt, quantize)], folder)
    images = sorted((tiny_mnist / "test").glob("*/*.png"))[::30]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    inbox = tmp_path / "inbox"  # a folder stands for the images in it
    (inbox / "sub").mkdir(parents=True)
    (inbox / ".hidden").mkdir()
    shutil.copy(images[-1], inbox / "sub" / "last.png")
    shutil.copy(images[-1], inbox / ".hidden" / "skipped.png")
    (inbox / "notes.txt").write_text("not an image")
    res = subprocess.run([sys.executable, str(folder / "predict_example.py"), *map(str, images[:1]), str(broken),
                          *map(str, images[1:]), str(inbox)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 1 and f"{broken}\terror:" in res.stderr, res.stderr[-2000:]  # said, and the rest go on
    theirs = {line.split("\t")[0]: line.split("\t")[1] for line in res.stdout.splitlines()}
    assert theirs.pop(str(inbox / "sub" / "last.png")) == theirs[str(images[-1])]
    assert set(theirs) == {str(p) for p in images}
    assert cli("predict", tiny_mnist / "test", "--model", export_run / "model", "--out", tmp_path / "p.csv",
               "--params", "/dev/null").returncode == 0
    ours = {str(tiny_mnist / "test" / r["path"]): r["label"] for r in csv.DictReader(open(tmp_path / "p.csv"))}
    agree = sum(theirs[str(p)] == ours[str(p)] for p in images)
    assert agree >= len(images) - (1 if quantize == "int8" else 0), (theirs, ours)


def test_export_refuses_bad_options_and_missing_bundles(trained_run, tmp_path):
    run, _ = trained_run
    res = cli("export", "--model", run / "model", "--format", "keras", "--quantize", "dynamic", "--out", tmp_path / "x")
    assert res.returncode == 2 and "applies to --format tflite only" in res.stderr
    res = cli("export", "--model", tmp_path / "nope", "--format", "tflite", "--out", tmp_path / "y")
    assert res.returncode == 2 and "model bundle not found" in res.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_onnx_export_is_the_bundles_runtime_model_and_adds_it_to_an_older_bundle(export_run, exports, tmp_path):
    """The ONNX export is the very file the bundle's light runtime runs (probabilities first, for clients that
    read output 0); a bundle from before it gains it from `pipeline export --format onnx`."""
    import shutil

    from pipeline.shared import bundle

    model = export_run / "model"
    assert (exports[("onnx", "none")] / "model.onnx").read_bytes() == (model / bundle.RUNTIME_MODEL).read_bytes()
    assert formats.OnnxRunner(model / bundle.RUNTIME_MODEL).names == ["probs", "logits", "features", "conv"]
    old = tmp_path / "old"
    shutil.copytree(model, old)
    (old / bundle.RUNTIME_MODEL).unlink()
    info = json.loads((old / bundle.MARKER).read_text())
    info.pop(bundle.RUNTIME_SHA)
    (old / bundle.MARKER).write_text(json.dumps(info))
    assert bundle.load(old, bundle.AUTO).runtime == bundle.TENSORFLOW
    res = cli("export", "--model", old, "--format", "onnx", "--out", tmp_path / "onnx", "--no-check")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "added model.onnx to the bundle" in res.stderr
    assert json.loads((tmp_path / "onnx" / "export.json").read_text())["added_to_bundle"] is True
    b = bundle.load(old, bundle.AUTO)
    assert b.runtime == bundle.ONNX
    from pipeline.model.infer import Predictor, agreement

    x = np.load(export_run / "X_test.npy")
    a = agreement(Predictor(b, 256)(x), Predictor(bundle.load(model, bundle.ONNX), 256)(x))
    assert a["top1"] == 1.0 and a["familiar"] == 1.0 and a["max_abs_prob_diff"] < 1e-5


def test_an_export_of_the_same_model_and_options_is_up_to_date(export_run, tmp_path, caplog):
    import logging

    from pipeline.faces.commands import main

    args = ["export", "--model", str(export_run / "model"), "--format", "onnx", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    marker = tmp_path / "o" / "export.json"
    first = marker.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert "up to date" in caplog.text and marker.stat().st_mtime_ns == first
    assert "wrote" not in caplog.text  # it did not
    assert main(args + ["--no-check"]) == 0  # checked on other images (none): made again
    assert marker.stat().st_mtime_ns != first and "agreement" not in json.loads(marker.read_text())


def test_a_bundle_outside_a_run_folder_exports_here_and_says_there_is_nothing_to_check_on(export_run, tmp_path):
    """Never into the bundle itself: export/<format>/ in the current folder (as predict writes there), the
    latency measured all the same, and one line on why there is no agreement (and how to get it)."""
    import shutil

    model = tmp_path / "deployed" / "model"
    shutil.copytree(export_run / "model", model)
    before = sorted(p.name for p in model.iterdir())
    res = cli("export", "--model", model, "--format", "onnx", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in model.iterdir()) == before
    info = json.loads((tmp_path / "export" / "onnx" / "export.json").read_text())
    assert info["latency_ms"] > 0 and "agreement" not in info
    assert "no test split" in res.stderr and "--run" in res.stderr and "ms per image" in res.stdout
    res = cli("export", "--model", model, "--format", "tflite", "--quantize", "int8", cwd=tmp_path)
    assert res.returncode == 2 and "--quantize int8 calibrates on the training images" in res.stderr


def test_the_try_it_line_quotes_a_folder_with_a_space(export_run, tmp_path, capsys):
    import shlex
    from pathlib import Path

    from pipeline.faces.commands import main

    out = tmp_path / "my exports" / "keras"
    assert main(["export", "--model", str(export_run / "model"), "--format", "keras", "--out", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("try it: "))
    words = shlex.split(line[len("try it: "):].split("  (elsewhere")[0])
    assert words[1:] == [str(out / "predict_example.py"), "IMAGE"] and Path(words[1]).is_file()
