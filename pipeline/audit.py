"""The data audit: duplicates, label conflicts, train/test leakage, and the dataset summary.

Pure functions over what prepare decoded; prepare writes the results to
``dataset.json`` and prints :func:`format_summary`.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .preprocess import EXTENSIONS

EXAMPLES = 20  # how many examples of each finding dataset.json lists


@dataclass(frozen=True)
class Meta:
    """What decoding learned about one usable file."""

    width: int
    height: int
    mode: str
    format: str
    sha1: str


def duplicate_groups(paths: Sequence[str], labels: Sequence[str], metas: Sequence[Meta]) -> tuple[list, list]:
    """(duplicates, conflicts): groups of identical files under one label, and under several labels."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(metas):
        groups[m.sha1].append(i)
    duplicates, conflicts = [], []
    for sha, idx in groups.items():
        if len(idx) < 2:
            continue
        entry = {"sha1": sha, "paths": [paths[i] for i in idx], "labels": [labels[i] for i in idx]}
        (conflicts if len(set(entry["labels"])) > 1 else duplicates).append(entry)
    return duplicates, conflicts


def find_leakage(splits: np.ndarray, metas: Sequence[Meta]) -> list[tuple[int, int]]:
    """(i, j) pairs: item i in val/test has the same content as train item j."""
    in_train: dict[str, int] = {}
    for i, m in enumerate(metas):
        if splits[i] == "train":
            in_train.setdefault(m.sha1, i)
    return [(i, in_train[m.sha1]) for i, m in enumerate(metas)
            if splits[i] in ("val", "test") and m.sha1 in in_train]


def reason_category(reason: str) -> str:
    """A reason without its per-file details, for counting (``line 4: file not found`` -> ``file not found``)."""
    reason = re.sub(r"^line \d+: ", "", reason)
    return reason.split(":", 1)[0].split(" (", 1)[0].strip()


def extension_mismatches(paths: Sequence[str], metas: Sequence[Meta]) -> list[str]:
    """Files whose content format differs from what their extension says (read by content anyway)."""
    same = {"MPO": "JPEG", "DIB": "BMP"}
    out = []
    for path, m in zip(paths, metas):
        if m.format == "pixels":
            continue
        dot = path.rfind(".")
        want = EXTENSIONS.get(path[dot:].lower()) if dot > path.rfind("/") else None
        if want is not None and same.get(m.format, m.format) != want:
            out.append(path)
    return out


def summarize(labels: dict[str, int], counts: dict[str, dict[str, int]], paths: Sequence[str],
              metas: Sequence[Meta], rejected: Sequence[tuple[str, str]], duplicates: list, conflicts: list,
              leakage: list[dict[str, str]], leakage_action: str, imbalance_ratio: float) -> dict[str, Any]:
    """The dataset summary written to ``dataset.json``, with its warnings."""
    totals = {name: sum(counts[s][name] for s in counts) for name in labels}
    nonzero = [n for n in totals.values() if n]
    ratio = max(nonzero) / min(nonzero) if nonzero else 0.0
    warnings = []
    if ratio >= imbalance_ratio:
        big, small = max(totals, key=totals.get), min(totals, key=totals.get)
        warnings.append(f"class imbalance: {big!r} has {totals[big]} images, {small!r} only {totals[small]} "
                        f"({ratio:.1f}x)")
    few = [name for name, n in totals.items() if n < 10]
    if few:
        warnings.append(f"few images (< 10) in class(es): {few[:10]}")
    if conflicts:
        warnings.append(f"{len(conflicts)} image(s) appear under more than one label")
    if leakage:
        warnings.append(f"{len(leakage)} val/test image(s) also appear in train ({leakage_action})")
    sizes = Counter(f"{m.width}x{m.height}" for m in metas)
    mismatched = extension_mismatches(paths, metas)
    return {
        "images": len(metas),
        "classes": len(labels),
        "counts": {name: {**{s: counts[s][name] for s in counts}, "total": totals[name]} for name in labels},
        "imbalance_ratio": round(ratio, 3),
        "sizes": {
            "min_width": min((m.width for m in metas), default=0),
            "max_width": max((m.width for m in metas), default=0),
            "min_height": min((m.height for m in metas), default=0),
            "max_height": max((m.height for m in metas), default=0),
            "most_common": [[size, n] for size, n in sizes.most_common(10)],
        },
        "modes": dict(Counter(m.mode for m in metas).most_common()),
        "formats": dict(Counter(m.format for m in metas).most_common()),
        "rejected": {"total": len(rejected),
                     "by_reason": dict(Counter(reason_category(r) for _, r in rejected).most_common())},
        "duplicates": {"groups": len(duplicates), "extra_copies": sum(len(d["paths"]) - 1 for d in duplicates),
                       "examples": duplicates[:EXAMPLES]},
        "conflicts": {"groups": len(conflicts), "examples": conflicts[:EXAMPLES]},
        "leakage": {"images": len(leakage), "action": leakage_action, "examples": leakage[:EXAMPLES]},
        "extension_mismatch": {"files": len(mismatched), "examples": mismatched[:EXAMPLES]},
        "warnings": warnings,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The console table: counts per class and split, then what the audit found."""
    counts = summary["counts"]
    splits = [s for s in next(iter(counts.values())) if s != "total"] if counts else []
    width = max([5] + [len(k) for k in counts])
    head = f"{'label':<{width}} " + " ".join(f"{s:>7}" for s in splits + ["total"])
    lines = [head, "-" * len(head)]
    for name, c in counts.items():
        lines.append(f"{name:<{width}} " + " ".join(f"{c[s]:>7}" for s in splits + ["total"]))
    rej = summary["rejected"]
    lines.append(f"usable images: {summary['images']} in {summary['classes']} classes; rejected: {rej['total']}")
    for reason, n in rej["by_reason"].items():
        lines.append(f"  rejected {n:>6}  {reason}")
    lines.append(f"duplicates: {summary['duplicates']['extra_copies']} extra copies in "
                 f"{summary['duplicates']['groups']} groups; label conflicts: {summary['conflicts']['groups']}; "
                 f"leakage: {summary['leakage']['images']} ({summary['leakage']['action']})")
    lines += [f"WARNING: {w}" for w in summary["warnings"]]
    return "\n".join(lines)
