"""The review page's API and store: queues from a run's files, durable decisions (relabel, exclude, keep,
labels for new images), undo across restarts, the 4xx cases, no path traversal, the new images' order."""
import csv
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline.shared import runfolder as rf
from pipeline.shared.params import PrepareParams, PreprocessParams
from pipeline.stages.prepare import prepare

from conftest import SHADES, shade_image, write_image

pytest.importorskip("httpx", reason="the API tests need httpx (pip install -e .[dev])")
from fastapi.testclient import TestClient  # noqa: E402

from pipeline.faces.review import create_app  # noqa: E402


def _write(path, header, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def make_run(root, bundle):
    """A prepared SHADES run with the tiny model as its bundle, and a file for each queue."""
    rng = np.random.default_rng(2)
    for label in sorted(SHADES):
        for i in range(10):
            write_image(root / "data" / label / f"{i}.png", shade_image(label, rng))
    run = root / "run"
    prepare(root / "data", run, PrepareParams(workers=1, test_size=0.3), PreprocessParams())
    shutil.copytree(bundle, run / "model")
    rows = list(csv.DictReader(open(run / rf.MANIFEST)))
    p = [r["path"] for r in rows]
    _write(run / rf.SUSPECTS_RANKED, ("path", "label", "suggested", "confidence", "score", "split", "flagged"),
           [(p[0], rows[0]["label"], "mid", 0.9, 0.95, rows[0]["split"], "true"),
            (p[1], rows[1]["label"], "light", 0.6, 0.7, rows[1]["split"], "false")])
    _write(run / rf.SIMILAR, ("group", "path", "label", "split", "kind", "similarity"),
           [(0, p[2], rows[2]["label"], "train", "copy", 1.0), (0, p[-1], rows[-1]["label"], "test", "copy", 1.0)])
    _write(run / rf.OUTLIERS, ("path", "label", "split", "score", "z"), [(p[3], rows[3]["label"], "train", 0.4, 7.5)])
    _write(run / rf.QUALITY, ("path", "label", "split", "issue", "score"),
           [(p[4], rows[4]["label"], "train", "dark", 3.1), (p[4], rows[4]["label"], "train", "blurry", 2.0),
            ("/etc/passwd", "dark", "train", "dark", 9.9)])  # a path outside the data: listed, never served
    return run, rows


@pytest.fixture
def review(shade_bundle, tmp_path):
    run, rows = make_run(tmp_path, shade_bundle)
    return run, rows, TestClient(create_app(run))


def test_queues_show_what_exists_for_the_run(review):
    run, rows, client = review
    q = client.get("/api/queues").json()
    counts = {x["name"]: x["count"] for x in q["queues"]}
    assert counts == {"suspects": 2, "duplicates": 2, "outliers": 1, "quality": 2}  # no misclassified: not evaluated
    assert q["labels"] == sorted(SHADES) and q["keys"] == {"dark": "1", "light": "2", "mid": "3"}
    page = client.get("/api/queue/suspects").json()
    first = page["items"][0]
    assert set(first) >= {"id", "path", "label", "suggested", "confidence", "reason", "decision"}
    assert first["strict"] and not page["items"][1]["strict"] and first["decision"] is None
    (dup,) = [i for i in client.get("/api/queue/duplicates").json()["items"] if i["split"] == "test"]
    assert "a copy of" in dup["reason"]
    (bad,) = [i for i in client.get("/api/queue/quality").json()["items"] if i["path"] == rows[4]["path"]]
    assert bad["reason"] == "image quality: dark, blurry"


def test_decisions_are_on_disk_and_survive_a_restart_with_undo(review, shade_bundle):
    run, rows, client = review
    items = client.get("/api/queue/suspects").json()["items"]
    r = client.post("/api/decide", json={"id": items[0]["id"], "action": "relabel", "label": items[0]["suggested"]})
    assert r.status_code == 200 and r.json()["decisions"][0]["action"] in ("relabel", "keep")
    client.post("/api/decide", json={"id": items[1]["id"], "action": "exclude"})
    outlier = client.get("/api/queue/outliers").json()["items"][0]
    client.post("/api/decide", json={"ids": [outlier["id"]], "action": "keep"})
    got = {r["path"]: r for r in csv.DictReader(open(run / rf.CORRECTIONS))}
    assert got[items[1]["path"]]["label"] == "exclude" and got[outlier["path"]]["decision"] == "keep"
    assert got[outlier["path"]]["label"] == outlier["label"]  # keep: the given label, applied as no change
    # a new server on the same run: the same state; undo works across the restart
    again = TestClient(create_app(run))
    assert again.get("/api/queue/suspects").json()["items"][1]["decision"]["action"] == "exclude"
    assert again.post("/api/undo").json()["undone"]["path"] == outlier["path"]
    got = {r["path"] for r in csv.DictReader(open(run / rf.CORRECTIONS))}
    assert outlier["path"] not in got and items[1]["path"] in got
    assert {q["name"]: q["reviewed"] for q in again.get("/api/queues").json()["queues"]}["suspects"] == 2


def test_a_new_class_must_be_asked_for(review):
    run, rows, client = review
    item = client.get("/api/queue/suspects").json()["items"][0]
    r = client.post("/api/decide", json={"id": item["id"], "action": "relabel", "label": "zebra"})
    assert r.status_code == 422 and "new_class" in r.json()["error"]
    assert client.post("/api/decide", json={"id": item["id"], "action": "relabel", "label": "zebra",
                                            "new_class": True}).status_code == 200
    assert {r["label"] for r in csv.DictReader(open(run / rf.CORRECTIONS))} == {"new:zebra"}
    listed = client.get("/api/queues").json()
    assert listed["labels"][-1] == "zebra" and "zebra" in listed["keys"]  # a class now, before any prepare
    other = client.get("/api/queue/suspects").json()["items"][1]
    assert client.post("/api/decide", json={"id": other["id"], "action": "relabel", "label": "zebra"}).status_code == 200
    client.post("/api/undo")
    for label, words in (("../evil", "folder"), ("a\nb", "control"), ("..", "folder"), ("x" * 101, "1-100")):
        r = client.post("/api/decide", json={"id": item["id"], "action": "relabel", "label": label, "new_class": True})
        assert r.status_code == 422 and words in r.json()["error"], (label, r.json())
    r = client.post("/api/decide", json={"id": item["id"], "action": "relabel", "label": "yak", "new_class": "yes"})
    assert r.status_code == 422 and "true or false" in r.json()["error"]
    assert client.post("/api/decide", json={"id": item["id"], "action": "relabel", "label": "new:okapi",
                                            "new_class": True}).status_code == 200  # the prefix is kept once
    assert [r["label"] for r in csv.DictReader(open(run / rf.CORRECTIONS))] == ["new:okapi"]


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "malformed JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"id": "0000000000000000", "action": "keep"}', 404, "unknown card"),
    (b'{"action": "keep"}', 422, '"id"'),
    (b'{"id": "ID", "action": "delete"}', 422, "relabel, exclude or keep"),
    (b'{"id": "ID", "action": "relabel"}', 422, 'needs a "label"'),
    (b'{"id": "ID", "action": "relabel", "label": 5}', 422, "as a string. Received: 5"),
    (b'{"id": 12, "action": "keep"}', 422, "a string as /api/queue gives it. Received: 12"),
])
def test_bad_requests_get_a_4xx_with_a_reason(review, body, status, words):
    _, _, client = review
    real = client.get("/api/queue/suspects").json()["items"][0]["id"]
    r = client.post("/api/decide", content=body.replace(b"ID", real.encode()),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == status and words in r.json()["error"]
    assert client.get("/api/queue/nope").status_code == 404
    assert client.get("/api/queue/suspects?limit=100000").status_code == 422


def test_no_file_outside_the_data_is_served(review):
    _, _, client = review
    quality = client.get("/api/queue/quality").json()["items"]
    outside = next(i for i in quality if i["path"] == "/etc/passwd")
    assert client.get(f"/api/image/{outside['id']}").status_code == 404
    for probe in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "../run/labels.json"):
        assert client.get(f"/api/image/{probe}").status_code == 404
    inside = next(i for i in quality if i["path"] != "/etc/passwd")
    r = client.get(f"/api/image/{inside['id']}")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).format == "PNG"
    assert client.get(f"/api/view/{inside['id']}").status_code == 200


