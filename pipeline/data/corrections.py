"""Corrections: relabel or exclude images without touching the originals.

``corrections.csv`` (in the run folder, or ``prepare --corrections FILE``) has the
columns ``path,label``. ``path`` is the image's path as ``manifest.csv`` and
``suspects.csv`` give it (relative to the dataset, or the manifest's full path);
``label`` is the label it should have, ``exclude`` to leave it out, or
``new:<name>`` for a class the dataset does not have yet (spelt out, so a typo is
an error, not a new class). Other columns are ignored, so ``suspects.csv`` itself
can be edited into one. ``prepare`` applies the file to its listing: nothing under
``DATA`` is ever written. A bad row is an error naming its line.
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.data.ingest import Item, Listing, nfc
from pipeline.shared.errors import UserError

EXCLUDE = "exclude"
NEW = "new:"
EXAMPLES = 20  # rows whose image is gone, listed in dataset.json


@dataclass
class Corrections:
    """The rows of a corrections file: path (relative to the dataset) -> (new label or EXCLUDE, line)."""

    source: Path
    rows: dict[str, tuple[str, int]] = field(default_factory=dict)
    sha256: str = ""
    gone: list[str] = field(default_factory=list)  # rows whose image is no longer in the dataset (reported)
    decisions: dict[str, str] = field(default_factory=dict)  # path -> relabel/exclude/keep, when the file says


def _relative(path: str, root: Path) -> str:
    """A row's path relative to the dataset root (as the listing has it): the manifest's path
    (``<DATA>/<path>``, relative or absolute) or the path under DATA itself."""
    p = path.strip()
    if not p or "#" in p:  # a pixel CSV row: <file>#<row>, as given
        return p
    cand = Path(os.path.normpath(p))
    # as written, then absolute (a path relative to the working directory, as the review writes it, against
    # a root given as an absolute path, say)
    for base in (Path(os.path.normpath(root)), root.resolve()):
        for form in (cand, cand.resolve()):
            try:
                return form.relative_to(base).as_posix()
            except ValueError:
                continue
    if cand.is_absolute():  # outside DATA: an image labeled in review (its path as labeled.csv's is listed)
        return Path(os.path.relpath(cand, root)).as_posix()
    return cand.as_posix()


def read(path: Path, listing: Listing) -> Corrections:
    """Read and check a corrections file against the listing; every bad line is named."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read corrections file {path}: {exc.strerror or exc}") from None
    root = listing.source.parent if listing.layout == "pixels" and listing.source else listing.root
    known = {it.path for it in listing.items}
    labels = {it.label for it in listing.items if it.label is not None}
    reader = csv.reader(data.decode("utf-8-sig").splitlines())
    header = [h.strip().lower() for h in next(reader, [])]
    if "path" not in header or "label" not in header:
        raise UserError(f"{path}: the first line must name the columns path,label. Received: {header}")
    ip, il = header.index("path"), header.index("label")
    idec = header.index("decision") if "decision" in header else None
    out, errors = Corrections(path, sha256=hashlib.sha256(data).hexdigest()), []
    for line, row in enumerate(reader, start=2):
        if not any(c.strip() for c in row):
            continue
        cell = lambda i: row[i].strip() if i < len(row) else ""  # noqa: E731
        rel, label = _relative(cell(ip), root), nfc(cell(il))
        if rel and rel not in known:  # decided on an earlier preparation: reported (as written), not applied
            out.gone.append(cell(ip))
            continue
        why = _check_row(rel, label, known, labels, out.rows)
        if why:
            errors.append(f"line {line}: {why}")
        else:
            out.rows[rel] = (label, line)
            if idec is not None and cell(idec):
                out.decisions[rel] = cell(idec)
    if errors:
        shown = "; ".join(errors[:10]) + (f"; and {len(errors) - 10} more" if len(errors) > 10 else "")
        raise UserError(f"{path}: {len(errors)} bad row(s): {shown}")
    return out


