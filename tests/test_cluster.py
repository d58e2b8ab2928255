"""The Ray engine on a real one-node cluster on loopback (``ray start --head --node-ip-address=127.0.0.1``, in
the test's temp dir, stopped afterwards): prepare and predict (its model in Ray actors) give the very files the
local engine gives, a killed Ray worker or model actor costs a retry and nothing else, a killed driver costs a
re-run (prepare) or a resume (predict), suspects' folds run as Ray tasks, training runs on Ray Train workers,
and without Ray the engine is one clear line."""
import csv
import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.shared import cluster
from pipeline.shared.errors import UserError
from pipeline.shared.params import ClusterParams, PredictParams, PrepareParams, PreprocessParams

from conftest import SHADES, free_port, shade_image, write_image

# Ray reads this when it is imported: one node, every address on loopback (tests talk to 127.0.0.1 only)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e .[ray])")
RAY = str(Path(sys.executable).with_name("ray"))
ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


HEAD: dict[str, str] = {}  # the temp dir of the cluster the tests started


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with 2 CPUs; its address. Its files live in a temp dir (short: Ray's socket
    paths must stay under 108 characters), removed afterwards with the cluster stopped."""
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    saved = {k: os.environ.get(k) for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update({k: ENV[k] for k in saved})  # the driver (this process) keeps to loopback too
    port = free_port()
    address = f"127.0.0.1:{port}"
    res = subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                          f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats"],
                         env=ENV, capture_output=True, text=True, timeout=180)
    try:
        assert res.returncode == 0, res.stderr[-3000:]
        HEAD["temp"] = str(temp)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop_head(temp)  # this cluster only
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _folder(root: Path, n: int = 320) -> Path:
    """``n`` small images in three classes (more than the serial cut-off, so the pool is used), and bad files."""
    rng, names = np.random.default_rng(0), sorted(SHADES)
    for i in range(n):
        label = names[i % len(names)]
        write_image(root / label / f"{i:04d}.png", shade_image(label, rng, (18 + i % 5, 20)))
    (root / names[0] / "empty.png").write_bytes(b"")
    (root / names[1] / "text.png").write_text("not an image")
    return root


def _same_files(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        assert filecmp.cmp(a / name, b / name, shallow=False), name


def _no_remote_connections() -> None:
    """Every TCP connection of the test cluster's processes (and of this driver) stays on loopback."""
    listing = subprocess.run(["ps", "-ewwo", "pid=,args="], capture_output=True, text=True).stdout
    pids = {line.split(None, 1)[0] for line in listing.splitlines() if HEAD["temp"] in line} | {str(os.getpid())}
    out = subprocess.run(["ss", "-tnp"], capture_output=True, text=True).stdout
    for line in out.splitlines()[1:]:
        if any(f"pid={pid}," in line for pid in pids):
            local, peer = line.split()[3:5]
            assert local.startswith(("127.", "[::1]", "[::ffff:127.")) and peer.startswith(
                ("127.", "[::1]", "[::ffff:127.")), line


ARRAYS = [f"{k}_{s}.npy" for k in ("X", "y") for s in ("train", "val", "test")]
TABLES = ["manifest.csv", "rejected.csv", "labels.json"]


def test_prepare_on_ray_writes_the_same_files_as_the_local_engine(tmp_path, ray_head, monkeypatch):
    from pipeline.stages.prepare import prepare

    monkeypatch.setenv("RAY_ADDRESS", ray_head)  # Ray's own rule: the address from the environment
    data = _folder(tmp_path / "data")
    prepare(data, tmp_path / "local", PrepareParams(workers=2), PreprocessParams())
    prepare(data, tmp_path / "ray", PrepareParams(workers=2), PreprocessParams(), cluster=ClusterParams(engine="ray"))
    _same_files(tmp_path / "local", tmp_path / "ray", TABLES + ARRAYS)
    assert ray.is_initialized() and ray.get_runtime_context().gcs_address == ray_head
    _no_remote_connections()


