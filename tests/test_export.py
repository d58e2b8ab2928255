"""Export: .keras / SavedModel / TFLite (+ dynamic-range quantisation), checked against the Keras model."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import cli


@pytest.fixture(scope="module")
def export_run(trained_run, tmp_path_factory):
    """The tiny MNIST run's prepared data, trained to convergence (12 epochs): quantisation is
    judged on a model that has learned something, as users export them (the shared fixture's
    2-epoch model leaves many near-ties between two digits)."""
    import shutil

    from pipeline.params import TrainParams
    from pipeline.train import train

    src, _ = trained_run
    run = tmp_path_factory.mktemp("export") / "run"
    run.mkdir()
    for f in [*src.glob("*.npy"), src / "prepare.json", src / "labels.json"]:
        shutil.copy(f, run / f.name)
    train(run, TrainParams(epochs=12, batch_size=32, patience=12), verbose=0)
    return run


@pytest.mark.parametrize("fmt, quantize", [("tflite", "dynamic"), ("tflite", "none"), ("savedmodel", "none"),
                                           ("keras", "none")])
def test_export_agrees_with_the_keras_model_on_the_test_split(export_run, tmp_path, fmt, quantize):
    run = export_run
    from pipeline.__main__ import main

    out = tmp_path / f"{fmt}-{quantize}"
    assert main(["export", "--model", str(run / "model"), "--format", fmt, "--quantize", quantize,
                 "--out", str(out)]) == 0
    info = json.loads((out / "export.json").read_text())
    n_test = len(np.load(run / "X_test.npy", mmap_mode="r"))
    assert info["agreement"]["images"] == n_test == 300
    assert info["agreement"]["top1_agreement"] >= 0.995, info
    assert {p.name for p in out.iterdir()} == {info["file"], "labels.json", "preprocess.json", "export.json"}
    assert (out / "labels.json").read_text() == (run / "model" / "labels.json").read_text()
    print(f"\n{fmt} ({quantize}): {info['bytes'] / 1024:.1f} KB, model.keras {info['source_bytes'] / 1024:.1f} KB, "
          f"top-1 agreement {info['agreement']['top1_agreement']:.2%} on {n_test} test images")
    if fmt == "tflite":
        assert info["bytes"] < info["source_bytes"]
        assert (out / "model.tflite").read_bytes()[4:8] == b"TFL3"  # the flatbuffer's identifier
    if quantize == "dynamic":
        plain = tmp_path / "plain"
        assert main(["export", "--model", str(run / "model"), "--format", "tflite", "--out", str(plain),
                     "--no-check"]) == 0
        assert info["bytes"] < 0.5 * json.loads((plain / "export.json").read_text())["bytes"]


def test_export_refuses_bad_options_and_missing_bundles(trained_run, tmp_path):
    run, _ = trained_run
    res = cli("export", "--model", run / "model", "--format", "keras", "--quantize", "dynamic", "--out", tmp_path / "x")
    assert res.returncode == 2 and "applies to --format tflite only" in res.stderr
    res = cli("export", "--model", tmp_path / "nope", "--format", "tflite", "--out", tmp_path / "y")
    assert res.returncode == 2 and "model bundle not found" in res.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
