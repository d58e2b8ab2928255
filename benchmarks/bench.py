"""Benchmarks (``make bench``): every stage's throughput, wall time and peak memory,
next to the plain Keras way of doing the same thing, measured in the same run.

Each measurement runs in a fresh child process so that its peak RSS is its own.
Results are printed as a table and written to ``<out>/bench.json``. ``--runtime`` chooses what runs the
model in the predict and evaluate steps (default auto: the bundle's model.onnx when it has one).

| ours | plain Keras way |
|---|---|
| ``pipeline mnist`` export (70k PNGs) | – (Keras has no export; ``keras.datasets`` downloads arrays) |
| ``prepare`` (70k PNGs, decode+audit+split) | one pass of ``image_dataset_from_directory`` over the same folders |
| ``train`` epoch time (LeNet-5, prepared arrays) | ``model.fit`` on ``image_dataset_from_directory`` |
| ``evaluate`` (10k test images) | ``model.evaluate`` on ``image_dataset_from_directory`` |
| ``predict`` a folder of 10k PNGs to a CSV | a per-image ``model.predict`` loop; ``image_dataset_from_directory`` + ``predict`` |
| ``pipeline serve``: N concurrent clients posting PNGs (``--serve-clients``), onnx and tensorflow runtimes | – (requests/s, p50/p99 latency, peak RSS) |
| the light runtime against TensorFlow (:mod:`benchmarks.runtime_bench`): a cold single image, a folder from the shell, serve, install size | – |
| synthetic scale test (``--scale 20000,100000,200000``): prepare throughput and peak RSS per size | one ``image_dataset_from_directory`` pass per size; training streamed vs in memory |
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks import runtime_bench

log = logging.getLogger(__name__)
EPOCHS = 4  # the fastest of epochs 2..4 is the steady-state figure


def _vm_hwm_mb(pid: int | str = "self") -> float:
    """Peak resident memory (VmHWM) of a live process, in MB; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class ChildPeak(threading.Thread):
    """The largest peak RSS of any child process of ``parent`` (e.g. a decoding worker of a step).

    Read every 100 ms from /proc (the kernel keeps each process's high-water mark).

    ``ru_maxrss`` cannot tell this: a child that forks and execs inherits its parent's
    peak at the fork, so every worker of a big process would look as big as it.
    """

    def __init__(self, parent: int) -> None:
        super().__init__(daemon=True)
        self.peak, self._stop_event, self.parent = 0.0, threading.Event(), parent

    def run(self) -> None:
        me = str(self.parent)
        while not self._stop_event.wait(0.1):
            for pid in (d for d in os.listdir("/proc") if d.isdigit()):
                try:
                    with open(f"/proc/{pid}/stat") as fh:
                        ppid = fh.read().rsplit(")", 1)[1].split()[1]
                except (OSError, IndexError):
                    continue
                if ppid == me:
                    self.peak = max(self.peak, _vm_hwm_mb(pid))

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak


def _keras_ds(folder: Path, **kw: Any) -> Any:
    import keras

    return keras.utils.image_dataset_from_directory(
        folder, color_mode="grayscale", image_size=(28, 28), batch_size=256, shuffle=False, verbose=False, **kw)


def _mnist_source() -> Path:
    from pipeline.data import mnist

    source = mnist.find_source(None, default=mnist.DEFAULT_RAW)
    if source is None:
        raise SystemExit("bench needs local MNIST files (MNIST_DIR or datasets/raw/mnist)")
    return source


# ---------------------------------------------------------------- steps (run in a child)
def step_export(data: Path, work: Path) -> dict[str, Any]:
    import shutil

    from pipeline.data import mnist

    shutil.rmtree(work / "mnist_export", ignore_errors=True)
    source = _mnist_source()
    t0 = time.perf_counter()
    mnist.export(source, work / "mnist_export")
    return {"images": 70000, "seconds": time.perf_counter() - t0}


def _prepare_run(data: Path, run: Path, cfg: Any = None) -> dict[str, Any]:
    """Time ``prepare`` of ``data`` into a fresh ``run`` folder."""
    import shutil

    from pipeline.data import kernels
    from pipeline.shared.params import PrepareParams, PreprocessParams
    from pipeline.stages.prepare import prepare

    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    s = prepare(data, run, PrepareParams(), cfg or PreprocessParams())
    n = sum(sum(c.values()) for c in s.counts.values()) + s.rejected
    return {"images": n, "seconds": time.perf_counter() - t0, "compiled": kernels.LIB is not None}


def step_prepare(data: Path, work: Path) -> dict[str, Any]:
    return _prepare_run(data, work / "run")