def test_new_images_come_most_uncertain_first_unfamiliar_apart_and_copies_once(shade_bundle, tmp_path):
    run, _ = make_run(tmp_path, shade_bundle)
    rng = np.random.default_rng(9)
    new = tmp_path / "new"
    write_image(new / "clear_dark.png", shade_image("dark", rng))
    blend = ((shade_image("dark", rng).astype(int) + shade_image("mid", rng)) // 2).astype(np.uint8)
    write_image(new / "between.png", blend)
    write_image(new / "between_copy.png", blend)  # the same image twice: one card
    write_image(new / "noise.png", (rng.random((20, 20)) * 255).astype(np.uint8))
    outside = write_image(tmp_path / "outside" / "o.png", shade_image("mid", rng))
    (new / "link_out.png").symlink_to(outside)  # a link out of the folder: never a card (it is never served)
    (new / "notes.png").write_text("not an image")
    client = TestClient(create_app(run, new))
    items = client.get("/api/queue/unlabeled").json()["items"]
    assert not any("link_out" in i["path"] or "notes" in i["path"] for i in items)
    names = [i["path"].rsplit("/", 1)[-1] for i in items]
    familiar = [i for i in items if i["familiar"]]
    assert len(items) == 3 and items == familiar + [i for i in items if not i["familiar"]]  # unfamiliar ones apart
    assert "noise.png" in names[len(familiar):] and "clear_dark.png" in names[:len(familiar)]
    for group in (items[:len(familiar)], items[len(familiar):]):  # most uncertain (smallest margin) first
        margins = [i["top"][0][1] - i["top"][1][1] for i in group]
        assert all(a <= b + 1e-3 for a, b in zip(margins, margins[1:])) and all(len(i["top"]) == 3 for i in group)
    between = next(i for i in items if i["path"].rsplit("/", 1)[-1].startswith("between"))
    assert len(between["members"]) == 1 and "stands for 2" in between["reason"]
    client.post("/api/decide", json={"id": between["id"], "action": "relabel", "label": "mid"})
    labeled = list(csv.DictReader(open(run / rf.LABELED)))
    assert sorted(r["path"].rsplit("/", 1)[-1] for r in labeled) == ["between.png", "between_copy.png"]
    assert all(r["label"] == "mid" and r["path"].startswith("/") for r in labeled)
