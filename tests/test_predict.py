"""Apply: batch prediction to CSV/JSONL, bad files, threshold, sort-into, resume, single image, pixel CSV."""
import csv
import hashlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline.shared import artifacts
from pipeline.shared.params import PredictParams
from pipeline.stages.predict import predict
from pipeline.model.rows import Rules, columns, make_rows
from pipeline.stages.predict.output import read_rows, summary_path

from conftest import REPO, SHADES, shade_image, without_training_stack, write_image


def make_images(root, per_class=4, seed=5):
    """A nested folder of SHADES images in several formats; returns {relative path: true label}."""
    rng = np.random.default_rng(seed)
    truth = {}
    for label in SHADES:
        for i in range(per_class):
            kind = i % 3
            rel = (f"{label}/{i}.png", f"sub/{label}_{i}.jpg", f"sub/deeper/{label}-{i}.bmp")[kind]
            img = shade_image(label, rng, (30 + i, 24), rgb=kind == 1)
            write_image(root / rel, img, quality=95) if kind == 1 else write_image(root / rel, img)
            truth[rel] = label
    return truth


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


P1 = PredictParams(workers=1)


def test_every_image_gets_its_label_and_top_k(shade_bundle, tmp_path):
    truth = make_images(tmp_path / "imgs")
    out = tmp_path / "pred.csv"
    s = predict(tmp_path / "imgs", shade_bundle, out, P1)
    rows = read_csv(out)
    assert list(rows[0]) == ["path", "label", "confidence", "top1_label", "top1_prob", "top2_label", "top2_prob",
                             "top3_label", "top3_prob", "novelty", "familiar", "error"]
    assert [r["path"] for r in rows][:3] == ["dark/0.png", "dark/3.png", "light/0.png"]  # sorted walk
    assert [r["path"] for r in rows][-2:] == ["sub/deeper/light-2.bmp", "sub/deeper/mid-2.bmp"]
    assert {r["path"]: r["label"] for r in rows} == truth
    for r in rows:
        probs = [float(r[f"top{i}_prob"]) for i in (1, 2, 3)]
        assert r["error"] == "" and r["top1_label"] == r["label"] and float(r["confidence"]) == probs[0]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
        assert {r["top1_label"], r["top2_label"], r["top3_label"]} == set(SHADES)
    assert s["status"] == "complete" and s["counts"] == {label: 4 for label in sorted(SHADES)}
    assert json.loads(summary_path(out).read_text())["model_sha256"] == s["model_sha256"]
    # top-k is capped at the number of labels; JSONL carries the same rows
    s2 = predict(tmp_path / "imgs", shade_bundle, tmp_path / "pred.jsonl",
                 PredictParams(workers=1, top_k=5, format="jsonl"))
    lines = [json.loads(x) for x in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert s2["params"]["top_k"] == 3 and {x["path"]: x["label"] for x in lines} == truth
    assert all(isinstance(x["confidence"], float) and x["error"] is None for x in lines)  # null, as the web API
    assert all(isinstance(x["familiar"], bool) for x in lines)  # a JSON boolean, as the web API answers it


def test_parallel_workers_give_identical_rows(shade_bundle, tmp_path):
    make_images(tmp_path / "imgs", per_class=8)
    predict(tmp_path / "imgs", shade_bundle, tmp_path / "one.csv", PredictParams(workers=1, batch_size=4))
    s = predict(tmp_path / "imgs", shade_bundle, tmp_path / "two.csv", PredictParams(workers=2, batch_size=4))
    assert s["rows"] == 24
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "two.csv").read_bytes()


