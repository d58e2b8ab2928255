"""The data audit: duplicates, label conflicts, train/test leakage, and the dataset summary.

Pure functions over what prepare decoded; prepare writes the results to
``dataset.json`` and prints :func:`format_summary`.
"""
from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from pipeline.data.preprocess import EXTENSIONS, THUMB, Meta

EXAMPLES = 20  # how many examples of each finding dataset.json lists


class MetaTable(Sequence):
    """Metas of many files in flat arrays, read back as :class:`Meta` one at a time.

    A million ``Meta`` objects (with their hash strings) would cost ~250 MB; this
    costs 30 bytes a file, plus the 8-byte perceptual hash and 256-byte thumbnail of
    the near-duplicate and outlier checks (``phash``, ``thumb``: read as arrays). ``put(i, meta)`` fills slot i; ``i in table`` says whether
    slot i was filled; ``table.take(indices)`` is a sequence of those slots' metas.
    """

    def __init__(self, n: int) -> None:
        self.width = np.zeros(n, np.int32)
        self.height = np.zeros(n, np.int32)
        self.mode = np.zeros(n, np.int16)
        self.format = np.zeros(n, np.int16)
        self.sha1 = np.zeros((n, 20), np.uint8)  # not "S20": numpy strips trailing zero bytes
        self.phash = np.zeros(n, np.uint64)
        self.thumb = np.zeros((n, THUMB * THUMB), np.uint8)
        self.alpha = np.zeros(n, bool)
        self.filled = np.zeros(n, bool)
        self._names: list[str] = []
        self._codes: dict[str, int] = {}
        self.index = np.arange(n)

    def _code(self, name: str) -> int:
        if name not in self._codes:
            self._codes[name] = len(self._names)
            self._names.append(name)
        return self._codes[name]

    def put(self, i: int, m: Meta) -> None:
        self.width[i], self.height[i] = m.width, m.height
        self.mode[i], self.format[i] = self._code(m.mode), self._code(m.format)
        self.sha1[i] = np.frombuffer(bytes.fromhex(m.sha1), np.uint8)
        self.phash[i] = m.phash
        if m.thumb:
            self.thumb[i] = np.frombuffer(m.thumb, np.uint8)
        self.alpha[i] = m.alpha
        self.filled[i] = True

    def __contains__(self, i: object) -> bool:
        return isinstance(i, (int, np.integer)) and 0 <= i < len(self.filled) and bool(self.filled[i])

    def take(self, indices: Sequence[int]) -> "MetaTable":
        view = copy.copy(self)
        view.index = np.asarray(indices, dtype=np.int64)
        return view

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> Meta:  # type: ignore[override]
        i = self.index[k]
        return Meta(int(self.width[i]), int(self.height[i]), self._names[self.mode[i]],
                    self._names[self.format[i]], self.sha1[i].tobytes().hex(), alpha=bool(self.alpha[i]))

    def __iter__(self) -> Iterator[Meta]:
        # A block at a time with .tolist(): indexing numpy scalars one by one would make
        # each pass of the audit over 70k files cost seconds.
        names = self._names
        for start in range(0, len(self.index), 4096):
            i = self.index[start:start + 4096]
            sha = self.sha1[i].tobytes()
            for k, (w, h, m, f, a) in enumerate(zip(self.width[i].tolist(), self.height[i].tolist(),
                                                    self.mode[i].tolist(), self.format[i].tolist(),
                                                    self.alpha[i].tolist())):
                yield Meta(w, h, names[m], names[f], sha[20 * k:20 * k + 20].hex(), alpha=a)


