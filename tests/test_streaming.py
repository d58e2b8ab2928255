"""Streaming training data from the .npy files: same batches as from memory, nothing mapped."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.shared import artifacts
from pipeline.shared.params import TrainParams
from pipeline.model.batches import make_dataset, should_stream


def _arrays(tmp_path, n=103):
    x = np.random.default_rng(0).random((n, 6, 5, 1), dtype=np.float32)
    y = np.arange(n, dtype=np.int64) % 3
    artifacts.save_npy(tmp_path / "x.npy", x)
    artifacts.save_npy(tmp_path / "y.npy", y)
    return artifacts.load_npy(tmp_path / "x.npy", "x"), artifacts.load_npy(tmp_path / "y.npy", "y"), x, y


def test_npy_rows_reads_the_same_rows_as_indexing(tmp_path):
    xm, _, x, _ = _arrays(tmp_path)
    idx = np.array([0, 5, 6, 50, 102])
    assert np.array_equal(artifacts.NpyRows(xm).take(idx), x[idx])
    assert np.array_equal(artifacts.NpyRows(x).take(idx), x[idx])  # in memory: plain indexing
    with open(tmp_path / "x.npy", "r+b") as fh:  # cut the file short: a clear error, not garbage
        fh.truncate(200)
    with pytest.raises(artifacts.StageError, match="short read"):
        artifacts.NpyRows(xm).take(np.array([102]))


@pytest.mark.parametrize("shard", [(0, 1), (1, 2)])
def test_streamed_batches_equal_in_memory_batches(tmp_path, shard):
    xm, ym, x, y = _arrays(tmp_path)
    batches = []
    for stream in (False, True):
        ds = make_dataset(xm, ym, 16, shuffle=True, seed=7, stream=stream, shard=shard)
        # two epochs: reshuffled the same way whichever way the rows are read
        batches.append([(np.sort(b[0].numpy().ravel()), np.sort(b[1].numpy())) for _ in range(2) for b in ds])
    assert len(batches[0]) == len(batches[1]) > 0
    for (xa, ya), (xb, yb) in zip(*batches):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    seen = sum(len(b[1]) for b in batches[1]) // 2
    assert seen == len(x) // shard[1]  # every shard the same size: every worker takes the same steps


def test_auto_streams_only_what_does_not_fit():
    assert not should_stream(TrainParams(), 10 * 2**20)
    assert should_stream(TrainParams(), 2**60)
    assert should_stream(TrainParams(streaming="on"), 1) and not should_stream(TrainParams(streaming="off"), 2**60)