def test_bad_files_get_error_rows_and_the_run_goes_on(shade_bundle, tmp_path):
    truth = make_images(tmp_path / "imgs", per_class=2)
    good = Image.new("L", (40, 40), 128)
    buf = io.BytesIO()
    good.save(buf, "PNG")
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, "PNG")  # 144M pixels: over Pillow's limit, tiny file
    bad = {"zero.png": b"", "truncated.png": buf.getvalue()[:60], "notes.txt": b"not an image at all",
           "fake.jpg": b"GIF89a but not really", "bomb.png": bomb.getvalue()}
    for name, data in bad.items():
        (tmp_path / "imgs" / "bad" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / "bad" / name).write_bytes(data)
    s = predict(tmp_path / "imgs", shade_bundle, tmp_path / "p.csv", P1)
    rows = {r["path"]: r for r in read_csv(tmp_path / "p.csv")}
    assert len(rows) == len(truth) + len(bad) and s["errors"] == len(bad) and s["predicted"] == len(truth)
    reasons = {name: rows[f"bad/{name}"]["error"] for name in bad}
    assert "empty file" in reasons["zero.png"] and "truncated" in reasons["truncated.png"]
    assert "not an image" in reasons["notes.txt"] and "not an image" in reasons["fake.jpg"]
    assert "decompression bomb" in reasons["bomb.png"]
    for name in bad:
        r = rows[f"bad/{name}"]
        assert r["label"] == "" and r["confidence"] == "" and r["top1_label"] == ""
    assert all(rows[p]["label"] == label for p, label in truth.items())
    assert sum(s["errors_by_reason"].values()) == len(bad)


def test_threshold_labels_low_confidence_unknown(shade_bundle, tmp_path):
    for level in range(40, 216, 5):  # from dark through mid to light: the in-between ones are uncertain
        write_image(tmp_path / "imgs" / f"{level:03d}.png", np.full((20, 20), level, np.uint8))
    base = {r["path"]: r for r in read_csv(_run(shade_bundle, tmp_path, "base.csv", P1))}
    confs = sorted({float(r["confidence"]) for r in base.values()})
    cut = (confs[len(confs) // 2 - 1] + confs[len(confs) // 2]) / 2
    p = PredictParams(workers=1, threshold=cut, unknown_label="not sure")
    rows = read_csv(_run(shade_bundle, tmp_path, "t.csv", p))
    unknown = [r for r in rows if r["label"] == "not sure"]
    assert 0 < len(unknown) < len(rows)
    for r in rows:  # top-k still names the real labels; only the decision changes
        assert r["top1_label"] == base[r["path"]]["label"]
        assert (r["label"] == "not sure") == (float(r["confidence"]) < cut)
    with pytest.raises(ValueError, match="also a label"):
        predict(tmp_path / "imgs", shade_bundle, tmp_path / "x.csv", PredictParams(workers=1, threshold=0.5,
                                                                                  unknown_label="mid"))
    with pytest.raises(ValueError, match=r"threshold must be \"auto\" or in \[0, 1\]"):
        PredictParams(threshold=1.5)


def test_http_rows_list_labels_for_every_multi_label_row_only():
    """The web answer's ``labels`` list follows the model's rules, not the label text: a single-label class
    named "a;b" is one label."""
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.9, 0.1]])
    single = make_rows(["x.png", "y.png"], ["", ""], probs, ["a;b", "c", "d"], Rules(2))
    assert single[0].label == "a;b" and "labels" not in single[0].as_http()
    multi = make_rows(["x.png", "y.png"], ["", ""], probs, ["a", "c", "d"], Rules(2, cuts=(0.5, 0.5, 0.5)))
    assert multi[1].as_http()["labels"] == ["c", "a"] and multi[1].as_http()["label"] == "c;a"
    assert multi[0].as_http()["labels"] == ["a"]  # one label: a list all the same, as a client reads it
    none = make_rows(["z.png"], [""], np.array([[0.1, 0.2, 0.3]]), ["a", "c", "d"], Rules(2, cuts=(0.5, 0.5, 0.5)))
    assert none[0].as_http()["labels"] == [] and none[0].as_http()["label"] == ""


def _run(bundle, tmp_path, name, p, **kw):
    predict(tmp_path / "imgs", bundle, tmp_path / name, p, **kw)
    return tmp_path / name


