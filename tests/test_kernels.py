"""The compiled loops (pipeline.data.kernels) against the numpy and OpenCV code they stand in for."""
import io
import os
import shutil
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
import pytest

from pipeline.data import decoding, kernels, quality, similar
from pipeline.data.preprocess import plain_png
from pipeline.shared.params import PreprocessParams

needs_lib = pytest.mark.skipif(kernels.LIB is None, reason="the compiled kernels are not built here")
GRAY = PreprocessParams(color="grayscale", size=(12, 12), invert="false")
RGB = PreprocessParams(color="rgb", size=(12, 12), invert="false")


def test_the_kernels_are_built_where_a_compiler_and_zlib_are():
    if os.environ.get("PIPELINE_KERNELS", "on") == "off":
        pytest.skip("PIPELINE_KERNELS=off")
    if not (shutil.which("cc") or shutil.which("gcc")) or not Path("/usr/include/zlib.h").is_file():
        pytest.skip("no C compiler or zlib header: the numpy code runs")
    assert kernels.LIB is not None, "pip install -e . should have built pipeline/data/_kernels*.so"


def _pngs(rng):
    """PNGs as OpenCV and Pillow write them: gray and colour, every compression level, all filter types."""
    out = []
    for k in range(30):
        h, w = (int(v) for v in rng.integers(8, 70, 2))
        img = (rng.integers(0, 256, (h, w, 3)) // (k % 5 + 1)).astype(np.uint8)
        if k % 2:
            img = cv2.GaussianBlur(img, (5, 5), 0)
        out.append(cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, k % 10])[1].tobytes())
        buf = io.BytesIO()
        Image.fromarray(img[..., 0]).save(buf, "PNG", optimize=bool(k % 3))
        out.append(buf.getvalue())
    return out


def _files(datas):
    lens = np.array([len(d) for d in datas], np.int64)
    offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    return kernels.Files(list(map(str, range(len(datas)))), np.frombuffer(b"".join(datas), np.uint8), offs, lens)


@needs_lib
@pytest.mark.parametrize("cfg", [GRAY, RGB])
def test_plain_pngs_decode_to_the_same_pixels_as_opencv(cfg):
    datas = _pngs(np.random.default_rng(0))
    got = kernels.decode_pngs(_files(datas), 1, 20000, Image.MAX_IMAGE_PIXELS)
    for data, png in zip(datas, got):
        assert png is not None
        want, w, h, _ = plain_png(data, cfg)
        assert png.shape[:2] == (h, w)
        assert np.array_equal(decoding.in_colour(png, cfg), want)


def _chunk(kind, body):
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _assemble(chunks):
    """A PNG file of (type, body) chunks, each with its length and CRC."""
    return b"\x89PNG\r\n\x1a\n" + b"".join(_chunk(bytes(kind), bytes(body)) for kind, body in chunks)


def _rows(img):
    """A gray image's rows as a PNG stores them before compression: each after its filter byte (0: none)."""
    return b"".join(b"\x00" + img[y].tobytes() for y in range(img.shape[0]))


@needs_lib
def test_files_that_are_not_plain_or_damaged_are_left_to_the_general_path():
    good = _pngs(np.random.default_rng(1))[0]
    flipped = bytearray(good)
    flipped[45] ^= 0xFF  # inside the first chunk after IHDR: its CRC no longer matches
    ihdr_end = 8 + 25
    with_trns = good[:ihdr_end] + _chunk(b"tRNS", b"\x00\x01\x00\x02\x00\x03") + good[ihdr_end:]
    interlaced = bytearray(good)
    interlaced[28] = 1
    others = [good[:len(good) // 2], bytes(flipped), with_trns, b"", b"GIF89a" + good[6:], bytes(interlaced),
              good[:20]]
    got = kernels.decode_pngs(_files(others), 1, 20000, Image.MAX_IMAGE_PIXELS)
    assert got == [None] * len(others)
    tiny = kernels.decode_pngs(_files([good]), 10_000, 20000, Image.MAX_IMAGE_PIXELS)  # below min_side
    assert tiny == [None]


def _png(img, idat=None, extra=(), split=0):
    """A gray PNG of ``img`` built chunk by chunk: ``idat`` the zlib stream (default: the rows, filter 0),
    ``extra`` (index, type, body) chunks inserted, ``split``: the stream cut into chunks of that many bytes."""
    h, w = img.shape
    stream = zlib.compress(_rows(img)) if idat is None else idat
    parts = [stream[i:i + split] for i in range(0, len(stream), split)] if split else [stream]
    chunks = [(b"IHDR", w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0]))]
    chunks += [(b"IDAT", part) for part in parts] + [(b"IEND", b"")]
    for at, kind, body in extra:
        chunks.insert(at, (kind, body))
    return _assemble(chunks)


