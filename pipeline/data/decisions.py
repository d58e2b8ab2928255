"""The review's decisions, durable: what a person decided about an image, in the run folder.

Every decision (``relabel``, ``exclude``, ``keep``, or a ``label`` for a new, unlabeled image) is first
appended to ``review_log.jsonl`` and pushed to disk (``fsync``), then the files that ``make prepare``
reads are rewritten atomically from the whole log:

- ``corrections.csv`` (``path,label,decision,given``): the relabel/exclude/keep decisions, in the format
  :mod:`pipeline.data.corrections` applies (``label`` is the new label, ``exclude``, ``new:<name>`` for a
  class the data does not have yet, or the given label for ``keep``, which changes nothing but marks
  the image as reviewed). Hand edits of the file (before the first review decision, or between two
  reviews) are taken into the log when the review starts, so a hand-written row is never lost.
- ``labeled.csv`` (``path,label``): labels given to new images (absolute paths; the files stay where
  they are), which the next ``make prepare`` adds to the training split.

Only then is a decision acknowledged, so a kill at any moment loses nothing that was acknowledged, and
a torn last line of the log (a kill in the middle of a write) is dropped on the next start. ``undo``
is itself a log entry: it survives restarts too. The log is the truth; the CSV files are derived from
it at every change and at every start.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.data.corrections import EXCLUDE, NEW
from pipeline.shared import artifacts
from pipeline.shared import runfolder as rf
from pipeline.shared.errors import UserError

ACTIONS = ("relabel", "exclude", "keep", "label", "skip")  # label: a new image's first label; skip: a new image
# looked at and left out (reviewed, written to neither file)
CORRECTION_COLUMNS = ("path", "label", "decision", "given")


@dataclass(frozen=True)
class Decision:
    """One decision about one image (``given``: its label at the time; empty for a new image)."""

    seq: int
    id: str
    path: str
    given: str
    action: str
    label: str
    time: float


class Decisions:
    """The decisions of one run folder: the log, and the state it gives (the last decision per image)."""

    def __init__(self, run: Path) -> None:
        self.run = Path(run)
        self.log = self.run / rf.REVIEW_LOG
        self.entries: list[dict[str, Any]] = self._read_log()
        if (self.run / rf.CORRECTIONS).is_file():
            self._follow_hand_edits()
        self._write_files()

    # ---------------------------------------------------------------- the log
    def _read_log(self) -> list[dict[str, Any]]:
        """The log's entries; a torn last line (a kill while writing it) is dropped and the file mended."""
        if not self.log.is_file():
            return []
        text = self.log.read_text(encoding="utf-8")
        entries, good = [], 0
        for line in text.splitlines(keepends=True):
            try:
                entries.append(json.loads(line))
            except ValueError:
                break
            if not line.endswith("\n"):
                entries.pop()
                break
            good += len(line.encode("utf-8"))
        if good != len(text.encode("utf-8")):
            with open(self.log, "r+b") as fh:
                fh.truncate(good)
                os.fsync(fh.fileno())
        return entries

    def _append(self, entry: dict[str, Any]) -> None:
        """Append one entry to the log and push it to disk (the whole line in one write)."""
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.entries.append(entry)

    def _follow_hand_edits(self) -> None:
        """A corrections file edited by hand (before the first review, or between two): its rows that differ
        from the log's state become the log's entries, and rows deleted by hand are undone, so the file as
        the person left it is what the review goes on from."""
        with open(self.run / rf.CORRECTIONS, newline="", encoding="utf-8-sig") as fh:
            rows = {r["path"].strip(): r for r in csv.DictReader(fh) if (r.get("path") or "").strip()}
        state = {p: d for p, d in self.state().items() if d.action in ("relabel", "exclude", "keep")}
        for path, row in rows.items():
            label = (row.get("label") or "").strip()
            if path in state and state[path].label == label:
                continue
            action = "exclude" if label == EXCLUDE else (row.get("decision") or "relabel").strip() or "relabel"
            self._append({"seq": len(self.entries), "id": "", "path": path, "given": (row.get("given") or "").strip(),
                          "action": action, "label": label, "time": time.time(), "imported": True})
        for path in state:
            if path not in rows:  # deleted by hand: the image has no decision any more
                self._append({"seq": len(self.entries), "action": "forget", "path": path, "time": time.time(),
                              "imported": True})

    # ---------------------------------------------------------------- the state
    def state(self) -> dict[str, Decision]:
        """The decision in force for each image (undone ones replayed away), by path."""
        undone = {e["undoes"] for e in self.entries if e.get("action") == "undo"}
        out: dict[str, Decision] = {}
        for e in self.entries:
            if e.get("action") == "forget":
                out.pop(e["path"], None)
            elif e.get("action") != "undo" and e["seq"] not in undone:
                out[e["path"]] = Decision(e["seq"], e["id"], e["path"], e["given"], e["action"], e["label"], e["time"])
        return out

    def decide(self, item_id: str, path: str, given: str, action: str, label: str) -> Decision:
        """Record a decision; it is on disk (log and files) when this returns."""
        if action not in ACTIONS:
            raise UserError(f"action must be one of {', '.join(ACTIONS)}. Received: {action!r}")
        label = EXCLUDE if action == "exclude" else (given if action == "keep" else label)
        entry = {"seq": len(self.entries), "id": item_id, "path": path, "given": given, "action": action,
                 "label": label, "time": time.time()}
        self._append(entry)
        self._write_files()
        return Decision(**{k: entry[k] for k in ("seq", "id", "path", "given", "action", "label", "time")})

    def undo(self) -> Decision | None:
        """Undo the latest decision still in force (None when there is none); on disk when this returns."""
        undone = {e["undoes"] for e in self.entries if e.get("action") == "undo"}
        live = [e for e in self.entries if e.get("action") not in ("undo", "forget") and e["seq"] not in undone
                and not e.get("imported")]
        if not live:
            return None
        last = live[-1]
        self._append({"seq": len(self.entries), "action": "undo", "undoes": last["seq"], "time": time.time()})
        self._write_files()
        return Decision(**{k: last[k] for k in ("seq", "id", "path", "given", "action", "label", "time")})

    # ---------------------------------------------------------------- the files prepare reads
    def _write_files(self) -> None:
        state = self.state()
        corrections = [d for d in state.values() if d.action in ("relabel", "exclude", "keep")]
        labeled = [d for d in state.values() if d.action == "label"]
        if corrections or (self.run / rf.CORRECTIONS).is_file():
            artifacts.write_text(self.run / rf.CORRECTIONS, _csv(
                CORRECTION_COLUMNS, [(d.path, d.label, d.action, d.given) for d in corrections]))
        if labeled or (self.run / rf.LABELED).is_file():
            artifacts.write_text(self.run / rf.LABELED, _csv(("path", "label"), [(d.path, d.label) for d in labeled]))

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """The state as JSON-ready dicts, by path."""
        return {path: asdict(d) for path, d in self.state().items()}


def _csv(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


MAX_NAME = 100  # characters of a new class's name


def new_class(label: str) -> str:
    """How a label the data does not have yet is written in corrections.csv (``new:<name>``; a name given
    with the prefix already keeps one). A name must read as one folder name: no slash, no control
    character, not ``.`` or ``..``, at most MAX_NAME characters (UserError otherwise)."""
    name = label.strip()
    name = name[len(NEW):].strip() if name.startswith(NEW) else name
    if not name or name in (".", "..") or len(name) > MAX_NAME or any(c in name for c in "/\\") \
            or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UserError(f"a new class needs a name of 1-{MAX_NAME} characters that could name a folder (no slash, "
                        f"no control characters, not . or ..). Received: {label!r}")
    return f"{NEW}{name}"