def _snapshot(root):
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_sort_into_copies_or_links_and_never_touches_originals(shade_bundle, tmp_path):
    truth = make_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    before = _snapshot(tmp_path / "imgs")
    dest = tmp_path / "sorted"
    s = predict(tmp_path / "imgs", shade_bundle, tmp_path / "p.csv", P1, sort_into=dest)
    assert _snapshot(tmp_path / "imgs") == before
    assert s["sorted"] == len(truth)
    for rel, label in truth.items():
        copy = dest / label / rel
        assert copy.is_file() and not copy.is_symlink()
        assert copy.read_bytes() == (tmp_path / "imgs" / rel).read_bytes()
    assert not any(p.name == "broken.png" for p in dest.rglob("*"))  # error rows are not sorted
    # nothing in DIR is overwritten: a re-run leaves an edited copy alone
    edited = dest / truth["mid/0.png"] / "mid/0.png"
    edited.write_bytes(b"user edit")
    s = predict(tmp_path / "imgs", shade_bundle, tmp_path / "p.csv", P1, sort_into=dest)
    assert edited.read_bytes() == b"user edit" and s["sort_existing"] == len(truth) and s["sorted"] == 0
    # links: symlinks to the originals
    predict(tmp_path / "imgs", shade_bundle, tmp_path / "l.csv", P1, sort_into=tmp_path / "links", link=True)
    link = tmp_path / "links" / "dark" / "dark/0.png"
    assert link.is_symlink() and link.resolve() == (tmp_path / "imgs" / "dark/0.png").resolve()
    assert _snapshot(tmp_path / "imgs") == before
    with pytest.raises(ValueError, match="must not be IMAGES"):
        predict(tmp_path / "imgs", shade_bundle, tmp_path / "x.csv", P1, sort_into=tmp_path)


def test_outputs_inside_images_are_not_predicted(shade_bundle, tmp_path):
    truth = make_images(tmp_path / "imgs")
    out = tmp_path / "imgs" / "pred.csv"
    for _ in range(2):  # the second walk sees the first run's CSV, summary and sorted copies
        s = predict(tmp_path / "imgs", shade_bundle, out, P1, sort_into=tmp_path / "imgs" / "sorted")
        assert s["rows"] == len(truth) and s["errors"] == 0


def _interrupt_at(monkeypatch, call):
    from pipeline.model.infer import Predictor

    real, calls = Predictor.__call__, []

    def flaky(self, x):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(Predictor, "__call__", flaky)


