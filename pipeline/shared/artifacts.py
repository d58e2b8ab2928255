"""Atomic artifact writing, hashing and stage markers.

Every file a stage writes appears complete or not at all: it is written to a
temporary file in the same folder and moved into place with ``os.replace``.
A stage's marker file is written last; later stages trust only marked outputs.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared.errors import StageError, UserError  # noqa: F401  (re-exported: artifacts.StageError is public)

TMP_TAG = ".tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; move it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_TAG}", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get normal permissions
    try:
        yield tmp_path
        fsync_path(tmp_path)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def fsync_path(path: Path) -> None:
    """Flush a file's data to disk (before it is renamed into place)."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_started(paths: Sequence[Path]) -> Callable[[], None]:
    """Start flushing finished files to disk in a thread (fsync lets other threads run meanwhile); the
    function returned waits for it, and raises what it raised. For files that are not written again."""
    failed: list[BaseException] = []

    def flush() -> None:
        try:
            for path in paths:
                fsync_path(path)
        except BaseException as exc:  # noqa: BLE001 - raised by the waiter, in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=flush, name="fsync", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failed:
            raise failed[0]
    return wait


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write bytes."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write pretty-printed JSON."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Atomically save an array as .npy (never pickled)."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read JSON, turning a missing or malformed file into a clear StageError."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StageError(f"{what} is malformed ({exc}): {path}") from None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    """Stable hash of JSON-serialisable parts (params, input hashes, versions)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def temp_dir_for(final_dir: Path) -> Path:
    """A new temp folder beside ``final_dir`` (normal permissions), to be moved in by replace_dir."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}{TMP_TAG}", dir=final_dir.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    return tmp


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a finished temp folder into place, replacing any old one."""
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}{TMP_TAG}old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temps(folder: Path) -> None:
    """Delete temp files/folders left in ``folder`` by an interrupted run."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith(".") and TMP_TAG in entry.name:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def load_npy(path: str | os.PathLike, what: str, mmap: bool = True) -> np.ndarray:
    """Load a .npy without pickle, memory-mapped by default."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise StageError(f"{what} not found: {path}") from None
    except ValueError as exc:
        raise StageError(f"{what} is malformed ({exc}): {path}") from None


def row_layout(array: np.memmap) -> tuple[int, int]:
    """(byte offset of the first row, bytes per row) of a memory-mapped .npy array."""
    return array.offset, array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))


class NpyRows:
    """Read chosen rows of a .npy file with ``pread``: nothing is mapped, so the rows read
    do not stay in this process's resident memory (streaming a file larger than RAM).
    Falls back to plain indexing for an in-memory array."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape, self.dtype = array.shape, array.dtype
        self.row_bytes = array.dtype.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
        self.fd = None
        if isinstance(array, np.memmap) and array.filename and array.flags.c_contiguous:
            self.fd = os.open(array.filename, os.O_RDONLY)
            self.offset, _ = row_layout(array)

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (sorted ascending for a front-to-back read), as a new array."""
        if self.fd is None:
            return np.asarray(self.array[idx])
        out = np.empty((len(idx),) + self.shape[1:], self.dtype)
        view = memoryview(out.reshape(len(idx), -1).view(np.uint8).reshape(-1))
        for k, i in enumerate(idx.tolist()):
            start = k * self.row_bytes
            got = os.preadv(self.fd, [view[start:start + self.row_bytes]], self.offset + i * self.row_bytes)
            if got != self.row_bytes:
                raise StageError(f"{self.array.filename}: short read at row {i} (file truncated?)")
        return out

    def __del__(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