def duplicate_groups(paths: Sequence[str], labels: Sequence[str], metas: Sequence[Meta]) -> tuple[list, list]:
    """(duplicates, conflicts): groups of identical files under one label, and under several labels."""
    first: dict[str, int] = {}
    groups: dict[str, list[int]] = {}  # only hashes seen more than once: no list per file
    for i, m in enumerate(metas):
        j = first.setdefault(m.sha1, i)
        if j != i:
            groups.setdefault(m.sha1, [j]).append(i)
    duplicates, conflicts = [], []
    for sha, idx in sorted(groups.items(), key=lambda kv: kv[1][0]):  # in order of first appearance
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
    # One pass over the metas (a MetaTable rebuilds each one as it goes).
    sizes, modes, formats = Counter(), Counter(), Counter()
    wmin = hmin = 2**31
    wmax = hmax = alpha = 0
    for m in metas:
        sizes[(m.width, m.height)] += 1
        modes[m.mode] += 1
        formats[m.format] += 1
        alpha += m.alpha
        wmin, wmax, hmin, hmax = min(wmin, m.width), max(wmax, m.width), min(hmin, m.height), max(hmax, m.height)
    mismatched = extension_mismatches(paths, metas) if set(formats) - {"pixels"} else []
    return {
        "images": sum(totals.values()),  # in the prepared arrays (leakage dropped from val/test is not)
        "classes": len(labels),
        "counts": {name: {**{s: counts[s][name] for s in counts}, "total": totals[name]} for name in labels},
        "imbalance_ratio": round(ratio, 3),
        "sizes": {
            "min_width": wmin if len(metas) else 0,
            "max_width": wmax,
            "min_height": hmin if len(metas) else 0,
            "max_height": hmax,
            "most_common": [[f"{w}x{h}", n] for (w, h), n in sizes.most_common(10)],
        },
        "modes": dict(modes.most_common()),
        "formats": dict(formats.most_common()),
        "transparent": alpha,  # images with transparent parts (composited onto the chosen background)
        "rejected": {"total": len(rejected),
                     "by_reason": dict(Counter(reason_category(r) for _, r in rejected).most_common())},
        "duplicates": {"groups": len(duplicates), "extra_copies": sum(len(d["paths"]) - 1 for d in duplicates),
                       "examples": duplicates[:EXAMPLES]},
        "conflicts": {"groups": len(conflicts), "examples": conflicts[:EXAMPLES]},
        "leakage": {"images": len(leakage), "action": leakage_action, "examples": leakage[:EXAMPLES]},
        "extension_mismatch": {"files": len(mismatched), "examples": mismatched[:EXAMPLES]},
        "warnings": warnings,
    }


def similarity_findings(near: dict[str, Any], odd: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """The near-duplicate and outlier findings for dataset.json; their warnings go into ``warnings``."""
    if near["across_classes"]["pairs"]:
        warnings.append(f"{near['across_classes']['pairs']} near-duplicate pair(s) carry different labels")
    if near["across_splits"]["pairs"]:
        warnings.append(f"{near['across_splits']['pairs']} near-duplicate pair(s) span train and val/test "
                        "(kept; they may flatter the test accuracy)")
    if odd["images"]:
        warnings.append(f"{odd['images']} image(s) look unlike the rest of their class (outliers in dataset.json)")
    return {"near_duplicates": near, "outliers": odd}


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
    background = summary.get("choices", {}).get("background")
    if summary.get("transparent") and background:
        lines.append(f"transparent: {summary['transparent']} image(s), composited onto gray level "
                     f"{background['value']} ({background['why']})")
    for reason, n in rej["by_reason"].items():
        lines.append(f"  rejected {n:>6}  {reason}")
    lines.append(f"duplicates: {summary['duplicates']['extra_copies']} extra copies in "
                 f"{summary['duplicates']['groups']} groups; label conflicts: {summary['conflicts']['groups']}; "
                 f"leakage: {summary['leakage']['images']} ({summary['leakage']['action']})")
    near = summary.get("near_duplicates")
    if near:
        lines.append(f"near-duplicates: {near['within_class']['pairs']} pairs within a class, "
                     f"{near['across_classes']['pairs']} across classes, {near['across_splits']['pairs']} across splits; "
                     f"outliers: {summary.get('outliers', {}).get('images', 0)}")
    if summary["warnings"]:  # each one was logged as it was found: counted here, not repeated
        lines.append(f"warnings: {len(summary['warnings'])} (above, and in dataset.json and the report)")
    return "\n".join(lines)
