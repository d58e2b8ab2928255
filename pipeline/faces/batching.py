"""Micro-batching for ``serve``: concurrent requests share one model call.

Each request hands its images (already decoded and preprocessed, an array) to :meth:`MicroBatcher.submit`
and gets a future. One background thread takes the first waiting request, gathers the others that
arrive within ``wait_s`` (a few milliseconds) or until ``max_images`` are gathered, runs the model once
on all of them, and gives each request its own rows of the answer (:meth:`pipeline.model.infer.Output.take`).
It waits only for requests that are on their way: a request announces itself (:meth:`~MicroBatcher.announce`)
when it arrives, before its images are decoded, so a lone request (one client) runs at once, and the
requests of concurrent clients share a call. Requests that queue while the model runs share the next
call anyway. A request larger than ``max_images`` runs alone (the predictor splits it into batches).
The thread is the only caller of the model, so no lock is needed around it; a failing call fails only
the requests in that batch.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from pipeline.model.infer import Output

log = logging.getLogger(__name__)

MAX_IMAGES = 64   # images per model call at most (a LeNet-size call of 64 costs about what one of 8 does)
WAIT_S = 0.002    # how long the first request of a batch waits for others (those on their way)
POLL_S = 0.0005   # while waiting, how often it looks whether they are still on their way


@dataclass
class _Request:
    x: np.ndarray
    future: Future = field(default_factory=Future)


@dataclass
class Stats:
    """What the batcher has done (``/health`` shows it)."""

    batches: int = 0
    requests: int = 0
    images: int = 0
    largest: int = 0  # the most requests answered by one model call

    def as_dict(self) -> dict[str, float]:
        return {"batches": self.batches, "requests": self.requests, "images": self.images, "largest": self.largest,
                "requests_per_batch": round(self.requests / self.batches, 2) if self.batches else 0.0}


class MicroBatcher:
    """Runs ``model`` (images -> :class:`Output`) on the requests of a few milliseconds at once."""

    def __init__(self, model: Callable[[np.ndarray], Output], max_images: int = MAX_IMAGES,
                 wait_s: float = WAIT_S) -> None:
        if max_images < 1 or wait_s < 0:
            raise ValueError(f"max_images must be >= 1 and wait_s >= 0. Received: {max_images}, {wait_s}")
        self.model, self.max_images, self.wait_s = model, max_images, wait_s
        self.stats = Stats()
        self._coming = 0  # requests announced and not yet submitted
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
        self._thread.start()

    def announce(self) -> None:
        """A request is on its way (being decoded): a batch being gathered may wait for it. Every announce
        is followed by one :meth:`submit` with ``announced=True`` or one :meth:`withdraw`."""
        with self._lock:
            self._coming += 1

    def withdraw(self) -> None:
        """An announced request will not come (it failed before its images were ready)."""
        with self._lock:
            self._coming -= 1

    def submit(self, x: np.ndarray, announced: bool = False) -> Future:
        """A future of ``x``'s :class:`Output` (its own rows, in order)."""
        request = _Request(np.asarray(x, np.float32))
        if announced:
            self.withdraw()
        self._queue.put(request)
        return request.future

    def __call__(self, x: np.ndarray) -> Output:
        """The same, waited for (from a worker thread; e.g. the occlusion map's forward passes)."""
        return self.submit(x).result()

    def close(self) -> None:
        """Stop the thread after the requests already submitted."""
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _gather(self, first: _Request) -> tuple[list[_Request], _Request | None, bool]:
        """The batch that ``first`` starts: (requests, one that did not fit and starts the next, stop)."""
        batch, n = [first], len(first.x)
        deadline = time.monotonic() + self.wait_s
        while n < self.max_images:
            left = deadline - time.monotonic()
            try:  # those already queued; then, while others are on their way and time is left, wait a little
                nxt = self._queue.get_nowait() if self._coming <= 0 or left <= 0 else \
                    self._queue.get(timeout=min(left, POLL_S))
            except queue.Empty:
                if self._coming <= 0 or left <= 0:
                    break
                continue
            if nxt is None:
                return batch, None, True
            if n + len(nxt.x) > self.max_images:
                return batch, nxt, False
            batch.append(nxt)
            n += len(nxt.x)
        return batch, None, False

    def _loop(self) -> None:
        carry: _Request | None = None
        stop = False
        while not stop:
            first = carry if carry is not None else self._queue.get()
            if first is None:
                break
            batch, carry, stop = self._gather(first)
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        """One model call for ``batch``; each request gets its rows (or the call's exception)."""
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            out = self.model(np.concatenate([r.x for r in live]) if len(live) > 1 else live[0].x)
        except Exception as exc:  # noqa: BLE001 - handed to the requests that were in this batch
            log.exception("serve: a model call failed")
            for r in live:
                r.future.set_exception(exc)
            return
        start = 0
        for r in live:
            r.future.set_result(out.take(start, start + len(r.x)))
            start += len(r.x)
        s = self.stats
        s.batches, s.requests, s.images = s.batches + 1, s.requests + len(live), s.images + start
        s.largest = max(s.largest, len(live))
