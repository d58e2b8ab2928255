"""The Ray engine against the local one, on this machine (``make bench BENCH=cluster``; docs/scale.md#ray):
prepare of a synthetic folder (:func:`benchmarks.bench.make_synthetic`) with ``[cluster] engine = "local"``
and ``"ray"`` on a one-node Ray cluster started on loopback, each in its own process (images/s, wall time,
peak RSS of the stage's process and of its workers); the engine's fixed overhead (joining the cluster and
one empty task); suspects' 5 folds one after another against as parallel Ray tasks. From the measured
per-image CPU cost, a projection of 10M images on 16 and 64 cores.

``--memory 20000,200000``: instead, memory as the data grows: prepare at each size with both engines (a fresh
one-node cluster per size), the peak RSS of the stage's process (the driver) and of its workers (the pool's
processes, or every Ray worker process of the node), published as ``cluster_memory``.

On 2 cores Ray cannot beat the local pool: it runs the same jobs, plus scheduling and object transfer.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import publish
from pipeline.shared.cluster import stop_head

ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
       "TF_CPP_MIN_LOG_LEVEL": "3", "TQDM_DISABLE": "1"}
RAY = str(Path(sys.executable).with_name("ray"))


def _head(temp: Path, cpus: int) -> str:
    """Start a one-node Ray cluster on 127.0.0.1; its address."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={cpus}",
                    f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats"], env=ENV, check=True,
                   capture_output=True)
    return f"127.0.0.1:{port}"


def _child(step: str, *args: str, address: str = "") -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.cluster_bench", "--step", step, *args]
    res = subprocess.run(cmd, env={**ENV, **({"RAY_ADDRESS": address} if address else {})}, capture_output=True,
                         text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{step} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _peak_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))


def step_prepare(data: Path, run: Path, engine: str) -> dict[str, Any]:
    from benchmarks.bench import ChildPeak
    from pipeline.shared.params import ClusterParams, PrepareParams, PreprocessParams
    from pipeline.stages.prepare import prepare

    shutil.rmtree(run, ignore_errors=True)
    watcher = ChildPeak()
    watcher.start()
    t0 = time.perf_counter()
    s = prepare(data, run, PrepareParams(), PreprocessParams(), cluster=ClusterParams(engine=engine))
    seconds = time.perf_counter() - t0
    n = sum(sum(c.values()) for c in s.counts.values())
    workers = watcher.stop() if engine == "local" else _ray_workers_peak_mb()
    return {"images": n, "seconds": seconds, "peak_rss_mb": _peak_mb(), "peak_worker_rss_mb": workers}


