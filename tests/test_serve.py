"""`pipeline serve`: the JSON API (FastAPI's test client) and the page in headless Chromium."""
from __future__ import annotations

import base64
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CHROMIUM, REPO, SHADES, chromium_page, shade_image, without_training_stack

pytest.importorskip("httpx", reason="the API tests need httpx (pip install -e .[dev])")
from fastapi.testclient import TestClient  # noqa: E402

from pipeline.faces.serve import Limits, create_app  # noqa: E402
from pipeline.shared.params import PredictParams  # noqa: E402


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(shade_bundle):
    return TestClient(create_app(shade_bundle, Limits(max_files=4, max_bytes=64 * 1024), PredictParams(top_k=2)))


def _post(client, *files, **kw):
    return client.post("/predict", files=[("files", (name, data, "application/octet-stream")) for name, data in files],
                       **kw)


def test_health_labels_page_and_offline_openapi_docs(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["labels"] == 3 and h["input_shape"] == [28, 28, 1]
    assert h["limits"] == {"max_files": 4, "max_bytes": 65536}
    assert client.get("/labels").json() == {"labels": sorted(SHADES)}
    page = client.get("/").text
    assert '<canvas id="pad"' in page and 'type="file"' in page and "multiple" in page
    # no external assets: nothing is fetched from another host
    assert not re.search(r'(src|href)="(https?:)?//', page) and "@import" not in page and "url(" not in page
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/health", "/labels"} <= set(schema["paths"])
    docs = client.get("/docs").text
    assert "/docs-static/swagger-ui-bundle.js" in docs and "cdn." not in docs
    assert client.get("/docs-static/swagger-ui-bundle.js").status_code == 200
    assert h["runtime"] == "onnx"  # the bundle has its model.onnx and onnxruntime is installed
    assert h["memory"]["rss_mb"] > 0 and h["memory"]["peak_rss_mb"] >= h["memory"]["rss_mb"]
    assert h["batching"]["max_images"] >= 1 and h["batching"]["wait_ms"] > 0


def test_predict_one_and_many_images(client):
    rng = np.random.default_rng(5)
    r = _post(client, ("d.png", _png(shade_image("dark", rng))))
    assert r.status_code == 200
    (res,) = r.json()["results"]
    assert res["file"] == "d.png" and res["label"] == "dark" and res["error"] is None
    assert [t["label"] for t in res["top_k"]][0] == "dark" and len(res["top_k"]) == 2
    assert res["confidence"] == pytest.approx(res["top_k"][0]["probability"])
    with Image.open(io.BytesIO(base64.b64decode(res["input_png"].split(",", 1)[1]))) as seen:
        assert seen.size == (28, 28)  # the model's view, after the bundle's preprocessing
    # several at once, in order; one unreadable file gets its own error, the rest are predicted
    files = [(f"{lab}.jpg", _jpeg(shade_image(lab, rng, rgb=True))) for lab in ("light", "mid")]
    r = _post(client, *files, ("notes.txt", b"hello"), params={"top_k": 3})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["file"] for x in results] == ["light.jpg", "mid.jpg", "notes.txt"]
    assert [x.get("label") for x in results[:2]] == ["light", "mid"] and len(results[0]["top_k"]) == 3
    assert results[2]["error"].startswith("not an image")


def test_the_short_path_answers_as_the_framework_does(client):
    """A plain upload is answered without the framework's form parsing; one with another field (or another
    query) goes through FastAPI: the same results."""
    rng = np.random.default_rng(9)
    files = [(f"{lab}.png", _png(shade_image(lab, rng))) for lab in SHADES]
    short = _post(client, *files, params={"top_k": 1}).json()
    full = _post(client, *files, params={"top_k": 1, "explain": "false"}, data={"note": "x"}).json()
    assert short == full and len(short["results"]) == 3 and all(len(r["top_k"]) == 1 for r in short["results"])
    assert _post(client, ("a.txt", b"text")).json() == _post(client, ("a.txt", b"text"), data={"n": "1"}).json()
    # explain: the occlusion maps' forward passes come from a worker thread, and run on the loop's batcher
    explained = _post(client, files[0], params={"explain": "true"}).json()["results"][0]
    assert explained["label"] == short["results"][0]["label"] and explained["saliency_png"].startswith("data:image/png")