def step_prepare_unaudited(data: Path, work: Path) -> dict[str, Any]:
    """prepare with the audit's per-image work replaced by constants: random perceptual hashes (no copy
    candidates), blank thumbnails, no quality statistics. Not a mode of the product: beside step ``prepare``,
    it measures what the audit costs prepare's wall time (the decoding workers are forked: they see this)."""
    import numpy as np

    from pipeline.data import quality, similar

    def blank_signatures(grays: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(grays)
        hashes = np.random.default_rng().integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
        return hashes, np.zeros((n, similar.THUMB * similar.THUMB), np.uint8), np.zeros(n, bool)

    similar.signatures = blank_signatures
    quality.image_stats = lambda images, grays: np.full((len(images), len(quality.STATS)), quality.NONE, np.float32)
    return _prepare_run(data, work / "run_unaudited")


def step_prepare_numpy(data: Path, work: Path) -> dict[str, Any]:
    """prepare without the compiled kernels (pipeline/data/kernels.py): what a machine without a C compiler
    runs (the decoding workers are forked: they see this)."""
    from pipeline.data import kernels

    kernels.LIB = None
    return _prepare_run(data, work / "run_numpy")


def step_prepare_heavy(data: Path, work: Path) -> dict[str, Any]:
    """The heaviest preprocessing: median denoise + CLAHE + MNIST digit normalization."""
    from pipeline.shared.params import PreprocessParams

    return _prepare_run(data, work / "run_heavy", PreprocessParams(denoise="median", equalize="clahe",
                                                                    normalize="mnist"))


def step_rendered(data: Path, work: Path) -> dict[str, Any]:
    """Accuracy of the reference model (runs/mnist/model) on the 10k MNIST test digits
    re-rendered as dark ink on white paper, 200x200, JPEG: through the bundle's preprocessing."""
    import numpy as np

    from pipeline.data import mnist
    from pipeline.data.preprocess import load_image
    from pipeline.model.infer import predict_probs
    from pipeline.shared import bundle

    model_dir = Path(os.environ.get("BENCH_MODEL", "runs/mnist/model"))
    if not (model_dir / "bundle.json").is_file():
        raise SystemExit(f"step rendered needs a trained reference model at {model_dir} (run `make all`)")
    b = bundle.load(model_dir)
    images, labels = mnist.load_split(_mnist_source(), "test")
    rng = np.random.default_rng(0)
    pages = [mnist.render_on_paper(d, rng) for d in images]
    t0 = time.perf_counter()
    x = np.stack([load_image(page, b.preprocess) for page in pages])
    pred = predict_probs(b, x, 1024).argmax(1)
    labels_idx = np.array([b.labels.index(str(v)) for v in labels])
    return {"images": len(x), "seconds": time.perf_counter() - t0,
            "accuracy": float((pred == labels_idx).mean()), "normalize": b.preprocess.normalize}


def step_keras_read(data: Path, work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    n = 0
    for split in ("train", "test"):
        for x, _ in _keras_ds(data / split):
            n += int(x.shape[0])
    return {"images": n, "seconds": time.perf_counter() - t0}


def _epoch_times(seconds: list[float]) -> dict[str, float]:
    """The steady-state epoch time (the first epoch traces the graph: left out): fastest and mean."""
    steady = seconds[1:]
    return {"epoch_seconds": min(steady), "epoch_seconds_mean": sum(steady) / len(steady)}


def _train_run(work: Path, augment: bool, precision: str = "auto") -> dict[str, Any]:
    """The default recipe for EPOCHS epochs on the bench's prepared MNIST run; the steady epoch time."""
    import csv

    import numpy as np

    from pipeline.shared.params import AugmentParams, TrainParams
    from pipeline.stages.train import train

    run = work / "run"
    t0 = time.perf_counter()
    train(run, TrainParams(epochs=EPOCHS, precision=precision), fresh=True, verbose=0,
          aug=AugmentParams(enabled=augment))
    plan = json.loads((run / "model" / "bundle.json").read_text())["plan"]
    seconds = time.perf_counter() - t0
    with open(run / "history.csv", newline="") as fh:
        epochs = [float(r["seconds"]) for r in csv.DictReader(fh)]
    n = len(np.load(run / "X_train.npy", mmap_mode="r"))
    return {"images": n, "seconds": seconds, **_epoch_times(epochs), "precision": plan["precision"]}


def step_train(data: Path, work: Path) -> dict[str, Any]:
    """Our default recipe, augmentation on (as `make train` runs it)."""
    return _train_run(work, augment=True)


def step_train_noaug(data: Path, work: Path) -> dict[str, Any]:
    """The same without augmentation, for its cost."""
    return _train_run(work, augment=False)


def step_train_f32(data: Path, work: Path) -> dict[str, Any]:
    """The default recipe in float32 arithmetic (what ``precision = "auto"`` runs on a CPU without bfloat16)."""
    return _train_run(work, augment=True, precision="float32")


class _EpochTimer:
    def __init__(self) -> None:
        import keras

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(inner, epoch: int, logs: Any = None) -> None:
                inner.t = time.perf_counter()

            def on_epoch_end(inner, epoch: int, logs: Any = None) -> None:
                self.times.append(time.perf_counter() - inner.t)

        self.times: list[float] = []
        self.callback = Timer()


def step_keras_aug_train(data: Path, work: Path) -> dict[str, Any]:
    """Plain Keras: LeNet-5 (the tutorial's) with the usual augmentation layers (RandomRotation,
    RandomTranslation, RandomZoom) mapped over a tf.data pipeline, batch 128, Adam; on the same
    arrays as ours."""
    import numpy as np
    import tensorflow as tf

    from benchmarks.baselines import keras_augmentation, keras_lenet5

    x = np.load(work / "run" / "X_train.npy")
    y = np.load(work / "run" / "y_train.npy")
    aug = keras_augmentation()
    ds = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=1).batch(128)
          .map(lambda a, b: (aug(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
    model = keras_lenet5(x.shape[1:], 10)
    timer = _EpochTimer()
    t0 = time.perf_counter()
    model.fit(ds, epochs=EPOCHS, callbacks=[timer.callback], verbose=0)
    return {"images": len(x), "seconds": time.perf_counter() - t0, **_epoch_times(timer.times)}


def step_keras_train(data: Path, work: Path) -> dict[str, Any]:
    """Plain Keras end to end: ``fit`` on ``image_dataset_from_directory`` (the tutorial LeNet-5, no augmentation)."""
    import keras

    from benchmarks.baselines import keras_lenet5

    train_ds, val_ds = keras.utils.image_dataset_from_directory(
        data / "train", color_mode="grayscale", image_size=(28, 28), batch_size=128, seed=42,
        validation_split=0.1, subset="both", verbose=False)
    rescale = keras.layers.Rescaling(1 / 255)
    train_ds = train_ds.map(lambda x, y: (rescale(x), y))
    val_ds = val_ds.map(lambda x, y: (rescale(x), y))
    model = keras_lenet5((28, 28, 1), 10)
    timer = _EpochTimer()
    t0 = time.perf_counter()
    model.fit(train_ds, validation_data=val_ds, epochs=EPOCHS, callbacks=[timer.callback], verbose=0)
    model.save(work / "keras_model.keras")
    return {"images": 54000, "seconds": time.perf_counter() - t0, **_epoch_times(timer.times)}


def step_evaluate(data: Path, work: Path) -> dict[str, Any]:
    from pipeline.shared.params import EvaluateParams
    from pipeline.stages.evaluate import METRICS, evaluate

    (work / "run" / METRICS).unlink(missing_ok=True)
    t0 = time.perf_counter()
    m = evaluate(work / "run", EvaluateParams(runtime=_runtime()))
    return {"images": m["n"], "seconds": time.perf_counter() - t0}


def step_keras_evaluate(data: Path, work: Path) -> dict[str, Any]:
    import keras

    t0 = time.perf_counter()
    model = keras.models.load_model(work / "keras_model.keras")
    ds = _keras_ds(data / "test").map(lambda x, y: (x / 255.0, y))
    model.evaluate(ds, verbose=0)
    return {"images": 10000, "seconds": time.perf_counter() - t0}


def _runtime() -> str:
    """What runs the model in the predict and evaluate steps (``--runtime``)."""
    return os.environ.get("BENCH_RUNTIME", "auto")


def step_predict(data: Path, work: Path) -> dict[str, Any]:
    """``pipeline predict`` on the 10k test PNGs (folder walk, decode, predict, CSV); model loaded first."""
    from pipeline.shared.params import PredictParams
    from pipeline.stages.predict import predict

    s = predict(data / "test", runtime_bench.trained_model(work), work / "predictions.csv",
                PredictParams(runtime=_runtime()))
    return {"images": s["rows"], "seconds": s["seconds"]}


def step_predict_plain(data: Path, work: Path) -> dict[str, Any]:
    """The same bundle without its novelty detector (as bundles were before it): the cost of the new columns."""
    import shutil

    from pipeline.shared.novelty_spec import FILES
    from pipeline.shared.params import PredictParams
    from pipeline.stages.predict import predict

    plain = work / "model_plain"
    shutil.rmtree(plain, ignore_errors=True)
    shutil.copytree(runtime_bench.trained_model(work), plain)
    for name in FILES:
        (plain / name).unlink(missing_ok=True)
    s = predict(data / "test", plain, work / "predictions_plain.csv", PredictParams(runtime=_runtime()))
    return {"images": s["rows"], "seconds": s["seconds"]}


def step_predict_loop(data: Path, work: Path) -> dict[str, Any]:
    """The tutorials' way: load one image, ``model.predict`` it, next (500 images; img/s scales)."""
    import keras
    import numpy as np

    from pipeline.data.ingest import walk_files

    model = keras.models.load_model(runtime_bench.trained_model(work) / "model.keras", compile=False)
    files = walk_files(data / "test", data / "test", [])[::20][:500]
    t0 = time.perf_counter()
    for f in files:
        img = keras.utils.load_img(data / "test" / f, color_mode="grayscale", target_size=(28, 28))
        x = keras.utils.img_to_array(img)[None] / 255.0
        int(np.argmax(model.predict(x, verbose=0)))
    return {"images": len(files), "seconds": time.perf_counter() - t0}


def step_keras_predict(data: Path, work: Path) -> dict[str, Any]:
    """``image_dataset_from_directory`` (no labels) + ``model.predict`` on the same folder."""
    import keras

    model = keras.models.load_model(runtime_bench.trained_model(work) / "model.keras", compile=False)
    t0 = time.perf_counter()
    ds = _keras_ds(data / "test", labels=None).map(lambda x: x / 255.0)
    n = len(model.predict(ds, verbose=0).argmax(axis=1))
    return {"images": n, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------- scale (synthetic data)
def _synthetic_block(job: tuple[str, int, int]) -> int:
    """Write images start..stop-1 of the synthetic set: a 28x28 digit glyph on noise, class = i % 10."""
    import cv2
    import numpy as np

    folder, start, stop = job
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        label = i % 10
        img = rng.integers(0, 40, (28, 28), dtype=np.uint8)
        cv2.putText(img, str(label), (4 + int(rng.integers(0, 8)), 21 + int(rng.integers(0, 5))),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.7 + 0.2 * float(rng.random()), 255, 2)
        ok, buf = cv2.imencode(".png", img)
        Path(folder, f"c{label}", f"{i:07d}.png").write_bytes(buf.tobytes())
    return stop - start


def make_synthetic(folder: Path, start: int, stop: int) -> None:
    """Grow the synthetic folder-per-label set from ``start`` to ``stop`` images (spawned workers)."""
    import multiprocessing as mp

    from tqdm import tqdm

    for label in range(10):
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
    blocks = [(str(folder), i, min(i + 5000, stop)) for i in range(start, stop, 5000)]
    with mp.get_context("spawn").Pool() as pool, tqdm(total=stop - start, desc="synthetic", unit="img") as bar:
        for n in pool.imap_unordered(_synthetic_block, blocks):
            bar.update(n)


def step_scale_prepare(data: Path, work: Path) -> dict[str, Any]:
    """``prepare`` on the synthetic folder as it is now (a fresh run folder each time)."""
    return _prepare_run(data, work / "scale_run")


def step_scale_keras(data: Path, work: Path) -> dict[str, Any]:
    """The plain Keras way over the same folder: one pass of ``image_dataset_from_directory``."""
    t0 = time.perf_counter()
    n = sum(int(x.shape[0]) for x, _ in _keras_ds(data))
    return {"images": n, "seconds": time.perf_counter() - t0}


def _scale_train(work: Path, streaming: str) -> dict[str, Any]:
    from pipeline.shared.params import TrainParams
    from pipeline.stages.train import train

    run = work / "scale_run"
    t0 = time.perf_counter()
    train(run, TrainParams(epochs=1, streaming=streaming), fresh=True, verbose=0)
    import numpy as np

    return {"images": len(np.load(run / "X_train.npy", mmap_mode="r")), "seconds": time.perf_counter() - t0}


def step_scale_train_stream(data: Path, work: Path) -> dict[str, Any]:
    """One training epoch on the largest synthetic run, batches read from the .npy files on disk."""
    return _scale_train(work, "on")


def step_scale_train_memory(data: Path, work: Path) -> dict[str, Any]:
    """The same with the arrays loaded into memory first."""
    return _scale_train(work, "off")


SCALE_STEPS = {
    "scale_prepare": ("prepare (ours), synthetic", step_scale_prepare),
    "scale_keras": ("image_dataset_from_directory pass", step_scale_keras),
    "scale_train_stream": ("train 1 epoch, streamed from disk", step_scale_train_stream),
    "scale_train_memory": ("train 1 epoch, arrays in memory", step_scale_train_memory),
}


def run_scale(sizes: list[int], work: Path) -> dict[str, Any]:
    """Grow a synthetic set through ``sizes`` images; at each size measure prepare and the Keras pass
    (peak RSS of each in its own process); at the largest, one training epoch streamed vs in memory."""
    folder = work / "synthetic"
    rows: list[dict[str, Any]] = []
    have = 0
    for n in sorted(sizes):
        print(f"scale: generating images {have}..{n}", file=sys.stderr, flush=True)
        make_synthetic(folder, have, n)
        have = n
        for step in ("scale_prepare", "scale_keras"):
            print(f"scale: {step} on {n} images ...", file=sys.stderr, flush=True)
            rows.append({"size": n, "step": step, **_run_child(step, folder, work)})
    for step in ("scale_train_stream", "scale_train_memory"):
        print(f"scale: {step} on {have} images ...", file=sys.stderr, flush=True)
        rows.append({"size": have, "step": step, **_run_child(step, folder, work)})
    return {"sizes": sorted(sizes), "rows": rows}


def format_scale(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [f"{'images':>9}  {'step':<38} {'wall s':>8} {'img/s':>8} {'peak RSS MB':>12} {'worker MB':>10} "
             f"{'RSS vs smallest':>16}"]
    first: dict[str, float] = {}
    for r in rows:
        base = first.setdefault(r["step"], r["peak_rss_mb"])
        lines.append(f"{r['size']:>9}  {SCALE_STEPS[r['step']][0]:<38} {r['seconds']:>8.1f} "
                     f"{r['images'] / r['seconds']:>8.0f} {r['peak_rss_mb']:>12.0f} {r['peak_worker_rss_mb']:>10.0f} "
                     f"{r['peak_rss_mb'] / base:>15.2f}x")
    prep = [r for r in rows if r["step"] == "scale_prepare"]
    if len(prep) > 1:
        growth = prep[-1]["size"] / prep[0]["size"]
        ratio = max(r["peak_rss_mb"] for r in prep) / prep[0]["peak_rss_mb"]
        lines.append(f"prepare peak RSS grew {ratio:.2f}x while the data grew {growth:.0f}x "
                     f"({'within' if ratio <= 1.5 else 'OVER'} the 1.5x budget)")
    return "\n".join(lines)


# ---------------------------------------------------------------- the audit: copies and the cost of each check
COPIES = 500  # planted copies of training digits


def _plant_copies(data: Path, folder: Path, seed: int = 0) -> dict[str, tuple[str, str]]:
    """A small MNIST set (5,000 training and 1,000 test digits) with COPIES copies of training digits in its
    test split, every kind of :data:`pipeline.data.similar.COPY_KINDS` in turn: {copy: (original, kind)}."""
    import shutil

    import numpy as np

    from pipeline.data import similar
    from pipeline.data.preprocess import decode

    shutil.rmtree(folder, ignore_errors=True)
    train = sorted((data / "train").glob("*/*.png"))[::12][:5000]
    test = sorted((data / "test").glob("*/*.png"))[::10][:1000]
    for split, files in (("train", train), ("test", test)):
        for f in files:
            (folder / split / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, folder / split / f.parent.name / f.name)
    rng = np.random.default_rng(seed)
    planted = {}
    for k, i in enumerate(rng.choice(len(train), COPIES, replace=False).tolist()):
        kind = similar.COPY_KINDS[k % len(similar.COPY_KINDS)]
        name = f"test/{train[i].parent.name}/copy{k:03d}.png"
        copy = similar.plant_copy(decode(train[i]), kind, rng)
        _save_png(folder / name, copy)
        planted[name] = (f"train/{train[i].parent.name}/{train[i].name}", kind)
    return planted


def _save_png(path: Path, img: Any) -> None:
    from PIL import Image

    Image.fromarray(img).save(path)


def _copy_groups(run: Path, root: Path) -> list[set[str]]:
    import csv

    groups: dict[str, set[str]] = {}
    with open(run / "similar.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["kind"] == "copy":
                groups.setdefault(r["group"], set()).add(str(Path(r["path"]).resolve().relative_to(root.resolve())))
    return list(groups.values())


def step_copies(data: Path, work: Path) -> dict[str, Any]:
    """Copies, not look-alikes: the share of COPIES planted copies that prepare finds (grouped with their
    original as a copy), by kind, the copy groups among real digits, and what prepare warns about on the
    clean 70k MNIST (the prepare step's run, else one made here)."""
    import shutil

    from pipeline.shared.params import PrepareParams, PreprocessParams
    from pipeline.stages.prepare import prepare

    folder, run = work / "copies_data", work / "copies_run"
    planted = _plant_copies(data, folder)
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    prepare(folder, run, PrepareParams(), PreprocessParams())
    seconds = time.perf_counter() - t0
    groups = _copy_groups(run, folder)
    hit = {c: any({c, o} <= g for g in groups) for c, (o, _) in planted.items()}
    kinds = sorted({k for _, k in planted.values()})
    clean = work / "run"
    if not (clean / "dataset.json").is_file():
        clean = work / "copies_clean"
        _prepare_run(data, clean)
    d = json.loads((clean / "dataset.json").read_text())
    return {"images": len(planted) + 6000, "seconds": seconds, "recall": sum(hit.values()) / len(hit),
            "by_kind": {k: sum(hit[c] for c, (_, kk) in planted.items() if kk == k) / sum(kk == k for _, kk in planted.values())
                        for k in kinds},
            "real_copy_groups": sum(not (g & set(planted)) for g in groups), "clean_warnings": d["warnings"],
            "clean_copies_across_splits": d["near_duplicates"]["across_splits"].get("copies"),
            "clean_far_outliers": d["outliers"].get("far"), "clean_quality": d.get("quality", {}).get("counts")}


def step_audit_cost(data: Path, work: Path) -> dict[str, Any]:
    """The per-check cost: CPU microseconds per image of what a decoding worker does for each file (its whole
    chunk's work, of which the perceptual signature and the quality statistics; the rest is reading, decoding
    and preprocessing), on 5,000 MNIST files in this process, and the seconds of each of the audit's checks in
    the main process, as the prepare step timed them."""

    from pipeline.data import decoding, quality, similar
    from pipeline.data.preprocess import decode_file
    from pipeline.shared.params import PreprocessParams

    cfg = PreprocessParams(color="grayscale", size=(28, 28), invert="false", background=0)
    files = [str(f) for f in sorted((data / "train").glob("*/*.png"))[:5000]]
    decoding._init_worker()  # as a decoding worker runs: OpenCV and BLAS on one thread (else their idle threads
    t0, c0 = time.perf_counter(), time.process_time()  # spin, and count here)
    for i in range(0, len(files), decoding.CHUNK):
        decoding._decode_audited(files[i:i + decoding.CHUNK], cfg)
    whole = time.process_time() - c0
    decoded = [decode_file(f, cfg).array for f in files]
    c0 = time.process_time()
    for i in range(0, len(decoded), decoding.CHUNK):
        similar.signatures(decoded[i:i + decoding.CHUNK])
    signature = time.process_time() - c0
    c0 = time.process_time()
    for i in range(0, len(decoded), decoding.CHUNK):
        quality.image_stats(decoded[i:i + decoding.CHUNK], decoded[i:i + decoding.CHUNK])
    stats = time.process_time() - c0
    cost = {"a worker's whole chunk": whole, "of which read + decode + preprocess": whole - signature - stats,
            "perceptual signature (copies, outliers)": signature, "quality statistics": stats}
    marker = work / "run" / "prepare.json"
    checks = json.loads(marker.read_text()).get("audit_seconds", {}) if marker.is_file() else {}
    return {"images": len(files), "seconds": time.perf_counter() - t0,
            "worker_us_per_image": {k: round(v / len(files) * 1e6, 1) for k, v in cost.items()},
            "main_seconds": checks}


def _against_keras(results: dict[str, dict[str, Any]], step: str) -> list[float]:
    """Each round's Keras-pass time over ``step``'s (each pair ran back to back: the same machine state); []
    when either did not run at least twice."""
    ours, keras = results.get(step, {}).get("rounds", []), results.get("keras_read", {}).get("rounds", [])
    return [k / o for k, o in zip(keras, ours)] if len(ours) == len(keras) >= 2 else []


def _ratio_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """prepare against the Keras pass: fastest runs, round by round, without the kernels, without the audit."""
    lines = []
    if "prepare" in results and "keras_read" in results:
        ratio = results["keras_read"]["seconds"] / results["prepare"]["seconds"]
        lines.append(f"prepare (decode, audit, split, write) vs one image_dataset_from_directory pass: {ratio:.2f}x as "
                     "fast, fastest runs (goal >= 1.5x)")
        if each := _against_keras(results, "prepare"):
            lines.append(f"  the same, round by round: median {statistics.median(each):.2f}x, mean {statistics.mean(each):.2f}x "
                         f"+- {statistics.stdev(each):.2f} over {len(each)} rounds ({', '.join(f'{r:.2f}' for r in each)})")
        if "compiled" in results["prepare"]:
            lines.append("  prepare's per-image loops: " + ("compiled (pipeline/data/kernels.c)" if results["prepare"]["compiled"]
                                                          else "numpy (the compiled kernels are not built here)"))
    if each := _against_keras(results, "prepare_numpy"):
        lines.append(f"prepare without the compiled kernels (numpy only): median {statistics.median(each):.2f}x as fast as "
                     "the Keras pass")
    blank, ours = results.get("prepare_unaudited", {}).get("rounds", []), results.get("prepare", {}).get("rounds", [])
    if (each := _against_keras(results, "prepare_unaudited")) and len(ours) == len(blank):
        lines.append(f"prepare with the audit's per-image checks and copy search blanked: median {statistics.median(each):.2f}x "
                     f"as fast as the Keras pass; the audit costs {statistics.median(ours) - statistics.median(blank):.2f} s "
                     f"of prepare's median {statistics.median(ours):.2f} s")
    return lines


def format_audit(results: dict[str, dict[str, Any]]) -> list[str]:
    """The prepare / Keras ratio, the copies measurement and the per-check cost, when they were run."""
    lines = _ratio_lines(results)
    c = results.get("copies")
    if c:
        kinds = ", ".join(f"{k} {v:.0%}" for k, v in c["by_kind"].items())
        lines.append(f"planted copies found: {c['recall']:.1%} of {COPIES} ({kinds}); copy groups of real digits: "
                     f"{c['real_copy_groups']}")
        lines.append(f"clean MNIST (70k): copies across splits {c['clean_copies_across_splits']}, far outliers "
                     f"{c['clean_far_outliers']}, warnings: {'; '.join(c['clean_warnings']) or 'none'}")
    a = results.get("audit_cost")
    if a:
        lines.append("per-check cost, decoding worker (CPU us per image): "
                     + ", ".join(f"{k} {v}" for k, v in a["worker_us_per_image"].items()))
        if a["main_seconds"]:
            lines.append("per-check cost, main process (s, 70k MNIST): "
                         + ", ".join(f"{k} {v:.2f}" for k, v in a["main_seconds"].items()))
    return lines


STEPS: dict[str, tuple[str, Callable[[Path, Path], dict[str, Any]]]] = {
    "export": ("mnist export (ours)", step_export),
    "prepare": ("prepare (ours)", step_prepare),
    "prepare_unaudited": ("prepare, the audit's work blanked", step_prepare_unaudited),
    "prepare_numpy": ("prepare, numpy only (no compiled kernels)", step_prepare_numpy),
    "keras_read": ("image_dataset_from_directory pass", step_keras_read),
    "prepare_heavy": ("prepare, denoise+CLAHE+mnist normalize", step_prepare_heavy),
    "train": ("train (ours: default recipe, augmented)", step_train),
    "train_noaug": ("train (ours), augmentation off", step_train_noaug),
    "train_f32": ("train (ours), float32 arithmetic", step_train_f32),
    "keras_aug_train": ("Keras LeNet-5 + aug layers, same arrays", step_keras_aug_train),
    "keras_train": ("fit on image_dataset_from_directory", step_keras_train),
    "evaluate": ("evaluate (ours)", step_evaluate),
    "keras_evaluate": ("evaluate on image_dataset_from_directory", step_keras_evaluate),
    "predict": ("predict 10k PNGs (ours)", step_predict),
    "predict_plain": ("predict 10k PNGs, no novelty columns", step_predict_plain),
    "predict_loop": ("per-image model.predict loop (500 imgs)", step_predict_loop),
    "keras_predict": ("image_dataset_from_directory + predict", step_keras_predict),
    "rendered": ("reference model on re-rendered test digits", step_rendered),
    "copies": ("prepare, 6,000 digits + 500 planted copies", step_copies),
    "audit_cost": ("the audit's per-image checks, 5,000 files", step_audit_cost),
    # the light runtime against TensorFlow: cold single image, a folder from the shell (benchmarks.runtime_bench)
    **runtime_bench.STEPS,
}
LIGHT_STEPS = ("export", "prepare", "prepare_unaudited", "prepare_numpy", "prepare_heavy", "scale_prepare", "copies", "audit_cost", *runtime_bench.STEPS)  # no Keras in the child


def _run_child(step: str, data: Path, work: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.bench", "--step", step, "--data", str(data), "--work", str(work)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # the step's workers are watched from here: a watching thread in the step's process would make its decoding
    # pool spawn its workers instead of forking them as a user's `make prepare` does (decoding.start_method)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        watcher = ChildPeak(proc.pid)
        watcher.start()
        out, err = proc.communicate()
    workers = watcher.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"bench step {step} failed:\n{err[-3000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_worker_rss_mb": round(workers, 1)}


def format_rows(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'step':<44} {'images':>7} {'wall s':>8} {'img/s':>9} {'epoch s':>8} {'peak RSS MB':>12} "
             f"{'worker MB':>10} {'accuracy':>9}"]
    for step, r in results.items():
        epoch = f"{r['epoch_seconds']:.1f}" if "epoch_seconds" in r else "-"
        acc = f"{r['accuracy']:.4f}" if "accuracy" in r else "-"
        lines.append(f"{STEPS[step][0]:<44} {r['images']:>7} {r['seconds']:>8.2f} {r['images'] / r['seconds']:>9.0f} "
                     f"{epoch:>8} {r['peak_rss_mb']:>12.0f} {r['peak_worker_rss_mb']:>10.0f} {acc:>9}")
    if "train" in results and "train_noaug" in results:
        ratio = results["train"]["epoch_seconds"] / results["train_noaug"]["epoch_seconds"]
        lines.append(f"epoch time with augmentation / without: {ratio:.2f}x")
    if "train" in results and "keras_aug_train" in results:
        ours, keras = results["train"], results["keras_aug_train"]
        ratio = ours["epoch_seconds"] / keras["epoch_seconds"]
        precision = ours.get("precision", "float32")
        lines.append(f"default recipe's epoch ({precision}) / plain Keras LeNet-5 + augmentation layers' epoch: "
                     f"{ratio:.2f}x, fastest epochs (target <= 0.8x)")
        if "epoch_seconds_mean" in ours and "epoch_seconds_mean" in keras:  # Keras' autotuned tf.data stalls some epochs
            lines.append(f"  the same, mean of epochs 2..{EPOCHS}: {ours['epoch_seconds_mean']:.2f} s / "
                         f"{keras['epoch_seconds_mean']:.2f} s = {ours['epoch_seconds_mean'] / keras['epoch_seconds_mean']:.2f}x")
    if "train_f32" in results and "keras_aug_train" in results:
        f32, keras = results["train_f32"], results["keras_aug_train"]
        lines.append(f"  in float32 arithmetic (a CPU without bfloat16): {f32['epoch_seconds']:.2f} s / "
                     f"{keras['epoch_seconds']:.2f} s = {f32['epoch_seconds'] / keras['epoch_seconds']:.2f}x")
    rate = {k: r["images"] / r["seconds"] for k, r in results.items()}
    if "predict" in rate and "predict_plain" in rate:
        lines.append(f"predict throughput with the novelty columns / without: {rate['predict'] / rate['predict_plain']:.2f}x")
    for other, what in (("predict_loop", "the per-image loop"), ("keras_predict", "image_dataset_from_directory")):
        if "predict" in rate and other in rate:
            lines.append(f"predict throughput vs {what}: {rate['predict'] / rate[other]:.1f}x")
    return "\n".join(lines + format_audit(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="datasets/mnist", help="exported MNIST folders (default: %(default)s)")
    parser.add_argument("--out", default="bench-results", help="where bench.json goes (default: %(default)s)")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of: " + ",".join(STEPS))
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs per step, interleaved; the fastest is reported (default: %(default)s)")
    parser.add_argument("--scale", default="",
                        help="comma-separated image counts for the synthetic scale test, e.g. 20000,100000,200000 "
                             "(add 1000000 for a million; needs ~4 GB of disk per million); empty: skip it")
    parser.add_argument("--serve-clients", default="1,8",
                        help="concurrent clients for the serve load check, e.g. 1,8 (empty: skip) (default: %(default)s)")
    parser.add_argument("--serve-seconds", type=float, default=10, help="seconds per load level (default: %(default)s)")
    parser.add_argument("--serve-repeat", type=int, default=3,
                        help="runs of each serve configuration, interleaved: the table shows the first, the "
                             "ratios their mean +- sd (default: %(default)s)")
    parser.add_argument("--runtime", default="auto", choices=("auto", "tensorflow", "onnx"),
                        help="what runs the model in the predict and evaluate steps (default: %(default)s)")
    parser.add_argument("--install-size", action=argparse.BooleanOptionalAction, default=True,
                        help="measure a fresh `pip install '.[runtime]'` venv against this one (needs the package "
                             "registry) (default: on)")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    data = Path(args.data)
    if args.step:  # child: one measurement, one JSON line
        os.environ["TQDM_DISABLE"] = "1"
        if args.step not in LIGHT_STEPS:
            import keras  # noqa: F401  - import time is not part of any measurement
        result = {**STEPS, **SCALE_STEPS}[args.step][1](data, Path(args.work))
        result.update({"peak_rss_mb": round(_vm_hwm_mb(), 1)})  # its workers' peak: watched by the parent
        print(json.dumps(result))
        return 0
    steps = [s for s in args.steps.split(",") if s]
    try:
        sizes = [int(n) for n in args.scale.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--scale takes image counts, e.g. 20000,100000,200000; got {args.scale!r}")
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown step(s) {unknown}")
    os.environ["BENCH_RUNTIME"] = args.runtime
    results: dict[str, dict[str, Any]] = {}
    install: dict[str, Any] | None = None
    # Rounds run every step in turn, so ours and Keras' see the same machine state;
    # the fastest run of each step is kept (the least disturbed by other load).
    scale: dict[str, Any] = {}
    serve: list[dict[str, Any]] = []
    rounds: dict[str, list[float]] = {}  # each step's seconds in each round
    with tempfile.TemporaryDirectory(prefix="bench-", dir=".") as work:
        for r in range(max(1, args.repeat)):
            for step in steps:
                print(f"round {r + 1}: {step} ...", file=sys.stderr, flush=True)
                res = _run_child(step, data, Path(work))
                rounds.setdefault(step, []).append(res["seconds"])
                if step not in results or res["seconds"] < results[step]["seconds"]:
                    results[step] = res
                results[step]["rounds"] = rounds[step]
        clients = [int(n) for n in args.serve_clients.split(",") if n.strip()]
        serve = runtime_bench.serve_all(data, Path(work), clients, args.serve_seconds,
                                         args.serve_repeat) if clients else []
        if args.install_size:
            print("install size: a fresh venv with pip install '.[runtime]' ...", file=sys.stderr, flush=True)
            install = runtime_bench.install_size(Path.cwd(), Path(sys.prefix), runtime_bench.bench_model(Path(work)),
                                                 runtime_bench.one_image(data))
        if sizes:
            scale = run_scale(sizes, Path(work))
    table = format_rows(results) if results else ""
    if serve:
        table += ("\n\n" if table else "") + runtime_bench.format_serve(serve)
    if any(step in results for step in runtime_bench.STEPS) or serve or install:
        table += ("\n\n" if table else "") + runtime_bench.format_comparison(results, serve, install)
    if scale:
        table += ("\n\n" if table else "") + format_scale(scale)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from pipeline.shared import artifacts

    artifacts.write_json(out / "bench.json", {"cpus": os.cpu_count(), "repeat": args.repeat, "results": results,
                                              "scale": scale, "serve": serve, "install": install,
                                              "runtime": args.runtime})
    artifacts.write_text(out / "bench.txt", table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
