"""Micro-batching for ``serve``: concurrent requests share one model call, on the event loop.

Each request decodes its images and hands them (an array) to :meth:`MicroBatcher.run` on the server's
event loop. The first request of a turn of the loop schedules one model call at the end of that turn, so
every request whose images were ready in the same turn shares it; requests that arrive while the model
runs wait in their sockets and share the next call. The model thus runs as often as it can keep up, and
no request waits for a timer. A request whose images are decoded in a thread (a large upload) announces
itself first (:meth:`~MicroBatcher.announce`): a call waits up to ``wait_s`` for it, and for as many
requests as the last call had (the clients that will send again; a lone client never waits). A request larger
than ``max_images`` runs alone (the predictor splits it into batches). Everything happens in the loop's
thread: no lock, no hand-over between threads (on a small CPU those cost more than a LeNet's forward
pass), and the model has one caller. A failing call fails only the requests in that batch.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.model.infer import Output

log = logging.getLogger(__name__)

MAX_IMAGES = 64   # images per model call at most (a LeNet-size call of 64 costs about what one of 8 does)
WAIT_S = 0.002    # how long a call waits for requests on their way (announced ones, as many as the last call had)
POLL_S = 0.0005   # while waiting, how often it looks whether they have come


@dataclass
class _Request:
    x: np.ndarray
    future: asyncio.Future
    internal: bool = False  # the server's own (the occlusion maps' forward passes), not a client's


@dataclass
class Stats:
    """What the batcher has done (``/health`` shows it)."""

    batches: int = 0
    requests: int = 0
    images: int = 0
    largest: int = 0  # the most requests answered by one model call
    occlusion_images: int = 0  # images of the server's own calls (explain's occlusion maps), not in the above

    def as_dict(self) -> dict[str, float]:
        return {"batches": self.batches, "requests": self.requests, "images": self.images, "largest": self.largest,
                "requests_per_batch": round(self.requests / self.batches, 2) if self.batches else 0.0,
                "occlusion_images": self.occlusion_images}


class MicroBatcher:
    """Runs ``model`` (images -> :class:`Output`) on the event loop, for the requests of one turn of it at once.

    Requests hand their images to :meth:`run` (a coroutine) on the loop. The first one of a turn schedules
    one call at the end of that turn, so every request whose images were ready in the same turn shares it;
    requests that arrive while the model runs wait in the sockets and share the next call. A call waits up
    to ``wait_s`` for announced requests (:meth:`announce`, their images still being decoded in a thread)
    and for as many requests as the last call had (the clients that will send again), never beyond
    ``max_images`` images.
    One thread does it all: no lock, no hand-over between threads, and the model has a single caller.
    From another thread (the occlusion maps' forward passes), call the batcher: it runs on the loop.
    """

    def __init__(self, model: Callable[[np.ndarray], Output], max_images: int = MAX_IMAGES,
                 wait_s: float = WAIT_S) -> None:
        if max_images < 1 or wait_s < 0:
            raise ValueError(f"max_images must be >= 1 and wait_s >= 0. Received: {max_images}, {wait_s}")
        self.model, self.max_images, self.wait_s = model, max_images, wait_s
        self.stats = Stats()
        self._pending: list[_Request] = []
        self._coming = 0       # announced requests whose images are not ready yet
        self._scheduled = False
        self._since = 0.0      # when the oldest pending request came
        self._last = 1         # requests in the last call: as many clients are likely to send again
        self._loop: asyncio.AbstractEventLoop | None = None

    def announce(self) -> None:
        """A request is on its way (its images being decoded): a call may wait for it. Every announce is
        followed by one :meth:`run` with ``announced=True`` or one :meth:`withdraw`."""
        self._coming += 1

    def withdraw(self) -> None:
        """An announced request will not come (it failed before its images were ready)."""
        self._coming -= 1

    async def run(self, x: np.ndarray, announced: bool = False, internal: bool = False) -> Output:
        """``x``'s :class:`Output` (its own rows, in order); ``internal``: the server's own call (counted
        apart from the clients' requests)."""
        loop = self._loop = asyncio.get_running_loop()
        if announced:
            self.withdraw()
        request = _Request(np.asarray(x, np.float32), loop.create_future(), internal)
        if not self._pending:
            self._since = time.monotonic()
        self._pending.append(request)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await request.future

    def __call__(self, x: np.ndarray) -> Output:
        """The same, from a thread other than the loop's, waited for."""
        if self._loop is None:
            raise RuntimeError("the batcher has not run on an event loop yet")
        return asyncio.run_coroutine_threadsafe(self.run(x, internal=True), self._loop).result()

    def _flush(self) -> None:
        """One model call for the pending requests (as many as fit), then again while more are pending."""
        loop = self._loop
        left = self._since + self.wait_s - time.monotonic()
        expected = max(self._last, 1) if self._coming <= 0 else len(self._pending) + self._coming
        room = sum(len(r.x) for r in self._pending) < self.max_images
        if left > 0 and room and len(self._pending) < expected:  # others are on their way
            loop.call_later(min(left, POLL_S), self._flush)
            return
        batch, n = [], 0
        while self._pending and (not batch or n + len(self._pending[0].x) <= self.max_images):
            batch.append(self._pending.pop(0))
            n += len(batch[-1].x)
        self._run(batch)
        self._since = time.monotonic()
        if self._pending:
            loop.call_soon(self._flush)
        else:
            self._scheduled = False

    def _run(self, batch: list[_Request]) -> None:
        """One model call for ``batch``; each request gets its rows (or the call's exception)."""
        live = [r for r in batch if not r.future.done()]  # not those whose client went away
        if not live:
            return
        start = 0
        try:
            out = self.model(np.concatenate([r.x for r in live]) if len(live) > 1 else live[0].x)
            for r in live:
                r.future.set_result(out.take(start, start + len(r.x)))
                start += len(r.x)
        except Exception as exc:  # noqa: BLE001 - handed to the requests that were in this batch
            log.exception("serve: a model call failed")
            for r in live:
                if not r.future.done():
                    r.future.set_exception(exc)
            return
        s, clients = self.stats, [r for r in live if not r.internal]
        images = sum(len(r.x) for r in clients)
        s.occlusion_images += start - images
        if clients:
            s.batches, s.requests, s.images = s.batches + 1, s.requests + len(clients), s.images + images
            s.largest = max(s.largest, len(clients))
        self._last = len(live)