def _ray_workers_peak_mb() -> float:
    """The largest peak RSS of this node's Ray worker processes (``ray::...``: they live on after a job, so
    their peaks can be read once it is done; the bench starts a fresh cluster for each size)."""
    from benchmarks.bench import _vm_hwm_mb

    peak = 0.0
    for pid in (d for d in os.listdir("/proc") if d.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                name = fh.read().split(b"\0")[0]
        except OSError:
            continue
        if name.startswith(b"ray::"):
            peak = max(peak, _vm_hwm_mb(pid))
    return peak


def step_overhead() -> dict[str, Any]:
    """Joining the cluster, then one empty task (its first: a worker process starts), then another."""
    from pipeline.shared import cluster
    from pipeline.shared.params import ClusterParams

    t0 = time.perf_counter()
    cp = ClusterParams(engine="ray")
    cluster.connect(cp)
    t1 = time.perf_counter()
    cluster.remote(cp, len, ()).get()
    t2 = time.perf_counter()
    for _ in range(20):
        cluster.remote(cp, len, ()).get()
    return {"connect_s": t1 - t0, "first_task_s": t2 - t1, "task_ms": (time.perf_counter() - t2) / 20 * 1000}


def step_suspects(run: Path, engine: str) -> dict[str, Any]:
    from pipeline.shared.params import AugmentParams, ClusterParams, SuspectsParams, TrainParams
    from pipeline.stages.suspects import suspects

    shutil.rmtree(run / "suspects_folds", ignore_errors=True)
    (run / "suspects.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    suspects(run, SuspectsParams(folds=5, step_budget=300), TrainParams(), AugmentParams(), ClusterParams(engine=engine))
    return {"seconds": time.perf_counter() - t0}


def format_table(r: dict[str, Any]) -> str:
    lines = [f"{'prepare, ' + str(r['images']) + ' synthetic images':<40} {'wall s':>8} {'img/s':>8} "
             f"{'peak RSS MB':>12} {'workers MB':>11}"]
    for engine in ("local", "ray"):
        p = r["prepare"][engine]
        lines.append(f"{engine:<40} {p['seconds']:>8.1f} {p['images'] / p['seconds']:>8.0f} {p['peak_rss_mb']:>12.0f} "
                     f"{p['peak_worker_rss_mb']:>11.0f}")
    o = r["overhead"]
    lines.append(f"Ray's fixed cost: start a one-node cluster {r['head_s']:.1f} s, join it {o['connect_s']:.2f} s, "
                 f"first task {o['first_task_s']:.2f} s, then {o['task_ms']:.1f} ms a task")
    s = r["suspects"]
    lines.append(f"suspects, 5 folds of 300 steps: one after another {s['local']['seconds']:.0f} s, as Ray tasks "
                 f"{s['ray']['seconds']:.0f} s")
    per_image = r["cpus"] / (r["prepare"]["local"]["images"] / r["prepare"]["local"]["seconds"])  # CPU-s per image
    for cores in (16, 64):
        lines.append(f"projection, 10M images on {cores} cores at the measured {per_image * 1000:.2f} CPU-ms an image: "
                     f"{1e7 * per_image / cores / 60:.0f} min (decoding alone; the shared filesystem must keep up)")
    return "\n".join(lines)


def memory_table(r: dict[str, Any]) -> str:
    lines = [f"{'prepare, synthetic images':<28} {'engine':<7} {'wall s':>7} {'img/s':>7} {'driver MB':>10} "
             f"{'worker MB':>10}"]
    for size, engines in r["sizes"].items():
        for engine, p in engines.items():
            lines.append(f"{size:<28} {engine:<7} {p['seconds']:>7.1f} {p['images'] / p['seconds']:>7.0f} "
                         f"{p['peak_rss_mb']:>10.0f} {p['peak_worker_rss_mb']:>10.0f}")
    sizes = list(r["sizes"])
    if len(sizes) >= 2:
        a, b = r["sizes"][sizes[0]], r["sizes"][sizes[-1]]
        grown = int(sizes[-1]) - int(sizes[0])
        for engine in a:
            per = (b[engine]["peak_rss_mb"] - a[engine]["peak_rss_mb"]) * 1e6 / grown
            lines.append(f"{engine}: the driver grows {per:.0f} bytes an image (the audit's per-image facts); its "
                         f"workers {b[engine]['peak_worker_rss_mb'] - a[engine]['peak_worker_rss_mb']:+.0f} MB")
    return "\n".join(lines)


def memory(sizes: list[int], out: str) -> None:
    """Prepare at each size with both engines, a fresh one-node cluster each time; publish ``cluster_memory``."""
    from benchmarks.bench import make_synthetic

    result: dict[str, Any] = {"cpus": os.cpu_count() or 1, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="cluster-bench-", dir=".") as work:
        data, have = Path(work) / "synthetic", 0
        for size in sorted(sizes):
            make_synthetic(data, have, size)
            have = size
            with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as temp:
                address = _head(Path(temp), result["cpus"])
                try:
                    result["sizes"][str(size)] = {
                        engine: _child("prepare", str(data), str(Path(work) / f"run-{engine}"), engine, address=address)
                        for engine in ("local", "ray")}
                finally:
                    stop_head(temp)
            print(f"cluster: {size} images done", file=sys.stderr, flush=True)
    publish(out, "cluster_memory", result, memory_table(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200000, help="synthetic images (default: %(default)s)")
    parser.add_argument("--out", default="bench-results", help="where cluster.json goes")
    parser.add_argument("--memory", help="sizes, e.g. 20000,200000: only the memory of prepare as the data grows")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        fn = {"prepare": lambda: step_prepare(Path(args.args[0]), Path(args.args[1]), args.args[2]),
              "overhead": step_overhead, "suspects": lambda: step_suspects(Path(args.args[0]), args.args[1])}
        print(json.dumps(fn[args.step]()))
        return 0
    if args.memory:
        memory([int(v) for v in args.memory.split(",")], args.out)
        return 0
    from benchmarks.bench import make_synthetic

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="cluster-bench-", dir=".") as work, \
            tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as temp:
        data = Path(work) / "synthetic"
        print(f"cluster: generating {args.images} images ...", file=sys.stderr, flush=True)
        make_synthetic(data, 0, args.images)
        t0 = time.perf_counter()
        address = _head(Path(temp), cpus)
        result: dict[str, Any] = {"images": args.images, "cpus": cpus, "head_s": time.perf_counter() - t0,
                                  "prepare": {}, "suspects": {}}
        try:
            for engine in ("local", "ray"):
                print(f"cluster: prepare, {engine} ...", file=sys.stderr, flush=True)
                result["prepare"][engine] = _child("prepare", str(data), str(Path(work) / f"run-{engine}"), engine,
                                                   address=address)
            result["overhead"] = _child("overhead", address=address)
            for engine in ("local", "ray"):
                print(f"cluster: suspects, {engine} ...", file=sys.stderr, flush=True)
                result["suspects"][engine] = _child("suspects", str(Path(work) / "run-local"), engine, address=address)
        finally:
            stop_head(temp)
    publish(args.out, "cluster", result, format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
