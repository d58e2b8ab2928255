"""The review page's queues: one ordered list of cards per kind of problem, from what the stages found.

Pure functions: rows and arrays in, cards out. A card is a dict with ``id`` (a stable id of the image:
the same image in two queues is one card, decided once), ``path``, ``label`` (given; empty for a new
image), ``suggested``, ``confidence`` (calibrated, of the suggestion), ``reason`` (why it is in the
queue) and, for some queues, ``split``, ``top`` (the model's top-3 pre-labels) and ``strict`` (beyond
the strict cut of confident learning).

| queue | from | order |
|---|---|---|
| ``suspects`` | ``suspects_ranked.csv`` (train, val and test) | most doubtful first; the strict cut marked |
| ``duplicates`` | ``similar.csv``: copies across labels or splits, look-alikes across labels | group by group |
| ``outliers`` | ``outliers.csv`` | most unusual first |
| ``misclassified`` | the test split's predictions (``test_probs.npy``) | most confident mistake first |
| ``quality`` | ``quality.csv``: too dark, too light, blurry, nearly blank, odd size or aspect, gray | as found |
| ``unlabeled`` | the model's predictions of the images of ``--images`` | most uncertain first, unfamiliar ones apart, near-duplicates of each other once |
"""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import numpy as np

QUEUES = ("suspects", "duplicates", "outliers", "misclassified", "quality", "unlabeled")
TOP = 3  # pre-labels shown on a new image's card


def card_id(path: str) -> str:
    """The stable id of an image (the same in every queue, across restarts)."""
    return hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def card(path: str, label: str, suggested: str = "", confidence: float | None = None, reason: str = "",
         **extra: Any) -> dict[str, Any]:
    return {"id": card_id(path), "path": path, "label": label, "suggested": suggested,
            "confidence": None if confidence is None else round(float(confidence), 4), "reason": reason, **extra}


def suspects(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """``suspects_ranked.csv`` rows as cards, in their order (most doubtful first)."""
    out = []
    for r in rows:
        strict = str(r.get("flagged", "")).lower() == "true"
        why = ("confident learning flags it (the strict cut)" if strict else "among the most doubtful labels") + \
            f": p({r['label']}) = {1 - float(r['score']):.2f} out of sample ({r.get('split', '')})" + \
            ("; still the model's likeliest label (accepting keeps it)" if r["suggested"] == r["label"] else "")
        out.append(card(r["path"], r["label"], r["suggested"], float(r["confidence"]) if r.get("confidence") else None,
                        why, split=r.get("split", ""), strict=strict))
    return out


def duplicates(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """``similar.csv`` groups as cards, group after group; each card suggests its group's most common label,
    when one label has more members than any other (a tie, one cat and one dog, suggests nothing: the
    reviewer decides which is right)."""
    groups: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for gid, members in groups.items():
        counts = Counter(m["label"] for m in members).most_common()
        common = counts[0][0] if len(counts) == 1 or counts[0][1] > counts[1][1] else ""
        tie = "" if common else f"; as many {' as '.join(repr(lab) for lab, _ in counts[:2])}: which label is right?"
        for m in members:
            others = ", ".join(f"{o['path']} ({o['label']}, {o['split']})" for o in members if o is not m)
            what = "a copy of" if m.get("kind") == "copy" else "looks like"
            out.append(card(m["path"], m["label"], common, None, f"{what} {others}{tie}", split=m.get("split", ""),
                            group=gid, kind=m.get("kind", "")))
    return _once(out)


def _once(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each image once (a copy group's card, then look-alike groups': an image can be in one of each), its
    later groups' reasons added to its first card's: a queue counts images, and one decision settles one."""
    first: dict[str, dict[str, Any]] = {}
    for c in cards:
        if c["path"] in first:
            first[c["path"]]["reason"] += "; " + c["reason"]
        else:
            first[c["path"]] = c
    return list(first.values())


def outliers(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """``outliers.csv`` rows as cards (most unusual first)."""
    return [card(r["path"], r["label"], "", None, f"unlike the rest of {r['label']!r} (robust z {float(r['z']):.1f})",
                 split=r.get("split", "")) for r in rows]


def quality(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """``quality.csv`` rows as cards; an image with several issues is one card listing them."""
    by_path: dict[str, dict[str, Any]] = {}
    for r in rows:
        c = by_path.setdefault(r["path"], card(r["path"], r["label"], "", None, "", split=r.get("split", ""),
                                                issues=[]))
        c["issues"].append(r["issue"])
        c["reason"] = "image quality: " + ", ".join(c["issues"])
    return list(by_path.values())


def misclassified(paths: list[str], y: np.ndarray, probs: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    """The test images the model gets wrong, most confident mistake first."""
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")]
    return [card(paths[i], labels[y[i]], labels[pred[i]], conf[i],
                 f"the model says {labels[pred[i]]!r} ({conf[i]:.2f}) on the test split", split="test")
            for i in wrong.tolist()]


def unlabeled(paths: list[str], probs: np.ndarray, familiar: np.ndarray | None, group: np.ndarray,
              labels: list[str]) -> list[dict[str, Any]]:
    """New images, ordered so that a person's label teaches the model most: the most uncertain familiar ones
    first (smallest margin between the two likeliest labels), then the unfamiliar ones (unlike the training
    data: apart, at the end); of near-duplicates of one another (same ``group``), one card standing for all
    (``members``: the others, which its label is given to too)."""
    top = np.argsort(-probs, axis=1, kind="stable")[:, :TOP]
    ranked = np.take_along_axis(probs, top, axis=1)
    margin = ranked[:, 0] - (ranked[:, 1] if probs.shape[1] > 1 else 0.0)
    known = np.ones(len(paths), bool) if familiar is None else np.asarray(familiar, bool)
    order = np.lexsort((margin, ~known))  # familiar first, then by margin (smallest first)
    members: dict[int, list[str]] = {}
    for i, g in enumerate(group.tolist()):
        members.setdefault(g, []).append(paths[i])
    seen, size = set(), np.bincount(group) if len(group) else np.zeros(0, int)
    out = []
    for i in order.tolist():
        if group[i] in seen:
            continue
        seen.add(group[i])
        why = ("unfamiliar: unlike the training images" if not known[i] else
               f"the model: {labels[top[i, 0]]!r} {ranked[i, 0]:.2f}" +
               (f", then {labels[top[i, 1]]!r} {ranked[i, 1]:.2f}" if probs.shape[1] > 1 else ""))
        if size[group[i]] > 1:
            why += f"; stands for {size[group[i]]} near-identical images"
        out.append(card(paths[i], "", labels[top[i, 0]], ranked[i, 0], why, familiar=bool(known[i]),
                        top=[[labels[c], round(float(p), 4)] for c, p in zip(top[i], ranked[i])],
                        members=[m for m in members[group[i]] if m != paths[i]]))
    return out
