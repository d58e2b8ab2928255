"""The Ray engine (``[cluster] engine = "ray"``): the same jobs as the local process pool, run as Ray tasks.

:class:`RayPool` has the local pool's interface (``workers``, ``apply_async(fn, args).get()``, ``close``), so
prepare's decoding and the audit's jobs run on a Ray cluster unchanged: the tasks are the very
functions the local workers run, so the results are the same, and a task whose worker dies is run again by Ray
(``max_retries``; every job is idempotent: it writes the same rows again). :func:`remote` runs one function as
a task (suspects' folds). :class:`RayActorPool` keeps objects with a state of their own (a loaded model) in Ray
actors and maps batches through them in order (predict's model). :func:`connect` joins the cluster:
``ray_address``, else ``$RAY_ADDRESS`` (Ray's own rule), else a local instance started in this process. Ray is
an optional extra: without it, one clear line. :func:`train_workers` runs a training function on Ray Train
workers (``TensorflowTrainer``), each with its ``TF_CONFIG``.
"""
from __future__ import annotations

import functools
import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline.shared.errors import UserError
from pipeline.shared.params import ClusterParams

log = logging.getLogger(__name__)

RETRIES = 3  # a task whose worker process dies is run again, this many times at most
INSTALL = 'pip install ".[ray]"'
LOOPBACK = ("127.0.0.1", "localhost")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(f'[cluster] engine = "ray" needs Ray: {INSTALL} (or use --engine local)') from None
    return ray


def connect(cp: ClusterParams) -> Any:
    """The ``ray`` module, joined to the cluster ``cp`` names (once per process)."""
    address = cp.ray_address or os.environ.get("RAY_ADDRESS") or None
    loopback = bool(address) and address.split(":")[0] in LOOPBACK
    if loopback:  # read when Ray is imported: keep every address of this one-node cluster on loopback
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _ray()
    if not ray.is_initialized():
        # a cluster on this machine's loopback: this driver joins it as the node 127.0.0.1 too (else Ray
        # takes the machine's interface address for the driver and looks for the cluster there)
        here = {"_node_ip_address": "127.0.0.1"} if loopback else {}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=False, **here)
        log.info("cluster: Ray %s, %s CPUs (%s)", ray.__version__, int(ray.cluster_resources().get("CPU", 0)),
                 f"at {address}" if address else "a local instance")
    return ray


def _call(fn: Callable, args: tuple) -> Any:
    """A task: one job, in a Ray worker process (OpenCV on one thread, as in the local pool's workers)."""
    import cv2

    cv2.setNumThreads(1)
    return fn(*args)


@functools.cache
def _call_task(ray: Any) -> Any:
    """:func:`_call` as a Ray remote function, made once per process (``.options`` gives its variants)."""
    return ray.remote(_call)


def _cpus(ray: Any) -> int:
    """The cluster's CPUs (at least 1): one task or actor each, when no count is given."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


class _Result:
    def __init__(self, ray: Any, ref: Any) -> None:
        self._ray, self._ref = ray, ref

    def get(self) -> Any:
        return self._ray.get(self._ref)


class RayPool:
    """Jobs as Ray tasks, one CPU each; ``workers``: the cluster's CPUs (or ``workers`` when given)."""

    def __init__(self, cp: ClusterParams, workers: int = 0) -> None:
        self._ray = connect(cp)
        self.workers = workers or _cpus(self._ray)
        self._task = _call_task(self._ray).options(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)

    def apply_async(self, fn: Callable, args: tuple) -> _Result:
        return _Result(self._ray, self._task.remote(fn, args))

    def close(self) -> None:
        """Nothing to stop: the cluster outlives the job (a local instance ends with this process)."""


def remote(cp: ClusterParams, fn: Callable, *args: Any, num_cpus: float = 1) -> _Result:
    """``fn(*args)`` as one Ray task (retried when its worker dies); ``.get()`` waits for its result."""
    ray = connect(cp)
    return _Result(ray, _call_task(ray).options(num_cpus=num_cpus, max_retries=RETRIES).remote(fn, args))


