"""The first hour: a messy, user-like image folder, and the commands a new user runs on it, measured.

The folder (``filenames`` layout, the label in the name: ``A_0001.png``, ``B_0042.jpg``) holds
what a real first folder holds:

- letters rendered in the installed fonts (:func:`benchmarks.devsets.usable_fonts`), dark ink on
  light textured paper (gray or lightly tinted), 28-140 px, half PNG and half JPEG (quality 80-95);
- per class two transparent PNGs: RGBA, dark ink, alpha = the glyph, a fully transparent (black)
  background, like icons or signatures;
- one broken JPEG (a truncated file) named like an image of a class, and a ``README.txt`` and
  ``notes.txt`` at the top;
- three planted wrong labels: images of one letter saved under another letter's name.

The facts (planted files, transparent files, the broken file, the fonts) go to ``<folder>/.truth.json``
(hidden: the pipeline skips it). Two variants: ``dev`` (letters ABCDEFGH, seed 0) and ``heldout``
(KLMNPRST, another seed and font order; never tuned on, reported as is).

Per (variant, seed), in a fresh working folder (the run folder is ``<work>/runs/<name>``), the user's
sequence, each command a subprocess, timed: ``pipeline prepare --data DATA`` (no ``--layout``: auto),
``train``, ``evaluate``, ``suspects``, with ``[prepare] seed`` and ``[train] seed`` set to the seed in a
copy of ``params.toml``. A failing step is recorded (exit code, stderr tail) and the steps that need
it are skipped. Measured: test accuracy; accuracy on new transparent images (``CHECK_PER_CLASS`` per class,
written beside the dataset, never trained on, through ``pipeline predict``); planted errors found by ``suspects`` and how many it
flagged in all; what ``rejected.csv`` lists; the seconds of each step and from the start of prepare to
``report.html``.

    python -m benchmarks.firsthour --seeds 1,2,3 --variants dev,heldout
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.common import publish
from benchmarks.devsets import _save, _texture, render_glyph, usable_fonts

REPO = Path(__file__).resolve().parents[1]
# variant -> (folder name, letters, build seed, held out?)
VARIANTS = {"dev": ("firsthour-dev", "ABCDEFGH", 0, False),
            "heldout": ("firsthour-heldout", "KLMNPRST", 1, True)}
N_PLANTED = 3
CHECK_PER_CLASS = 8       # new transparent images per class, beside the dataset, to score the trained model on
CHECK_SUFFIX = "-transparent"
TRUTH = ".truth.json"
README = "Letters for my classifier, scanned and exported from a few apps.\nThe file name starts with the letter.\n"
NOTES = "todo: redo the blurry ones\nask about the transparent exports\n"
STEP_TIMEOUT = 4 * 3600
QUICK = {("train", "epochs"): 3, ("suspects", "folds"): 2, ("suspects", "step_budget"): 50}


# ---------------------------------------------------------------- the messy folder
def _glyph_mask(ch: str, font: str, rng: np.random.Generator, side: int) -> np.ndarray:
    """The glyph as a float mask of ``side`` x ``side`` (rendered at >= 96 px, then resized)."""
    mask = render_glyph(ch, font, rng, canvas=max(96, side))
    return cv2.resize(mask, (side, side), interpolation=cv2.INTER_AREA)


def _paper_image(ch: str, font: str, rng: np.random.Generator) -> np.ndarray:
    """Dark ink on light textured paper, gray or lightly tinted, 28-140 px a side (RGB, 0..1)."""
    side = int(rng.integers(28, 141))
    mask = _glyph_mask(ch, font, rng, side)[..., None]
    tex = _texture(rng, side, 3) if rng.random() < 0.5 else np.repeat(_texture(rng, side, 1), 3, axis=2)
    paper = rng.uniform(0.7, 1.0) - 0.15 * tex
    img = paper * (1 - mask) + rng.uniform(0.0, 0.3) * mask + rng.normal(0, 0.02, (side, side, 1))
    return np.clip(img, 0, 1)


def _transparent_image(ch: str, font: str, rng: np.random.Generator) -> np.ndarray:
    """RGBA (0..1): dark ink where the glyph is, alpha = the glyph, black and fully transparent elsewhere."""
    side = int(rng.integers(28, 141))
    mask = _glyph_mask(ch, font, rng, side)
    ink = rng.uniform(0.0, 0.25, 3)
    rgb = (mask > 0)[..., None] * ink
    return np.concatenate([rgb, mask[..., None]], axis=2)


def _pick_fonts(letters: str, n_fonts: int, rng: np.random.Generator) -> list[str]:
    fonts = usable_fonts(letters)
    if len(fonts) < 2:
        raise SystemExit(f"firsthour needs at least 2 fonts with {letters!r}; found {len(fonts)} (install fonts-*)")
    return [fonts[i] for i in rng.permutation(len(fonts))[:n_fonts]]


def _plan(letters: str, fonts: list[str], per_font: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """One entry per regular image (true letter, given letter, font, format), three of them mislabelled."""
    slots = [(ch, font) for ch in letters for font in fonts for _ in range(per_font)]
    jpeg = np.zeros(len(slots), bool)
    jpeg[rng.permutation(len(slots))[:len(slots) // 2]] = True
    plan = [{"true": ch, "given": ch, "font": f, "jpeg": bool(j)} for (ch, f), j in zip(slots, jpeg)]
    for i in rng.choice(len(plan), N_PLANTED, replace=False).tolist():
        others = [c for c in letters if c != plan[i]["true"]]
        plan[i]["given"] = others[int(rng.integers(len(others)))]
    return plan


def _write_regular(out: Path, plan: list[dict[str, Any]], ids: list[int], rng: np.random.Generator) -> list[dict]:
    """The paper images; returns the planted ones (file, true label, given label)."""
    planted = []
    for entry, k in zip(plan, ids):
        name = f"{entry['given']}_{k:04d}.{'jpg' if entry['jpeg'] else 'png'}"
        img = _paper_image(entry["true"], entry["font"], rng)
        _save(out / name, img, quality=int(rng.integers(80, 96)) if entry["jpeg"] else None)
        if entry["given"] != entry["true"]:
            planted.append({"file": name, "true": entry["true"], "given": entry["given"]})
    return planted


def _write_transparent(out: Path, letters: str, fonts: list[str], ids: list[int],
                       rng: np.random.Generator) -> list[dict]:
    """Two transparent PNGs per class."""
    files = []
    for j, ch in enumerate(c for c in letters for _ in range(2)):
        name = f"{ch}_{ids[j]:04d}.png"
        _save(out / name, _transparent_image(ch, fonts[int(rng.integers(len(fonts)))], rng))
        files.append({"file": name, "label": ch})
    return files


def _write_check(folder: Path, letters: str, fonts: list[str], rng: np.random.Generator) -> list[dict]:
    """New transparent PNGs (CHECK_PER_CLASS per class, never in the dataset), to measure how the trained
    model reads transparent images it has not seen."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    files = []
    for j, ch in enumerate(c for c in letters for _ in range(CHECK_PER_CLASS)):
        name = f"{ch}_check{j:03d}.png"
        _save(folder / name, _transparent_image(ch, fonts[int(rng.integers(len(fonts)))], rng))
        files.append({"file": name, "label": ch})
    return files


