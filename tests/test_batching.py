"""serve's micro-batcher: concurrent requests share model calls, and each gets its own rows."""
import threading
import time

import numpy as np
import pytest

from pipeline.faces.batching import MicroBatcher
from pipeline.model.infer import Output


class Model:
    """A fake model: each image's "probability" is its own id (x[:, 0, 0, 0]); it records its calls."""

    def __init__(self, delay=0.0, fail_on=None):
        self.calls, self.delay, self.fail_on = [], delay, fail_on

    def __call__(self, x):
        self.calls.append(len(x))
        time.sleep(self.delay)
        if self.fail_on is not None and (x[:, 0, 0, 0] == self.fail_on).any():
            raise RuntimeError("model failed")
        ids = x[:, 0, 0, 0].astype(np.float32)
        return Output(np.stack([ids, -ids], 1), np.zeros((len(x), 2)), None, ids, ids > 0)


def _images(ids):
    x = np.zeros((len(ids), 2, 2, 1), np.float32)
    x[:, 0, 0, 0] = ids
    return x


def test_concurrent_requests_share_calls_and_each_gets_its_own_rows():
    model = Model(delay=0.005)
    batcher = MicroBatcher(model, max_images=16, wait_s=0.05)
    answers, errors = {}, []

    def client(k):
        try:
            ids = [100 * k + i for i in range(1 + k % 3)]  # 1 to 3 images each
            batcher.announce()
            time.sleep(0.001 * (k % 4))
            answers[k] = (ids, batcher.submit(_images(ids), announced=True).result(timeout=10))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for ids, out in answers.values():  # no mix-ups: every request has its own images' rows, in order
        assert out.probs[:, 0].tolist() == ids and out.novelty.tolist() == ids and len(out.familiar) == len(ids)
    assert sum(model.calls) == sum(len(ids) for ids, _ in answers.values())
    assert len(model.calls) < 24 and batcher.stats.largest > 1 and max(model.calls) <= 16
    batcher.close()


def test_a_lone_request_does_not_wait_and_a_large_one_runs_alone():
    model = Model()
    batcher = MicroBatcher(model, max_images=4, wait_s=5.0)
    t0 = time.perf_counter()
    assert batcher(_images([7])).probs[:, 0].tolist() == [7]
    assert time.perf_counter() - t0 < 1.0  # nothing on its way: no waiting for the 5 s deadline
    assert batcher(_images(list(range(1, 11)))).probs[:, 0].tolist() == list(range(1, 11))
    assert model.calls == [1, 10]
    batcher.close()


def test_a_failing_call_fails_only_its_own_requests():
    model = Model(fail_on=13)
    batcher = MicroBatcher(model, max_images=8, wait_s=0.0)
    with pytest.raises(RuntimeError, match="model failed"):
        batcher(_images([13]))
    assert batcher(_images([5])).probs[:, 0].tolist() == [5]  # the thread goes on
    batcher.announce()
    batcher.withdraw()  # a request that failed while decoding: nobody waits for it
    assert batcher(_images([6])).probs[:, 0].tolist() == [6]
    batcher.close()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_images must be >= 1"):
        MicroBatcher(Model(), max_images=0)