def test_predict_on_ray_runs_the_model_in_actors_and_writes_the_same_rows(tmp_path, ray_head, shade_bundle,
                                                                          monkeypatch):
    from pipeline.stages.predict import actors, predict

    real, pools = actors.start, []
    monkeypatch.setattr(actors, "start", lambda *a: pools.append(real(*a)) or pools[-1])
    data = _folder(tmp_path / "data", 200)
    p = PredictParams(batch_size=32, workers=2)
    cp = ClusterParams(engine="ray", ray_address=ray_head)
    predict(data, shade_bundle, tmp_path / "local.csv", p)
    predict(data, shade_bundle, tmp_path / "ray.csv", p, cluster=cp)
    assert len(pools) == 1 and pools[0].actors == 0  # the model ran in the actors, ended afterwards
    local = (tmp_path / "local.csv").read_text()
    assert local == (tmp_path / "ray.csv").read_text()
    # resumed on Ray after a kill cut the file in a row: the same file
    lines = local.splitlines(keepends=True)
    (tmp_path / "ray.csv").write_text("".join(lines[:71]) + lines[71][:9])
    predict(data, shade_bundle, tmp_path / "ray.csv", p, resume=True, cluster=cp)
    assert (tmp_path / "ray.csv").read_text() == local


def _kill_a_busy_worker(stop: threading.Event, killed: list[int], title: str = "ray::_call",
                        ready=lambda: True) -> None:
    """SIGKILL the first Ray worker seen running one of our tasks (its process title: ``ray::_call``; an actor's:
    ``ray::<class>``), once ``ready()``."""
    while not stop.is_set() and not killed:
        out = subprocess.run(["ps", "-ewwo", "pid=,args="], capture_output=True, text=True).stdout
        for line in out.splitlines() if ready() else []:
            pid, _, args = line.strip().partition(" ")
            if args.startswith(title):
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                break
        time.sleep(0.01)


def test_a_killed_ray_worker_costs_a_retry_and_nothing_else(tmp_path, ray_head):
    from pipeline.stages.prepare import prepare

    data = _folder(tmp_path / "data", 3000)
    prepare(data, tmp_path / "local", PrepareParams(workers=2), PreprocessParams())
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_a_busy_worker, args=(stop, killed))
    killer.start()
    try:
        prepare(data, tmp_path / "ray", PrepareParams(workers=2), PreprocessParams(),
                cluster=ClusterParams(engine="ray", ray_address=ray_head))
    finally:
        stop.set()
        killer.join()
    assert killed, "no Ray worker was seen running a task"
    _same_files(tmp_path / "local", tmp_path / "ray", TABLES + ARRAYS)


def test_a_killed_model_actor_is_restarted_and_predict_writes_the_same_rows(tmp_path, ray_head, shade_bundle):
    """SIGKILL a model actor once rows are being written: Ray starts it again (the bundle loaded anew) and
    redoes its blocks."""
    from pipeline.stages.predict import predict

    data = _folder(tmp_path / "data", 3000)
    p = PredictParams(batch_size=32, workers=2)
    predict(data, shade_bundle, tmp_path / "local.csv", p)
    out, stop, killed = tmp_path / "ray.csv", threading.Event(), []
    rows_written = lambda: out.is_file() and out.read_text().count("\n") > 100
    killer = threading.Thread(target=_kill_a_busy_worker, args=(stop, killed, "ray::PredictActor", rows_written))
    killer.start()
    try:
        summary = predict(data, shade_bundle, out, p, cluster=ClusterParams(engine="ray", ray_address=ray_head))
    finally:
        stop.set()
        killer.join()
    assert killed, "no model actor was seen"
    assert summary["rows"] == 3002 and out.read_text() == (tmp_path / "local.csv").read_text()


