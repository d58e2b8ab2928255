"""Review benchmark: the whole loop, find -> show -> fix -> retrain, as a reviewer drives it through the API.

1. **Planted flips**: 5% of the labels of a 10,000-image MNIST training subset moved to a random wrong
   class (the MNIST test set as the test split, unchanged). ``prepare``, ``train``, ``evaluate``,
   ``suspects``; then a reviewer who accepts every suggestion of the suspects queue (``POST /api/decide``
   on a real ``pipeline review`` server), and ``prepare``, ``train``, ``evaluate`` again. Reported: the
   planted flips fixed, the clean labels changed, the test accuracy before the review, after it and
   with no flips at all (the same images, clean), the reviewer's decisions per fixed error, and the p95
   time from ``POST /api/decide`` to its answer.
2. **Real errors**: the 15 label errors of the MNIST test set that people confirmed (Northcutt, Athalye and
   Mueller 2021, labelerrors.com; the list below is from github.com/cleanlab/label-errors,
   ``mturk/mnist_mturk.json``, Apache-2.0: the test images most workers did not see as their given
   label): how many ``make suspects`` on the reference run puts in the review queue and past its strict cut.
3. **Time to first screen** of a 50,000-card queue: the page opened in Chromium until the first card's
   image is drawn (the API's first page alone when Chromium is missing).

    python -m benchmarks.review_bench [--work bench-results/review] [--reference runs/mnist]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import publish

REPO = Path(__file__).resolve().parents[1]
# MNIST test index -> (given label, the label people saw): confirmed errors (>= 3 of 5 workers not "given")
MNIST_TEST_ERRORS = {947: (8, 9), 1621: (0, 6), 1901: (9, 4), 2130: (4, 9), 2462: (2, 0), 2597: (5, 3),
                     2654: (6, 1), 3520: (6, 4), 3558: (5, 0), 5937: (5, 3), 6651: (0, 6), 6783: (1, 6),
                     8527: (4, 9), 9679: (6, 3), 9729: (5, 6)}
NOISE = 0.05


def _cli(args: list[str], cwd: Path | None = None) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"pipeline {' '.join(args)} failed:\n{res.stderr[-3000:]}")


def _dataset(source: Path, out: Path, noise: float) -> list[tuple[str, str, str]]:
    """train/ (the 10k subset, ``noise`` of it flipped) and test/ (the MNIST test set); the flips."""
    from benchmarks import devsets
    from pipeline.data import mnist

    if (out / ".flips.json").is_file():
        return json.loads((out / ".flips.json").read_text())
    flips = devsets.build_noisy_mnist(source, out / "train", noise=noise)
    images, labels = mnist.load_split(source, "test")
    for i, (img, lab) in enumerate(zip(images, labels)):
        devsets._save(out / "test" / str(int(lab)) / f"{i:05d}.png", img / 255.0)
    (out / ".flips.json").write_text(json.dumps(flips))
    return flips


def _accuracy(run: Path) -> float:
    return float(json.loads((run / "metrics.json").read_text())["accuracy"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(run: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "review", "--run", str(run), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/api/queues", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError("the review server did not start")


def accept_all(run: Path, queue: str = "suspects") -> dict[str, Any]:
    """A reviewer who accepts every suggestion of ``queue``: one decision per card, timed."""
    import httpx

    proc, base = _serve(run)
    try:
        cards, offset = [], 0
        while True:
            page = httpx.get(f"{base}/api/queue/{queue}", params={"offset": offset, "limit": 500}, timeout=60).json()
            cards += page["items"]
            offset += len(page["items"])
            if offset >= page["total"] or not page["items"]:
                break
        times = []
        with httpx.Client(timeout=60) as client:
            for c in cards:
                t0 = time.perf_counter()
                r = client.post(f"{base}/api/decide", json={"id": c["id"], "action": "relabel", "label": c["suggested"]})
                times.append(time.perf_counter() - t0)
                r.raise_for_status()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"decisions": len(cards), "p95_ms": round(1000 * float(np.percentile(times, 95)), 2) if times else None,
            "median_ms": round(1000 * float(np.median(times)), 2) if times else None}


def _fixed(run: Path, flips: list[tuple[str, str, str]]) -> dict[str, int]:
    """Planted flips set back to their true label, and clean labels the review changed (train, test)."""
    truth = {path: true for path, true, _ in flips}
    fixed, changed = 0, {"train": 0, "test": 0}
    for r in csv.DictReader(open(run / "corrections.csv")):
        parts = r["path"].split("/")
        key = "/".join(parts[-2:])
        if r.get("decision") != "relabel":
            continue
        if parts[-3] == "train" and key in truth:
            fixed += r["label"] == truth[key]
        else:
            changed["test" if parts[-3] == "test" else "train"] += 1
    return {"planted": len(flips), "fixed": fixed, "clean_changed": sum(changed.values()),
            "clean_changed_by_split": changed}


def loop(work: Path, source: Path, params: Path) -> dict[str, Any]:
    """The planted-flip loop; and the same images with no flips, for the accuracy a clean set gives."""
    noisy, clean = work / "noisy", work / "clean"
    flips = _dataset(source, noisy, NOISE)
    _dataset(source, clean, 0.0)
    runs = {name: work / "runs" / name for name in ("noisy", "clean")}
    p = ["--params", str(params)]
    for name, data in (("noisy", noisy), ("clean", clean)):
        shutil.rmtree(runs[name], ignore_errors=True)
        for stage in (["prepare", "--data", str(data)], ["train"], ["evaluate"]):
            _cli([*stage, "--run", str(runs[name]), *p])
    before = _accuracy(runs["noisy"])
    y_test = np.load(runs["noisy"] / "y_test.npy")  # the test labels as given (the review may change some)
    t0 = time.perf_counter()
    _cli(["suspects", "--run", str(runs["noisy"]), *p])
    suspects_s = time.perf_counter() - t0
    review = accept_all(runs["noisy"])
    for stage in (["prepare", "--data", str(noisy)], ["train"], ["evaluate"]):
        _cli([*stage, "--run", str(runs["noisy"]), *p])
    counts = _fixed(runs["noisy"], flips)
    probs = np.load(runs["noisy"] / "test_probs.npy")
    return {**counts, **review, "suspects_seconds": round(suspects_s, 1), "accuracy_before": before,
            "accuracy_after": _accuracy(runs["noisy"]), "accuracy_clean": _accuracy(runs["clean"]),
            "accuracy_after_given_labels": float((probs.argmax(axis=1) == y_test).mean()),
            "decisions_per_fix": round(review["decisions"] / max(counts["fixed"], 1), 2)}


def real_errors(reference: Path, params: Path) -> dict[str, Any] | None:
    """The confirmed MNIST test-set errors in the reference run's review queue and past its strict cut."""
    if not (reference / "model" / "bundle.json").is_file():
        return None
    _cli(["suspects", "--run", str(reference), "--params", str(params)])
    def test_index(path: str) -> int | None:
        parts = path.split("/")
        return int(Path(parts[-1]).stem) if len(parts) > 2 and parts[-3] == "test" else None

    queue = {test_index(r["path"]): r for r in csv.DictReader(open(reference / "suspects_ranked.csv"))}
    strict = {test_index(r["path"]) for r in csv.DictReader(open(reference / "suspects.csv"))}
    found = [i for i in MNIST_TEST_ERRORS if i in queue]
    return {"errors": len(MNIST_TEST_ERRORS), "in_queue": len(found), "queue_depth": len(queue),
            "past_strict_cut": sum(i in strict for i in MNIST_TEST_ERRORS),
            "suggestion_is_what_people_saw": sum(queue[i]["suggested"] == str(MNIST_TEST_ERRORS[i][1]) for i in found)}


