"""The review page in a real browser (Playwright driving Debian's Chromium) and the review server killed
with kill -9 in the middle of a burst of decisions: nothing acknowledged is lost."""
import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from pipeline.shared import runfolder as rf

from conftest import CHROMIUM, chromium_page, free_port, start_server, stop_server
from test_review import make_run

pytestmark = pytest.mark.slow  # a server process, a browser


def _start(run: Path, port: int):
    return start_server(["review", "--run", run, "--port", port], f"http://127.0.0.1:{port}/api/queues")


def test_kill_9_during_a_burst_loses_no_acknowledged_decision(shade_bundle, tmp_path):
    import httpx

    run, _ = make_run(tmp_path, shade_bundle)
    port = free_port()
    server = _start(run, port)
    base = f"http://127.0.0.1:{port}"
    cards = [c for q in ("suspects", "duplicates", "outliers", "quality")
             for c in httpx.get(f"{base}/api/queue/{q}").json()["items"]]
    acked, stop = [], threading.Event()

    def burst() -> None:
        with httpx.Client(timeout=10) as client:
            k = 0
            while not stop.is_set():
                c = cards[k % len(cards)]
                action = ("exclude", "keep")[k % 2]
                try:
                    if client.post(f"{base}/api/decide", json={"id": c["id"], "action": action}).status_code == 200:
                        acked.append((c["path"], action, k))
                except httpx.HTTPError:
                    return
                k += 1

    try:
        worker = threading.Thread(target=burst)
        worker.start()
        while len(acked) < 25:
            time.sleep(0.01)
        os.kill(server.pid, signal.SIGKILL)  # mid-burst: some request may be half done
        stop.set()
        worker.join(timeout=30)
    finally:
        stop_server(server)
    log = [json.loads(line) for line in (run / rf.REVIEW_LOG).read_text().splitlines() if line.strip()]
    logged = [(e["path"], e["action"]) for e in log]
    assert all((p, a) in logged for p, a, _ in acked), "an acknowledged decision is missing from the log"
    last = {}
    for p, a, _ in acked:
        last[p] = a
    server = _start(run, port)  # restarted: the files hold at least every acknowledged decision
    try:
        state = {r["path"]: r["decision"] for r in csv.DictReader(open(run / rf.CORRECTIONS))}
        assert set(last) <= set(state)
        again = {c["path"]: c["decision"] for c in httpx.get(f"{base}/api/queue/suspects").json()["items"]}
        assert all(d is not None for d in again.values())
    finally:
        stop_server(server)


def test_keyboard_bulk_assign_undo_and_reload_in_chromium(shade_bundle, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (.ci/run installs Debian's chromium package)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    run, _ = make_run(tmp_path, shade_bundle)
    port = free_port()
    server = _start(run, port)
    errors, requests = [], []
    badges = "Array.from(document.querySelectorAll('#grid .card')).map(c => c.querySelector('.badge')?.textContent || '')"
    try:
        with sync_api.sync_playwright() as pw:
            browser, page = chromium_page(pw, {"width": 1280, "height": 800}, errors, requests)
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
            page.wait_for_selector("#grid .card")
            assert page.locator("#tabs button").count() == 4 and "0 / 2 reviewed" in page.text_content("#progress")
            page.keyboard.press("3")  # the first suspect -> mid (the third label's key)
            page.wait_for_function(f"{badges}[0] === '→ mid' || {badges}[0] === 'kept'")
            page.keyboard.press("x")  # focus moved on: exclude the second
            page.wait_for_function(f"{badges}[1] === 'excluded'")
            assert "2 / 2 reviewed" in page.text_content("#progress")
            page.keyboard.press("z")  # undo the exclusion
            page.wait_for_function(f"{badges}[1] === ''")
            page.click("#tabs button:nth-child(2)")  # copies: select the whole page, keep them all
            page.wait_for_function("document.querySelectorAll('#grid .card').length === 2 && "
                                   f"{badges}.every(b => b === '')")
            page.keyboard.press("a")
            page.keyboard.press("k")
            page.wait_for_function(f"{badges}.every(b => b === 'kept')")
            page.reload(wait_until="load")  # the decisions were on disk: they come back
            page.wait_for_selector("#grid .card .badge")
            first = page.evaluate(badges)
            page.screenshot(path=str(tmp_path / "review.png"))
            browser.close()
    finally:
        stop_server(server)
    assert errors == [] and all(u.startswith((f"http://127.0.0.1:{port}/", "data:")) for u in requests), requests
    assert first[0] in ("→ mid", "kept") and first[1] == ""
    rows = {r["path"]: r["decision"] for r in csv.DictReader(open(run / rf.CORRECTIONS))}
    assert sorted(rows.values()).count("keep") >= 2 and "exclude" not in rows.values()