@needs_lib
def test_pngs_that_libpng_or_pillow_would_refuse_are_left_to_the_general_path():
    img = np.random.default_rng(2).integers(0, 256, (9, 11), dtype=np.uint8)
    rows = _rows(img)
    whole = zlib.compress(rows)
    refused = [_png(img, idat=whole[:-4]),  # the rows complete, the stream's end (its checksum) missing
               _png(img, idat=whole[:-1] + bytes([whole[-1] ^ 1])),  # a wrong checksum
               _png(img, extra=[(1, b"ZZZZ", b"")]),  # an unknown critical chunk
               _png(img, extra=[(1, b"abcd", b"")]),  # the reserved bit set
               _png(img, extra=[(2, b"tEXt", b"a\x00b")], split=20),  # two runs of IDAT chunks
               _png(img, extra=[(1, b"IHDR", _png(img)[16:29])])]  # a second IHDR
    assert kernels.decode_pngs(_files(refused), 1, 20000, Image.MAX_IMAGE_PIXELS) == [None] * len(refused)
    kept = [_png(img, split=7), _png(img, idat=zlib.compress(rows + bytes(50))),  # bytes past the rows: dropped
            _png(img, extra=[(1, b"tEXt", b"a\x00b"), (1, b"gAMA", bytes(4))])]
    for data, got in zip(kept, kernels.decode_pngs(_files(kept), 1, 20000, Image.MAX_IMAGE_PIXELS)):
        assert got is not None and np.array_equal(got, np.asarray(Image.open(io.BytesIO(data))))
        assert np.array_equal(got, img)


def _mutated(data, rng):
    """``data`` with one chunk's body changed or cut, or the chunk dropped, its CRC made right again (so that
    the decoder, not the CRC check, meets the damage), or the IHDR's fields changed."""
    chunks, at = [], 8
    while at + 12 <= len(data):
        n = int.from_bytes(data[at:at + 4], "big")
        chunks.append([data[at + 4:at + 8], bytearray(data[at + 8:at + 8 + n])])
        at += 12 + n
    k = int(rng.integers(len(chunks)))
    how = int(rng.integers(4))
    if how == 0 and chunks[k][1]:
        chunks[k][1][int(rng.integers(len(chunks[k][1])))] = int(rng.integers(256))
    elif how == 1 and len(chunks) > 1:
        chunks.pop(k)
    elif how == 2:
        chunks[k][1] = chunks[k][1][:int(rng.integers(len(chunks[k][1]) + 1))]
    else:
        chunks[0][1][int(rng.integers(13))] = int(rng.integers(256))
    return _assemble(chunks)


@needs_lib
def test_damaged_pngs_decode_as_the_general_path_decodes_them_or_not_at_all():
    rng = np.random.default_rng(3)
    seeds = _pngs(rng)
    datas = [_mutated(seeds[int(rng.integers(len(seeds)))], rng) for _ in range(600)]
    decoded = 0
    for data, got in zip(datas, kernels.decode_pngs(_files(datas), 1, 20000, Image.MAX_IMAGE_PIXELS)):
        if got is None:
            continue  # the general path decodes it, or says why not
        decoded += 1
        want = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if want is None:
            want = np.asarray(Image.open(io.BytesIO(data)))  # what the general path falls back to
        elif want.ndim == 3:
            want = want[..., ::-1]
        assert np.array_equal(got, want)
    assert decoded > 20  # damage that leaves the file valid (a changed ancillary chunk, a changed pixel)

def _digits(n=300):
    rng = np.random.default_rng(2)
    imgs = np.zeros((n, 28, 28), np.uint8)
    for i, img in enumerate(imgs):
        cv2.putText(img, str(i % 10), (int(rng.integers(2, 10)), int(rng.integers(18, 26))), cv2.FONT_HERSHEY_SIMPLEX,
                    float(rng.uniform(0.6, 0.9)), 255, int(rng.integers(1, 3)))
        if i % 3 == 0:
            imgs[i] = 255 - img  # dark on light: a negative view
    return imgs


@needs_lib
def test_signatures_match_the_numpy_code(monkeypatch):
    imgs = _digits()
    h1, t1, n1 = kernels.signatures(imgs)
    monkeypatch.setattr(kernels, "LIB", None)
    h2, t2, n2 = similar.signatures(list(imgs))
    assert np.array_equal(n1, n2)
    assert np.abs(t1.astype(int) - t2).max() <= 2  # OpenCV's warp rounds its taps to 1/32 px
    bits = np.bitwise_count(h1 ^ h2)
    assert (bits == 0).mean() >= 0.95 and bits.max() <= 4


@needs_lib
def test_gray_stats_match_the_numpy_code():
    imgs = _digits()
    imgs[5] = 77  # flat: no sharpness
    got, want = kernels.gray_stats(imgs), quality._gray_stats(imgs)
    assert np.allclose(got, want, atol=1e-4)
    assert got[5, 3] == quality.NONE


