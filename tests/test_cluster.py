"""The Ray engine on a real one-node cluster on loopback (``ray start --head --node-ip-address=127.0.0.1``, in
the test's temp dir, stopped afterwards): prepare and predict give the very files the local engine gives, a
killed Ray worker costs a retry and nothing else, suspects' folds run as Ray tasks, and without Ray the
engine is one clear line."""
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


def test_predict_on_ray_writes_the_same_rows(tmp_path, ray_head, shade_bundle):
    from pipeline.stages.predict import predict

    data = _folder(tmp_path / "data", 200)
    p = PredictParams(batch_size=32, workers=2)
    predict(data, shade_bundle, tmp_path / "local.csv", p)
    predict(data, shade_bundle, tmp_path / "ray.csv", p, cluster=ClusterParams(engine="ray", ray_address=ray_head))
    assert (tmp_path / "local.csv").read_text() == (tmp_path / "ray.csv").read_text()


def _kill_a_busy_worker(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first Ray worker seen running one of our tasks (its process title: ``ray::_call``)."""
    while not stop.is_set() and not killed:
        out = subprocess.run(["ps", "-ewwo", "pid=,args="], capture_output=True, text=True).stdout
        for line in out.splitlines():
            pid, _, args = line.strip().partition(" ")
            if args.startswith("ray::_call"):
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


def test_without_ray_the_engine_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(UserError, match=r'engine = "ray" needs Ray: pip install ".\[ray\]" \(or use --engine local\)'):
        cluster.connect(ClusterParams(engine="ray"))
