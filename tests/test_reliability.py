"""Crash safety: kill -9 at random points, full and read-only disks, no pickles, reproducible runs, logs."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.shared import artifacts, params as params_mod
from pipeline.shared.params import EvaluateParams, PrepareParams, PreprocessParams, TrainParams
from pipeline.model import callbacks
from pipeline.stages import train as train_mod
from pipeline.stages.evaluate import evaluate
from pipeline.stages.prepare import prepare

from conftest import REPO, SHADES, cli, make_tree, shade_image, write_image

RNG = random.Random(int(os.environ.get("FAULT_SEED", "7")))  # FAULT_SEED=... to try other points
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
PREPARED = ["X_train.npy", "X_val.npy", "X_test.npy", "y_train.npy", "y_val.npy", "y_test.npy",
            "manifest.csv", "labels.json", "rejected.csv", "dataset.json"]


def temp_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if artifacts.TMP_TAG in p.name]


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(proc: subprocess.Popen, ready, extra: float, timeout: float = 120) -> bool:
    """SIGKILL ``proc`` ``extra`` seconds after ``ready()`` turns true; False if it ended first."""
    deadline = time.time() + timeout
    while proc.poll() is None and not ready() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(extra)
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def shade_folder(root: Path, per_class: int, seed: int = 0, size=(20, 20)) -> Path:
    rng = np.random.default_rng(seed)
    for label in SHADES:
        for i in range(per_class):
            write_image(root / label / f"{i:03d}.png", shade_image(label, rng, size))
    return root


@pytest.mark.slow
def test_prepare_killed_at_random_points_ends_identical(tmp_path):
    data = make_tree(tmp_path / "data", {"a": 250, "b": 250, "c": 250}, size=24)
    (data / "a" / "bad.png").write_bytes(b"junk")
    params = tmp_path / "p.toml"
    params.write_text("[prepare]\nworkers = 2\n")
    ref = tmp_path / "ref"
    t0 = time.time()
    assert cli("prepare", "--data", data, "--run", ref, "--params", params).returncode == 0
    duration = time.time() - t0
    run = tmp_path / "run"
    killed = 0
    for delay in sorted(RNG.uniform(0.3, duration) for _ in range(4)):
        killed += kill_when(start("prepare", "--data", data, "--run", run, "--params", params), lambda: True, delay)
    assert killed >= 2, "prepare finished before most kill points; the test did not test anything"
    res = cli("prepare", "--data", data, "--run", run, "--params", params)
    assert res.returncode == 0, res.stderr[-2000:]
    for name in PREPARED:
        assert (run / name).read_bytes() == (ref / name).read_bytes(), name
    assert json.loads((run / "prepare.json").read_text())["fingerprint"] == \
        json.loads((ref / "prepare.json").read_text())["fingerprint"]
    assert temp_files(run) == []


@pytest.mark.slow
def test_train_killed_at_random_points_resumes_to_an_equally_good_model(tmp_path):
    data = shade_folder(tmp_path / "data", 24)
    params = tmp_path / "p.toml"
    params.write_text("[train]\nepochs = 6\nbatch_size = 8\nlearning_rate = 0.003\npatience = 6\ndropout = 0.0\n")
    runs = {name: tmp_path / name for name in ("ref", "run")}
    for run in runs.values():
        prepare(data, run, PrepareParams(workers=1), PreprocessParams())
    train_mod.train(runs["ref"], params_mod.load(params, "train"), verbose=0)  # uninterrupted, in this process
    history = runs["run"] / "history.csv"

    def epochs_done() -> int:
        try:
            return len(history.read_text().splitlines()) - 1
        except OSError:
            return 0
    killed = kill_when(start("train", "--run", runs["run"], "--params", params), lambda: True, RNG.uniform(0.5, 3))
    for _ in range(2):  # then twice in the middle of an epoch, after a random number of finished ones
        target = epochs_done() + RNG.randint(1, 2)
        killed += kill_when(start("train", "--run", runs["run"], "--params", params),
                            lambda: epochs_done() >= target, RNG.uniform(0, 0.2))
    assert killed >= 2
    res = cli("train", "--run", runs["run"], "--params", params)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [int(r.split(",")[0]) for r in history.read_text().splitlines()[1:]] == [1, 2, 3, 4, 5, 6]
    acc = {name: evaluate(run, EvaluateParams())["accuracy"] for name, run in runs.items()}
    assert acc["run"] >= acc["ref"] - 0.05, acc
    assert temp_files(runs["run"]) == [] and not (runs["run"] / train_mod.BACKUP_DIR).exists()


@pytest.mark.slow
def test_predict_killed_at_random_points_resumes_to_the_same_csv(shade_bundle, tmp_path):
    images = shade_folder(tmp_path / "imgs", 200, seed=3, size=(12, 12))
    (images / "dark" / "empty.png").write_bytes(b"")
    ref, out = tmp_path / "ref.csv", tmp_path / "out.csv"
    common = ["--model", shade_bundle, "--batch-size", "16", "--workers", "1", "--params", os.devnull]
    assert cli("predict", images, "--out", ref, *common).returncode == 0

    def rows() -> int:
        try:
            return out.read_bytes().count(b"\n") - 1
        except OSError:
            return 0
    killed = 0
    for k in range(2):
        target = rows() + RNG.randint(16, 200)
        args = ["predict", images, "--out", out, *common] + (["--resume"] if k else [])
        killed += kill_when(start(*args), lambda: rows() >= target, RNG.uniform(0, 0.05))
        text = out.read_bytes()
        assert ref.read_bytes().startswith(text[:text.rfind(b"\n") + 1])  # finished rows are whole and right
    assert killed >= 1
    res = cli("predict", images, "--out", out, *common, "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.read_bytes() == ref.read_bytes()
    assert json.loads((tmp_path / "out.summary.json").read_text())["status"] == "complete"
    assert temp_files(tmp_path) == []


# ---------------------------------------------------------------- disks
@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (root only; skipped elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the read-only test covers the error path")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def make_read_only(folder: Path) -> None:
    """Make ``folder`` unwritable: a read-only remount when it is our tmpfs (root ignores chmod), else chmod."""
    if os.path.ismount(folder):
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    else:
        folder.chmod(0o555)
    try:
        (folder / "probe").write_text("x")
    except OSError:
        return
    (folder / "probe").unlink()
    pytest.skip("cannot make a folder read-only here (running as root without mount)")


def test_full_disk_gives_one_clear_line_and_leaves_no_temp_files(tiny_disk, tmp_path):
    data = make_tree(tmp_path / "data", {"a": 60, "b": 60}, size=28)  # ~750 KB of arrays > 256 KiB
    res = cli("prepare", "--data", data, "--run", tiny_disk / "run", "--params", os.devnull)
    assert res.returncode == 2 and "no space left on the device" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert temp_files(tiny_disk) == [] and not (tiny_disk / "run" / "prepare.json").exists()


@pytest.mark.slow
def test_read_only_output_gives_one_clear_line(tiny_disk, tmp_path, shade_bundle):
    data = shade_folder(tmp_path / "data", 6)
    run = tiny_disk / "run"
    assert cli("prepare", "--data", data, "--run", run, "--params", os.devnull).returncode == 0
    make_read_only(tiny_disk)
    for args in (["train", "--run", run, "--params", os.devnull],
                 ["predict", data, "--model", shade_bundle, "--out", tiny_disk / "p.csv", "--params", os.devnull]):
        res = cli(*args)
        assert res.returncode == 2 and "cannot write or read" in res.stderr, res.stderr[-2000:]
        assert "Read-only file system" in res.stderr and "Traceback" not in res.stderr


# ---------------------------------------------------------------- safety, reproducibility, logs
def test_no_pickle_anywhere():
    pattern = re.compile(r"allow_pickle\s*=\s*True|^\s*(import|from)\s+(c?pickle|dill|cloudpickle|joblib)\b"
                         r"|pickle\.loads?\(|torch\.load\(|safe_mode\s*=\s*False", re.M)
    offenders = [str(p) for folder in ("pipeline", "tests") for p in (REPO / folder).rglob("*.py")
                 if p.name != "test_reliability.py" and pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


@pytest.mark.slow
def test_same_seed_same_split_and_deterministic_weights(tmp_path):
    data = shade_folder(tmp_path / "data", 20)
    weights = []
    for name in ("one", "two"):
        run = tmp_path / name
        prepare(data, run, PrepareParams(workers=1), PreprocessParams())
        train_mod.train(run, TrainParams(epochs=2, batch_size=8, deterministic=True), verbose=0)
        import keras

        weights.append(keras.models.load_model(run / "model" / "model.keras").get_weights())
    for name in PREPARED:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert len(weights[0]) == len(weights[1]) > 0
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_every_stage_logs_what_it_read_wrote_and_skipped(trained_run):
    run, work = trained_run
    for stage in ("prepare", "train", "evaluate"):
        log = (run / "logs" / f"{stage}.log").read_text(encoding="utf-8")
        assert re.search(rf"{stage}: read ", log) and re.search(rf"{stage}: wrote ", log), (stage, log[-1500:])
    assert "up to date" in cli("evaluate", "--run", run, "--params", work / "params.toml").stderr
    assert "skipped" in (run / "logs" / "evaluate.log").read_text(encoding="utf-8")


def test_a_backup_cut_while_keras_wrote_its_epoch_record_falls_back(tmp_path):
    backup = tmp_path / "train_backup"
    backup.mkdir()
    (backup / "training_metadata.json").write_text('{"epo')  # killed mid-write
    (backup / "training_metadata.json.bkp").write_text('{"epoch": 3, "batch": 0}')
    import h5py

    with h5py.File(backup / "latest.weights.h5.bkp", "w") as fh:
        fh["w"] = np.arange(3)
    (backup / "latest.weights.h5").write_bytes(b"cut short")
    callbacks.repair_backup(backup)
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 3
    assert (backup / "latest.weights.h5").read_bytes() == (backup / "latest.weights.h5.bkp").read_bytes()
    (backup / "training_metadata.json").write_text("")
    (backup / "training_metadata.json.bkp").unlink()
    callbacks.repair_backup(backup)
    assert not (backup / "training_metadata.json").exists() and not (backup / "latest.weights.h5").exists()