def _write_junk(out: Path, letters: str, fonts: list[str], k: int, rng: np.random.Generator) -> dict:
    """A truncated JPEG named like an image of a class, README.txt and notes.txt."""
    ch = letters[int(rng.integers(len(letters)))]
    path = out / f"{ch}_{k:04d}.jpg"
    _save(path, _paper_image(ch, fonts[0], rng), quality=90)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * 0.55)])
    (out / "README.txt").write_text(README, encoding="utf-8")
    (out / "notes.txt").write_text(NOTES, encoding="utf-8")
    return {"file": path.name, "label": ch, "bytes": int(len(data) * 0.55), "of": len(data)}


def build_messy(out: Path, seed: int, letters: str, n_fonts: int = 37, per_font: int = 2,
                held_out: bool = False) -> dict[str, Any]:
    """Write the messy folder (deterministic from ``seed``) and ``<out>/.truth.json``; return the truth."""
    rng = np.random.default_rng(seed + (1000 if held_out else 0))
    fonts = _pick_fonts(letters, n_fonts, rng)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    plan = _plan(letters, fonts, per_font, rng)
    ids = (rng.permutation(len(plan) + 2 * len(letters) + 1) + 1).tolist()
    planted = _write_regular(out, plan, ids[:len(plan)], rng)
    transparent = _write_transparent(out, letters, fonts, ids[len(plan):-1], rng)
    broken = _write_junk(out, letters, fonts, ids[-1], rng)
    check = _write_check(out.with_name(f"{out.name}{CHECK_SUFFIX}"), letters, fonts, rng)
    truth = {"seed": seed, "letters": letters, "held_out": held_out, "n_fonts_asked": n_fonts,
             "n_fonts_used": len(fonts), "per_font": per_font, "fonts": fonts, "regular_images": len(plan),
             "planted": planted, "transparent": transparent, "broken": broken, "junk": ["README.txt", "notes.txt"],
             "transparent_check": check}
    (out / TRUTH).write_text(json.dumps(truth, indent=2) + "\n")
    return truth