def test_serve_labels_images_as_predict_does(shade_bundle, tmp_path):
    """The same images, with a confidence cut and unfamiliar = "unknown": the web API and `pipeline predict`
    give every image the same label (one rule, one row)."""
    from pipeline.stages.predict import predict

    rng = np.random.default_rng(11)
    files = {f"{label}.png": _png(shade_image(label, rng)) for label in SHADES}
    files.update({f"noise{i}.png": _png((rng.random((20, 20)) * 255).astype(np.uint8)) for i in range(2)})
    blend = np.clip((shade_image("dark", rng).astype(int) + shade_image("mid", rng)) // 2, 0, 255).astype(np.uint8)
    files["between.png"] = _png(blend)  # a shade between two classes: less confident
    for name, data in files.items():
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data)
    p = PredictParams(workers=1, threshold=0.9, unfamiliar="unknown", unknown_label="?")
    predict(tmp_path / "in", shade_bundle, tmp_path / "p.csv", p)
    with open(tmp_path / "p.csv", newline="") as fh:
        by_predict = {r["path"]: r["label"] for r in __import__("csv").DictReader(fh)}
    app = TestClient(create_app(shade_bundle, Limits(max_files=8, max_bytes=64 * 1024), p))
    results = _post(app, *files.items()).json()["results"]
    by_serve = {r["file"]: r["label"] for r in results}
    assert by_serve == by_predict and "?" in by_serve.values()  # the rules were applied, by both
    assert all(isinstance(r["familiar"], bool) for r in results)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_bad_input_is_a_clear_4xx_never_a_500(client):
    good = _png(shade_image("mid", np.random.default_rng(0)))
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, "PNG")  # 144M pixels declared in a tiny file
    cases = {
        "non-image": ([("a.txt", b"just text")], 422, "not an image"),
        "truncated": ([("t.png", good[:60])], 422, "truncated"),
        "empty file": ([("e.png", b"")], 422, "empty"),
        "decompression bomb": ([("bomb.png", bomb.getvalue())], 422, "decompression bomb"),
        "oversized file": ([("big.png", good + b"\0" * 70 * 1024)], 413, "larger than"),
        "too many files": ([(f"{i}.png", good) for i in range(5)], 413, "too many files"),
    }
    for what, (files, status, text) in cases.items():
        r = _post(client, *files)
        assert r.status_code == status, (what, r.text)
        assert text in r.json()["error"], (what, r.json())
    r = client.post("/predict", data={"x": "1"})
    assert r.status_code == 422 and "no images" in r.json()["error"]
    r = client.post("/predict", data={"files": "x"})  # a text value, not a file
    assert r.status_code == 422 and "must hold files" in r.json()["error"]
    r = _post(client, ("g.png", good), params={"top_k": 0})
    assert r.status_code == 422 and "top_k" in r.json()["error"]
    r = client.post("/predict", content=b"x" * 10, headers={"content-length": str(10**9),
                                                           "content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "request too large" in r.json()["error"]


def test_an_upload_without_its_length_is_refused_with_411(client):
    """The short path takes only uploads whose length it knows; the others get the size limit's answer."""
    import asyncio

    sent = []

    async def receive():
        return {"type": "http.request", "body": b"--b--", "more_body": False}

    async def send(message):
        sent.append(message)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"multipart/form-data; boundary=b")],
             "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000)}
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 411


def test_nothing_from_a_request_is_written(client, shade_bundle, tmp_path, monkeypatch):
    """Uploads are decoded in memory: the working folder and the bundle stay as they were."""
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in Path(shade_bundle).iterdir())
    rng = np.random.default_rng(2)
    names = [f"../../x{i}.png" for i in range(3)] + ["..\\..\\w.png", "C:\\Users\\me\\c.png"]
    r = _post(client, *[(name, _png(shade_image("light", rng))) for name in names[:4]])
    assert [x["file"] for x in r.json()["results"]] == ["x0.png", "x1.png", "x2.png", "w.png"]  # never a folder
    r = _post(client, (names[4], _png(shade_image("light", rng))), data={"n": "1"})  # the framework's path too
    assert r.json()["results"][0]["file"] == "c.png"
    assert list(tmp_path.iterdir()) == [] and sorted(p.name for p in Path(shade_bundle).iterdir()) == before


