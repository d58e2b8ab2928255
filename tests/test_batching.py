"""serve's micro-batcher: concurrent requests share model calls on the event loop, and each gets its own rows."""
import asyncio
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


def _ids(k):
    return [100 * k + i for i in range(1 + k % 3)]  # 1 to 3 images each


def test_requests_of_one_turn_share_a_call_and_each_gets_its_own_rows():
    model = Model()
    batcher = MicroBatcher(model, max_images=16, wait_s=0.05)

    async def main():
        return await asyncio.gather(*(batcher.run(_images(_ids(k))) for k in range(24)))

    answers = asyncio.run(main())
    for k, out in enumerate(answers):  # no mix-ups: every request has its own images' rows, in order
        assert out.probs[:, 0].tolist() == _ids(k) and out.novelty.tolist() == _ids(k) and len(out.familiar) == len(_ids(k))
    assert sum(model.calls) == sum(len(_ids(k)) for k in range(24))
    assert len(model.calls) < 24 and batcher.stats.largest > 1 and max(model.calls) <= 16  # 48 images: 16 a call


def test_a_call_waits_for_announced_requests_and_for_as_many_as_the_last_one_had():
    model = Model()
    batcher = MicroBatcher(model, max_images=64, wait_s=5.0)

    async def late(k, delay, announced):
        await asyncio.sleep(delay)  # its images are decoded in a thread meanwhile (or it is on the network)
        return await batcher.run(_images(_ids(k)), announced=announced)

    async def main():
        batcher.announce()
        first = await asyncio.gather(batcher.run(_images(_ids(0))), late(1, 0.05, True))
        t0 = time.perf_counter()  # the last call had two requests: a lone one waits (at most wait_s) for another
        second = await asyncio.gather(batcher.run(_images(_ids(2))), late(3, 0.05, False))
        return first, second, time.perf_counter() - t0

    first, second, seconds = asyncio.run(main())
    assert [out.probs[:, 0].tolist() for out in first + second] == [_ids(k) for k in range(4)]
    assert model.calls == [len(_ids(0)) + len(_ids(1)), len(_ids(2)) + len(_ids(3))] and seconds < 4.0


def test_a_lone_request_does_not_wait_and_a_large_one_runs_alone():
    model = Model()
    batcher = MicroBatcher(model, max_images=4, wait_s=5.0)

    async def main():
        t0 = time.perf_counter()
        lone = await batcher.run(_images([7]))
        waited = time.perf_counter() - t0
        large, small = await asyncio.gather(batcher.run(_images(list(range(1, 11)))), batcher.run(_images([3])))
        return lone, waited, large, small

    lone, waited, large, small = asyncio.run(main())
    assert lone.probs[:, 0].tolist() == [7] and waited < 1.0  # nothing on its way: no waiting for the 5 s deadline
    assert large.probs[:, 0].tolist() == list(range(1, 11)) and small.probs[:, 0].tolist() == [3]
    assert model.calls == [1, 10, 1]


def test_a_failing_call_fails_only_its_own_requests():
    model = Model(fail_on=13)
    batcher = MicroBatcher(model, max_images=8, wait_s=0.0)

    async def main():
        with pytest.raises(RuntimeError, match="model failed"):
            await batcher.run(_images([13]))
        assert (await batcher.run(_images([5]))).probs[:, 0].tolist() == [5]  # the batcher goes on
        batcher.announce()
        batcher.withdraw()  # a request that failed while decoding: nobody waits for it
        assert (await batcher.run(_images([6]))).probs[:, 0].tolist() == [6]

    asyncio.run(main())


def test_another_thread_calls_the_model_on_the_loop():
    """The occlusion maps' forward passes come from a worker thread; the model still runs in the loop's."""
    model = Model()
    batcher = MicroBatcher(model, max_images=8, wait_s=0.0)
    threads = []
    batcher.model = lambda x: (threads.append(threading.get_ident()), model(x))[1]

    async def main():
        await batcher.run(_images([1]))
        return await asyncio.to_thread(batcher, _images([2, 3])), threading.get_ident()

    out, loop_thread = asyncio.run(main())
    assert out.probs[:, 0].tolist() == [2, 3] and threads == [loop_thread, loop_thread]
    stats = batcher.stats.as_dict()  # the server's own calls are counted apart from the clients' requests
    assert (stats["requests"], stats["images"], stats["occlusion_images"]) == (1, 1, 2)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_images must be >= 1"):
        MicroBatcher(Model(), max_images=0)
    with pytest.raises(RuntimeError, match="has not run on an event loop"):
        MicroBatcher(Model())(_images([1]))


def test_a_broken_answer_fails_its_requests_and_the_batcher_goes_on():
    """An answer that cannot be split per request (a bug) fails that batch's requests; nothing hangs."""
    class Broken:
        def take(self, start, stop):
            raise ValueError("cannot split")

    model = Model()
    batcher = MicroBatcher(model, max_images=8, wait_s=0.0)
    batcher.model = lambda x: Broken() if len(x) == 3 else model(x)

    async def main():
        broken = await asyncio.gather(batcher.run(_images([1, 2])), batcher.run(_images([3])), return_exceptions=True)
        return broken, await batcher.run(_images([4]))

    broken, after = asyncio.run(asyncio.wait_for(main(), 10))
    assert [type(b) for b in broken] == [ValueError, ValueError]
    assert after.probs[:, 0].tolist() == [4]