# ---------------------------------------------------------------- the user's commands
def derive_params(src: Path, dst: Path, seed: int, quick: bool = False) -> Path:
    """A copy of ``src`` with ``[prepare] seed`` and ``[train] seed`` set (and the quick settings)."""
    sets: dict[tuple[str, str], Any] = {("prepare", "seed"): seed, ("train", "seed"): seed}
    sets |= QUICK if quick else {}
    section, lines, done = None, [], set()
    for line in src.read_text(encoding="utf-8").splitlines():
        head, key = re.match(r"\s*\[([^\]]+)\]", line), re.match(r"\s*([A-Za-z_]\w*)\s*=", line)
        if head:
            section = head.group(1).strip()
        elif key and (section, key.group(1)) in sets:
            line = f"{key.group(1)} = {sets[(section, key.group(1))]}"
            done.add((section, key.group(1)))
        lines.append(line)
    if set(sets) - done:
        raise SystemExit(f"{src}: no line for {sorted(set(sets) - done)}")
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tomllib.loads(dst.read_text(encoding="utf-8"))  # still valid TOML
    return dst


def _pipeline_cmd() -> tuple[list[str], dict[str, str]]:
    """The repository's ``pipeline`` command and its environment."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    exe = REPO / ".venv" / "bin" / "pipeline"
    if exe.is_file():
        return [str(exe)], env
    return [sys.executable, "-m", "pipeline"], {**env, "PYTHONPATH": str(REPO)}


def _step(name: str, args: list[str], work: Path) -> dict[str, Any]:
    """Run ``pipeline <args>`` in ``work``; its exit code, seconds, output tails (full output in logs/)."""
    cmd, env = _pipeline_cmd()
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd + args, cwd=work, capture_output=True, text=True, env=env, timeout=STEP_TIMEOUT,
                             check=False)
        rc, out, err = res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = None, str(exc.stdout or ""), f"{exc.stderr or ''}\ntimed out after {STEP_TIMEOUT} s"
    seconds = time.perf_counter() - t0
    logs = work / "bench-logs"
    logs.mkdir(exist_ok=True)
    (logs / f"{name}.out").write_text(out, encoding="utf-8")
    (logs / f"{name}.err").write_text(err, encoding="utf-8")
    return {"step": name, "cmd": "pipeline " + " ".join(args), "rc": rc, "ok": rc == 0,
            "seconds": round(seconds, 1), "stdout_tail": out[-1500:], "stderr_tail": err[-1500:]}


def _skipped(name: str, because: str) -> dict[str, Any]:
    return {"step": name, "rc": None, "ok": False, "skipped": f"not run: {because} failed", "seconds": None}


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _base(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1].split("#", 1)[0]


def _transparent_by_predict(data: Path, work: Path, params: Path, truth: dict[str, Any]) -> dict[str, Any]:
    """The new transparent images beside the dataset (never trained on) through ``pipeline predict``,
    scored by their names."""
    folder = data.with_name(f"{data.name}{CHECK_SUFFIX}")
    out = work / "transparent_predictions.csv"
    step = _step("predict", ["predict", str(folder), "--params", str(params), "--out", str(out)], work)
    rows = _read_csv(out)
    wanted = {t["file"]: t["label"] for t in truth["transparent_check"]}
    hits = [r.get("label") == wanted[_base(r["path"])] for r in rows if _base(r["path"]) in wanted]
    return {"accuracy": float(np.mean(hits)) if hits else None, "n": len(hits), "source": "new transparent images",
            "step": step, "predicted": {_base(r["path"]): r.get("label") or r.get("error") for r in rows}}


def _suspect_hits(run: Path, truth: dict[str, Any]) -> dict[str, Any]:
    """Planted files among suspects.csv, and how many of them could be found (in the prepared splits: suspects
    checks train and val by cross-validation, test with the trained model)."""
    flagged = {_base(r["path"]) for r in _read_csv(run / "suspects.csv")}
    splits = {_base(r["path"]): r.get("split") for r in _read_csv(run / "manifest.csv")}
    planted = [p["file"] for p in truth["planted"]]
    return {"found": sum(f in flagged for f in planted), "planted": len(planted),
            "findable": sum(splits.get(f) in ("train", "val", "test") for f in planted),
            "found_files": sorted(f for f in planted if f in flagged), "flagged": len(flagged),
            "transparent_flagged": sum(t["file"] in flagged for t in truth["transparent"])}


def _rejections(run: Path, truth: dict[str, Any]) -> dict[str, Any]:
    rows = _read_csv(run / "rejected.csv")
    names = {_base(r["path"]): r.get("reason", "") for r in rows}
    junk = {n: names.get(n) for n in truth["junk"] + [truth["broken"]["file"]]}
    return {"count": len(rows), "junk_reasons": junk, "junk_rejected": {n: r is not None for n, r in junk.items()},
            "transparent_rejected": sum(t["file"] in names for t in truth["transparent"])}


def _dataset_facts(run: Path) -> dict[str, Any]:
    """What prepare decided (layout, counts, choices, warnings), from dataset.json."""
    path = run / "dataset.json"
    if not path.is_file():
        return {}
    d = json.loads(path.read_text())
    keep = ("layout", "counts", "choices", "preprocess_choices", "warnings", "n_images", "split_counts")
    return {k: d[k] for k in keep if k in d}


def _commands(data: Path, params: Path) -> list[tuple[str, list[str], str | None]]:
    """(step, arguments, the step it needs) in the order a user runs them."""
    p = ["--params", str(params)]
    return [("prepare", ["prepare", "--data", str(data)] + p, None), ("train", ["train"] + p, "prepare"),
            ("evaluate", ["evaluate"] + p, "train"), ("suspects", ["suspects"] + p, "prepare")]


def run_user(data: Path, work: Path, seed: int, params: Path, quick: bool = False) -> dict[str, Any]:
    """The new user's sequence on ``data`` in a fresh ``work`` folder; what each step did and what came out."""
    data, work = data.resolve(), work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    truth = json.loads((data / TRUTH).read_text())
    derived = derive_params(params, work / "params.toml", seed, quick)
    run = work / "runs" / data.name
    steps: dict[str, dict[str, Any]] = {}
    start, to_report = time.time(), None
    for name, args, needs in _commands(data, derived):
        if needs and not steps[needs]["ok"]:
            steps[name] = _skipped(name, needs)
            continue
        steps[name] = _step(name, args, work)
        if name == "evaluate" and (run / "report.html").is_file():
            to_report = round((run / "report.html").stat().st_mtime - start, 1)
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    transparent = None
    if steps["evaluate"]["ok"]:
        transparent = _transparent_by_predict(data, work, derived, truth)
    return {"seed": seed, "data": str(data), "run": str(run), "steps": steps, "accuracy": metrics.get("accuracy"),
            "test_images": metrics.get("n"), "transparent": transparent, "prepare_to_report_s": to_report,
            "suspects": _suspect_hits(run, truth) if steps["suspects"]["ok"] else None,
            "rejected": _rejections(run, truth) if steps["prepare"]["ok"] else None,
            "dataset": _dataset_facts(run)}


