"""Ingest: turn a labeled image collection into one list of (path, label, split) items.

Folder-per-label layout (the reference layout)::

    DATA/                        DATA/
      cat/ a.png b.jpg     or      train/ cat/... dog/...
      dog/ x/c.png                 test/  cat/... dog/...   (val/ optional)

Labels are the folder names directly below DATA (or below each split folder);
images may be nested at any depth under their label folder. Walks are sorted.
Files are only listed here; decoding (and rejecting bad files) happens in prepare.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Item:
    """One candidate image: path relative to the dataset root (POSIX), its label and given split."""

    path: str
    label: str
    split: str | None = None


@dataclass
class Listing:
    """What ingest found: candidate items and files/folders it could not use (path, reason)."""

    items: list[Item]
    rejected: list[tuple[str, str]]

    @property
    def has_splits(self) -> bool:
        return any(item.split is not None for item in self.items)


def _walk_files(folder: Path, root: Path, rejected: list[tuple[str, str]]) -> list[str]:
    """Sorted relative paths of the non-hidden files under ``folder``; unreadable folders reported."""
    found: list[str] = []

    def onerror(exc: OSError) -> None:
        rel = os.path.relpath(exc.filename, root) if exc.filename else str(folder)
        rejected.append((Path(rel).as_posix(), f"unreadable folder: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=onerror, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                found.append(Path(os.path.relpath(os.path.join(dirpath, name), root)).as_posix())
    return found


def _label_dirs(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.name)


def scan_folders(root: str | os.PathLike) -> Listing:
    """List a folder-per-label tree, honouring top-level train/val/test split folders."""
    root = Path(root)
    if not root.exists():
        raise ValueError(f"dataset not found: {root}")
    if not root.is_dir():
        raise ValueError(f"the folders layout needs a directory. Received: {root}")
    try:
        top = _label_dirs(root)
    except OSError as exc:
        raise ValueError(f"cannot read dataset folder {root}: {exc.strerror or exc}") from None
    split_dirs = [d for d in top if d.name.lower() in SPLIT_NAMES]
    items: list[Item] = []
    rejected: list[tuple[str, str]] = []
    groups = [(d, d.name.lower()) for d in split_dirs] if split_dirs else [(root, None)]
    for base, split in groups:
        for f in sorted(p for p in base.iterdir() if p.is_file() and not p.name.startswith(".")):
            rejected.append((f.relative_to(root).as_posix(), "not inside a label folder"))
        for label_dir in _label_dirs(base):
            files = _walk_files(label_dir, root, rejected)
            if not files:
                rejected.append((label_dir.relative_to(root).as_posix(), "empty label folder"))
            items.extend(Item(path, label_dir.name, split) for path in files)
    if split_dirs:
        others = [d.name for d in top if d not in split_dirs]
        for name in others:
            rejected.append((name, "folder beside train/val/test split folders is ignored"))
    return Listing(items, rejected)


def scan(root: str | os.PathLike, layout: str = "auto") -> Listing:
    """List a dataset in the given layout (``auto`` detects it)."""
    if layout not in ("auto", "folders"):
        raise ValueError(f"unknown layout {layout!r}; supported: auto, folders")
    return scan_folders(root)
