"""tf.distribute: TF_CONFIG parsing, and two real worker processes on 127.0.0.1 training one model."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SHADES, shade_image, write_image
from pipeline.model.distribute import tf_config_task

pytestmark = pytest.mark.slow  # several processes train together

WORKER_PARAMS = """
[prepare]
workers = 1
val_size = 0.2
test_size = 0.2
[train]
epochs = {epochs}
batch_size = 8
learning_rate = 0.003
patience = 50
dropout = 0.0
[augment]
enabled = {augment}
"""


def test_tf_config_names_the_chief_and_the_worker_count():
    cluster = {"worker": ["a:1", "b:2", "c:3"]}
    cfg = lambda kind, i, c=cluster: {"TF_CONFIG": json.dumps({"cluster": c, "task": {"type": kind, "index": i}})}
    assert tf_config_task({}) is None
    assert tf_config_task(cfg("worker", 0)) == (0, 3, True)
    assert tf_config_task(cfg("worker", 2)) == (2, 3, False)
    with_chief = {"chief": ["c:0"], "worker": ["a:1"]}
    assert tf_config_task(cfg("chief", 0, with_chief)) == (0, 2, True)
    assert tf_config_task(cfg("worker", 0, with_chief)) == (1, 2, False)
    for bad in ("{not json", json.dumps({"task": {"type": "worker", "index": 0}}),
                json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 5}}),
                json.dumps({"cluster": cluster, "task": {"type": "ps", "index": 0}})):
        with pytest.raises(ValueError, match="TF_CONFIG"):
            tf_config_task({"TF_CONFIG": bad})


def test_multiworker_without_tf_config_is_one_clear_line(tmp_path, shade_run):
    run, params = shade_run
    res = subprocess.run([sys.executable, "-m", "pipeline", "train", "--run", str(run), "--params", str(params),
                          "--strategy", "multiworker"], env=_env(None), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "needs the TF_CONFIG environment variable" in res.stderr and "Traceback" not in res.stderr


@pytest.fixture()
def shade_run(tmp_path: Path) -> tuple[Path, Path]:
    """A prepared run of the SHADES classes (90 images), and a params file for `epochs` epochs."""
    rng = np.random.default_rng(3)
    for label in SHADES:
        for i in range(30):
            write_image(tmp_path / "data" / label / f"{i:02d}.png", shade_image(label, rng))
    params = tmp_path / "params.toml"
    params.write_text(WORKER_PARAMS.format(epochs=15, augment="false"))
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "pipeline", "prepare", "--data", str(tmp_path / "data"),
                          "--run", str(run), "--params", str(params)], env=_env(None),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return run, params


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env(tf_config: dict | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"})
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _start_workers(run: Path, params: Path, n: int = 2) -> list[subprocess.Popen]:
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(n)]
    procs = []
    for i in range(n):
        tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pipeline", "train", "--run", str(run), "--params", str(params),
             "--strategy", "multiworker"], env=_env(tf_config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True))
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return outputs


def _history_epochs(run: Path) -> list[int]:
    with open(run / "history.csv", newline="") as fh:
        return [int(r["epoch"]) for r in csv.DictReader(fh)]


def test_two_workers_on_localhost_train_one_model_the_chief_saves(shade_run):
    run, params = shade_run
    t0 = time.perf_counter()
    procs = _start_workers(run, params)
    outputs = _finish(procs)
    wall = time.perf_counter() - t0
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    print(f"\n2-worker MultiWorkerMirroredStrategy training (15 epochs, 2 processes): {wall:.1f} s wall")

    info = json.loads((run / "model" / "bundle.json").read_text())
    assert info["distribution"] == {"strategy": "multiworker", "workers": 2, "replicas": 2, "global_batch_size": 16}
    assert _history_epochs(run) == list(range(1, 16))
    # Worker 1 wrote nothing but its own log; the chief logged the global batch.
    assert (run / "logs" / "train.worker1.log").is_file()
    assert "global batch 16 = 8 per replica x 2 replicas" in (run / "logs" / "train.log").read_text()
    assert not (run / "train_backup").exists()
    # The chief's model is a normal bundle: evaluate it without any strategy.
    res = subprocess.run([sys.executable, "-m", "pipeline", "evaluate", "--run", str(run), "--params", str(params)],
                         env=_env(None), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n"] == 18 and metrics["accuracy"] >= 0.9


def test_two_workers_killed_mid_run_both_resume_from_the_chiefs_backup(shade_run):
    """Kill both workers after a few epochs; on restart both must resume at the same epoch
    (a worker that started over would take a different number of steps and hang the run)."""
    run, params = shade_run
    params.write_text(WORKER_PARAMS.format(epochs=8, augment="true"))
    procs = _start_workers(run, params)
    meta = run / "train_backup" / "training_metadata.json"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and all(p.poll() is None for p in procs):
            try:
                if json.loads(meta.read_text())["epoch"] >= 3:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        assert all(p.poll() is None for p in procs), "a worker ended before it was killed"
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    done = max(_history_epochs(run))
    assert 3 <= done < 8

    procs = _start_workers(run, params)
    outputs = _finish(procs, timeout=300)
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert "resuming the interrupted run" in (run / "logs" / "train.log").read_text()
    assert _history_epochs(run) == list(range(1, 9))
    assert (run / "model" / "bundle.json").is_file()


def test_mirrored_builds_in_the_strategy_scope_and_records_its_replicas(shade_run):
    """On this CPU-only machine MirroredStrategy has one replica (one per GPU where there are GPUs)."""
    from pipeline.shared.params import TrainParams
    from pipeline.stages.train import train

    run, _ = shade_run
    assert train(run, TrainParams(epochs=2, batch_size=8, strategy="mirrored"), verbose=0)
    info = json.loads((run / "model" / "bundle.json").read_text())
    assert info["distribution"]["strategy"] == "mirrored"
    assert info["distribution"]["global_batch_size"] == 8 * info["distribution"]["replicas"]
    assert _history_epochs(run) == [1, 2]