# ---------------------------------------------------------------- concurrent requests
class _Server:
    """The app served by uvicorn in a thread of this process, on a free port."""

    def __init__(self, app):
        import threading

        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.server.config.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _concurrently(url, requests):
    """POST every request ([(name, bytes)], from its own thread, all at once); the responses in order."""
    import threading

    import httpx

    answers = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def send(i):
        with httpx.Client(timeout=60) as client:  # made first: a new client loads CA certificates (ms of CPU)
            start.wait()
            answers[i] = client.post(f"{url}/predict", files=[("files", f) for f in requests[i]])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_concurrent_requests_each_get_their_own_answer(shade_bundle):
    """Requests from 24 clients at once share model calls (the batcher) and each gets the rows of its own
    images, in order: no mix-ups. The batcher is told that the last call had 24 requests, so the first call
    waits (up to 2 s: also on a loaded machine) until they have come, as it does for steady clients."""
    rng = np.random.default_rng(21)
    labels = list(SHADES)
    requests, truth = [], []
    for i in range(24):
        names = [labels[(i + j) % 3] for j in range(1 + i % 3)]  # 1 to 3 images each
        requests.append([(f"r{i}-{j}-{name}.png", _png(shade_image(name, rng))) for j, name in enumerate(names)])
        truth.append(names)
    app = create_app(shade_bundle, Limits(max_files=4, max_bytes=64 * 1024), PredictParams(), wait_ms=2000)
    app.state.service.batcher._last = len(requests)
    with _Server(app) as url:
        answers = _concurrently(url, requests)
        batching = httpx_get(f"{url}/health")["batching"]
    for request, names, answer in zip(requests, truth, answers):
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert [r["file"] for r in results] == [name for name, _ in request]
        assert [r["label"] for r in results] == names
    assert batching["requests"] == 24 and batching["largest"] > 1 and batching["batches"] < 24, batching


def httpx_get(url):
    import httpx

    return httpx.get(url, timeout=30).json()


def test_a_malformed_upload_while_the_batcher_is_busy_is_a_4xx_and_the_others_succeed(shade_bundle):
    """The model made slow, so requests queue behind a running call: the malformed ones (not an image, cut
    short, a broken multipart body) are answered 4xx at once, the good ones all get their labels."""
    import httpx

    rng = np.random.default_rng(22)
    app = create_app(shade_bundle, Limits(max_files=4, max_bytes=64 * 1024), PredictParams(), wait_ms=5)
    batcher = app.state.service.batcher
    model = batcher.model
    batcher.model = lambda x: (time.sleep(0.05), model(x))[1]  # busy: every call takes 50 ms more
    good = [[(f"{label}{i}.png", _png(shade_image(label, rng)))] for i in range(4) for label in SHADES]
    png = good[0][0][1]
    bad = [[("notes.png", b"not an image at all")], [("cut.png", png[:40])], [("empty.png", b"")]]
    with _Server(app) as url:
        answers = _concurrently(url, good + bad)
        body = b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\"\r\n\r\n" + png[:30]
        broken = httpx.post(f"{url}/predict", content=body, timeout=30,
                            headers={"content-type": "multipart/form-data; boundary=b"})
        after = httpx.post(f"{url}/predict", files=[("files", good[1][0])], timeout=30)
    for request, answer in zip(good, answers[:len(good)]):
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"][0]["label"] == request[0][0].rstrip("0123456789.png")
    for answer in answers[len(good):]:
        assert answer.status_code == 422 and "no readable image" in answer.json()["error"], answer.text
    assert 400 <= broken.status_code < 500 and "error" in broken.json()
    assert after.status_code == 200  # and the server goes on


def test_serve_runs_without_tensorflow(shade_bundle, tmp_path):
    """The light install: a server whose Python cannot import TensorFlow, Keras, scikit-learn, SciPy or
    Matplotlib answers /health (runtime onnx, its memory) and predicts. Started as a shell starts a
    background job (SIGINT ignored), Ctrl-C's signal still stops it, saying so."""
    import httpx

    port = _free_port()
    env = without_training_stack(tmp_path / "light")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--model", str(shade_bundle), "--port",
                             str(port), "--runtime", "onnx"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "serve did not start"
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert health["runtime"] == "onnx" and health["memory"]["rss_mb"] < 400
        rng = np.random.default_rng(23)
        r = httpx.post(f"http://127.0.0.1:{port}/predict", files=[("files", ("m.png", _png(shade_image("mid", rng))))],
                       timeout=30)
        assert r.status_code == 200 and r.json()["results"][0]["label"] == "mid"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---------------------------------------------------------------- the page in a browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--model", str(model), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.25)
    proc.kill()
    raise AssertionError("server did not start within 90 s")


