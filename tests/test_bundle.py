"""The bundle's model for the light runtime: written by train with its SHA-256, checked at load, chosen by
``runtime = "auto"``; an older bundle without it still works through TensorFlow, and gains it from
``pipeline export --format onnx``; a modified one is refused."""
import json
import shutil

import pytest

from pipeline.shared import bundle
from pipeline.shared.artifacts import sha256_file
from pipeline.shared.errors import StageError, UserError


def _without_runtime_model(src, dest):
    """A copy of the bundle as an older version wrote it: no model.onnx, no hash of it."""
    shutil.copytree(src, dest)
    (dest / bundle.RUNTIME_MODEL).unlink()
    info = json.loads((dest / bundle.MARKER).read_text())
    info.pop(bundle.RUNTIME_SHA)
    info.pop("runtime_model", None)
    (dest / bundle.MARKER).write_text(json.dumps(info))
    return dest


def test_train_writes_the_runtime_model_with_its_hash(shade_bundle):
    info = json.loads((shade_bundle / bundle.MARKER).read_text())
    assert info[bundle.RUNTIME_SHA] == sha256_file(shade_bundle / bundle.RUNTIME_MODEL)
    assert info["runtime_model"]["outputs"] == ["probs", "logits", "features", "conv"]
    assert info["runtime_model"]["max_abs_prob_diff"] < 1e-4  # checked against Keras on validation images


def test_auto_takes_the_light_runtime_and_loads_no_keras_model(shade_bundle):
    b = bundle.load(shade_bundle, bundle.AUTO)
    assert b.runtime == bundle.ONNX and b.model is None and b.runtime_model == shade_bundle / bundle.RUNTIME_MODEL
    assert b.novelty is not None and b.calibration is not None  # the trust parts, read without Keras
    tf = bundle.load(shade_bundle, bundle.TENSORFLOW)
    assert tf.runtime == bundle.TENSORFLOW and tf.model is not None and tf.labels == b.labels
    with pytest.raises(UserError, match="--runtime must be one of auto, tensorflow, onnx. Received: 'torch'"):
        bundle.load(shade_bundle, "torch")


def test_an_older_bundle_without_it_works_through_tensorflow(shade_bundle, tmp_path):
    old = _without_runtime_model(shade_bundle, tmp_path / "old")
    assert bundle.load(old, bundle.AUTO).runtime == bundle.TENSORFLOW
    with pytest.raises(UserError, match=r"has no model.onnx .*pipeline export --model .* --format onnx` adds it; "
                                        r"or use --runtime tensorflow"):
        bundle.load(old, bundle.ONNX)


def test_a_runtime_model_that_does_not_match_its_hash_is_refused(shade_bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shade_bundle, bad)
    with open(bad / bundle.RUNTIME_MODEL, "ab") as fh:
        fh.write(b"\0")
    for runtime in (bundle.AUTO, bundle.ONNX, bundle.TENSORFLOW):  # whichever runs it, a modified bundle is refused
        with pytest.raises(StageError, match="model.onnx does not match its recorded SHA-256; refusing to load a "
                                             "modified model"):
            bundle.load(bad, runtime)
    (bad / bundle.RUNTIME_MODEL).unlink()
    with pytest.raises(StageError, match="has no model.onnx"):
        bundle.load(bad, bundle.AUTO)


def test_add_runtime_model_gives_an_older_bundle_the_light_runtime(shade_bundle, tmp_path):
    old = _without_runtime_model(shade_bundle, tmp_path / "old")
    bundle.add_runtime_model(old, shade_bundle / bundle.RUNTIME_MODEL)
    b = bundle.load(old, bundle.AUTO)
    assert b.runtime == bundle.ONNX and b.info["model_sha256"] == json.loads(
        (shade_bundle / bundle.MARKER).read_text())["model_sha256"]


def test_a_step_that_needs_the_keras_model_does_not_suggest_another_runtime(monkeypatch, tmp_path):
    """Without TensorFlow: predict (a --runtime option) is told to use onnx; export, suspects... (none) are not."""
    from pipeline.shared import bundle as bundle_mod
    from pipeline.shared.errors import UserError

    monkeypatch.setattr(bundle_mod, "_installed", lambda module: module == "onnxruntime")
    info = {bundle_mod.RUNTIME_SHA: "0" * 64}
    with pytest.raises(UserError, match="or use --runtime onnx"):
        bundle_mod.resolve_runtime("tensorflow", info, tmp_path)
    with pytest.raises(UserError, match="this step needs the Keras model itself") as caught:
        bundle_mod.resolve_runtime("tensorflow", info, tmp_path, chosen=False)
    assert "--runtime" not in str(caught.value)