def _check_row(rel: str, label: str, known: set[str], labels: set[str], seen: dict[str, tuple[str, int]]) -> str:
    """Why a row cannot be applied ("" when it can)."""
    if not rel:
        return "empty path"
    if not label:
        return f"empty label for {rel!r} (a label, {EXCLUDE!r}, or {NEW}<name> for a new class)"
    if label != EXCLUDE and not label.startswith(NEW) and label not in labels:
        return (f"label {label!r} is not a label of this dataset (write {NEW}{label} to add a class, or "
                f"{EXCLUDE!r}); labels: {sorted(labels)[:20]}")
    if label.startswith(NEW) and not label[len(NEW):].strip():
        return f"{NEW} needs a class name"
    if rel in seen and seen[rel][0] != label:
        return f"{rel!r} is also on line {seen[rel][1]} with another label"
    return ""


def apply(listing: Listing, corr: Corrections) -> tuple[Listing, dict[str, Any]]:
    """The listing with the corrections applied (excluded items go to its rejected list), and a summary."""
    items, rejected, stats = [], list(listing.rejected), []
    relabeled, excluded, new_labels = 0, 0, set()
    for k, item in enumerate(listing.items):
        fix = corr.rows.get(item.path)
        if fix is not None and fix[0] == EXCLUDE:
            rejected.append((item.path, f"excluded by {corr.source.name} line {fix[1]}"))
            excluded += 1
            continue
        if fix is not None:
            label = fix[0][len(NEW):].strip() if fix[0].startswith(NEW) else fix[0]
            if label != item.label:
                relabeled += 1
                if fix[0].startswith(NEW):
                    new_labels.add(label)
                item = replace(item, label=label, note=f"relabeled from {item.label} ({corr.source.name} line {fix[1]})")
        items.append(item)
        if listing.stats is not None:
            stats.append(listing.stats[k])
    kept = sum(d == "keep" for d in corr.decisions.values())
    summary = {"file": str(corr.source), "sha256": corr.sha256, "rows": len(corr.rows), "relabeled": relabeled,
               "excluded": excluded, "kept": kept, "new_labels": sorted(new_labels), "gone": corr.gone[:EXAMPLES],
               "gone_count": len(corr.gone)}
    return replace(listing, items=items, rejected=rejected, stats=stats if listing.stats is not None else None), summary


def add_labeled(listing: Listing, path: Path) -> tuple[Listing, dict[str, Any] | None]:
    """The listing with the images a person labeled (``labeled.csv``: ``path,label``, absolute paths, the
    files where they are) added to the training split; and a summary (None without the file). Rows whose
    file is gone, or that are already in the dataset, are reported and left out."""
    if not path.is_file():
        return listing, None
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [(r.get("path", "").strip(), nfc(r.get("label", "").strip())) for r in csv.DictReader(fh)]
    root = listing.source.parent if listing.layout == "pixels" and listing.source else listing.root
    known = {os.path.normpath(os.path.join(root, it.path)) for it in listing.items}
    labels = {it.label for it in listing.items if it.label is not None}
    added, gone, already = [], [], 0
    for file, label in rows:
        if not file or not label:
            continue
        full = os.path.normpath(file)
        if not os.path.isfile(full):
            gone.append(file)
        elif full in known:
            already += 1
        else:
            name = label[len(NEW):].strip() if label.startswith(NEW) else label
            added.append(Item(os.path.relpath(full, root), name, "train", note=f"labeled in review ({path.name})"))
            labels.add(name)
    stats = None if listing.stats is None else listing.stats + [_stat(root / it.path) for it in added]
    summary = {"file": str(path), "added": len(added), "already_in_data": already, "gone": gone[:EXAMPLES],
               "gone_count": len(gone)}
    return replace(listing, items=listing.items + added, stats=stats), summary


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1
