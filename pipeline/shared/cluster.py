"""The Ray engine (``[cluster] engine = "ray"``): the same jobs as the local process pool, run as Ray tasks.

:class:`RayPool` has the local pool's interface (``workers``, ``apply_async(fn, args).get()``, ``close``), so
prepare's and predict's decoding and the audit's jobs run on a Ray cluster unchanged: the tasks are the very
functions the local workers run, so the results are the same, and a task whose worker dies is run again by Ray
(``max_retries``; every job is idempotent: it writes the same rows again). :func:`remote` runs one function as
a task (suspects' folds). :func:`connect` joins the cluster: ``ray_address``, else ``$RAY_ADDRESS`` (Ray's own
rule), else a local instance started in this process. Ray is an optional extra: without it, one clear line.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

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


class _Result:
    def __init__(self, ray: Any, ref: Any) -> None:
        self._ray, self._ref = ray, ref

    def get(self) -> Any:
        return self._ray.get(self._ref)


class RayPool:
    """Jobs as Ray tasks, one CPU each; ``workers``: the cluster's CPUs (or ``workers`` when given)."""

    def __init__(self, cp: ClusterParams, workers: int = 0) -> None:
        self._ray = connect(cp)
        self.workers = workers or max(1, int(self._ray.cluster_resources().get("CPU", 1)))
        self._task = self._ray.remote(_call).options(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)

    def apply_async(self, fn: Callable, args: tuple) -> _Result:
        return _Result(self._ray, self._task.remote(fn, args))

    def close(self) -> None:
        """Nothing to stop: the cluster outlives the job (a local instance ends with this process)."""


def remote(cp: ClusterParams, fn: Callable, *args: Any, num_cpus: float = 1) -> _Result:
    """``fn(*args)`` as one Ray task (retried when its worker dies); ``.get()`` waits for its result."""
    ray = connect(cp)
    return _Result(ray, ray.remote(_call).options(num_cpus=num_cpus, max_retries=RETRIES).remote(fn, args))


def stop_head(temp_dir: str | os.PathLike) -> None:
    """Stop the one-node cluster started with ``ray start --head --temp-dir=temp_dir`` (tests, benchmarks) and
    nothing else: its processes are those naming ``temp_dir`` (``ray stop`` would stop every cluster here)."""
    import signal
    import subprocess
    import time

    def ours() -> list[int]:
        out = subprocess.run(["ps", "-ewwo", "pid=,args="], capture_output=True, text=True).stdout
        return [int(line.split(None, 1)[0]) for line in out.splitlines()
                if str(temp_dir) in line and int(line.split(None, 1)[0]) != os.getpid()]

    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        for pid in ours():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while ours() and time.monotonic() < deadline:
            time.sleep(0.1)
