"""Shared fixtures: the local MNIST files and tiny generated image folders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.shared.cli import FULL_STACK

REPO = Path(__file__).resolve().parent.parent


def mnist_source() -> Path | None:
    """The offline MNIST folder ($MNIST_DIR, else ../shared/datasets/mnist), or None."""
    for cand in (os.environ.get("MNIST_DIR"), REPO.parent / "shared" / "datasets" / "mnist"):
        if cand and all((Path(cand) / n).is_file() for n in (
                "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")):
            return Path(cand).resolve()
    return None


@pytest.fixture(scope="session", autouse=True)
def _keep_the_last_run():
    """Tests that run `pipeline prepare` in a subprocess from this folder record their temp runs as the last
    prepared run (runs/.last-run); put back what was there, so that `make train` after `make test` still
    means the user's run."""
    from pipeline.shared import runfolder

    last = Path(runfolder.LAST_RUN).resolve()
    before = last.read_bytes() if last.is_file() else None
    yield
    if before is not None:
        last.write_bytes(before)
    else:
        last.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    src = mnist_source()
    if src is None:
        pytest.skip("MNIST IDX files not available (set MNIST_DIR)")
    return src


def write_image(path: Path, array: np.ndarray, fmt: str | None = None, **kw) -> Path:
    """Save a uint8 array as an image file (format from the suffix unless given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt, **kw)
    return path


def make_tree(root: Path, spec: dict[str, int], size: int = 16, split: str | None = None, seed: int = 0) -> Path:
    """Folder-per-label tree: ``spec`` maps label -> number of images; class k is brightness-coded."""
    rng = np.random.default_rng(seed)
    base = root / split if split else root
    for k, (label, n) in enumerate(sorted(spec.items())):
        for i in range(n):
            img = np.full((size, size), 20 + 20 * k, np.uint8) + rng.integers(0, 5, (size, size), dtype=np.uint8)
            write_image(base / label / f"{i:03d}.png", img)
    return root


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """A few hundred real MNIST digits exported as train/test PNG folders."""
    from pipeline.data import mnist

    root = tmp_path_factory.mktemp("tiny_mnist")
    for split, n in (("train", 1200), ("test", 300)):
        images, labels = mnist.load_split(mnist_dir, split)
        for i in range(n):
            write_image(root / split / str(int(labels[i])) / f"{i:05d}.png", images[i])
    return root


SHADES = {"dark": 40, "mid": 128, "light": 215}  # classes a tiny model learns perfectly


def shade_image(label: str, rng: np.random.Generator, size: tuple[int, int] = (20, 20),
                rgb: bool = False) -> np.ndarray:
    """An image of one of the SHADES classes: its gray level plus a little noise."""
    img = np.clip(SHADES[label] + rng.normal(0, 6, size), 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=2) if rgb else img


@pytest.fixture(scope="session")
def shade_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model bundle trained in a few seconds on the SHADES classes (perfectly separable)."""
    from pipeline.shared.params import PrepareParams, PreprocessParams, TrainParams
    from pipeline.stages.prepare import prepare
    from pipeline.stages.train import train

    root = tmp_path_factory.mktemp("shades")
    rng = np.random.default_rng(1)
    for label in SHADES:
        for i in range(30):
            write_image(root / "data" / label / f"{i:02d}.png", shade_image(label, rng))
    run = root / "run"
    prepare(root / "data", run, PrepareParams(workers=1, test_size=0.2), PreprocessParams())
    train(run, TrainParams(epochs=25, batch_size=8, learning_rate=3e-3, patience=25, dropout=0.0), verbose=0)
    return run / "model"


def cli(*args, cwd=None):
    """Run ``python -m pipeline ARGS`` in a subprocess (as a user would)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


# The training stack, which the light install (pip install ".[runtime]") leaves out (pipeline.shared.cli's
# FULL_STACK): importing any of them fails in a process started with without_training_stack()'s environment.
_BLOCKER = f"""import sys

BLOCKED = {tuple(FULL_STACK)!r}


class _NotInstalled:
    \"\"\"An import finder that says the training stack is not installed.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (the light install)", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""