def first_screen(reference: Path, work: Path, cards: int = 50_000) -> dict[str, Any] | None:
    """A run with a 50,000-card queue (the reference run's files, its queue made up): the time until the
    page shows the first card, in Chromium (else the API's first page)."""
    if not (reference / "prepare.json").is_file():
        return None
    run = work / "big"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    for f in reference.iterdir():
        if f.is_file() and not f.name.startswith("suspects") and f.name not in ("corrections.csv", "labeled.csv",
                                                                              "review_log.jsonl"):
            (run / f.name).symlink_to(f.resolve())
    rows = [r for r in csv.DictReader(open(reference / "manifest.csv"))][:cards]
    rng = np.random.default_rng(0)
    with open(run / "suspects_ranked.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("path", "label", "suggested", "confidence", "score", "split", "flagged"))
        for r in rows:
            w.writerow((r["path"], r["label"], str(int(rng.integers(10))), 0.5, 0.5, r["split"], "false"))
    proc, base = _serve(run)
    try:
        return _time_page(base, len(rows))
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _time_page(base: str, n: int) -> dict[str, Any]:
    import httpx

    t0 = time.perf_counter()
    httpx.get(f"{base}/api/queue/suspects", params={"limit": 100}, timeout=60).raise_for_status()
    api_s = time.perf_counter() - t0
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"cards": n, "api_first_page_s": round(api_s, 3), "first_screen_s": None}
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        t0 = time.perf_counter()
        page.goto(f"{base}/", wait_until="commit")
        page.wait_for_function("(() => { const i = document.querySelector('#grid .card img');"
                               " return i && i.complete && i.naturalWidth > 0; })()", timeout=60000)
        screen = time.perf_counter() - t0
        browser.close()
    return {"cards": n, "api_first_page_s": round(api_s, 3), "first_screen_s": round(screen, 3)}


