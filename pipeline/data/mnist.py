"""The MNIST reference dataset: find or download the IDX files, verify, export PNG folders.

``python -m pipeline mnist`` reads the four IDX ``.gz`` files from ``--source``,
``$MNIST_DIR`` or ``datasets/raw/mnist/`` (in that order), or downloads them from
a public mirror when none is found. The decompressed bytes are checked against
the published MD5s. The export ``<out>/{train,test}/<digit>/<index>.png`` is
built in a temp folder and renamed into place; a complete export is skipped.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import multiprocessing as mp
import os
import shutil
import struct
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.shared import artifacts, runfolder
from pipeline.shared.errors import UserError

log = logging.getLogger(__name__)

# MD5 of the decompressed IDX bytes (identical for every mirror's .gz).
FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}
SPLITS = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
COUNTS = {"train": 60000, "test": 10000}
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
DEFAULT_RAW = Path("datasets/raw/mnist")
DEFAULT_OUT = Path("datasets/mnist")  # the exported folders: the reference dataset, the default DATA
MARKER = ".mnist-export.json"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class MnistError(UserError):
    """Missing, corrupt or unverifiable MNIST files."""


def parse_idx(data: bytes) -> np.ndarray:
    """Parse IDX bytes (magic 0x0000, dtype code, ndim, big-endian dims) into an array."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise MnistError("not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in _IDX_DTYPES or ndim == 0:
        raise MnistError(f"unsupported IDX header: dtype 0x{dtype_code:02x}, {ndim} dims")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MnistError("truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise MnistError(f"IDX payload is {len(data) - header} bytes, header says {expected} for shape {dims}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def read_verified(path: Path, name: str | None = None) -> bytes:
    """Decompress one IDX .gz and check its MD5 (keyed by ``name``, default the file's name)."""
    name = name or path.name
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise MnistError(f"{path}: not a valid gzip file ({exc})") from None
    digest = hashlib.md5(data).hexdigest()
    if digest != FILES[name]:
        raise MnistError(f"{path}: checksum mismatch for {name} (MD5 of decompressed data {digest}, "
                         f"expected {FILES[name]}); the file is corrupt or not MNIST")
    return data


def _has_all(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def find_source(source: str | Path | None, env: dict[str, str] | None = None,
                default: Path = DEFAULT_RAW) -> Path | None:
    """The folder holding the four files: --source, then $MNIST_DIR, then ``default``; None to download."""
    env = os.environ if env is None else env
    for given, what in ((source, "--source"), (env.get("MNIST_DIR") or None, "$MNIST_DIR")):
        if given:
            folder = Path(given)
            if not _has_all(folder):
                missing = [n for n in FILES if not (folder / n).is_file()]
                raise MnistError(f"{what}={folder} lacks {', '.join(missing)}")
            return folder
    return default if _has_all(default) else None


def download(dest: Path, mirrors: Sequence[str] = MIRRORS, timeout: float = 60.0) -> Path:
    """Download the four files into ``dest``, verifying each; a bad copy is never kept."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        target = dest / name
        if target.is_file():
            try:
                read_verified(target)
                continue
            except MnistError as exc:
                log.warning("re-downloading %s: %s", name, exc)
        errors = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + name
            log.info("downloading %s", url)
            try:
                with artifacts.atomic_path(target) as tmp:
                    with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                        shutil.copyfileobj(resp, out)
                    read_verified(tmp, name)
                break
            except (urllib.error.URLError, OSError, MnistError) as exc:
                errors.append(f"{url}: {exc}")
        else:
            raise MnistError(f"could not download a valid {name}:\n  " + "\n  ".join(errors))
    return dest


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Verified (images uint8 Nx28x28, labels uint8 N) of the ``train`` or ``test`` split."""
    img_name, lab_name = SPLITS[split]
    images = parse_idx(read_verified(folder / img_name))
    labels = parse_idx(read_verified(folder / lab_name))
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise MnistError(f"{split}: {images.shape} images do not match {labels.shape} labels")
    return images, labels


def _export_fingerprint() -> str:
    return artifacts.fingerprint(COUNTS, FILES)


def is_complete(out: Path) -> bool:
    """True when ``out`` holds a finished export (its marker is current) with every PNG present."""
    if not runfolder.is_current(out / MARKER, _export_fingerprint()):
        return False
    for split, n in COUNTS.items():
        found = sum(1 for d in (out / split).iterdir() if d.is_dir() for _ in os.scandir(d)) \
            if (out / split).is_dir() else 0
        if found != n:
            return False
    return True


def _write_chunk(job: tuple[str, int, np.ndarray, np.ndarray]) -> int:
    """Worker: write one chunk of digits as PNGs named by their index in the IDX file."""
    root, start, images, labels = job
    for offset, (img, label) in enumerate(zip(images, labels)):
        path = os.path.join(root, str(int(label)), f"{start + offset:05d}.png")
        if not cv2.imwrite(path, img):
            raise OSError(f"could not write {path}")
    return len(images)


def export(source: Path, out: Path, workers: int = 0, chunk: int = 1000, check: bool = True) -> bool:
    """Export both splits from ``source`` to PNG folders at ``out``; False if already complete.

    ``check=False`` skips the completeness scan for a caller that has just made it.
    """
    if check and is_complete(out):
        log.info("MNIST export already complete at %s; nothing to do", out)
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    artifacts.remove_stale_temps(out.parent)
    tmp = artifacts.temp_dir_for(out)
    try:
        jobs = []
        for split in COUNTS:
            images, labels = load_split(source, split)
            for digit in range(10):
                (tmp / split / str(digit)).mkdir(parents=True, exist_ok=True)
            root = str(tmp / split)
            jobs += [(root, i, images[i:i + chunk], labels[i:i + chunk]) for i in range(0, len(images), chunk)]
        workers = workers or os.cpu_count() or 1
        total = sum(len(j[2]) for j in jobs)
        # spawn, not fork: the caller may have TensorFlow's threads running.
        with mp.get_context("spawn").Pool(workers) as pool, \
                tqdm(total=total, desc="export MNIST", unit="img") as bar:
            for n in pool.imap_unordered(_write_chunk, jobs):
                bar.update(n)
        runfolder.write_marker(tmp / MARKER, _export_fingerprint(), counts=COUNTS, md5=FILES, source=str(source))
        artifacts.replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %d PNGs to %s", sum(COUNTS.values()), out)
    return True


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--source", help="folder with the four IDX .gz files (default: $MNIST_DIR, "
                        f"then {DEFAULT_RAW}/, else download)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="export folder (default: %(default)s)")
    parser.add_argument("--raw-dir", default=str(DEFAULT_RAW), help="where downloads go (default: %(default)s)")
    parser.add_argument("--mirror", action="append", help="download base URL (repeatable; default: public mirrors)")
    parser.add_argument("--workers", type=int, default=0, help="PNG writer processes (0 = one per core)")
    return parser


def main(args: argparse.Namespace) -> int:
    """CLI: locate or download MNIST, then export it to PNG folders."""
    out = Path(args.out)
    if is_complete(out):
        log.info("MNIST export already complete at %s; nothing to do", out)
        return 0
    raw = Path(args.raw_dir)
    source = find_source(args.source, default=raw)
    if source is None:
        log.info("no local MNIST files found; downloading to %s", raw)
        source = download(raw, args.mirror or MIRRORS)
    log.info("reading MNIST from %s", source)
    export(source, out, workers=args.workers, check=False)  # completeness checked above
    return 0


def render_on_paper(digit: np.ndarray, rng: np.random.Generator, size: int = 200, quality: int = 75) -> bytes:
    """An MNIST digit as a 'photo': dark ink on white, enlarged at a random place with margins, JPEG.

    Used to check that ``normalize = "mnist"`` lets an MNIST model read real-looking digits.
    """
    import io

    from PIL import Image

    side = int(rng.integers(size * 45 // 100, size * 75 // 100))
    ink = cv2.resize(255 - digit, (side, side), interpolation=cv2.INTER_CUBIC)
    page = np.full((size, size), 255, np.uint8)
    margin = size // 20
    oy, ox = rng.integers(margin, size - side - margin + 1, 2)
    page[oy:oy + side, ox:ox + side] = ink
    buf = io.BytesIO()
    Image.fromarray(page).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
