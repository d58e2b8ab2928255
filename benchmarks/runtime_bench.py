"""The light runtime (ONNX Runtime, the bundle's ``model.onnx``) against the TensorFlow path, side by side
in one run: part of the stages table of ``make bench`` (``python -m benchmarks.bench``).

| what | how | goal |
|---|---|---|
| cold single image | wall time of ``pipeline predict one.png`` as a new process (steps ``cold_onnx``, ``cold_tf``) | <= 1.0 s and <= 0.25x TensorFlow's |
| a folder of 10,000 PNGs | img/s of ``pipeline predict datasets/mnist/test``, start-up included (``folder_onnx``, ``folder_tf``) | >= 1.5x TensorFlow's |
| serve | requests/s and p50/p99 latency with 1 and 8 concurrent clients posting one PNG each; the server's peak RSS; also TensorFlow with one request per model call, as serve ran before the batcher | >= 3x TensorFlow's at 8 clients; <= 300 MB |
| install size | a fresh venv with ``pip install '.[runtime]'`` against the project's full one (and ``pipeline predict`` run from it: TensorFlow is not even installed there) | – |
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

RUNTIMES = ("onnx", "tensorflow")
SHORT = {"onnx": "onnx", "tensorflow": "tf"}
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
# The serve configurations measured: (label, runtime, extra serve options).
SERVE = (("onnx", "onnx", ()), ("tensorflow", "tensorflow", ()),
         ("tensorflow, one request per call (as before)", "tensorflow", ("--max-batch", "1")))


def trained_model(work: Path) -> Path:
    """The bundle the predict steps apply: this bench's train step's, else the reference model."""
    for cand in (work / "run" / "model", Path(os.environ.get("BENCH_MODEL", "runs/mnist/model"))):
        if (cand / "bundle.json").is_file():
            return cand
    raise SystemExit("the predict steps need a model: run the bench's train step first, or `make all`")


def bench_model(work: Path) -> Path:
    """The bundle measured (this bench's train step's, else the reference model); it must have its model.onnx."""
    model = trained_model(work)
    if not (model / "model.onnx").is_file():
        raise SystemExit(f"{model} has no model.onnx (trained by an older version): add it with "
                         f"`pipeline export --model {model} --format onnx`")
    return model


def one_image(data: Path) -> Path:
    return sorted((data / "test").glob("*/*.png"))[0]


def _cli(*args: Any, python: str = sys.executable) -> float:
    """Wall seconds of ``python -m pipeline ARGS`` in a new process (it must succeed)."""
    t0 = time.perf_counter()
    res = subprocess.run([python, "-m", "pipeline", *map(str, args)], env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"pipeline {args[0]} failed:\n{res.stderr[-2000:]}")
    return seconds


def _cold(runtime: str) -> Callable[[Path, Path], dict[str, Any]]:
    def step(data: Path, work: Path) -> dict[str, Any]:
        """``pipeline predict one.png`` as a new process: interpreter, imports, bundle, one image."""
        return {"images": 1, "seconds": _cli("predict", one_image(data), "--model", bench_model(work),
                                             "--runtime", runtime)}
    return step


def _folder(runtime: str) -> Callable[[Path, Path], dict[str, Any]]:
    def step(data: Path, work: Path) -> dict[str, Any]:
        """``pipeline predict`` over the 10,000 test PNGs to a CSV, start-up included."""
        n = sum(1 for _ in (data / "test").glob("*/*.png"))
        return {"images": n, "seconds": _cli("predict", data / "test", "--model", bench_model(work), "--runtime",
                                             runtime, "--out", work / f"predictions_{runtime}.csv")}
    return step


STEPS = {f"{kind}_{SHORT[r]}": (f"{what}, {r}", make(r)) for r in RUNTIMES
         for kind, what, make in (("cold", "cold predict of 1 PNG (CLI)", _cold),
                                  ("folder", "predict 10k PNGs (CLI, start-up)", _folder))}


# ---------------------------------------------------------------- serve
def _status_mb(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_check(url: str, files: list[Path], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads POST one PNG each to ``url`` back to back for ``seconds``;
    requests/s and latency percentiles (ms) over the answered requests."""
    import http.client
    import urllib.parse

    import numpy as np

    target = urllib.parse.urlsplit(url)
    bodies = []
    for f in files:
        boundary = "pipelinebench"
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{f.name}"\r\n'
                "Content-Type: image/png\r\n\r\n").encode()
        bodies.append(head + f.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        i = k
        while time.perf_counter() < stop:
            body = bodies[i % len(bodies)]
            i += clients
            t0 = time.perf_counter()
            conn.request("POST", target.path, body=body,
                         headers={"Content-Type": "multipart/form-data; boundary=pipelinebench"})
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                latencies[k].append(time.perf_counter() - t0)
            else:
                failures[k] += 1
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array([x for per in latencies for x in per]) * 1000
    return {"clients": clients, "requests": int(len(lat)), "failures": int(sum(failures)), "seconds": wall,
            "requests_per_s": len(lat) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}


def serve_load(data: Path, model: Path, runtime: str, extra: tuple[str, ...], clients: list[int],
               seconds: float) -> dict[str, Any]:
    """Start ``pipeline serve --runtime`` on a free port; load it with each client count; its peak RSS."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--model", str(model), "--port", str(port),
                               "--runtime", runtime, *extra], env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    files = sorted((data / "test").glob("*/*.png"))[:500]
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read())
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("pipeline serve did not start") from None
                time.sleep(0.25)
        idle = _status_mb(server.pid)
        rows = []
        for n in clients:
            print(f"serve ({runtime} {' '.join(extra)}): {n} client(s) for {seconds:.0f} s ...", file=sys.stderr,
                  flush=True)
            cpu = _cpu_seconds(server.pid)
            row = load_check(f"http://127.0.0.1:{port}/predict", files, n, seconds)
            # the server's CPU per answered request: what a request costs, whatever else loads the machine
            row["server_cpu_ms"] = (_cpu_seconds(server.pid) - cpu) / max(row["requests"], 1) * 1000
            rows.append(row)
        peak = _status_mb(server.pid)
        return {"runtime": health["runtime"], "options": list(extra), "rows": rows, "idle_rss_mb": idle["VmRSS"],
                "peak_rss_mb": peak["VmHWM"]}
    finally:
        server.terminate()
        server.wait(timeout=30)


def serve_all(data: Path, work: Path, clients: list[int], seconds: float, repeat: int = 1) -> list[dict[str, Any]]:
    """Each serve configuration, ``repeat`` times, interleaved (the runs see the same machine states): per
    configuration, the first run (``rows``, the table) and every run's rows (``runs``)."""
    model = bench_model(work)
    runs = [[serve_load(data, model, runtime, extra, clients, seconds) for _, runtime, extra in SERVE]
            for _ in range(max(1, repeat))]
    return [{"label": label, **runs[0][i], "runs": [run[i]["rows"] for run in runs]}
            for i, (label, _, _) in enumerate(SERVE)]


def _spread(onnx: dict[str, Any], other: dict[str, Any], i: int) -> str:
    """The ratio of requests/s over the runs (:func:`serve_all`'s ``runs``): mean +- sd."""
    ratios = [o[i]["requests_per_s"] / t[i]["requests_per_s"] for o, t in zip(onnx["runs"], other["runs"])]
    sd = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
    return f"{statistics.mean(ratios):.2f}x +- {sd:.2f} over {len(ratios)} run(s)"


def format_serve(configs: list[dict[str, Any]]) -> str:
    lines = [f"{'pipeline serve, POST /predict (1 MNIST PNG)':<58} {'requests':>8} {'req/s':>7} {'p50 ms':>7} "
             f"{'p99 ms':>7} {'failed':>6} {'peak RSS MB':>12} {'server CPU ms/req':>18}"]
    for c in configs:
        for r in c["rows"]:
            lines.append(f"{c['label'] + ', ' + str(r['clients']) + ' client(s)':<58} {r['requests']:>8} "
                         f"{r['requests_per_s']:>7.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['failures']:>6} "
                         f"{c['peak_rss_mb']:>12.0f} {r['server_cpu_ms']:>18.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- install size
def _size_mb(folder: Path) -> float:
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            p = Path(root, f)
            if not p.is_symlink():
                total += p.stat().st_size
    return total / 2**20


def install_size(repo: Path, full_venv: Path, model: Path, image: Path) -> dict[str, Any]:
    """A fresh venv with ``pip install '.[runtime]'`` (from the package registry) against ``full_venv``; and
    ``pipeline predict`` run from it on one image, cold (its fastest of three)."""
    tmp = Path(tempfile.mkdtemp(prefix="runtime-venv-"))
    try:
        venv = tmp / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        py = str(venv / "bin" / "python")
        t0 = time.perf_counter()
        res = subprocess.run([py, "-m", "pip", "install", "-q", f"{repo}[runtime]"], capture_output=True, text=True)
        if res.returncode != 0:
            return {"error": f"pip install '.[runtime]' failed: {res.stderr[-1500:]}"}
        out = {"install_seconds": round(time.perf_counter() - t0, 1), "runtime_venv_mb": round(_size_mb(venv), 1),
               "full_venv_mb": round(_size_mb(full_venv), 1)}
        missing = subprocess.run([py, "-c", "import importlib.util as u; print([m for m in ('tensorflow', 'keras', "
                                  "'sklearn', 'scipy', 'matplotlib') if u.find_spec(m)])"], capture_output=True, text=True)
        out["training_stack_installed"] = json.loads(missing.stdout.strip().replace("'", '"') or "[]")
        out["cold_predict_seconds"] = round(min(_cli("predict", image, "--model", model, python=py) for _ in range(3)), 3)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- side by side
def _pair(row: dict[str, Any]) -> str:
    return f"{row['p50_ms']:.1f}/{row['p99_ms']:.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def format_comparison(results: dict[str, dict[str, Any]], serve: list[dict[str, Any]],
                      install: dict[str, Any] | None) -> str:
    """The light runtime against TensorFlow, one line per measure, with the goal."""
    def get(step: str, per_s: bool) -> float | None:
        r = results.get(step)
        return None if r is None else (r["images"] / r["seconds"] if per_s else r["seconds"])

    lines = [f"{'light runtime (onnx) vs TensorFlow, one run':<46} {'onnx':>10} {'tensorflow':>11} {'ratio':>7}  goal"]
    cold_o, cold_t = get("cold_onnx", False), get("cold_tf", False)
    if cold_o or cold_t:
        lines.append(f"{'cold `pipeline predict one.png`, s':<46} {cold_o or 0:>10.2f} {cold_t or 0:>11.2f} "
                     f"{_ratio(cold_o, cold_t):>7}  <= 1.0 s and <= 0.25x")
    fold_o, fold_t = get("folder_onnx", True), get("folder_tf", True)
    if fold_o or fold_t:
        lines.append(f"{'10k PNGs incl. start-up, img/s':<46} {fold_o or 0:>10.0f} {fold_t or 0:>11.0f} "
                     f"{_ratio(fold_o, fold_t):>7}  >= 1.5x")
    by = {c["label"]: c for c in serve}
    onnx, tf = by.get("onnx"), by.get("tensorflow")
    before = next((c for c in serve if c["options"]), None)  # tensorflow, one request per call
    if onnx and tf:
        for i, (ro, rt) in enumerate(zip(onnx["rows"], tf["rows"])):
            goal = ">= 3x" if ro["clients"] == 8 else ""
            lines.append(f"{'serve, ' + str(ro['clients']) + ' client(s), req/s':<46} {ro['requests_per_s']:>10.0f} "
                         f"{rt['requests_per_s']:>11.0f} {_ratio(ro['requests_per_s'], rt['requests_per_s']):>7}  {goal}")
            lines.append(f"{'  p50 / p99 ms':<46} {_pair(ro):>10} {_pair(rt):>11}")
            lines.append(f"  ratio: {_spread(onnx, tf, i)}" + (f"; against one request per call, as before: "
                                                                 f"{_spread(onnx, before, i)}" if before else ""))
        lines.append(f"{'serve peak RSS, MB':<46} {onnx['peak_rss_mb']:>10.0f} {tf['peak_rss_mb']:>11.0f} "
                     f"{_ratio(onnx['peak_rss_mb'], tf['peak_rss_mb']):>7}  <= 300 MB")
    if install and "error" not in install:
        lines.append(f"{'install size, MB (runtime venv / full venv)':<46} {install['runtime_venv_mb']:>10.0f} "
                     f"{install['full_venv_mb']:>11.0f} {_ratio(install['runtime_venv_mb'], install['full_venv_mb']):>7}")
        stack = ", ".join(install["training_stack_installed"]) or "no TensorFlow, Keras, scikit-learn, SciPy, Matplotlib"
        lines.append(f"  the runtime venv ({stack}) ran `pipeline predict one.png` cold in "
                     f"{install['cold_predict_seconds']:.2f} s")
    elif install:
        lines.append(f"install size: not measured ({install['error'][:200]})")
    return "\n".join(lines)