class RayActorPool:
    """``actors`` Ray actors, each ``cls(*args)`` built once (e.g. a loaded model), one CPU each.

    :meth:`map` hands the items out in turn and yields the results in the items' order. An actor whose
    process dies is started again (``cls(*args)`` anew) and its unfinished calls are redone, up to
    ``RETRIES`` times (``max_restarts``, ``max_task_retries``): every call must be a pure function of its item.
    """

    def __init__(self, cp: ClusterParams, cls: type, args: tuple = (), actors: int = 0) -> None:
        self._ray = connect(cp)
        n = actors or _cpus(self._ray)
        actor = self._ray.remote(cls).options(num_cpus=1, max_restarts=RETRIES, max_task_retries=RETRIES)
        self._actors = [actor.remote(*args) for _ in range(n)]

    @property
    def actors(self) -> int:
        return len(self._actors)

    def map(self, method: str, items: Iterable, ahead: int = 0) -> Iterator[Any]:
        """``getattr(actor, method)(item)`` of each item, in order; at most ``ahead`` items (default two per
        actor) handed out and not yet yielded, so the items may be a long stream."""
        pending: deque = deque()
        turns = itertools.cycle(self._actors)
        for item in items:
            pending.append(getattr(next(turns), method).remote(item))
            if len(pending) >= (ahead or 2 * len(self._actors)):
                yield self._ray.get(pending.popleft())
        while pending:
            yield self._ray.get(pending.popleft())

    def close(self) -> None:
        """End the actors (the cluster goes on)."""
        for actor in self._actors:
            self._ray.kill(actor, no_restart=True)
        self._actors = []


def train_workers(cp: ClusterParams, fn: Callable[[dict], None], config: dict, workers: int, storage: Path) -> int:
    """``fn(config)`` in ``workers`` Ray Train workers at once (0: one per node of the cluster), through Ray Train's
    ``TensorflowTrainer``: it sets ``TF_CONFIG`` in each for ``MultiWorkerMirroredStrategy`` (worker 0 first) and
    keeps its own records under ``storage``. A worker's :class:`UserError` comes back as it is. The workers used."""
    ray = connect(cp)
    try:
        from ray.train import RunConfig, ScalingConfig, TrainingFailedError
        from ray.train.tensorflow import TensorflowTrainer
    except ImportError as exc:
        raise UserError(f"training on Ray needs Ray Train and TensorFlow: {INSTALL} (or use --engine local); "
                        f"{exc}") from None
    n = workers or sum(1 for node in ray.nodes() if node.get("Alive"))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    log.info("cluster: training on %d Ray Train worker(s)%s", n, ", one GPU each" if gpus >= n else "")
    trainer = TensorflowTrainer(fn, train_loop_config=config,
                                scaling_config=ScalingConfig(num_workers=n, use_gpu=gpus >= n),
                                run_config=RunConfig(name="train", storage_path=str(Path(storage).resolve())))
    try:
        trainer.fit()
    except TrainingFailedError as exc:
        raise _worker_user_error(exc) or exc
    return n


def _worker_user_error(exc: BaseException) -> UserError | None:
    """The first :class:`UserError` a Ray Train worker raised (Ray wraps it), if that is what failed."""
    seen = [exc, *getattr(exc, "worker_failures", {}).values()]
    while seen:
        e = seen.pop(0)
        if isinstance(e, UserError):
            return e
        seen += [c for c in (getattr(e, "cause", None), e.__cause__) if isinstance(c, BaseException)]
    return None


def stop_head(temp_dir: str | os.PathLike) -> None:
    """Stop the one-node cluster started with ``ray start --head --temp-dir=temp_dir`` (tests, benchmarks) and
    nothing else: its processes are those naming ``temp_dir`` in their command line or holding a file under it
    (``ray stop`` would stop every cluster here)."""
    import signal
    import time

    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        for pid in _processes_of(str(temp_dir)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _processes_of(str(temp_dir)) and time.monotonic() < deadline:
            time.sleep(0.1)


def _processes_of(temp_dir: str) -> list[int]:
    """The live processes (not this one) naming ``temp_dir`` or with a file open under it: Ray's agents and
    client server retitle themselves (``ray::DashboardAgent``) but keep their logs there open."""
    import subprocess

    out = subprocess.run(["ps", "-ewwo", "pid=,stat=,args="], capture_output=True, text=True, check=False).stdout
    found = []
    for line in out.splitlines():
        pid, stat, args = (line.split(None, 2) + [""])[:3]
        if int(pid) != os.getpid() and not stat.startswith("Z") and (temp_dir in args or _holds(pid, temp_dir)):
            found.append(int(pid))
    return found


def _holds(pid: str, folder: str) -> bool:
    """Whether process ``pid`` has a file open under ``folder`` (Linux' /proc; elsewhere: no)."""
    try:
        inside = folder.rstrip("/") + "/"
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith(inside) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False