# ---------------------------------------------------------------- the table
def _mean_sd(values: list[float | None], scale: float = 1.0, digits: int = 1) -> str:
    vals = [scale * v for v in values if v is not None]
    if not vals:
        return "—"
    sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return f"{np.mean(vals):.{digits}f} ± {sd:.{digits}f}"


def _ratio(rows: list[dict[str, Any]]) -> list[float | None]:
    out = []
    for r in rows:
        t, s = r["steps"]["train"].get("seconds"), r["steps"]["suspects"].get("seconds")
        ok = r["steps"]["train"]["ok"] and r["steps"]["suspects"]["ok"] and t
        out.append(s / t if ok else None)
    return out


def _step_seconds(rows: list[dict[str, Any]], step: str) -> list[float | None]:
    return [r["steps"][step]["seconds"] if r["steps"][step]["ok"] else None for r in rows]


def _variant_line(name: str, rows: list[dict[str, Any]]) -> str:
    sus = [r["suspects"] for r in rows if r["suspects"]]
    found = f"{np.mean([s['found'] for s in sus]):.1f} / {N_PLANTED}" if sus else "—"
    findable = f"({np.mean([s['findable'] for s in sus]):.1f})" if sus else ""
    tag = f"{name} (held out)" if VARIANTS[name][3] else name
    return (f"{tag:<16} {len(rows):>5} {_mean_sd([r['accuracy'] for r in rows], 100, 2):>14} "
            f"{_mean_sd([(r['transparent'] or {}).get('accuracy') for r in rows], 100, 1):>13} "
            f"{found + ' ' + findable:>14} {_mean_sd([s['flagged'] for s in sus]):>12} "
            f"{_mean_sd([r['prepare_to_report_s'] for r in rows], digits=0):>12} "
            f"{_mean_sd(_step_seconds(rows, 'train'), digits=0):>10} "
            f"{_mean_sd(_step_seconds(rows, 'suspects'), digits=0):>10} "
            f"{_mean_sd(_ratio(rows), digits=2):>11}")