@pytest.mark.slow
def test_resume_after_interruption_gives_the_uninterrupted_csv(shade_bundle, tmp_path, monkeypatch):
    make_images(tmp_path / "imgs", per_class=6)
    (tmp_path / "imgs" / "zz_bad.png").write_bytes(b"")
    p = PredictParams(workers=1, batch_size=4)
    full = _run(shade_bundle, tmp_path, "full.csv", p).read_bytes()
    n_rows = len(full.decode().splitlines()) - 1
    # Ctrl-C during the 4th batch (the first call is the warm-up): the file holds 2 whole blocks
    _interrupt_at(monkeypatch, 4)
    out = tmp_path / "resumed.csv"
    with pytest.raises(KeyboardInterrupt):
        predict(tmp_path / "imgs", shade_bundle, out, p)
    monkeypatch.undo()
    assert len(read_csv(out)) == 8 and out.read_bytes() == full[:len(out.read_bytes())]
    assert json.loads(summary_path(out).read_text())["status"] == "running"
    s = predict(tmp_path / "imgs", shade_bundle, out, p, resume=True)
    assert out.read_bytes() == full and s["new_rows"] == n_rows - 8 and s["status"] == "complete"
    # kill -9 in the middle of a write: a cut last row is dropped, then the rest is added
    cut = full[:full.index(b"\n", len(full) // 2) + 25]
    out.write_bytes(cut)
    s = predict(tmp_path / "imgs", shade_bundle, out, p, resume=True)
    assert out.read_bytes() == full and s["rows"] == n_rows and s["errors"] == 1
    # resuming a finished run does nothing; resuming with other options is refused
    assert predict(tmp_path / "imgs", shade_bundle, out, p, resume=True)["new_rows"] == 0
    with pytest.raises(artifacts.StageError, match="another row_options"):
        predict(tmp_path / "imgs", shade_bundle, out, PredictParams(workers=1, batch_size=4, top_k=2), resume=True)
    # the number of workers does not change a row: resuming with another is fine
    assert predict(tmp_path / "imgs", shade_bundle, out, PredictParams(workers=2, batch_size=4),
                   resume=True)["rows"] == n_rows


def test_resume_refuses_rows_of_a_model_with_other_labels(shade_bundle, tmp_path):
    make_images(tmp_path / "imgs", per_class=1)
    out = tmp_path / "p.csv"
    predict(tmp_path / "imgs", shade_bundle, out, P1)
    summary = json.loads(summary_path(out).read_text())
    assert summary["labels"] == sorted(SHADES) and summary["input_shape"] == [28, 28, 1]
    summary_path(out).write_text(json.dumps({**summary, "labels": ["cat", "dog"]}))  # as another model wrote it
    with pytest.raises(ValueError, match=r"cannot resume .* a model with other labels \(\['cat', 'dog'\]"):
        predict(tmp_path / "imgs", shade_bundle, out, P1, resume=True)


def test_resume_jsonl_drops_a_cut_line(shade_bundle, tmp_path):
    make_images(tmp_path / "imgs")
    p = PredictParams(workers=1, batch_size=4, format="jsonl")
    full = _run(shade_bundle, tmp_path, "full.jsonl", p).read_bytes()
    out = tmp_path / "r.jsonl"
    predict(tmp_path / "imgs", shade_bundle, out, p)
    out.write_bytes(full[:full.index(b"\n", 300) + 40])
    rows, cut = read_rows(out, columns(3), "jsonl")
    assert cut and rows
    predict(tmp_path / "imgs", shade_bundle, out, p, resume=True)
    assert out.read_bytes() == full


def cli(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pipeline", "predict", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_folder_run_prints_a_summary(shade_bundle, tmp_path):
    truth = make_images(tmp_path / "imgs", per_class=2)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"")
    res = cli(tmp_path / "imgs", "--model", shade_bundle, "--out", tmp_path / "p.csv", "--top-k", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{len(truth) + 1} files: {len(truth)} predicted, 1 unreadable" in res.stdout
    assert "error: empty file (0 bytes): 1" in res.stdout and "img/s" in res.stderr  # the tqdm bar
    assert columns(2) == list(read_csv(tmp_path / "p.csv")[0])


def test_cli_single_image_pixel_csv_and_exit_codes(shade_bundle, tmp_path, capsys):
    from pipeline import __main__ as pipeline_cli

    def run(*args):
        return pipeline_cli.main(["predict", *map(str, args), "--params", os.devnull])

    # one image: the result is printed; the log goes to <run>/logs beside the bundle
    make_images(tmp_path / "imgs", per_class=1)
    one = tmp_path / "imgs" / "mid" / "0.png"
    assert run(one, "--model", shade_bundle) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{one}: mid (") and "top-3: mid" in out
    assert (shade_bundle.parent / "logs" / "predict.log").is_file()
    # default output for a folder: <run>/predictions.csv
    assert run(tmp_path / "imgs", "--model", shade_bundle) == 0
    assert len(read_csv(shade_bundle.parent / "predictions.csv")) == 3
    # a pixel CSV (Kaggle test.csv form: no label column)
    rng = np.random.default_rng(3)
    pix = [shade_image(label, rng, (28, 28)).ravel() for label in ("dark", "light")]
    lines = [",".join(f"pixel{i}" for i in range(784))] + [",".join(map(str, r)) for r in pix] + ["1,2,3"]
    (tmp_path / "test.csv").write_text("\n".join(lines) + "\n")
    assert run(tmp_path / "test.csv", "--model", shade_bundle, "--out", tmp_path / "px.csv") == 0
    rows = read_csv(tmp_path / "px.csv")
    assert [r["path"] for r in rows] == ["test.csv#0", "test.csv#1", "test.csv#2"]
    assert [r["label"] for r in rows[:2]] == ["dark", "light"] and "row has 3 values" in rows[2]["error"]
    # nothing readable, nothing there, or bad options -> exit 2 (bad input; 1 is a bug); the rows still say why
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"")
    assert run(tmp_path / "junk", "--model", shade_bundle, "--out", tmp_path / "j.csv") == 2
    assert read_csv(tmp_path / "j.csv")[0]["error"] == "empty file (0 bytes)"
    (tmp_path / "empty").mkdir()
    assert run(tmp_path / "empty", "--model", shade_bundle, "--out", tmp_path / "e.csv") == 2
    assert run(tmp_path / "imgs", "--model", shade_bundle, "--link") == 2
    assert run(tmp_path / "imgs", "--model", tmp_path / "nope") == 2
    err = capsys.readouterr().err
    assert "none of the 1 files" in err and "no files found" in err and "--link needs --sort-into" in err
    assert "model bundle not found" in err


@pytest.mark.slow
def test_predict_and_evaluate_agree_exactly(trained_run, tiny_mnist, tmp_path):
    """One inference path: `pipeline predict` over the test folder gives metrics.json's accuracy."""
    run, _ = trained_run
    out = tmp_path / "test.csv"
    s = predict(tiny_mnist / "test", run / "model", out, PredictParams(workers=1))
    rows = list(csv.DictReader(open(out, newline="", encoding="utf-8")))
    assert s["predicted"] == len(rows) == 300
    accuracy = sum(r["label"] == r["path"].split("/")[0] for r in rows) / len(rows)
    metrics = json.loads((run / "metrics.json").read_text())
    assert accuracy == metrics["accuracy"]
    # and the same probabilities, image by image (the manifest's test rows are in X_test order)
    probs = np.load(run / "test_probs.npy")
    test_rows = [r["path"] for r in csv.DictReader(open(run / "manifest.csv")) if r["split"] == "test"]
    by_path = {str(tiny_mnist / "test" / r["path"]): float(r["confidence"]) for r in rows}
    np.testing.assert_allclose([by_path[p] for p in test_rows], probs.max(axis=1), atol=2e-6)


def test_predict_runs_without_tensorflow(shade_bundle, tmp_path):
    """The light install: `pipeline predict` in a Python that cannot import TensorFlow, Keras, scikit-learn,
    SciPy or Matplotlib, on one image and on a folder (decoding workers too), gives the rows the TensorFlow
    runtime gives; an older bundle without its model.onnx says what to do."""
    env = without_training_stack(tmp_path / "light")
    blocked = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "ModuleNotFoundError" in blocked.stderr  # the block works
    truth = make_images(tmp_path / "imgs", per_class=2)

    def light(*args):
        return subprocess.run([sys.executable, "-m", "pipeline", "predict", *map(str, args), "--model",
                               str(shade_bundle), "--params", os.devnull], env=env, capture_output=True, text=True,
                              timeout=300)

    one = light(tmp_path / "imgs" / "mid" / "0.png")
    assert one.returncode == 0, one.stderr[-2000:]
    assert one.stdout.startswith(f"{tmp_path / 'imgs' / 'mid' / '0.png'}: mid (") and "familiar" in one.stdout
    res = light(tmp_path / "imgs", "--out", tmp_path / "light.csv", "--workers", "2", "--batch-size", "4")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "(onnx)" in res.stderr
    rows = read_csv(tmp_path / "light.csv")
    assert {r["path"]: r["label"] for r in rows} == truth
    predict(tmp_path / "imgs", shade_bundle, tmp_path / "tf.csv", PredictParams(workers=1, runtime="tensorflow"))
    tf_rows = read_csv(tmp_path / "tf.csv")
    assert [(r["label"], r["familiar"]) for r in rows] == [(r["label"], r["familiar"]) for r in tf_rows]
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], [float(r["confidence"]) for r in tf_rows],
                               atol=1e-4)
    assert json.loads(summary_path(tmp_path / "light.csv").read_text())["runtime"] == "onnx"
    # an older bundle, without model.onnx: it needs TensorFlow, and the error says how to add the light model
    old = tmp_path / "old"
    import shutil

    shutil.copytree(shade_bundle, old)
    (old / "model.onnx").unlink()
    info = json.loads((old / "bundle.json").read_text())
    info.pop("runtime_model_sha256")
    (old / "bundle.json").write_text(json.dumps(info))
    res = subprocess.run([sys.executable, "-m", "pipeline", "predict", str(tmp_path / "imgs"), "--model", str(old),
                          "--out", str(tmp_path / "old.csv")], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "needs the full install" in res.stderr
    assert f"pipeline export --model {old} --format onnx" in res.stderr and "Traceback" not in res.stderr
