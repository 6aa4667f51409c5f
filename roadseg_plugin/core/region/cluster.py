"""Where a region run's tasks run: a running Dask scheduler, or a local cluster of worker processes.

`connect` is the run's last check before any work: a scheduler that does not answer (or is not
a Dask scheduler) is refused within the timeout, and one whose scheduler or workers cannot
import RoadSeg, or cannot read the model or an input, is refused with what is missing where.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import ParamError

DEFAULT_TIMEOUT = 20.0  # seconds to reach a scheduler (and for it to have a worker)
LOCAL_HOST = "127.0.0.1"  # a local cluster (scheduler, workers, dashboard) listens on this machine only


@contextmanager
def connect(scheduler: str | None, workers: int | None, timeout: float,
            files: list[str]) -> Iterator[tuple[Any, int, int]]:
    """(client, workers, model threads per worker) on the given scheduler or a local cluster.

    `files` (the model, the inputs) must exist on every worker of a remote scheduler."""
    import psutil
    from distributed import Client, LocalCluster

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    if scheduler:
        _probe(scheduler, timeout)
        client = Client(scheduler, timeout=timeout, set_as_default=False)
        try:
            try:
                client.wait_for_workers(1, timeout=timeout)
            except (OSError, TimeoutError):
                raise ParamError("scheduler", scheduler, f"has no worker after {timeout:g} s",
                                 f"start workers with `dask worker {scheduler}`") from None
            _check_remote(client, scheduler, files)
            yield client, len(client.scheduler_info()["workers"]), _remote_threads(client)
        finally:
            client.close()
        return
    n = workers or cores
    _python_for_workers()
    logging.getLogger("distributed").setLevel(logging.ERROR)  # a lost worker is reported in the summary
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host=LOCAL_HOST,
                           dashboard_address=_dashboard_port(), silence_logs=logging.ERROR)
    try:
        with Client(cluster, set_as_default=False) as client:
            yield client, n, max(1, cores // n)
    finally:
        cluster.close()


def _probe(address: str, timeout: float) -> None:
    """Connect once to `address` and shake hands, all within `timeout`.

    Done before `Client(address)`: a client that fails half-way (a server that is no Dask
    scheduler answers garbage) takes another 40 s to close, past the time the user was promised.

    Raises:
        ParamError: nothing answers, or not a Dask scheduler.
    """
    import asyncio

    from distributed.comm import connect

    async def shake() -> None:
        comm = await asyncio.wait_for(connect(address, timeout=timeout), timeout)
        await comm.close()

    try:
        asyncio.run(shake())
    except Exception as exc:  # noqa: BLE001 - refused, timed out, bad address, or garbage from a non-Dask server
        said = (str(exc).splitlines() or [""])[0][:120] or type(exc).__name__
        if isinstance(exc, MemoryError):  # it read a huge "message length" from whatever answered
            said = "something answered, but not a Dask scheduler"
        raise ParamError("scheduler", address, f"cannot be reached or is not a Dask scheduler ({said})",
                         "check the address and that `dask scheduler` runs there; or leave --scheduler out for "
                         "a local cluster") from None


def _check_remote(client: Any, address: str, files: list[str]) -> None:
    """The scheduler and every worker import RoadSeg (Dask unpickles tasks on both) and see `files`.

    Raises:
        ParamError: naming what is missing where.
    """
    fix = ("start `dask scheduler` and `dask worker` where roadseg_plugin imports (RoadSeg's Python environment, "
           "PYTHONPATH set to the folder holding roadseg_plugin)")
    try:
        client.run_on_scheduler(_host_cores)
    except Exception:  # noqa: BLE001 - ModuleNotFoundError on the scheduler comes back as several types
        raise ParamError("scheduler", address, "cannot import roadseg_plugin, so it cannot read RoadSeg's tasks",
                         fix) from None
    try:
        seen = client.run(_missing, files)
    except Exception:  # noqa: BLE001
        raise ParamError("scheduler", address, "has workers that cannot import roadseg_plugin", fix) from None
    for worker, missing in seen.items():
        if missing:
            raise ParamError("scheduler", address, f"worker {worker} cannot read {missing[0]}"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                             "the model and the inputs must be at the same paths on every worker (a shared "
                             "folder)")


def _missing(files: list[str]) -> list[str]:
    """The files (absolute paths; GDAL dataset names are not checked) this machine cannot read."""
    return [f for f in files if os.path.isabs(f) and not os.access(f, os.R_OK)]


def _python_for_workers() -> None:
    """Inside QGIS, sys.executable is QGIS itself: spawn worker processes with its Python."""
    from ...install.packages import python_executable

    exe = python_executable()
    if exe and os.path.realpath(exe) != os.path.realpath(sys.executable or ""):
        multiprocessing.set_executable(exe)


def _dashboard_port() -> str | None:
    import importlib.util

    return f"{LOCAL_HOST}:0" if importlib.util.find_spec("bokeh") is not None else None  # any free port


def dashboard_link(client: Any) -> str | None:
    try:
        return client.dashboard_link if "dashboard" in client.scheduler_info().get("services", {}) else None
    except Exception:  # noqa: BLE001 - only informative
        return None


def _host_cores() -> tuple[str, int]:
    import socket

    import psutil

    return socket.gethostname(), psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _remote_threads(client: Any) -> int:
    """Model threads per task: each host's cores over the task threads its workers run at once."""
    hosts = client.run(_host_cores)
    info = client.scheduler_info()["workers"]
    threads: dict[str, int] = {}
    for address, (host, _) in hosts.items():
        threads[host] = threads.get(host, 0) + info.get(address, {}).get("nthreads", 1)
    return max(1, min(cores // threads[host] for host, cores in hosts.values()))
