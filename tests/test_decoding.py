"""Parallel decoding (pipeline.data.decoding): chunks in order, rows written in place, the census facts."""
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from pipeline.data import decoding
from pipeline.data.preprocess import decode_file, load_image, perceptual
from pipeline.shared.params import PreprocessParams

from conftest import write_image

CFG = PreprocessParams(color="grayscale", size=(12, 12), invert="false")
SENTINEL = np.float32(-7.0)  # never a preprocessed value (those are in [0, 1])


def _good(tmp_path, name, shape, level, rgb=False):
    """A small image with a bright square on a flat background (sizes and levels vary per file)."""
    img = np.full(shape, level, np.uint8)
    h, w = shape[:2]
    img[h // 4:3 * h // 4, w // 4:3 * w // 4] = 255 - level
    if rgb:
        img = np.stack([img, img // 2, 255 - img], axis=2)
    return write_image(tmp_path / name, img)


@pytest.fixture
def mixed(tmp_path):
    """Good files of several sizes and modes, with a corrupt and a zero-byte file among them."""
    files = [_good(tmp_path, "g0.png", (10, 14), 20),
             tmp_path / "bad.png",
             _good(tmp_path, "g1.png", (16, 9), 60, rgb=True),
             tmp_path / "empty.png",
             _good(tmp_path, "g2.jpg", (12, 12), 100),
             _good(tmp_path, "g3.bmp", (20, 11), 30)]
    files[1].write_bytes(b"this is not a PNG at all")
    files[3].write_bytes(b"")
    return [str(f) for f in files]


BAD = {"bad.png", "empty.png"}


def _is_bad(path):
    return path.rsplit("/", 1)[-1] in BAD


def test_decode_chunks_serial_keeps_order_and_reports_bad_files(mixed):
    chunks = [mixed[:3], mixed[3:4], mixed[4:]]
    got = list(decoding.decode_chunks(chunks, CFG))
    assert len(got) == len(chunks)
    for paths, (stacked, info) in zip(chunks, got):
        good = [p for p in paths if not _is_bad(p)]
        assert stacked.dtype == np.float32 and stacked.shape == (len(good), *CFG.input_shape)
        assert len(info) == len(paths)
        for p, (reason, meta) in zip(paths, info):
            if _is_bad(p):
                assert reason and meta is None, p
            else:
                data = Path(p).read_bytes()
                truth = decode_file(p, CFG)
                assert reason == "" and meta is not None
                assert (meta.width, meta.height) == (truth.meta.width, truth.meta.height)
                assert meta.sha1 == hashlib.sha1(data).hexdigest()
                assert meta.phash == 0 and meta.thumb == b""  # only prepare's audit fills these
        for k, p in enumerate(good):
            np.testing.assert_array_equal(stacked[k], load_image(p, CFG))
    # the empty chunk's reason says it is empty; the corrupt one is not an image
    assert "0 bytes" in got[1][1][0][0]
    assert got[0][1][1][0] != got[1][1][0][0]


@pytest.mark.parametrize("read_ahead", [1, decoding.READ_AHEAD])
def test_audited_chunk_reads_then_decodes_each_file_as_decode_file_does(mixed, tmp_path, monkeypatch, read_ahead):
    """The workers' chunk (files read a group at a time, plain PNGs decoded without per-file objects) learns
    what decode_file does of each file, in order, unreadable and bad files included."""
    monkeypatch.setattr(decoding, "READ_AHEAD", read_ahead)  # 1: each file its own group
    paths = [*mixed, str(tmp_path / "gone.png"), *mixed[:1]]
    stacked, chunk = decoding._decode_audited(paths, CFG)
    good = [p for p in paths if not _is_bad(p) and Path(p).exists()]
    assert len(chunk) == len(paths) and stacked.shape == (len(good), *CFG.input_shape)
    assert "unreadable" in chunk[len(mixed)][0] and "0 bytes" in chunk[3][0]
    k = 0
    for p, (reason, meta) in zip(paths, chunk):
        if p not in good:
            assert reason and meta is None, p
            continue
        truth = decode_file(p, CFG)
        assert reason == "" and meta is not None
        assert (meta.width, meta.height, meta.mode, meta.format, meta.sha1, meta.alpha) == \
            (truth.meta.width, truth.meta.height, truth.meta.mode, truth.meta.format, truth.meta.sha1, truth.meta.alpha)
        np.testing.assert_array_equal(stacked[k], load_image(p, CFG))
        k += 1
    assert chunk.file_stat[:, 0].tolist() == [Path(p).stat().st_size for p in good]


def test_decode_chunks_with_no_chunks_yields_nothing():
    assert list(decoding.decode_chunks([], CFG)) == []


def _blank_npy(path, rows):
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, *CFG.input_shape))
    arr[:] = SENTINEL
    arr.flush()
    del arr
    return str(path)


def test_decode_into_writes_rows_in_place_and_leaves_rejected_rows(tmp_path, mixed):
    n = len(mixed)
    # items alternate between two files, written in reverse row order with a spare row at the end
    files = [_blank_npy(tmp_path / "a.npy", n), _blank_npy(tmp_path / "b.npy", n)]
    where = [(files[i % 2], n - 1 - i) for i in range(n)]
    infos = list(decoding.decode_into(n, lambda i, j: mixed[i:j], lambda i, j: where[i:j], CFG))
    info = [x for chunk in infos for x in chunk]
    assert len(info) == n
    out = [np.load(f) for f in files]
    written = set()
    for path, (reason, meta), (f, row) in zip(mixed, info, where):
        k = files.index(f)
        written.add((k, row))
        if _is_bad(path):
            assert reason and meta is None
            assert np.all(out[k][row] == SENTINEL), f"rejected row {row} of {f} was written"
        else:
            assert reason == "" and meta is not None
            np.testing.assert_array_equal(out[k][row], load_image(path, CFG))
            # prepare's audit: the perceptual hash and thumbnail of the decoded image
            assert (meta.phash, meta.thumb) == perceptual(decode_file(path, CFG).array)
    for k in range(2):
        for row in range(n):
            if (k, row) not in written:
                assert np.all(out[k][row] == SENTINEL), f"row {row} of file {k} was not a target"
    assert decoding._outputs == {}  # the files it opened are closed again


def _census_images(tmp_path):
    """(path, expected facts) for gray, colour and dark-on-light images; facts by construction."""
    light_on_dark = np.full((10, 14), 15, np.uint8)
    light_on_dark[3:7, 4:10] = 230
    dark_on_light = np.full((18, 12), 240, np.uint8)
    dark_on_light[5:13, 3:9] = 25
    colour = np.zeros((16, 20, 3), np.uint8)
    colour[...] = (0, 0, 40)           # dark blue background
    colour[4:12, 5:15] = (250, 220, 0)  # a yellow square: bright, and clearly not gray
    gray_as_rgb = np.repeat(light_on_dark[..., None], 3, axis=2)
    return [
        (write_image(tmp_path / "gray.png", light_on_dark), (14, 10, True, 1)),
        (write_image(tmp_path / "ink.png", dark_on_light), (12, 18, True, -1)),
        (write_image(tmp_path / "colour.png", colour), (20, 16, False, 1)),
        (write_image(tmp_path / "gray_rgb.png", gray_as_rgb), (14, 10, True, 1)),
    ]


def test_census_gives_size_colour_and_polarity_facts(tmp_path):
    cases = _census_images(tmp_path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnope")
    look = PreprocessParams(color="rgb", size=(28, 28), invert="false")  # as prepare's census looks
    got = decoding.census([str(p) for p, _ in cases] + [str(bad)], look)
    assert len(got) == len(cases) + 1
    for (path, facts), (reason, got_facts) in zip(cases, got):
        assert reason == "" and got_facts[:4] == facts, path.name
        paper = np.asarray(Image.open(path).convert("L"))[0, 0]  # each case's border is one level
        assert got_facts[4] == pytest.approx(paper, abs=1) and got_facts[5] is None, path.name  # none transparent
    reason, facts = got[-1]
    assert reason and facts is None


def test_few_large_files_go_to_the_pool_in_small_chunks_and_a_large_image_keeps_its_facts(tmp_path):
    """Fewer files than SERIAL_BELOW stay in this process, unless they are large (phone photos): then the
    pool decodes them, a few files a job; the census looks at a large image shrunk, its size as it is."""
    class Pool:  # runs each job here, counting them
        workers, jobs = 2, []

        def apply_async(self, fn, args):
            self.jobs.append(len(args[0][0]))
            result = fn(*args)
            return type("Done", (), {"get": lambda _: result})()

    rng = np.random.default_rng(0)
    big = [write_image(tmp_path / f"photo{i}.png", rng.integers(0, 256, (600, 800, 3), dtype=np.uint8))
           for i in range(6)]
    small = [write_image(tmp_path / f"small{i}.png", rng.integers(0, 256, (28, 28), dtype=np.uint8)) for i in range(6)]
    for files, pooled in ((big, True), (small, False)):
        out = _blank_npy(tmp_path / "x.npy", len(files))
        pool = Pool()
        pool.jobs = []
        list(decoding.decode_into(len(files), lambda i, j: [str(f) for f in files[i:j]],
                                  lambda i, j: [(out, r) for r in range(i, j)], CFG, pool))
        assert (pool.jobs != []) == pooled and (not pooled or max(pool.jobs) == 1), pool.jobs
    photo = Image.fromarray(rng.integers(0, 256, (1500, 2400, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # turned: seen 1500 wide, 2400 high
    photo.save(tmp_path / "turned.jpg", quality=80, exif=exif)
    (reason, facts), = decoding.census([str(tmp_path / "turned.jpg")], PreprocessParams(color="rgb", min_side=1))
    assert reason == "" and facts[:3] == (1500, 2400, False)  # decoded smaller for the census, its size in full
    tall = np.full((3000, 1200), 200, np.uint8)
    tall[1000:2000, 400:800] = 20
    w, h, gray, polarity, paper, _ = decoding.facts_of(tall)
    assert (w, h, gray, polarity) == (1200, 3000, True, -1) and paper == pytest.approx(200, abs=1)


def test_start_pool_with_one_worker_is_no_pool():
    assert decoding.start_pool(1) is None


def test_pool_gives_the_same_results_as_serial(tmp_path):
    """~300 files (above SERIAL_BELOW, so decode_into really uses the workers) decoded in 2 processes."""
    rng = np.random.default_rng(3)
    paths = []
    for i in range(300):
        if i % 97 == 5:
            p = tmp_path / f"{i:03d}.png"
            p.write_bytes(b"garbage" * (i % 2))  # corrupt, or zero bytes
        else:
            p = write_image(tmp_path / f"{i:03d}.png", rng.integers(0, 256, (8 + i % 5, 8 + i % 3), dtype=np.uint8))
        paths.append(str(p))
    n = len(paths)
    assert n >= decoding.SERIAL_BELOW
    rows = [(n - 1 - i) for i in range(n)]
    serial_npy, pooled_npy = _blank_npy(tmp_path / "serial.npy", n), _blank_npy(tmp_path / "pooled.npy", n)

    def run(pool, out):
        return [x for chunk in decoding.decode_into(n, lambda i, j: paths[i:j],
                                                    lambda i, j: [(out, r) for r in rows[i:j]], CFG, pool)
                for x in chunk]

    serial = run(None, serial_npy)
    serial_chunks = list(decoding.decode_chunks([paths[:150], paths[150:]], CFG))
    serial_census = decoding.census(paths, CFG)
    pool = decoding.start_pool(2)
    assert pool is not None and pool.workers == 2
    used = []
    submit = pool.apply_async
    pool.apply_async = lambda fn, args: (used.append(fn.__name__), submit(fn, args))[1]
    try:
        pooled = run(pool, pooled_npy)
        pooled_chunks = list(decoding.decode_chunks([paths[:150], paths[150:]], CFG, pool))
        pooled_census = decoding.census(paths, CFG, pool)
    finally:
        pool.close()
    assert {"_decode_into", "_decode_chunk", "_facts_chunk"} <= set(used)  # the workers did the work
    assert pooled == serial
    assert sum(meta is None for _, meta in pooled) == sum(i % 97 == 5 for i in range(n))
    np.testing.assert_array_equal(np.load(pooled_npy), np.load(serial_npy))
    assert len(pooled_chunks) == len(serial_chunks) == 2
    for (a, ia), (b, ib) in zip(pooled_chunks, serial_chunks):
        np.testing.assert_array_equal(a, b)
        assert ia == ib
    assert pooled_census == serial_census


def _start_method_in_child(code: str) -> str:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code + "\nfrom pipeline.data import decoding\n"
                          "print(decoding.start_method())"], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1]


@pytest.mark.skipif(__import__("sys").platform != "linux", reason="fork is used on Linux only")
def test_workers_fork_only_in_a_process_without_threads():
    assert _start_method_in_child("") == "fork"  # the command line: workers cost no start-up
    assert _start_method_in_child("import threading, time\nthreading.Thread(target=time.sleep, args=(2,)).start()"
                                  ) == "spawn"  # a thread holding a lock would be copied mid-way
    assert _start_method_in_child("import sys; sys.modules['onnxruntime'] = sys") == "spawn"


def test_forked_and_spawned_workers_write_the_same_arrays(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from conftest import make_tree

    data = make_tree(tmp_path / "data", {"a": 150, "b": 150})  # above SERIAL_BELOW: the pool decodes
    params = tmp_path / "params.toml"
    params.write_text("[prepare]\nworkers = 2\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-m", "pipeline", "prepare", "--data", str(data), "--run", str(tmp_path / "fork"),
                    "--params", str(params)], check=True, capture_output=True, env=env)
    monkeypatch.setattr(decoding, "start_method", lambda: "spawn")
    from pipeline.shared.params import PrepareParams
    from pipeline.stages.prepare import prepare

    prepare(data, tmp_path / "spawn", PrepareParams(workers=2), PreprocessParams())
    for name in ("X_train.npy", "X_test.npy", "y_train.npy", "manifest.csv", "dataset.json"):
        a, b = (tmp_path / "fork" / name).read_bytes(), (tmp_path / "spawn" / name).read_bytes()
        assert a == b or name == "dataset.json" and _same_but_paths(a, b), name


def _same_but_paths(a: bytes, b: bytes) -> bool:
    import json

    x, y = json.loads(a), json.loads(b)
    return {k: v for k, v in x.items() if k not in ("data", "root")} == {k: v for k, v in y.items()
                                                                         if k not in ("data", "root")}


def test_beside_workers_keeps_this_process_blas_on_one_thread_only_with_a_pool():
    from threadpoolctl import threadpool_info

    from pipeline.data.decoding import beside_workers

    def most() -> int:
        return max((p["num_threads"] for p in threadpool_info()), default=1)

    before = most()
    with beside_workers(object()):
        assert most() == 1
    assert most() == before
    with beside_workers(None):
        assert most() == before
