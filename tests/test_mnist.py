"""MNIST: IDX parsing, checksums, source lookup, download from a local server, export."""
import functools
import gzip
import http.server
import shutil
import struct
import threading

import numpy as np
import pytest

from pipeline import __main__ as cli
from pipeline.data import mnist

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_idx_reader_on_real_headers_and_label_counts(mnist_dir):
    for split, counts in (("train", TRAIN_COUNTS), ("test", TEST_COUNTS)):
        images, labels = mnist.load_split(mnist_dir, split)
        assert images.shape == (sum(counts), 28, 28) and images.dtype == np.uint8
        assert np.bincount(labels, minlength=10).tolist() == counts
    _, labels = mnist.load_split(mnist_dir, "train")
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


def test_parse_idx_rejects_malformed_data():
    good = b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3) + bytes(6)
    assert mnist.parse_idx(good).shape == (2, 3)
    with pytest.raises(mnist.MnistError, match="bad magic"):
        mnist.parse_idx(b"\x01\x00\x08\x02" + good[4:])
    with pytest.raises(mnist.MnistError, match="payload"):
        mnist.parse_idx(good[:-1])
    with pytest.raises(mnist.MnistError, match="unsupported"):
        mnist.parse_idx(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")


def test_checksum_mismatch_and_bad_gzip_are_refused(tmp_path):
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 1) + b"\x07"))
    with pytest.raises(mnist.MnistError, match="checksum mismatch"):
        mnist.read_verified(bad)
    bad.write_bytes(b"not gzip")
    with pytest.raises(mnist.MnistError, match="not a valid gzip"):
        mnist.read_verified(bad)


def test_find_source_order(tmp_path, mnist_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert mnist.find_source(mnist_dir, env={}, default=empty) == mnist_dir
    assert mnist.find_source(None, env={"MNIST_DIR": str(mnist_dir)}, default=empty) == mnist_dir
    assert mnist.find_source(None, env={}, default=mnist_dir) == mnist_dir
    assert mnist.find_source(None, env={}, default=empty) is None  # -> download
    with pytest.raises(mnist.MnistError, match=r"\$MNIST_DIR=.* lacks"):
        mnist.find_source(None, env={"MNIST_DIR": str(empty)}, default=mnist_dir)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, mnist_dir):
    """A local HTTP server on 127.0.0.1 with a good and a corrupted copy of the files."""
    root = tmp_path_factory.mktemp("www")
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    for name in mnist.FILES:
        shutil.copy(mnist_dir / name, root / "good" / name)
        data = bytearray(gzip.decompress((mnist_dir / name).read_bytes()))
        data[-1] ^= 0xFF  # one flipped byte: valid gzip, wrong MD5
        (root / "bad" / name).write_bytes(gzip.compress(bytes(data), compresslevel=1))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_and_never_keeps_a_bad_copy(tmp_path, mirror):
    dest = tmp_path / "raw"
    with pytest.raises(mnist.MnistError, match="checksum mismatch"):
        mnist.download(dest, [mirror + "/bad/"], timeout=10)
    assert list(dest.iterdir()) == []  # nothing half-written or unverified left behind
    with pytest.raises(mnist.MnistError, match="404"):
        mnist.download(dest, [mirror + "/missing/"], timeout=10)
    # a bad mirror first, then a good one: falls through to the good copy
    mnist.download(dest, [mirror + "/bad/", mirror + "/good/"], timeout=10)
    assert sorted(p.name for p in dest.iterdir()) == sorted(mnist.FILES)
    for name in mnist.FILES:
        mnist.read_verified(dest / name)


@pytest.mark.slow
def test_cli_downloads_then_exports_atomically_and_skips_when_complete(tmp_path, mirror, monkeypatch):
    monkeypatch.delenv("MNIST_DIR", raising=False)
    out, raw = tmp_path / "mnist", tmp_path / "raw"
    argv = ["mnist", "--out", str(out), "--raw-dir", str(raw), "--mirror", mirror + "/good/", "--workers", "2"]
    assert cli.main(argv) == 0
    for split, counts in (("train", TRAIN_COUNTS), ("test", TEST_COUNTS)):
        assert [len(list((out / split / str(d)).iterdir())) for d in range(10)] == counts
    assert (out / "train" / "5" / "00000.png").is_file()  # index in the IDX file, label 5
    assert mnist.is_complete(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left
    before = (out / mnist.MARKER).stat().st_mtime_ns
    assert cli.main(argv) == 0  # complete: nothing redone
    assert (out / mnist.MARKER).stat().st_mtime_ns == before
    # an incomplete export (a file deleted) is detected and redone
    (out / "test" / "7" / "00000.png").unlink()
    assert not mnist.is_complete(out)


def test_exported_png_matches_idx_pixels(tmp_path, mnist_dir):
    from PIL import Image

    images, labels = mnist.load_split(mnist_dir, "test")
    root = tmp_path / "t"
    (root / str(labels[0])).mkdir(parents=True)
    mnist._write_chunk((str(root), 0, images[:1], labels[:1]))
    png = np.asarray(Image.open(root / str(labels[0]) / "00000.png"))
    np.testing.assert_array_equal(png, images[0])


def test_cli_bad_source_is_one_clear_error(tmp_path, caplog):
    assert cli.main(["mnist", "--out", str(tmp_path / "o"), "--source", str(tmp_path)]) == 2
    assert "lacks" in caplog.text
