"""The data audit: duplicates, label conflicts, train/test leakage, and the dataset summary.

Pure functions over what prepare decoded; prepare writes the results to
``dataset.json`` and prints :func:`format_summary`.
"""
from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from pipeline.data import quality
from pipeline.data.ingest import label_key
from pipeline.data.preprocess import EXTENSIONS, Meta
from pipeline.data.similar import THUMB

EXAMPLES = 20  # how many examples of each finding dataset.json lists


class MetaTable(Sequence):
    """Metas of many files in flat arrays, read back as :class:`Meta` one at a time.

    A million ``Meta`` objects (with their hash strings) would cost ~250 MB; this
    costs 30 bytes a file, plus the 8-byte perceptual hash and 256-byte thumbnail of
    the copy and outlier checks and the 28 bytes of quality statistics (``phash``,
    ``thumb``, ``stats``: read as arrays). ``put(i, meta)`` fills slot i and
    ``put_chunk(slots, chunk)`` the slots of a decoded chunk's usable files at once; ``i in
    table`` says whether slot i was filled; ``table.take(indices)`` is a sequence of those
    slots' metas.
    """

    def __init__(self, n: int) -> None:
        self.width = np.zeros(n, np.int32)
        self.height = np.zeros(n, np.int32)
        self.mode = np.zeros(n, np.int16)
        self.format = np.zeros(n, np.int16)
        self.sha1 = np.zeros((n, 20), np.uint8)  # not "S20": numpy strips trailing zero bytes
        self.phash = np.zeros(n, np.uint64)
        self.thumb = np.zeros((n, THUMB * THUMB), np.uint8)
        self.stats = np.full((n, len(quality.STATS)), quality.NONE, np.float32)
        self.negative = np.zeros(n, bool)
        self.alpha = np.zeros(n, bool)
        self.filled = np.zeros(n, bool)
        self.file_stat = np.full((n, 2), -1, np.int64)  # (size, mtime in ns) as the decoder read each file
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
        if m.stats:
            self.stats[i] = m.stats
        self.filled[i] = True

    def put_chunk(self, slots: np.ndarray, chunk: Any) -> None:
        """Fill ``slots`` with the usable files of a :class:`pipeline.data.decoding.Chunk`, in order."""
        self.width[slots], self.height[slots] = chunk.width, chunk.height
        self.mode[slots] = [self._code(m) for m in chunk.mode]
        self.format[slots] = [self._code(f) for f in chunk.format]
        self.sha1[slots], self.phash[slots], self.thumb[slots] = chunk.sha1, chunk.phash, chunk.thumb
        self.stats[slots], self.alpha[slots], self.negative[slots] = chunk.stats, chunk.alpha, chunk.negative
        self.file_stat[slots] = chunk.file_stat
        self.filled[slots] = True

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


def _keys(metas: Sequence[Meta]) -> np.ndarray:
    """The content hash of each meta, as one comparable array (a MetaTable's without building a Meta each)."""
    if isinstance(metas, MetaTable):
        return np.ascontiguousarray(metas.sha1[metas.index]).view("V20").ravel()
    return np.array([m.sha1 for m in metas], dtype=object).astype(str)


def _hex(key: Any) -> str:
    return key if isinstance(key, str) else bytes(key).hex()


def duplicate_groups(paths: Sequence[str], labels: Sequence[str], metas: Sequence[Meta]) -> tuple[list, list]:
    """(duplicates, conflicts): groups of identical files under one label, and under several labels, in
    order of first appearance."""
    keys = _keys(metas)
    if not len(keys):
        return [], []
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    repeated = np.flatnonzero(counts[inverse] > 1)  # only files whose content appears more than once
    duplicates, conflicts = [], []
    order = repeated[np.lexsort((repeated, first[inverse[repeated]]))]
    for group in np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1) if len(order) else []:
        idx = group.tolist()
        entry = {"sha1": _hex(keys[idx[0]]), "paths": [paths[i] for i in idx], "labels": [labels[i] for i in idx]}
        (conflicts if len(set(entry["labels"])) > 1 else duplicates).append(entry)
    return duplicates, conflicts


