"""What to predict: the files under a folder, one image, or the rows of a pixel CSV, and their
model input a batch at a time (decoded in worker processes, through the bundle's preprocessing).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data import decoding, ingest
from pipeline.data.preprocess import for_display, preprocess
from pipeline.shared.errors import UserError
from pipeline.shared.params import PreprocessParams


@dataclass
class Inputs:
    """What ``IMAGES`` holds: ``folder`` (files under it), ``file`` (one image) or ``pixels`` (a pixel CSV)."""

    kind: str
    source: Path
    paths: list[str] = field(default_factory=list)  # row names: relative to the folder, or as given
    rejected: list[tuple[str, str]] = field(default_factory=list)  # unreadable entries found by the walk

    def file(self, path: str) -> Path:
        """The file behind a row name."""
        return self.source / path if self.kind == "folder" else self.source

    def heavy(self) -> bool:
        """Are its files slow to decode one by one (large ones, photos: the first few looked at)?"""
        return decoding.heavy([str(self.file(p)) for p in self.paths[:8]])

    def relative(self, path: str) -> str:
        """A row's file relative to IMAGES (for --sort-into)."""
        return path if self.kind == "folder" else self.source.name


def inside(path: Path, folder: Path) -> str | None:
    """``path`` relative to ``folder`` (POSIX) when it lies inside it, else None."""
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return None


def list_inputs(source: Path, exclude: tuple[Path, ...] = ()) -> Inputs:
    """List what to predict; ``exclude`` (our own outputs) is left out of a folder walk."""
    if not source.exists():
        raise UserError(f"IMAGES not found: {source}")
    if source.is_file():
        if source.suffix.lower() in ingest.CSV_SUFFIXES:
            header, _, fh = ingest.open_csv(source)
            fh.close()  # type: ignore[attr-defined]
            if not ingest.is_pixel_header(header):
                raise UserError(f"{source} is a CSV but not a pixel CSV (label?, pixel0, pixel1, ...); "
                                 "give the folder of images instead")
            return Inputs("pixels", source)
        return Inputs("file", source, [str(source)])
    rejected: list[tuple[str, str]] = []
    paths = ingest.walk_files(source, source, rejected)
    skip = [rel for rel in (inside(p, source) for p in exclude) if rel]
    if skip:
        paths = [p for p in paths if not any(p == s or p.startswith(s + "/") for s in skip)]
    if not paths and not rejected:
        raise UserError(f"no files found under {source}")
    return Inputs("folder", source, paths, rejected)


def _stack(arrays: list[np.ndarray], cfg: PreprocessParams) -> np.ndarray:
    return np.stack(arrays) if arrays else np.zeros((0, *cfg.input_shape), np.float32)


def pixel_chunks(source: Path, cfg: PreprocessParams, size: int,
                  done: set[str]) -> Iterator[tuple[list[str], np.ndarray, list[str]]]:
    """Blocks of (row names, preprocessed arrays, reasons) from a pixel CSV, skipping ``done`` rows."""
    names: list[str] = []
    arrays: list[np.ndarray] = []
    reasons: list[str] = []
    for i, (img, reason) in enumerate(ingest.iter_pixel_images(source)):
        name = f"{source.name}#{i}"
        if name in done:
            continue
        names.append(name)
        reasons.append(reason)
        if img is not None:
            arrays.append(preprocess(img, cfg))
        if len(names) == size:
            yield names, _stack(arrays, cfg), reasons
            names, arrays, reasons = [], [], []
    if names:
        yield names, _stack(arrays, cfg), reasons


def file_chunks(inputs: Inputs, paths: list[str], cfg: PreprocessParams, size: int,
                 pool: Any) -> Iterator[tuple[list[str], np.ndarray, list[str]]]:
    """Blocks of ``size`` files, decoded a block a job; large files (photos) a few a job, so that every worker
    has some of a block, and put together again into blocks of ``size``."""
    piece = size
    if pool is not None and inputs.heavy():
        piece = max(1, size // (pool.workers * 4))
    pieces = [paths[i:i + piece] for i in range(0, len(paths), piece)]
    files = ([str(inputs.file(p)) for p in part] for part in pieces)
    names: list[str] = []
    arrays: list[np.ndarray] = []
    reasons: list[str] = []
    for part, (stacked, info) in zip(pieces, decoding.decode_chunks(files, cfg, pool)):
        names += part
        arrays.append(stacked)
        reasons += [reason for reason, _ in info]
        if len(names) >= size or part is pieces[-1]:
            yield names, np.concatenate(arrays) if len(arrays) > 1 else arrays[0], reasons
            names, arrays, reasons = [], [], []


def chunks(inputs: Inputs, todo: list[str], cfg: PreprocessParams, size: int, pool: Any,
           done: set[str]) -> Iterator[tuple[list[str], np.ndarray, list[str]]]:
    """Blocks of (row names, model input, reasons) for the rows still ``todo`` (pixel CSV: not ``done``)."""
    if inputs.kind == "pixels":
        return pixel_chunks(inputs.source, cfg, size, done)
    return file_chunks(inputs, todo, cfg, size, pool)


def original(path: str | Path, background: int | str = "auto", side: int = 0) -> tuple[np.ndarray | None, str]:
    """An image as a person sees it, named as manifest.csv names it: a file (colour, any size, transparent parts
    on ``background``) or a pixel CSV's row ``<file>#<row>``; ``(uint8 array, "")`` or ``(None, why it cannot be
    shown)``. ``side``: shown at most that large (a large JPEG is then decoded smaller)."""
    row = ingest.pixel_row_of(path)
    return row if row is not None else for_display(path, background, side)
