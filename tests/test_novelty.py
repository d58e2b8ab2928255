"""The novelty score's nearest-neighbour distance: exact, and the same for an image in any batch."""
import numpy as np

from pipeline.model import novelty
from pipeline.shared.novelty_spec import NoveltySpec


def _spec(reference):
    return NoveltySpec(detectors=("statistics", "features"), threshold=1.0, flag_rate=0.01,
                       stats_mean=np.zeros(1), stats_precision=np.eye(1), reference=novelty._unit(reference))


def test_nearest_is_the_float64_answer_in_any_batch_and_with_ties():
    rng = np.random.default_rng(0)
    reference = rng.random((3000, 120)).astype(np.float32) ** 3
    spec = _spec(np.concatenate([reference, reference[:20]]))  # exact duplicates: ties among the candidates
    f = np.concatenate([rng.random((500, 120)).astype(np.float32) ** 3, reference[:5], np.zeros((3, 120), np.float32)])
    q = novelty._unit(f).astype(np.float64)
    brute = 1.0 - (q @ spec.reference.astype(np.float64).T).max(axis=1)
    got = novelty._nearest(f, spec)
    np.testing.assert_allclose(got, brute, atol=1e-12)
    assert np.all(got[-3:] == 1.0) and np.all(np.abs(got[500:505]) < 1e-6)  # blank: no direction; a copy: 0
    alone = np.concatenate([novelty._nearest(f[i:i + 1], spec) for i in range(0, len(f), 37)])
    np.testing.assert_array_equal(alone, got[::37])  # bit for bit, whatever else is in the batch


def test_leave_one_out_skips_each_rows_own_match():
    rng = np.random.default_rng(1)
    reference = rng.random((200, 16)).astype(np.float32)
    spec = _spec(reference)
    loo = novelty._nearest(reference, spec, skip_self=True)
    sim = spec.reference.astype(np.float64) @ spec.reference.astype(np.float64).T
    np.fill_diagonal(sim, -np.inf)
    np.testing.assert_allclose(loo, 1.0 - sim.max(axis=1), atol=1e-12)


def test_histogram8_counts_each_bin_as_comparing_against_it():
    """The binned count (one bincount) against the count it replaced (each bin compared in turn)."""
    rng = np.random.default_rng(2)
    flat = np.concatenate([rng.random((50, 784), np.float32), rng.normal(0.5, 0.6, (50, 784)).astype(np.float32),
                           np.zeros((1, 784), np.float32), np.ones((1, 784), np.float32)])
    codes = np.where(flat < 0, 255, np.minimum(np.floor(flat * 8), 7)).astype(np.uint8)
    oracle = np.stack([np.count_nonzero(codes == b, axis=1) for b in range(8)], axis=1) / flat.shape[1]
    np.testing.assert_array_equal(novelty._histogram8(flat), oracle)


def test_image_statistics_of_an_image_are_the_same_in_any_batch():
    rng = np.random.default_rng(3)
    for channels in (1, 3):
        x = rng.random((20, 28, 28, channels), np.float32) ** 2
        whole = novelty.image_stats(x)
        alone = np.concatenate([novelty.image_stats(x[i:i + 1]) for i in range(len(x))])
        np.testing.assert_array_equal(alone, whole)
        assert whole.shape == (20, 16 if channels == 1 else 20) and np.isfinite(whole).all()