@needs_lib
def test_read_files_leaves_errors_to_the_caller_and_stops_at_its_buffer(tmp_path):
    names = []
    for k, size in enumerate((10, 4000, 0, 1000)):
        (tmp_path / f"f{k}").write_bytes(bytes([k]) * size)
        names.append(str(tmp_path / f"f{k}"))
    (tmp_path / "folder").mkdir()
    paths = [names[0], str(tmp_path / "missing"), str(tmp_path / "folder"), *names[1:]]
    files, apart = kernels.read_files(paths, 5000)
    assert files.paths == paths[:5] and apart == [1, 2]  # f3 (1,000 bytes) would not fit beside f1's 4000
    assert files.data(0) == bytes(10) and files.data(3) == bytes([1]) * 4000 and files.data(4) == b""
    st = os.stat(names[1])
    assert files.stats[3] == (st.st_size, st.st_mtime_ns)
    alone, apart = kernels.read_files([names[1]], 100)  # larger than the buffer alone: the caller's
    assert len(alone.paths) == 1 and apart == [0]


@needs_lib
def test_a_chunk_decodes_the_same_with_and_without_the_kernels(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    paths = []
    for k, data in enumerate(_pngs(rng)[:12]):
        (tmp_path / f"{k}.png").write_bytes(data)
        paths.append(str(tmp_path / f"{k}.png"))
    Image.fromarray(_digits(1)[0]).save(tmp_path / "x.jpg")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    paths += [str(tmp_path / "x.jpg"), str(tmp_path / "bad.png"), str(tmp_path / "gone.png")]
    for cfg in (GRAY, RGB):
        fast_x, fast = decoding._decode_audited(paths, cfg)
        with monkeypatch.context() as m:
            m.setattr(kernels, "LIB", None)
            slow_x, slow = decoding._decode_audited(paths, cfg)
        assert fast.reasons == slow.reasons and sum(not r for r in fast.reasons) == 13
        assert np.array_equal(fast_x, slow_x)
        assert np.array_equal(fast.sha1, slow.sha1) and fast.file_stat.tolist() == slow.file_stat.tolist()
        assert (fast.width.tolist(), fast.mode, fast.format) == (slow.width.tolist(), slow.mode, slow.format)
        assert np.abs(fast.thumb.astype(int) - slow.thumb).max() <= 2
        assert np.allclose(fast.stats, slow.stats, atol=1e-4)


@needs_lib
def test_pair_correlations_match_the_numpy_code(monkeypatch):
    rng = np.random.default_rng(4)
    table = rng.integers(0, 256, (50, 256)).astype(np.uint8)
    table[7] = 9  # flat: correlates 0 with anything
    table[8] = table[3] // 2 + 10  # the same pattern dimmer: 1
    index = rng.permutation(50)[:45]
    index[:3] = [3, 8, 7]
    pairs = rng.integers(0, 45, (300, 2))
    pairs[:2] = [[0, 1], [0, 2]]
    got = similar._pair_corr(pairs, similar.Taken(table, index))
    assert got[0] == pytest.approx(1, abs=1e-3) and got[1] == 0
    monkeypatch.setattr(kernels, "LIB", None)
    want = similar._pair_corr(pairs, similar.Taken(table, index))
    assert np.allclose(got, want, atol=1e-5)


@needs_lib
def test_band_pairs_match_the_numpy_code(monkeypatch):
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2**63, 40, dtype=np.int64).astype(np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (400, 3)).astype(np.uint64)
    hashes = base[rng.integers(0, 40, 400)] ^ flips[:, 0] ^ np.where(rng.random(400) < 0.5, flips[:, 1], 0)
    for band in range(similar.BANDS):
        got, stopped = similar.band_pairs(hashes, band, similar.MAX_PAIRS)
        with monkeypatch.context() as m:
            m.setattr(kernels, "LIB", None)
            want, _ = similar.band_pairs(hashes, band, similar.MAX_PAIRS)
        assert not stopped and len(got) > 100
        assert set(map(tuple, np.sort(got, axis=1).tolist())) == set(map(tuple, np.sort(want, axis=1).tolist()))
    few, stopped = similar.band_pairs(hashes, 0, 10)
    assert stopped and len(few) == 10


@needs_lib
def test_the_copy_test_matches_the_numpy_code(monkeypatch):
    imgs = _digits(60).astype(np.float32) / 255
    rng = np.random.default_rng(6)
    a, b = rng.integers(0, 60, 80), rng.integers(0, 60, 80)
    a[:20] = b[:20]  # the same image: 1
    b[20:40] = a[20:40]
    xb = imgs[b].copy()
    xb[20:40] = np.roll(xb[20:40], 2, axis=2)  # shifted copies
    pitch = np.ones((80, 2))
    pb = pitch.copy()
    pb[70:] = 0.5  # files of another size: the blur sweep, in numpy
    got = similar.copy_similarity(imgs[a], xb, pitch, pb)
    monkeypatch.setattr(kernels, "LIB", None)
    want = similar.copy_similarity(imgs[a], xb, pitch, pb)
    assert np.allclose(got, want, atol=2e-4)
    assert (got[:20] > 0.999).all() and (got[20:40] > 0.99).all()