def _failure_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        for step in list(r["steps"].values()) + [((r["transparent"] or {}).get("step") or {"ok": True})]:
            if step["ok"]:
                continue
            if step.get("skipped"):
                lines.append(f"  {r['variant']} seed {r['seed']}: {step['step']} {step['skipped']}")
                continue
            why = (step["stderr_tail"].strip().splitlines() or ["(no stderr)"])[-1]
            lines.append(f"  {r['variant']} seed {r['seed']}: {step['step']} (exit {step['rc']}): {why[:200]}")
    return lines


def _seed_line(r: dict[str, Any]) -> str:
    """What one seed's rejected.csv holds, how the transparent images were scored, what suspects flagged."""
    rej, tr, sus = r["rejected"], r["transparent"] or {}, r["suspects"]
    text = f"  {r['variant']} seed {r['seed']}:"
    if rej:
        junk = ", ".join(f"{n} {'yes' if ok else 'NO'}" for n, ok in rej["junk_rejected"].items())
        text += f" rejected.csv lists {rej['count']} ({junk});"
    text += f" transparent scored: {tr.get('n', 0)} via {tr.get('source', '—')}"
    if sus:
        text += f"; suspects flagged {sus['transparent_flagged']} of the transparent images"
    return text


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per variant (mean ± sd over seeds), then the junk rejected and each failed step."""
    lines = [(f"{'variant':<16} {'seeds':>5} {'test acc %':>14} {'transp. %':>13} {'planted found':>14} "
              f"{'flagged':>12} {'prep→rep s':>12} {'train s':>10} {'susp. s':>10} {'susp/train':>11}")]
    for name in dict.fromkeys(r["variant"] for r in rows):
        lines.append(_variant_line(name, [r for r in rows if r["variant"] == name]))
    lines.append("planted found: mean found / planted (mean of those in train/val, the only ones suspects sees)")
    lines += [_seed_line(r) for r in rows]
    failures = _failure_lines(rows)
    lines += ["failed steps:"] + failures if failures else ["failed steps: none"]
    return "\n".join(lines)


# ---------------------------------------------------------------- main
def build_variant(name: str, root: Path) -> Path:
    """The variant's folder under ``root``, built once (kept while its .truth.json is there)."""
    folder, letters, seed, held_out = VARIANTS[name]
    out = root / folder
    if not (out / TRUTH).is_file():
        print(f"firsthour: building {name} in {out} ...", file=sys.stderr, flush=True)
        build_messy(out, seed, letters, held_out=held_out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.firsthour", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ",".join(VARIANTS))
    parser.add_argument("--work", default="bench-results/firsthour", help="folders and runs (default: %(default)s)")
    parser.add_argument("--params", default=str(REPO / "params.toml"), help="params file the seeds are set in")
    parser.add_argument("--out", default="bench-results", help="where firsthour.json goes")
    parser.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)  # checks only: 3 epochs, 2 folds
    args = parser.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    if [n for n in names if n not in VARIANTS]:
        parser.error(f"unknown variant(s) {[n for n in names if n not in VARIANTS]}")
    work, rows = Path(args.work).resolve(), []
    folders = {name: build_variant(name, work / "data") for name in names}
    for name in names:
        for seed in [int(s) for s in args.seeds.split(",")]:
            print(f"firsthour: {name} seed {seed} ...", file=sys.stderr, flush=True)
            r = run_user(folders[name], work / name / f"seed{seed}", seed, Path(args.params), args.quick)
            rows.append({"variant": name, **r})
            print("  " + ", ".join(f"{s['step']} {'ok' if s['ok'] else 'FAILED'} {s['seconds']} s"
                                   for s in r["steps"].values()), file=sys.stderr, flush=True)
    publish(args.out, "firsthour", rows, format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