def without_training_stack(folder: Path) -> dict[str, str]:
    """An environment whose Python cannot import TensorFlow, Keras, scikit-learn, SciPy or Matplotlib (a
    ``sitecustomize`` on PYTHONPATH puts a blocking finder first; spawned workers inherit it): the light
    install, as far as this package can tell."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_BLOCKER)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO)]), "TF_CPP_MIN_LOG_LEVEL": "3"}


TINY_PARAMS = """
[prepare]
val_size = 0.1
[train]
epochs = 3
batch_size = 16
patience = 3
"""


@pytest.fixture(scope="session")
def trained_run(tiny_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """prepare -> train -> evaluate (with its report) on the tiny MNIST folders, through the CLI."""
    work = tmp_path_factory.mktemp("e2e")
    (work / "params.toml").write_text(TINY_PARAMS)
    run = work / "runs" / "tiny"
    for stage in (["prepare", "--data", str(tiny_mnist)], ["train"], ["evaluate"]):
        res = cli(*stage, "--run", str(run), "--params", str(work / "params.toml"))
        assert res.returncode == 0, res.stderr[-3000:]
    return run, work


CHROMIUM = "/usr/bin/chromium"  # Debian's package, installed by .ci/run; Playwright never downloads one
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_page(pw, viewport: dict[str, int], errors: list[str], requests: list[str]):
    """(browser, page) in headless Chromium, recording page/console errors and every request URL;
    skips the test when Chromium is missing or cannot start here."""
    try:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except Exception as exc:  # noqa: BLE001 - any launch failure means Chromium truly cannot run here
        pytest.skip(f"Chromium cannot start here: {exc}")
    page = browser.new_page(viewport=viewport)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: requests.append(r.url))
    return browser, page


SHAPES = ("disc", "bar", "plus", "diamond", "arch", "ring", "triangle", "hbar", "boot")  # all mirror-symmetric
# but the boot


def shape_image(kind: str, rng: np.random.Generator, side: int = 28) -> np.ndarray:
    """A light silhouette on black, centred, of a random size: the first five kinds are mirror-symmetric
    (like clothing seen from the front), the boot points one way (like a sandal or a boot)."""
    import cv2

    img = np.zeros((side, side), np.uint8)
    c, r = side // 2, int(rng.integers(side // 4, side // 3))
    level = int(rng.integers(160, 255))
    if kind == "disc":
        cv2.circle(img, (c, c), r, level, -1)
    elif kind == "bar":
        cv2.rectangle(img, (c - r // 3, c - r), (c + r // 3, c + r), level, -1)
    elif kind == "plus":
        cv2.rectangle(img, (c - r, c - r // 4), (c + r, c + r // 4), level, -1)
        cv2.rectangle(img, (c - r // 4, c - r), (c + r // 4, c + r), level, -1)
    elif kind == "diamond":
        cv2.fillPoly(img, [np.array([(c, c - r), (c + r, c), (c, c + r), (c - r, c)])], level)
    elif kind == "arch":
        cv2.ellipse(img, (c, c + r // 2), (r, r), 0, 180, 360, level, -1)
    elif kind == "ring":
        cv2.circle(img, (c, c), r, level, max(2, r // 3))
    elif kind == "triangle":
        cv2.fillPoly(img, [np.array([(c, c - r), (c + r, c + r), (c - r, c + r)])], level)
    elif kind == "hbar":
        cv2.rectangle(img, (c - r, c - r // 3), (c + r, c + r // 3), level, -1)
    else:  # boot: a leg and a foot pointing right
        cv2.rectangle(img, (c - r // 2, c - r), (c, c + r // 2), level, -1)
        cv2.rectangle(img, (c - r // 2, c + r // 3), (c + r, c + r // 2 + 2), level, -1)
    if kind != "boot":
        img = np.maximum(img, img[:, ::-1])  # exactly symmetric about the image's own axis
    return np.clip(img.astype(np.int16) + rng.integers(0, 12, img.shape), 0, 255).astype(np.uint8)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], ready: str, timeout: float = 90):
    """``python -m pipeline ARGS`` as a server process; returns once ``ready`` (a URL) answers 200."""
    import time

    import httpx

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(ready, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.25)
    proc.kill()
    raise AssertionError(f"server did not start within {timeout:.0f} s")


def stop_server(proc) -> None:
    """Stop a server process (terminate, then kill)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
