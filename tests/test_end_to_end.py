"""End to end on a few hundred real MNIST digits: prepare -> train -> evaluate via the CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.shared import artifacts, bundle
from pipeline.stages import train

from conftest import REPO, cli, make_tree

pytestmark = pytest.mark.slow  # the whole pipeline through the CLI, with kills

def test_smoke_accuracy_well_above_chance(trained_run):
    run, _ = trained_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n"] == 300
    assert metrics["accuracy"] > 0.6, metrics["accuracy"]  # chance is 0.1
    assert set(metrics["per_class"]) == {str(d) for d in range(10)}
    assert set(metrics["per_class"]["3"]) == {"precision", "recall", "f1", "support", "predicted"}
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 300
    assert np.trace(cm) / cm.sum() == pytest.approx(metrics["accuracy"])


def test_bundle_contents_and_history(trained_run):
    run, _ = trained_run
    model_dir = run / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "bundle.json", "calibration.json", "labels.json", "model.keras", "model.onnx", "novelty.json",
        "novelty_head.npy", "novelty_reference.npy", "params.json", "preprocess.json"]
    assert json.loads((model_dir / "labels.json").read_text()) == json.loads((run / "labels.json").read_text())
    assert json.loads((model_dir / "params.json").read_text())["train"]["epochs"] == 3
    info = json.loads((model_dir / "bundle.json").read_text())
    assert info["plan"]["epochs"] == 3 and info["plan"]["epochs_why"].startswith("set in params")
    b = bundle.load(model_dir)
    assert b.labels == [str(d) for d in range(10)] and b.preprocess.size == (28, 28)
    lines = (run / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,seconds,learning_rate") and len(lines) == 4
    assert not (run / train.BACKUP_DIR).exists()  # backup removed after a finished run


def test_evaluate_on_the_light_runtime_says_how_it_agrees_with_tensorflow(trained_run):
    run, _ = trained_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["params"]["runtime"] == "auto" and metrics["runtime"]["used"] == "onnx"
    a = metrics["runtime"]["agreement_with_tensorflow"]
    assert a["images"] == 300 and a["top1"] == 1.0 and a["familiar"] == 1.0 and a["max_abs_prob_diff"] < 1e-4


def test_rerun_skips_every_stage(trained_run):
    run, work = trained_run
    mtime = (run / "model" / "model.keras").stat().st_mtime_ns
    res = cli("train", "--run", str(run), "--params", str(work / "params.toml"))
    assert res.returncode == 0 and "up to date" in res.stderr
    res = cli("evaluate", "--run", str(run), "--params", str(work / "params.toml"))
    assert res.returncode == 0 and "up to date" in res.stderr and "accuracy:" in res.stdout
    assert (run / "model" / "model.keras").stat().st_mtime_ns == mtime


def test_tampered_or_incomplete_bundle_is_refused(trained_run, tmp_path):
    import shutil

    run, _ = trained_run
    copy = tmp_path / "model"
    shutil.copytree(run / "model", copy)
    with open(copy / "model.keras", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(artifacts.StageError, match="SHA-256"):
        bundle.load(copy)
    shutil.copytree(run / "model", tmp_path / "m2")
    (tmp_path / "m2" / "labels.json").write_text('{"a": 5}')
    with pytest.raises(artifacts.StageError, match="label indices"):
        bundle.load(tmp_path / "m2")
    (tmp_path / "m2" / "bundle.json").unlink()
    with pytest.raises(artifacts.StageError, match="bundle.json"):
        bundle.load(tmp_path / "m2")


def test_stages_refuse_missing_inputs_naming_the_stage(tmp_path):
    res = cli("train", "--run", str(tmp_path / "nothing"), "--params", os.devnull)
    assert res.returncode == 2 and "make prepare" in res.stderr and "Traceback" not in res.stderr
    data = make_tree(tmp_path / "d", {"a": 3, "b": 3})
    assert cli("prepare", "--data", str(data), "--run", str(tmp_path / "r"), "--params", os.devnull).returncode == 0
    res = cli("evaluate", "--run", str(tmp_path / "r"), "--params", os.devnull)
    assert res.returncode == 2 and "make train" in res.stderr


def test_every_command_has_help():
    """``python -m pipeline COMMAND --help`` for every command of the registry."""
    from pipeline.faces.commands import COMMANDS

    for command in COMMANDS:
        res = cli(command, "--help")
        assert res.returncode == 0 and "usage:" in res.stdout, (command, res.stderr[-2000:])


def test_training_resumes_after_kill_9_and_ends_with_all_epochs(tiny_mnist, tmp_path):
    import signal
    import time

    params = tmp_path / "p.toml"
    params.write_text("[train]\nepochs = 3\nbatch_size = 8\npatience = 10\n")
    run = tmp_path / "run"
    assert cli("prepare", "--data", str(tiny_mnist), "--run", str(run), "--params", str(params)).returncode == 0
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", "--run", str(run), "--params", str(params)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = run / "history.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if history.is_file() and len(history.read_text().splitlines()) >= 2:  # one epoch finished
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(history.read_text().splitlines()) - 1
    assert 1 <= done < 3 and (run / train.BACKUP_DIR).is_dir() and not (run / "model").exists()
    res = cli("train", "--run", str(run), "--params", str(params))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming" in res.stderr
    epochs = [int(line.split(",")[0]) for line in history.read_text().splitlines()[1:]]
    assert epochs == [1, 2, 3]  # the same number of epochs, none repeated or lost
    assert json.loads((run / "model" / "bundle.json").read_text())["epochs_run"] == 3
    assert not (run / train.BACKUP_DIR).exists()


def test_fresh_discards_an_interrupted_run(tmp_path):
    data = make_tree(tmp_path / "d", {"a": 20, "b": 20})
    params = tmp_path / "p.toml"
    params.write_text("[train]\nepochs = 1\n")
    run = tmp_path / "run"
    assert cli("prepare", "--data", str(data), "--run", str(run), "--params", str(params)).returncode == 0
    (run / train.BACKUP_DIR).mkdir()
    (run / train.BACKUP_DIR / "junk").write_text("x")
    res = cli("train", "--run", str(run), "--params", str(params), "--fresh")
    assert res.returncode == 0 and "resuming" not in res.stderr
    assert len((run / "history.csv").read_text().splitlines()) == 2


def test_bundle_preprocessing_reproduces_prepared_arrays_bit_for_bit(trained_run):
    """Apply-time preprocessing (the bundle's config, the original files) == what training saw."""
    import csv

    from pipeline.data.preprocess import load_image

    run, _ = trained_run
    cfg = bundle.load(run / "model").preprocess
    with open(run / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    x = np.load(run / "X_test.npy")
    for row, expected in list(zip(rows, x))[:100]:
        got = load_image(row["path"], cfg)
        assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_a_run_interrupted_after_fitting_writes_its_bundle_without_fitting_again(tmp_path, monkeypatch, caplog):
    """Ctrl-C while the temperature, novelty detector or bundle is written: the backup is still there (Keras would
    delete it when fit ends), and the re-run writes the bundle from the finished fit. A FRESH run interrupted so is
    continued too, not skipped as "up to date" beside the older bundle."""
    from pipeline.shared.params import PrepareParams, PreprocessParams, TrainParams
    from pipeline.stages.prepare import prepare

    data = make_tree(tmp_path / "d", {"a": 20, "b": 20})
    run = tmp_path / "run"
    prepare(data, run, PrepareParams(workers=1), PreprocessParams())
    p = TrainParams(epochs=2, batch_size=8, patience=5)
    write_bundle = train._write_bundle

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    for fresh in (False, True):
        monkeypatch.setattr(train, "_write_bundle", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train.train(run, p, fresh=fresh, verbose=0)
        assert (run / train.BACKUP_DIR / train.FIT_DONE).is_file()
        history = (run / "history.csv").read_text()
        monkeypatch.setattr(train, "_write_bundle", write_bundle)
        monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("fitted again"))
        with caplog.at_level("INFO"):
            assert train.train(run, p, verbose=0) is True  # not "up to date", also after FRESH
        assert "had finished fitting" in caplog.text and "up to date" not in caplog.text
        assert (run / "history.csv").read_text() == history and len(history.splitlines()) == 3
        assert json.loads((run / "model" / "bundle.json").read_text())["epochs_run"] == 2
        assert not (run / train.BACKUP_DIR).exists()
        monkeypatch.undo()
        caplog.clear()
