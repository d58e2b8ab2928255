"""Ingest: turn a labeled image collection into one list of (path, label, split) items.

Four layouts, detected automatically (``--layout`` / ``LAYOUT=`` overrides):

``folders``
    one folder per label, images nested at any depth below it::

        DATA/cat/a.png  DATA/dog/x/b.jpg        or with given splits:
        DATA/train/cat/...  DATA/test/cat/...   (val/ optional)

``filenames``
    the label is in the file name: ``5_00001.png``, ``00001_5.png``,
    ``cat.123.jpg``, ``dog-7.png`` by default, or ``[ingest] filename_regex``
    (a named group ``label``), or ``filename_delimiter`` + ``filename_position``.
    Names that give no label are reported, never guessed.

``csv``
    a CSV/TSV file (delimiter sniffed) mapping image paths, relative to the CSV's
    folder, to labels, with an optional split column. Absolute paths, paths
    escaping that folder (``..``, symlinks out) and missing files are refused per
    row; duplicate rows and conflicting labels are reported.

``pixels``
    the Kaggle digit-recognizer form: a ``label`` column and one column per pixel
    (784 for 28x28). A file without the label column can only be predicted.

Ingest only lists; decoding (and rejecting bad files) happens once, in prepare.
"""
from __future__ import annotations

import csv
import functools
import logging
import math
import operator
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pipeline.data.preprocess import EXTENSIONS
from pipeline.shared import runfolder
from pipeline.shared.errors import UserError
from pipeline.shared.params import AUTO, IngestParams

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "folders", "filenames", "csv", "pixels")
SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "testing": "test"}
CSV_SUFFIXES = (".csv", ".tsv", ".txt")
MULTI_JOIN = runfolder.MULTI_JOIN  # a multi-label item's labels, sorted and joined
NOT_IMAGES = (".txt", ".md", ".csv", ".tsv", ".json", ".yaml", ".yml", ".xml", ".html", ".pdf", ".doc", ".docx",
              ".zip", ".tar", ".gz", ".py", ".ipynb", ".log", ".ini", ".toml")  # named, never decoded as images
PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "image_path", "filepath", "img")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "class_name")  # csv_label_column = "": the first
_PIXEL_COL = re.compile(r"^pixel\d+$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)  # slots: one per file, a million of them
class Item:
    """One candidate image: path relative to the root (POSIX), label (None: unlabelled), given split.

    For the pixels layout ``row`` is the data row (0-based) in the CSV and ``path``
    reads ``<file>#<row>``.
    """

    path: str
    label: str | None
    split: str | None = None
    row: int = -1
    note: str = ""  # e.g. "relabeled from cat (corrections.csv line 4)"


@dataclass
class Listing:
    """What ingest found: candidate items, and entries it could not use (path, reason)."""

    root: Path
    layout: str
    items: list[Item]
    rejected: list[tuple[str, str]] = field(default_factory=list)
    source: Path | None = None  # the CSV file for the csv and pixels layouts
    pixel_shape: tuple[int, int] | None = None
    stats: list[tuple[int, int]] | None = None  # (size, mtime_ns) per item, when the walk saw them
    task: str = "single"  # multi: each item's label is its labels joined by MULTI_JOIN ("" for none)
    hidden: list[str] = field(default_factory=list)  # hidden files and folders the walk passed over (".x")

    @property
    def has_splits(self) -> bool:
        return any(item.split is not None for item in self.items)


# ---------------------------------------------------------------- walking folders
_name = operator.attrgetter("name")


def walk_files(folder: Path, root: Path, rejected: list[tuple[str, str]],
                stats: list[tuple[int, int]] | None = None, hidden: list[str] | None = None) -> list[str]:
    """Sorted relative paths (POSIX) of the non-hidden files under ``folder``, files before sub-folders.

    Unreadable folders are reported in ``rejected``; (size, mtime) of each file go to ``stats``; the
    hidden entries passed over (``.DS_Store``, ``._x.jpg``, ``.ipynb_checkpoints/``) to ``hidden``.
    Folder symlinks are not followed (no loops); file symlinks are.
    """
    found: list[str] = []

    def walk(abs_dir: str, rel_dir: str) -> None:
        try:
            with os.scandir(abs_dir) as it:
                entries = list(it)
            entries.sort(key=_name)
        except OSError as exc:
            rejected.append((rel_dir, f"unreadable folder: {exc.strerror or exc}"))
            return
        if any(e.name[:1] == "." for e in entries):
            if hidden is not None:
                hidden.extend(f"{rel_dir}/{e.name}" if rel_dir != "." else e.name for e in entries if e.name[:1] == ".")
            entries = [e for e in entries if e.name[:1] != "."]
        subdirs = []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    subdirs.append(e)
                elif e.is_file():
                    found.append(f"{rel_dir}/{e.name}" if rel_dir != "." else e.name)
                    if stats is not None:
                        st = e.stat()
                        stats.append((st.st_size, st.st_mtime_ns))
            except OSError as exc:
                rejected.append((f"{rel_dir}/{e.name}", f"unreadable: {exc.strerror or exc}"))
        for e in subdirs:
            walk(e.path, f"{rel_dir}/{e.name}" if rel_dir != "." else e.name)

    walk(str(folder), folder.relative_to(root).as_posix())
    return found


def _children(folder: Path, hidden: list[Path] | None = None) -> tuple[list[Path], list[Path]]:
    """Sorted non-hidden (sub-folders, files) of ``folder`` (the hidden ones, when asked, to ``hidden``)."""
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise UserError(f"cannot read dataset folder {folder}: {exc.strerror or exc}") from None
    if hidden is not None:
        hidden.extend(p for p in entries if p.name.startswith("."))
    entries = [p for p in entries if not p.name.startswith(".")]
    return [p for p in entries if p.is_dir()], [p for p in entries if p.is_file()]


def _split_groups(root: Path) -> list[tuple[Path, str | None]]:
    """(base folder, split) pairs: the given train/val/test folders, else the root itself."""
    dirs, _ = _children(root)
    splits = [(d, d.name.lower()) for d in dirs if d.name.lower() in SPLIT_NAMES]
    return splits or [(root, None)]


def _outside_splits(root: Path, groups: list[tuple[Path, str | None]], rejected: list[tuple[str, str]],
                    hidden: list[str]) -> None:
    """Beside train/val/test split folders: the other folders are reported, the hidden entries counted."""
    if groups[0][1] is None:
        return
    passed: list[Path] = []
    dirs, _ = _children(root, passed)
    hidden += [p.name for p in passed]
    for d in dirs:
        if d.name.lower() not in SPLIT_NAMES:
            rejected.append((d.name, "folder beside train/val/test split folders is ignored"))


def scan_folders(root: Path, stat: bool = True) -> Listing:
    """List a folder-per-label tree, honouring top-level train/val/test split folders."""
    items: list[Item] = []
    rejected: list[tuple[str, str]] = []
    stats: list[tuple[int, int]] | None = [] if stat else None
    hidden: list[str] = []
    groups = _split_groups(root)
    for base, split in groups:
        passed: list[Path] = []
        label_dirs, files = _children(base, passed)
        hidden += [f.relative_to(root).as_posix() for f in passed]
        for f in files:
            rejected.append((f.relative_to(root).as_posix(), "not inside a label folder"))
        for label_dir in label_dirs:
            found = walk_files(label_dir, root, rejected, stats, hidden)
            if not found:
                rejected.append((label_dir.relative_to(root).as_posix(), "empty label folder"))
            label = label_dir.name
            items.extend(Item(path, label, split) for path in found)
    _outside_splits(root, groups, rejected, hidden)
    return Listing(root, "folders", items, rejected, stats=stats, hidden=hidden)


def merge_copies(listing: Listing) -> Listing:
    """Multi-label folders: the same image (the same bytes) in several label folders is one image with all
    those labels (the first path stands for it)."""
    import hashlib

    by_hash: dict[bytes, int] = {}
    items: list[Item] = []
    stats: list[tuple[int, int]] | None = [] if listing.stats is not None else None
    for k, item in enumerate(listing.items):
        try:
            digest = hashlib.sha1((listing.root / item.path).read_bytes()).digest()
        except OSError:
            digest = item.path.encode()  # unreadable: decoding reports it later
        if digest in by_hash:
            j = by_hash[digest]
            labels = sorted({*items[j].label.split(MULTI_JOIN), item.label})
            items[j] = replace(items[j], label=MULTI_JOIN.join(labels))
            continue
        by_hash[digest] = len(items)
        items.append(item)
        if stats is not None:
            stats.append(listing.stats[k])
    return replace(listing, items=items, stats=stats, task="multi")


def label_key(name: str) -> str:
    """What is left of a label when letter case and spacing are ignored (``Circle``, ``CIRCLE``, ``cir cle``)."""
    return "".join(name.split()).casefold()


def merge_label_case(listing: Listing) -> tuple[Listing, dict[str, list[str]]]:
    """Labels that differ only in letter case or spacing made one (``[ingest] label_case = "ignore"``): each
    group takes its most common spelling (of equals, the first in sort order). The listing relabeled, and
    each merged name's spellings."""
    counts: dict[str, dict[str, int]] = {}
    for item in listing.items:
        for name in _names(item.label, listing.task):
            spellings = counts.setdefault(label_key(name), {})
            spellings[name] = spellings.get(name, 0) + 1
    chosen = {key: min(sp, key=lambda n: (-sp[n], n)) for key, sp in counts.items()}
    merged = {chosen[key]: sorted(sp) for key, sp in counts.items() if len(sp) > 1}
    if not merged:
        return listing, {}

    def relabel(label: str | None) -> str | None:
        if label is None:
            return None
        names = sorted({chosen[label_key(n)] for n in _names(label, listing.task)})
        return MULTI_JOIN.join(names) if listing.task == "multi" else names[0]

    return replace(listing, items=[replace(it, label=relabel(it.label)) for it in listing.items]), merged


def _names(label: str | None, task: str) -> list[str]:
    if label is None:
        return []
    return [n for n in label.split(MULTI_JOIN) if n] if task == "multi" else [label]


def label_names(joined: Iterable[str]) -> list[str]:
    """The sorted names of the labels in multi-label items' joined labels."""
    return sorted({name for text in joined for name in text.split(MULTI_JOIN) if name})


def multi_hot(joined: Sequence[str], labels: dict[str, int] | Sequence[str]) -> np.ndarray:
    """The (N, L) uint8 matrix of multi-label items' joined labels ("" for none); ``labels``: the label map
    (or the names in order)."""
    index = labels if isinstance(labels, dict) else {name: j for j, name in enumerate(labels)}
    y = np.zeros((len(joined), len(index)), np.uint8)
    for i, text in enumerate(joined):
        for name in filter(None, text.split(MULTI_JOIN)):
            y[i, index[name]] = 1
    return y


# ---------------------------------------------------------------- labels from file names
def label_from_name(name: str, p: IngestParams) -> str | None:
    """The label in a file name, or None when the name does not give one unambiguously."""
    stem = Path(name).stem
    while Path(stem).suffix.lower() in EXTENSIONS:  # "cat_007.png.png": an extension given twice
        stem = Path(stem).stem
    if p.filename_regex:
        m = re.search(p.filename_regex, name)
        return (m.group("label") or None) if m else None
    if p.filename_delimiter:
        tokens = stem.split(p.filename_delimiter)
        try:
            return tokens[p.filename_position] or None
        except IndexError:
            return None
    return _automatic_label(stem)


_DELIMS = re.compile(r"[_.\- ]+")
# what cameras and phones call their files, in capitals ("IMG_1234.JPG"): a device's name, not a label
CAMERA_NAMES = frozenset({"IMG", "DSC", "DSCN", "DSCF", "PXL", "MVIMG", "GOPR", "DJI", "CIMG", "PICT", "SAM"})
# what a file manager appends to a copy's name: "cat_12 (1)", "cat_12 - Copy", "cat_12 copy 2"
_COPY_SUFFIX = re.compile(r"(?:\s*\(\d+\)|\s+-\s+copy(?:\s*\(\d+\))?|\s+copy(?:\s+\d+)?)$", re.IGNORECASE)


def _automatic_label(stem: str) -> str | None:
    """The automatic rule: a numeric id at the start or the end of the name, and the rest is the label.

    ``00123_T-shirt_top`` -> ``T-shirt_top``, ``Ankle_boot_00042`` -> ``Ankle_boot``,
    ``golden retriever 12`` -> ``golden retriever``, ``cat.123`` -> ``cat``; two numbers
    (``5_00001``, ``00001_5``): the shorter. Ids at both ends (``12_cat_34``), equal-length
    numbers (``12_34``) or no id (``cat_dog``) are ambiguous: None, never a guess. A file manager's copy
    suffix (``cat_12 (1)``, ``cat_12 - Copy``, ``cat_12 copy 2``) is not part of the name.
    """
    stem = _COPY_SUFFIX.sub("", stem)  # a copy is named like its original: "0042_cat (1)" is a cat
    tokens = [t for t in _DELIMS.split(stem) if t]
    if len(tokens) < 2:
        return None
    if len(tokens) == 2 and all(t.isdigit() for t in tokens):  # 5_00001, 00001_5: the short number
        return min(tokens, key=len) if len(tokens[0]) != len(tokens[1]) else None
    first = _DELIMS.match(stem[len(tokens[0]):]) if stem.startswith(tokens[0]) else None
    head = stem[len(tokens[0]) + first.end():].strip(" _.-") if tokens[0].isdigit() and first else None
    tail = stem[:stem.rfind(tokens[-1])].strip(" _.-") if tokens[-1].isdigit() else None
    if head and tail:  # an id at both ends: which part is the label?
        return None
    label = head or tail
    if not label or label.isdigit():
        return None
    words = [t for t in _DELIMS.split(label) if t]
    if words[0].isdigit() or words[-1].isdigit() or words[0] in CAMERA_NAMES:
        return None  # another number beside the id ("IMG_20230101_120000", "cat_2023-05-01"), or a camera's name
    return label


def scan_filenames(root: Path, p: IngestParams) -> Listing:
    """List image files whose names carry their label, honouring split folders."""
    items: list[Item] = []
    rejected: list[tuple[str, str]] = []
    stats: list[tuple[int, int]] = []
    kept: list[tuple[int, int]] = []
    hidden: list[str] = []
    groups = _split_groups(root)
    how = "filename_regex" if p.filename_regex else "filename_delimiter" if p.filename_delimiter else \
        "the automatic rule; set [ingest] filename_regex"
    for base, split in groups:
        start = len(stats)
        for k, rel in enumerate(walk_files(base, root, rejected, stats, hidden)):
            label = label_from_name(rel.rsplit("/", 1)[-1], p)
            suffix = Path(rel).suffix.lower()
            if suffix in NOT_IMAGES:
                rejected.append((rel, f"not an image (a {suffix} file)"))
            elif label is None:
                rejected.append((rel, f"file name gives no label ({how})"))
            else:
                items.append(Item(rel, label, split))
                kept.append(stats[start + k])
    _outside_splits(root, groups, rejected, hidden)
    return Listing(root, "filenames", items, rejected, stats=kept, hidden=hidden)


# ---------------------------------------------------------------- CSV mapping
def open_csv(path: Path) -> tuple[list[str], Iterator[list[str]], object]:
    """Header, row iterator and file handle of a CSV/TSV with a sniffed delimiter."""
    fh = open(path, newline="", encoding="utf-8-sig")
    sample = fh.read(65536)
    fh.seek(0)
    try:
        dialect = csv.Sniffer().sniff(sample.split("\n", 1)[0] if "\n" in sample else sample, delimiters=",;\t|")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(fh, delimiter=delimiter)
    header = [h.strip() for h in next(reader, [])]
    if not header:
        fh.close()
        raise UserError(f"CSV file is empty: {path}")
    return header, reader, fh


def _column(header: list[str], wanted: str, candidates: tuple[str, ...], what: str, path: Path) -> int:
    lower = [h.lower() for h in header]
    names = (wanted,) if wanted else candidates
    for name in names:
        if name.lower() in lower:
            return lower.index(name.lower())
    raise UserError(f"CSV {path} has no {what} column {' or '.join(repr(n) for n in names)}; "
                     f"columns found: {header} (set [ingest] csv_{what}_column, or read the images with "
                     "LAYOUT=folders or LAYOUT=filenames)")


def _label_named(lower: list[str], p: IngestParams) -> bool:
    """Whether a header (lower case) has the label column: the one set, or one of :data:`LABEL_COLUMNS`."""
    return bool(set(lower) & ({p.csv_label_column.lower()} if p.csv_label_column else set(LABEL_COLUMNS)))


def _windows_absolute(rel: str) -> bool:
    """``C:\\data\\x.png``, ``\\\\server\\x.png``, ``\\x.png``: absolute on Windows (on any system, refused)."""
    return bool(re.match(r"^[A-Za-z]:[\\/]", rel)) or rel.startswith("\\")


def _slashes(rel: str, root: Path) -> str:
    """A relative Windows path (``images\\cat.png``: an Excel or Windows export) with ``/`` where the file is
    there so; as written otherwise (an absolute one is refused as such)."""
    if "\\" not in rel or os.sep == "\\" or _windows_absolute(rel) or os.path.exists(root / rel):
        return rel
    return rel.replace("\\", "/")


def _check_inside(root_real: str, root: Path, rel: str) -> str | None:
    """Why ``rel`` may not be used (absolute, escaping the root, missing), or None."""
    if os.path.isabs(rel) or _windows_absolute(rel):
        return "absolute path refused (paths are relative to the CSV's folder)"
    real = os.path.realpath(root / rel)
    if os.path.commonpath([root_real, real]) != root_real:
        return "path escapes the dataset root (.. or a symlink out)"
    if not os.path.isfile(real):
        return "file not found" if not os.path.exists(real) else "not a file"
    return None


def _flag_columns(header: list[str], rows: Sequence[list[str]], skip: set[int | None]) -> list[int]:
    """The columns (those not in ``skip``) whose every cell in ``rows`` is 0, 1 or empty: one 0/1 column per
    label."""
    return [i for i in range(len(header)) if i not in skip
            and all((r[i].strip() if i < len(r) else "") in ("0", "1", "") for r in rows)]


@dataclass(frozen=True)
class _Columns:
    """Where a mapping file keeps the path, the label (or one 0/1 column per label) and the split."""

    path: int
    label: int | None
    split: int | None
    flags: tuple[tuple[int, str], ...] = ()  # (column, label): one 0/1 column per label


def _columns(header: list[str], rows: list[tuple[int, list[str]]], p: IngestParams, path: Path) -> _Columns:
    ip = _column(header, p.csv_path_column, PATH_COLUMNS, "path", path)
    lower = [h.lower() for h in header]
    isplit = lower.index(p.csv_split_column.lower()) if p.csv_split_column.lower() in lower else None
    if _label_named(lower, p) or p.task == "single":
        return _Columns(ip, _column(header, p.csv_label_column, LABEL_COLUMNS, "label", path), isplit)
    flags = tuple((i, header[i]) for i in _flag_columns(header, [r for _, r in rows], {ip, isplit}))
    if not flags:
        _column(header, p.csv_label_column, LABEL_COLUMNS, "label", path)  # raises: no label column
    return _Columns(ip, None, isplit, flags)


def _multi(cols: _Columns, rows: list[tuple[int, list[str]]], p: IngestParams) -> bool:
    """Whether the table holds several labels per image: set so, or (auto) 0/1 label columns or a separator
    in the label column."""
    if p.task != AUTO:
        return p.task == "multi"
    if cols.flags:
        return True
    return any(ch in r[cols.label] for _, r in rows if cols.label < len(r) for ch in p.label_separators)


def _row_label(row: list[str], cols: _Columns, multi: bool, p: IngestParams) -> str | None:
    """A row's label; for multi-label data its labels, sorted and joined by ``;`` ("" for none); None when a
    single-label row has none."""
    cell = lambda i: row[i].strip() if i is not None and i < len(row) else ""  # noqa: E731
    if cols.flags:
        return MULTI_JOIN.join(sorted(name for i, name in cols.flags if cell(i) == "1"))
    text = cell(cols.label)
    if not multi:
        return text or None
    return MULTI_JOIN.join(sorted({t.strip() for t in re.split(f"[{re.escape(p.label_separators)}]", text)
                                   if t.strip()}))


def scan_csv(path: Path, p: IngestParams) -> Listing:
    """List images named in a CSV/TSV mapping file (paths relative to the CSV's folder); with several labels
    per image (``task``), rows of the same file add up their labels."""
    header, reader, fh = open_csv(path)
    with fh:  # type: ignore[attr-defined]
        rows = [(line, row) for line, row in enumerate(reader, start=2) if any(c.strip() for c in row)]
    cols = _columns(header, rows, p, path)
    multi = _multi(cols, rows, p)
    first, conflicts, rejected = _csv_items(path, rows, cols, multi, p)
    for key, seen in conflicts.items():
        del first[key]
        labels = ", ".join(f"{lab!r} (line {ln})" for ln, lab in seen)
        rejected.append((Path(key).as_posix(), f"conflicting labels for the same file: {labels}"))
    items = [item for _, item in first.values()]
    return Listing(path.parent, "csv", items, rejected, source=path, task="multi" if multi else "single")


def _csv_items(path: Path, rows: list[tuple[int, list[str]]], cols: _Columns, multi: bool, p: IngestParams
               ) -> tuple[dict[str, tuple[int, Item]], dict[str, list[tuple[int, str]]], list[tuple[str, str]]]:
    """The rows as items (normalised path -> (line, item)), the conflicting ones, and the rows refused."""
    root, rejected = path.parent, []
    root_real = os.path.realpath(root)
    first: dict[str, tuple[int, Item]] = {}
    conflicts: dict[str, list[tuple[int, str]]] = {}
    for line, row in rows:
        rel = _slashes(row[cols.path].strip() if cols.path < len(row) else "", root)
        label = _row_label(row, cols, multi, p)
        where = rel or f"{path.name}:{line}"
        split_text = row[cols.split].strip() if cols.split is not None and cols.split < len(row) else ""
        split = _SPLIT_ALIASES.get(split_text.lower()) if split_text else None
        why = ("empty path" if not rel else "empty label" if label is None else
               f"unknown split {split_text!r} (train, val or test)" if split_text and split is None else
               _check_inside(root_real, root, rel))
        if why:
            rejected.append((where if not rel or label is None else rel, f"line {line}: {why}"))
            continue
        key = os.path.normpath(rel)
        if key in first:
            first_line, old = first[key]
            if multi:  # one row per (file, label): the labels add up
                merged = sorted({*old.label.split(MULTI_JOIN), *label.split(MULTI_JOIN)} - {""})
                first[key] = (first_line, replace(old, label=MULTI_JOIN.join(merged)))
            elif old.label == label:
                rejected.append((rel, f"line {line}: duplicate row (same file and label as line {first_line})"))
            else:
                conflicts.setdefault(key, [(first_line, old.label or "")]).append((line, label))
            continue
        first[key] = (line, Item(Path(key).as_posix(), label, split))
    return first, conflicts, rejected


# ---------------------------------------------------------------- Kaggle pixel CSV
def is_pixel_header(header: list[str]) -> bool:
    """True for a header like ``label,pixel0,...,pixel783`` (label optional)."""
    pixel_cols = sum(1 for h in header if _PIXEL_COL.match(h.strip()))
    return pixel_cols >= 16 and pixel_cols >= len(header) - 1


def _pixel_columns(header: list[str], path: Path) -> tuple[int | None, list[int], tuple[int, int]]:
    lower = [h.strip().lower() for h in header]
    label_idx = lower.index("label") if "label" in lower else None
    pix = [i for i, h in enumerate(header) if _PIXEL_COL.match(h.strip())]
    side = math.isqrt(len(pix))
    if not pix or side * side != len(pix):
        raise UserError(f"pixel CSV {path} has {len(pix)} pixel columns; expected a square image (e.g. 784 = 28x28)")
    return label_idx, pix, (side, side)


def scan_pixels(path: Path, p: IngestParams) -> Listing:
    """List the rows of a Kaggle-style pixel CSV; rows are checked when decoded."""
    header, reader, fh = open_csv(path)
    with fh:  # type: ignore[attr-defined]
        label_idx, _, shape = _pixel_columns(header, path)
        items = []
        for row_no, row in enumerate(reader):
            label = row[label_idx].strip() if label_idx is not None and label_idx < len(row) else None
            items.append(Item(f"{path.name}#{row_no}", label or None, None, row_no))
    return Listing(path.parent, "pixels", items, [], source=path, pixel_shape=shape)


def iter_pixel_images(path: Path) -> Iterator[tuple[np.ndarray | None, str]]:
    """Yield each data row of a pixel CSV as a uint8 image, or (None, reason) for a bad row."""
    header, reader, fh = open_csv(path)
    with fh:  # type: ignore[attr-defined]
        _, pix, shape = _pixel_columns(header, path)
        for row in reader:
            yield _row_image(row, len(header), pix, shape)


def _row_image(row: list[str], width: int, pix: Sequence[int], shape: tuple[int, int]
               ) -> tuple[np.ndarray | None, str]:
    """One data row of a pixel CSV as a uint8 image, or (None, reason)."""
    if len(row) != width:
        return None, f"row has {len(row)} values, header has {width}"
    try:
        values = np.array([float(row[i]) for i in pix])
    except ValueError:
        return None, "non-numeric pixel value"
    if values.min() < 0 or values.max() > 255 or not np.all(values == np.round(values)):
        return None, "pixel values must be integers in 0..255"
    return values.astype(np.uint8).reshape(shape), ""


class PixelRows:
    """Random access to the data rows of a pixel CSV: each row's byte offset read in one pass, a row parsed
    when asked (a review page shows a few of 42,000 rows)."""

    def __init__(self, path: Path) -> None:
        header, reader, fh = open_csv(path)
        with fh:  # type: ignore[attr-defined]
            self.delimiter = reader.dialect.delimiter  # type: ignore[attr-defined]
        self.path, self.width = path, len(header)
        _, self.pix, self.shape = _pixel_columns(header, path)
        self.offsets: list[int] = []
        with open(path, "rb") as raw:
            raw.readline()  # the header (a UTF-8 BOM in it is left to the header alone)
            while True:
                at = raw.tell()
                if not raw.readline():
                    break
                self.offsets.append(at)

    def get(self, k: int) -> tuple[np.ndarray | None, str]:
        """Data row ``k`` (0-based) as a uint8 image, or (None, reason)."""
        if not 0 <= k < len(self.offsets):
            return None, f"no row {k} in {self.path.name}"
        with open(self.path, "rb") as raw:
            raw.seek(self.offsets[k])
            line = raw.readline().decode("utf-8")
        row = next(csv.reader([line], delimiter=self.delimiter), [])
        return _row_image(row, self.width, self.pix, self.shape)


@functools.lru_cache(maxsize=4)
def _pixel_index(path: str, stamp: tuple[int, int]) -> PixelRows:
    return PixelRows(Path(path))


def pixel_row_of(ref: str | os.PathLike) -> tuple[np.ndarray | None, str] | None:
    """The image of a pixel CSV's row named as manifest.csv names it, ``<file>#<row>``: (uint8 image, "") or
    (None, why); None when ``ref`` names no such row (a plain file)."""
    file, sep, row = os.fspath(ref).rpartition("#")
    if not sep or not row.isdigit() or not file.lower().endswith(CSV_SUFFIXES):
        return None
    try:
        st = os.stat(file)
        return _pixel_index(file, (st.st_size, st.st_mtime_ns)).get(int(row))
    except (OSError, UserError) as exc:
        return None, str(exc)


# ---------------------------------------------------------------- entry point
def detect_layout(data: Path, p: IngestParams | None = None) -> tuple[str, str]:
    """Guess the layout of ``data`` (a folder or a CSV file); (layout, why), for the log."""
    p = p or IngestParams()
    if data.is_file():
        if data.suffix.lower() not in CSV_SUFFIXES:
            raise UserError(f"DATA must be a folder or a .csv/.tsv file. Received: {data}")
        header, _, fh = open_csv(data)
        fh.close()  # type: ignore[attr-defined]
        return ("pixels", "a label,pixel0,pixel1,... table") if is_pixel_header(header) else ("csv", "a table file")
    tables = [f for f in _children(data)[1] if f.suffix.lower() in CSV_SUFFIXES]
    mappings = [f for f in tables if _is_mapping(f, p)]
    others = [f.name for f in tables if f not in mappings]
    note = f"; {', '.join(others)}: no path and label columns, not a mapping file" if others else ""
    if len(mappings) > 1:
        raise UserError(f"{data} holds several mapping files ({', '.join(f.name for f in mappings)}): give one as "
                        f"DATA={mappings[0]}")
    if mappings:
        return "csv", f"{mappings[0].name} maps files to labels{note}"
    for base, _ in _split_groups(data):
        dirs, files = _children(base)
        loose = [f for f in files if f.suffix.lower() not in NOT_IMAGES]
        if len(dirs) == 1 and loose:  # one class is no classifier: the files beside it carry their labels
            return "filenames", (f"{len(loose)} file(s) beside one sub-folder ({dirs[0].name}): labels from the file "
                                 f"names{note}")
        if dirs:
            return "folders", f"sub-folders ({', '.join(d.name for d in dirs[:3])}{', ...' if len(dirs) > 3 else ''}) " \
                              f"are the labels{note}"
    return "filenames", f"no label folders and no mapping file: labels from the file names{note}"


FLAG_PEEK = 50  # rows a table's 0/1 label columns are recognised by


def _is_mapping(path: Path, p: IngestParams) -> bool:
    """True for a CSV whose header names a path column and the label column, or (unless [ingest] task is
    "single") a path column and 0/1 columns, one per label."""
    try:
        header, rows, fh = open_csv(path)
        peek = [r for _, r in zip(range(FLAG_PEEK), rows)]
        fh.close()  # type: ignore[attr-defined]
    except (UserError, OSError, UnicodeDecodeError, csv.Error):
        return False
    lower = [h.lower() for h in header]
    paths = {p.csv_path_column.lower()} if p.csv_path_column else set(PATH_COLUMNS)
    if not set(lower) & paths:
        return False
    if _label_named(lower, p):
        return True
    skip = {i for i, h in enumerate(lower) if h in paths or h == p.csv_split_column.lower()}
    return p.task != "single" and bool(peek) and bool(_flag_columns(header, peek, skip))


def scan(data: str | os.PathLike, layout: str = "auto", p: IngestParams | None = None,
         stat: bool = True) -> Listing:
    """List a dataset in the given layout (``auto`` detects it).

    ``stat=False`` skips reading each file's size and mtime in the folders layout
    (``Listing.stats`` is then None), for callers that stat later, in the background.
    """
    p = p or IngestParams()
    data = Path(data)
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not data.exists():
        raise UserError(f"dataset not found: {data}")
    if layout == "auto":
        layout, why = detect_layout(data, p)
        log.info("layout: %s (%s); LAYOUT=folders|filenames|csv|pixels forces another", layout, why)
    if layout in ("csv", "pixels"):
        if data.is_dir():
            csvs = [f for f in _children(data)[1] if f.suffix.lower() in CSV_SUFFIXES]
            if layout == "csv":
                # the mapping files; else any .csv/.tsv (its own error names the columns it lacks), never a .txt note
                mappings = [f for f in csvs if _is_mapping(f, p)] or [f for f in csvs if f.suffix.lower() != ".txt"]
                if not mappings:
                    looked = f" (looked at: {', '.join(f.name for f in csvs[:5])})" if csvs else ""
                    raise UserError(f"no mapping file in {data}: the csv layout needs a CSV with a path column and a "
                                    f"label column{looked}; give the file itself as DATA, or LAYOUT=folders")
                csvs = mappings
            if len(csvs) != 1:
                raise UserError(f"the {layout} layout needs one CSV file; {data} holds {len(csvs)}: give the file "
                                f"itself as DATA")
            data = csvs[0]
        return _say_task(scan_csv(data, p) if layout == "csv" else scan_pixels(data, p), p)
    if not data.is_dir():
        raise UserError(f"the {layout} layout needs a directory. Received: {data}")
    listing = scan_folders(data, stat) if layout == "folders" else scan_filenames(data, p)
    if layout == "folders" and p.task == "multi":
        listing = merge_copies(listing)
    if not listing.items and not listing.rejected:
        raise UserError(f"dataset is empty: no files under {data}")
    return _say_task(listing, p)


def nfc(label: str) -> str:
    """A label in Unicode's composed form (NFC): "triángulo" typed on one system and written decomposed by
    another (macOS file names, some zip tools) is one label, not two that look the same."""
    return label if label.isascii() else unicodedata.normalize("NFC", label)


def _composed(listing: Listing) -> Listing:
    """The listing with every label in NFC (a pass over the distinct labels; items rebuilt only when one changes)."""
    changed = {lab for lab in {it.label for it in listing.items if it.label} if nfc(lab) != lab}
    if not changed:
        return listing
    log.info("labels: %d written in decomposed Unicode (as macOS names files) read as their composed form: %s",
             len(changed), ", ".join(sorted(nfc(lab) for lab in changed)[:5]))
    items = [replace(it, label=nfc(it.label)) if it.label in changed else it for it in listing.items]
    return replace(listing, items=items)


def _say_task(listing: Listing, p: IngestParams) -> Listing:
    listing = _composed(listing)
    if listing.task == "multi":
        log.info("task: several labels per image (%s); [ingest] task = \"single\" reads one label per image",
                 "set in params" if p.task == "multi" else "the table joins labels or has 0/1 label columns")
    return listing