def find_leakage(splits: np.ndarray, metas: Sequence[Meta]) -> list[tuple[int, int]]:
    """(i, j) pairs: item i in val/test has the same content as train item j (its first such)."""
    keys = _keys(metas)
    splits = np.asarray(splits, dtype=object)
    train = np.flatnonzero(splits == "train")
    held = np.flatnonzero((splits == "val") | (splits == "test"))
    if not len(train) or not len(held):
        return []
    known, first = np.unique(keys[train], return_index=True)
    pos = np.minimum(np.searchsorted(known, keys[held]), len(known) - 1)
    hit = known[pos] == keys[held]
    return list(zip(held[hit].tolist(), train[first[pos[hit]]].tolist()))


def reason_category(reason: str) -> str:
    """A reason without its per-file details, for counting (``line 4: file not found`` -> ``file not found``)."""
    reason = re.sub(r"^line \d+: ", "", reason)
    reason = re.sub(r" line \d+$", "", reason)  # "excluded by corrections.csv line 6": one count for them all
    return reason.split(":", 1)[0].split(" (", 1)[0].strip()


def reason_counts(rejected: Sequence[tuple[str, str]]) -> list[tuple[str, int]]:
    """(reason category, count) of rejected (path, reason) entries, the commonest first."""
    return Counter(reason_category(r) for _, r in rejected).most_common()


def extension_mismatches(paths: Sequence[str], metas: Sequence[Meta]) -> list[str]:
    """Files whose content format differs from what their extension says (read by content anyway)."""
    same = {"MPO": "JPEG", "DIB": "BMP"}
    if isinstance(metas, MetaTable):
        names = [metas._names[c] for c in metas.format[metas.index].tolist()]
    else:
        names = [m.format for m in metas]
    fits = {f: tuple(ext for ext, want in EXTENSIONS.items() if want == same.get(f, f)) for f in set(names)}
    out = []
    for path, fmt in zip(paths, names):
        if fmt == "pixels" or path.lower().endswith(fits[fmt]):  # the common case, at once
            continue
        dot = path.rfind(".")
        want = EXTENSIONS.get(path[dot:].lower()) if dot > path.rfind("/") else None
        if want is not None and same.get(fmt, fmt) != want:
            out.append(path)
    return out


def _census(metas: Sequence[Meta]) -> tuple[Counter, Counter, Counter, int, tuple[int, int, int, int]]:
    """(sizes, modes, formats, images with transparent parts, (min width, max width, min height, max
    height)) of the metas; a MetaTable's from its arrays."""
    if isinstance(metas, MetaTable):
        i = metas.index
        w, h = metas.width[i].astype(np.int64), metas.height[i].astype(np.int64)
        size_keys, first, size_n = np.unique(w << 32 | h, return_index=True, return_counts=True)
        order = np.argsort(first, kind="stable")  # in order of first appearance, as counting them one by one
        sizes = Counter({(int(k >> 32), int(k & 0xFFFFFFFF)): int(n) for k, n in zip(size_keys[order], size_n[order])})
        modes = Counter({metas._names[c]: int(n) for c, n in enumerate(np.bincount(metas.mode[i])) if n})
        formats = Counter({metas._names[c]: int(n) for c, n in enumerate(np.bincount(metas.format[i])) if n})
        bounds = (int(w.min()), int(w.max()), int(h.min()), int(h.max())) if len(i) else (0, 0, 0, 0)
        return sizes, modes, formats, int(metas.alpha[i].sum()), bounds
    sizes, modes, formats = Counter(), Counter(), Counter()
    for m in metas:
        sizes[(m.width, m.height)] += 1
        modes[m.mode] += 1
        formats[m.format] += 1
    ws, hs = [m.width for m in metas], [m.height for m in metas]
    bounds = (min(ws), max(ws), min(hs), max(hs)) if ws else (0, 0, 0, 0)
    return sizes, modes, formats, sum(m.alpha for m in metas), bounds