def _start(args: list[str], address: str) -> subprocess.Popen:
    env = {**ENV, "RAY_ADDRESS": address, "TF_CPP_MIN_LOG_LEVEL": "3", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> None:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL the driver (the stage's own process, not the cluster's) once ``ready()``; it must still run."""
    deadline = time.monotonic() + timeout
    try:
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the stage ended before it was killed: {proc.stderr.read()[-2000:]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_a_killed_prepare_driver_leaves_a_run_a_rerun_finishes_the_same(tmp_path, ray_head):
    data = _folder(tmp_path / "data", 3000)
    params = tmp_path / "params.toml"
    params.write_text("[prepare]\nworkers = 2\n")
    prepare = ["prepare", "--data", str(data), "--params", str(params), "--run"]
    _finish(_start([*prepare, str(tmp_path / "whole"), "--engine", "local"], ray_head))
    run = tmp_path / "ray"
    _kill_when(_start([*prepare, str(run), "--engine", "ray"], ray_head),
               lambda: any(run.glob(".X_train.npy.tmp-*")))
    assert not (run / "prepare.json").exists()  # not finished: the run is not marked prepared
    _finish(_start([*prepare, str(run), "--engine", "ray"], ray_head))
    _same_files(tmp_path / "whole", run, TABLES + ARRAYS)


@pytest.mark.slow
def test_a_killed_predict_driver_resumes_on_ray_to_the_same_file(tmp_path, ray_head, shade_bundle):
    data = _folder(tmp_path / "data", 3000)
    (tmp_path / "params.toml").write_text("")  # the defaults
    predict = ["predict", str(data), "--model", str(shade_bundle), "--batch-size", "32", "--workers", "2",
               "--params", str(tmp_path / "params.toml"), "--out"]
    whole, out = tmp_path / "whole.csv", tmp_path / "ray.csv"
    _finish(_start([*predict, str(whole), "--engine", "local"], ray_head))
    _kill_when(_start([*predict, str(out), "--engine", "ray"], ray_head),
               lambda: out.is_file() and out.read_text().count("\n") > 300)
    assert 300 < out.read_text().count("\n") < 3003
    _finish(_start([*predict, str(out), "--engine", "ray", "--resume"], ray_head))
    assert out.read_text() == whole.read_text()


@pytest.mark.slow
def test_suspects_folds_run_as_ray_tasks_with_the_same_folds(tmp_path, ray_head):
    from pipeline.shared.params import AugmentParams, SuspectsParams, TrainParams
    from pipeline.stages.prepare import prepare
    from pipeline.stages.suspects import suspects

    run = tmp_path / "run"
    prepare(_folder(tmp_path / "data", 300), run, PrepareParams(workers=1), PreprocessParams())
    sp, tp = SuspectsParams(folds=2, step_budget=60), TrainParams(batch_size=16)
    record = suspects(run, sp, tp, AugmentParams(), ClusterParams(engine="ray", ray_address=ray_head))
    folds = sorted((run / "suspects_folds").glob("fold*.json"))
    assert [json.loads(f.read_text())["fold"] for f in folds] == [1, 2]
    assert record["images"] > 200 and record["out_of_fold_accuracy"] > 0.9  # the shades are easy


@pytest.mark.slow
def test_train_on_two_ray_train_workers_writes_one_bundle_that_predicts(tmp_path, ray_head):
    """`pipeline train --engine ray`: Ray Train's TensorflowTrainer starts 2 workers with their TF_CONFIG;
    worker 0 alone writes the bundle, a normal one."""
    from pipeline.stages.predict import predict
    from pipeline.stages.prepare import prepare

    data, run, params = _folder(tmp_path / "data", 90), tmp_path / "run", tmp_path / "params.toml"
    prepare(data, run, PrepareParams(workers=1, val_size=0.2, test_size=0.2), PreprocessParams())
    params.write_text("[train]\nepochs = 2\nbatch_size = 8\nlearning_rate = 0.003\ndropout = 0.0\n"
                      "[augment]\nenabled = false\n[cluster]\ntrain_workers = 2\n")
    t0 = time.perf_counter()
    _finish(_start(["train", "--run", str(run), "--params", str(params), "--engine", "ray"], ray_head))
    print(f"\n`pipeline train --engine ray`, 2 Ray Train workers, 2 epochs: {time.perf_counter() - t0:.1f} s")
    info = json.loads((run / "model" / "bundle.json").read_text())
    assert info["distribution"] == {"strategy": "multiworker", "workers": 2, "replicas": 2, "global_batch_size": 16}
    with open(run / "history.csv", newline="") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2]
    logs = {name: (run / "logs" / f"{name}.log").read_text() for name in ("train", "train.worker1")}
    assert logs["train"].count("(bundle)") == 1 and "(bundle)" not in logs["train.worker1"]  # once, by the chief
    assert not (run / "train_backup").exists() and (run / "logs" / "ray").is_dir()
    summary = predict(data, run / "model", tmp_path / "p.csv", PredictParams(batch_size=32, workers=1))
    assert summary["predicted"] == 90


def test_train_on_ray_refuses_mirrored_in_one_line(tmp_path):
    from pipeline.shared.params import TrainParams
    from pipeline.stages.train import train_on_ray

    with pytest.raises(UserError, match='--engine ray trains with strategy "multiworker"'):
        train_on_ray(tmp_path, TrainParams(strategy="mirrored"), ClusterParams(engine="ray"))
    with pytest.raises(UserError, match=r"\[cluster\] train_workers must be >= 0"):
        ClusterParams(train_workers=-1)


def test_without_ray_the_engine_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(UserError, match=r'engine = "ray" needs Ray: pip install ".\[ray\]" \(or use --engine local\)'):
        cluster.connect(ClusterParams(engine="ray"))