def format_table(r: dict[str, Any]) -> str:
    lines = []
    if r.get("loop"):
        x = r["loop"]
        lines += [f"planted flips ({NOISE:.0%} of 10,000 MNIST labels): {x['planted']}; fixed by accepting the "
                  f"suspects queue: {x['fixed']}; clean labels changed: {x['clean_changed']}",
                  f"decisions: {x['decisions']} ({x['decisions_per_fix']} per fixed error); POST /api/decide p95 "
                  f"{x['p95_ms']} ms, median {x['median_ms']} ms",
                  f"test accuracy: before the review {x['accuracy_before']:.4f}, after {x['accuracy_after']:.4f} "
                  f"({x['accuracy_after_given_labels']:.4f} on the test labels as given), with no flips "
                  f"{x['accuracy_clean']:.4f}"]
    if r.get("real"):
        x = r["real"]
        lines.append(f"confirmed MNIST test-set label errors: {x['in_queue']} of {x['errors']} in the review queue "
                     f"({x['queue_depth']} cards), {x['past_strict_cut']} past the strict cut; the suggestion is what "
                     f"people saw for {x['suggestion_is_what_people_saw']}")
    if r.get("screen"):
        x = r["screen"]
        lines.append(f"first screen of a {x['cards']:,}-card queue: {x['first_screen_s']} s in Chromium "
                     f"(the API's first page: {x['api_first_page_s']} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.review_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="bench-results/review")
    parser.add_argument("--reference", default="runs/mnist", help="the reference run (make all)")
    parser.add_argument("--params", default="params.toml")
    parser.add_argument("--parts", default="loop,real,screen")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    from pipeline.data import mnist

    work, parts = Path(args.work).resolve(), args.parts.split(",")
    params, reference = Path(args.params).resolve(), Path(args.reference).resolve()
    result: dict[str, Any] = {}
    if "loop" in parts:
        source = mnist.find_source(None, default=mnist.DEFAULT_RAW)
        if source is None:
            raise SystemExit("the review loop needs local MNIST files (MNIST_DIR or datasets/raw/mnist)")
        result["loop"] = loop(work, source, params)
    if "real" in parts:
        result["real"] = real_errors(reference, params)
    if "screen" in parts:
        result["screen"] = first_screen(reference, work)
    publish(args.out, "review", result, format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