def look_alike_labels(labels: Iterable[str]) -> list[list[str]]:
    """Groups of labels that are one word but for letter case or spacing (``Circle``, ``circle``,
    ``cir cle``): different classes to the model, most likely one to the person who wrote them."""
    groups: dict[str, list[str]] = {}
    for name in labels:
        groups.setdefault(label_key(name), []).append(name)
    return [sorted(group) for group in groups.values() if len(group) > 1]


HELD_OUT = {"test": "the test figures say nothing about them",
            "val": "calibration and the confidence cut never see them"}


def _unheld(counts: dict[str, dict[str, int]], totals: dict[str, int]) -> list[str]:
    """Warnings about the classes with images but none in a held-out split that has images of other classes."""
    out = []
    for split, meaning in HELD_OUT.items():
        part = counts.get(split, {})
        missing = [name for name, n in part.items() if not n and totals[name]]
        if missing and any(part.values()):
            out.append(f"no {split} images of class(es) {missing[:10]}{' ...' if len(missing) > 10 else ''}: "
                       f"{meaning}")
    return out


def summarize(labels: dict[str, int], counts: dict[str, dict[str, int]], paths: Sequence[str],
              metas: Sequence[Meta], rejected: Sequence[tuple[str, str]], duplicates: list, conflicts: list,
              leakage: list[dict[str, str]], leakage_action: str, imbalance_ratio: float, few_below: int = 10
              ) -> dict[str, Any]:
    """The dataset summary written to ``dataset.json``, with its warnings (``counts``: images per class, or
    a multi-label dataset's positives per label; ``few_below``: 0 leaves the few-images and held-out checks to
    :func:`multi_label_findings`)."""
    totals = {name: sum(counts[s][name] for s in counts) for name in labels}
    nonzero = [n for n in totals.values() if n]
    ratio = max(nonzero) / min(nonzero) if nonzero else 0.0
    warnings = []
    if ratio >= imbalance_ratio:
        big, small = max(totals, key=totals.get), min(totals, key=totals.get)
        warnings.append(f"class imbalance: {big!r} has {totals[big]} images, {small!r} only {totals[small]} in all "
                        f"({ratio:.1f}x)")
    few = [name for name, n in totals.items() if n < few_below]
    if few:
        warnings.append(f"few images (< {few_below}) in class(es): {few[:10]}")
    warnings += _unheld(counts, totals) if few_below else []  # multi-label: multi_label_findings says it per label
    alike = look_alike_labels(labels)
    if alike:
        warnings.append("labels that differ only in letter case or spacing are different classes: "
                        + "; ".join(" / ".join(repr(name) for name in group) for group in alike[:5])
                        + ' (one class? label_case = "ignore" in [ingest], or corrections.csv)')
    if conflicts:
        one = {}  # a file of each label of the first group
        for path, label in zip(conflicts[0]["paths"], conflicts[0]["labels"]):
            one.setdefault(label, path)
        first = " = ".join(f"{path} ({label})" for label, path in list(one.items())[:3])
        warnings.append(f"{len(conflicts)} image(s) appear under more than one label (the same file, e.g. {first}; "
                        "each copy keeps its own label, but a val/test copy of a training image is left out as "
                        "leakage: settle them on the review page, `make review`, or in corrections.csv)")
    if leakage:
        warnings.append(f"{len(leakage)} val/test image(s) also appear in train ({leakage_action})")
    sizes, modes, formats, alpha, (wmin, wmax, hmin, hmax) = _census(metas)
    mismatched = extension_mismatches(paths, metas) if set(formats) - {"pixels"} else []
    return {
        "images": sum(totals.values()),  # in the prepared arrays (leakage dropped from val/test is not)
        "classes": len(labels),
        "counts": {name: {**{s: counts[s][name] for s in counts}, "total": totals[name]} for name in labels},
        "imbalance_ratio": round(ratio, 3),
        "sizes": {
            "min_width": wmin,
            "max_width": wmax,
            "min_height": hmin,
            "max_height": hmax,
            "most_common": [[f"{w}x{h}", n] for (w, h), n in sizes.most_common(10)],
        },
        "modes": dict(modes.most_common()),
        "formats": dict(formats.most_common()),
        "transparent": alpha,  # images with transparent parts (composited onto the chosen background)
        "rejected": {"total": len(rejected),
                     "by_reason": dict(reason_counts(rejected))},
        "duplicates": {"groups": len(duplicates), "extra_copies": sum(len(d["paths"]) - 1 for d in duplicates),
                       "examples": duplicates[:EXAMPLES]},
        "conflicts": {"groups": len(conflicts), "examples": conflicts[:EXAMPLES]},
        "leakage": {"images": len(leakage), "action": leakage_action, "examples": leakage[:EXAMPLES]},
        "extension_mismatch": {"files": len(mismatched), "examples": mismatched[:EXAMPLES]},
        "warnings": warnings,
    }