@pytest.mark.slow
def test_page_in_chromium_draw_and_upload_an_mnist_digit(trained_run, tiny_mnist, tmp_path):
    """Headless Chromium: draw a stroke on the canvas, upload an MNIST test PNG (and a bad file);
    the page shows what the model predicts. Saves the screenshot used in the README
    (to $SERVE_SCREENSHOT when set)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (.ci/run installs Debian's chromium package)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    run, _ = trained_run
    from pipeline.data.preprocess import load_image
    from pipeline.shared import bundle

    # $SERVE_MODEL: another bundle, e.g. the reference model for the README's screenshot.
    model = Path(os.environ.get("SERVE_MODEL") or run / "model")
    # An MNIST test digit this small model reads correctly (the page must show its label).
    b = bundle.load(model)
    digit, truth = None, None
    for path in sorted((tiny_mnist / "test").glob("*/*.png"))[::7]:
        probs = b.model.predict(load_image(path, b.preprocess)[None], verbose=0)[0]
        if b.labels[int(probs.argmax())] == path.parent.name and probs.max() > 0.9:
            digit, truth = path, path.parent.name
            break
    assert digit is not None
    upload = tmp_path / f"digit_{truth}.png"
    shutil.copy(digit, upload)
    (tmp_path / "broken.png").write_bytes(upload.read_bytes()[:50])

    port = _free_port()
    server = _start_server(model, port)
    errors, requests = [], []
    try:
        with sync_api.sync_playwright() as pw:
            browser, page = chromium_page(pw, {"width": 1280, "height": 760}, errors, requests)
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
            page.wait_for_function("document.getElementById('model').textContent.includes('labels')")
            # draw a "1": one vertical stroke
            box = page.locator("#pad").bounding_box()
            cx, top = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.15
            page.mouse.move(cx, top)
            page.mouse.down()
            for i in range(1, 11):
                page.mouse.move(cx + i * 0.5, top + i * box["height"] * 0.07)
            page.mouse.up()
            page.wait_for_selector("#canvas-result .card .label", timeout=30000)
            drawn = page.locator("#canvas-result .card .label").text_content()
            bars = page.locator("#canvas-result .bar").count()
            # upload the digit and a broken file
            page.set_input_files("#files", [str(upload), str(tmp_path / "broken.png")])
            page.wait_for_function("document.querySelectorAll('#uploads .card').length == 2", timeout=30000)
            shown = page.locator(f'#uploads .card[data-file="{upload.name}"] .label').text_content()
            broken = page.locator('#uploads .card[data-file="broken.png"] .err').text_content()
            placeholder = page.locator('#uploads .card[data-file="broken.png"] .nothumb').count()
            broken_imgs = page.evaluate("Array.from(document.querySelectorAll('#uploads img'))"
                                        ".filter(i => i.complete && i.naturalWidth == 0).length")
            seen = page.evaluate("Array.from(document.querySelectorAll('img.seen'))"
                                 ".map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            shot = Path(os.environ.get("SERVE_SCREENSHOT") or tmp_path / "serve.png")
            page.screenshot(path=str(shot))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert errors == []
    assert all(u.startswith((f"http://127.0.0.1:{port}/", "data:", "blob:")) for u in requests), requests
    assert drawn in b.labels and bars == 3
    assert shown == truth
    assert "truncated" in broken
    assert placeholder == 1 and broken_imgs == 0  # a placeholder, never a broken-image icon
    # each card: the model's 28x28 view and its saliency overlay (shown 4x)
    assert len(seen) == 4 and all(ok and (w, h) in ((28, 28), (112, 112)) for ok, w, h in seen)
    with Image.open(shot) as img:
        assert img.size == (1280, 760) and len(set(img.convert("L").resize((64, 64)).get_flattened_data())) > 20


def test_health_gives_a_multi_label_models_temperature_per_label():
    from pipeline.faces.serve import _temperature

    assert _temperature({"temperature": 1.3}) == {"temperature": 1.3}
    assert _temperature({"temperature": 1.0, "temperatures": [1.0, 0.5]}) == {"temperatures": [1.0, 0.5]}
    assert _temperature({}) == {"temperature": 1.0}
