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