def similarity_findings(near: dict[str, Any], odd: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """The near-duplicate and outlier findings for dataset.json; their warnings (copies across labels or
    splits, outliers far from their class's spread: the actionable ones) go into ``warnings``."""
    across, leak = near["across_classes"], near["across_splits"]
    if across["copies"]:
        groups = across.get("copy_groups", 0)
        among = f" in {groups} group(s) of copies" if groups and groups != across["copies"] else ""
        warnings.append(f"{across['copies']} pair(s) of copies of one image carry different labels{among} "
                        "(similar.csv)")
    if leak.get("copy_images"):
        warnings.append(f"{leak['copy_images']} val/test image(s) are copies of training images (re-encoded, "
                        "resized, cropped, shifted or recoloured; kept): they may flatter the test accuracy "
                        "(similar.csv)")
    if odd.get("far"):
        warnings.append(f"{odd['far']} image(s) look unlike anything else in their class, far beyond its own "
                        "spread (outliers.csv)")
    return {"near_duplicates": near, "outliers": odd}


def quality_findings(issues: dict[str, tuple[np.ndarray, np.ndarray]], shortcuts: list[dict[str, Any]],
                     paths: Sequence[str], labels: Sequence[str], splits: Sequence[str],
                     warnings: list[str]) -> dict[str, Any]:
    """dataset.json's image-quality issues (counts, rules, the first examples of each) and shortcuts; one
    warning for the issues found and one per shortcut go into ``warnings``."""
    counts = {issue: int(len(idx)) for issue, (idx, _) in issues.items()}
    flagged = np.unique(np.concatenate([idx for idx, _ in issues.values()])) if issues else np.zeros(0)
    examples = {issue: [{"path": paths[i], "label": labels[i], "split": splits[i], "score": float(sc)}
                        for i, sc in zip(idx[:quality.EXAMPLES].tolist(), scores[:quality.EXAMPLES].tolist())]
                for issue, (idx, scores) in issues.items() if len(idx)}
    least = max(1, quality.WARN_SHARE * len(paths))
    found = [f"{n} {quality.WORDS[issue]}" for issue, n in counts.items() if n >= least]
    if found:
        warnings.append(f"image quality: {', '.join(found)}, against the rest of the dataset (quality.csv)")
    for s in shortcuts:
        warnings.append(f"{s['property']} alone tells {s['label']!r} from the other classes ({s['direction']} "
                        f"than the rest; balanced accuracy {s['held_out']:.2f} on held-out images): the model may "
                        "learn it instead of the content")
    return {"quality": {"images": int(len(flagged)), "counts": counts, "rules": quality.rules(),
                        "examples": examples},
            "shortcuts": {"rule": quality.SHORTCUT_RULE, "found": shortcuts}}


def co_occurrence(y: np.ndarray) -> np.ndarray:
    """How many images carry both labels i and j (the diagonal: each label's positives)."""
    y = np.asarray(y, np.int64)
    return y.T @ y


def multi_label_findings(y: dict[str, np.ndarray], labels: Sequence[str], min_positives: int,
                         warnings: list[str]) -> dict[str, Any]:
    """dataset.json's multi-label block from each split's multi-hot labels: positives per label and
    split, images with no label, labels per image, the co-occurrence table; labels with fewer than
    ``min_positives`` positives (or none in a split that has images) are warned about."""
    every = np.concatenate([np.asarray(a).reshape(-1, len(labels)) for a in y.values()])
    pos = {s: np.asarray(a).reshape(-1, len(labels)).sum(axis=0) for s, a in y.items()}
    total = every.sum(axis=0)
    few = [name for name, n in zip(labels, total.tolist()) if n < min_positives]
    if few:
        warnings.append(f"few positive images (< {min_positives}) for label(s): {few[:10]}: the model cannot learn "
                        "them well, and their measured precision and recall are unreliable")
    for s, a in y.items():
        missing = [name for name, n in zip(labels, pos[s].tolist()) if n == 0] if len(a) else []
        if missing and s != "train" and total.min() >= 2:
            warnings.append(f"no positive image in the {s} split for label(s): {missing[:10]}")
    return {"task": "multi",
            "multi_label": {"positives": {name: {**{s: int(pos[s][j]) for s in y}, "total": int(total[j])}
                                          for j, name in enumerate(labels)},
                            "no_label": {s: int((np.asarray(a).reshape(-1, len(labels)).sum(axis=1) == 0).sum())
                                         for s, a in y.items()},
                            "labels_per_image": round(float(every.sum(axis=1).mean()) if len(every) else 0.0, 3),
                            "co_occurrence": co_occurrence(every).tolist(), "min_positives": min_positives}}


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
    multi = summary.get("multi_label")
    if multi:
        lines[0] += "   (images carrying each label)"
        lines.append(f"usable images: {summary['images']} with {summary['classes']} labels, "
                     f"{multi['labels_per_image']:g} per image on average, {sum(multi['no_label'].values())} "
                     f"with none; rejected: {rej['total']}")
    else:
        lines.append(f"usable images: {summary['images']} in {summary['classes']} classes; rejected: {rej['total']}")
    background = summary.get("choices", {}).get("background")
    if summary.get("transparent") and background:
        lines.append(f"transparent: {summary['transparent']} image(s), composited onto gray level "
                     f"{background['value']} ({background['why']})")
    for reason, n in rej["by_reason"].items():
        lines.append(f"  rejected {n:>6}  {reason}")
    lines.append(f"identical files: {summary['duplicates']['extra_copies']} extra copies in "
                 f"{summary['duplicates']['groups']} groups under one label, {summary['conflicts']['groups']} "
                 f"groups under different labels (label conflicts); "
                 f"leakage: {summary['leakage']['images']} ({summary['leakage']['action']})")
    near, odd = summary.get("near_duplicates"), summary.get("outliers", {})
    if near:
        lines.append(f"other copies: {near['across_splits'].get('copies', 0)} pairs across splits, "
                     f"{near['across_classes'].get('copies', 0)} across classes; look-alikes: "
                     f"{near['within_class']['pairs']} pairs within a class, {near['across_classes']['pairs']} "
                     f"across classes; outliers: {odd.get('images', 0)} ({odd.get('far', 0)} far)")
    q = summary.get("quality")
    if q:
        lines.append("image quality: " + ", ".join(f"{quality.WORDS[k]} {n}" for k, n in q["counts"].items())
                     + f"; shortcuts: {len(summary.get('shortcuts', {}).get('found', []))}")
    if summary["warnings"]:  # each one was logged as it was found: counted here, not repeated
        lines.append(f"warnings: {len(summary['warnings'])} (above, and in dataset.json and the report)")
    return "\n".join(lines)
