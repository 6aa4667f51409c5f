"""Multi-process training under `torchrun` (DistributedDataParallel): one process per GPU (NCCL)
or per CPU share (gloo).

`torchrun --nproc-per-node N -m training train ...` starts N copies of the command; torchrun tells
each its place through the environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
`MASTER_PORT`). Without those variables nothing here starts a process group and every helper is
the identity of a world of one process, so a plain run takes the same code path unchanged.

What is shared between the processes ("ranks"):

- `--batch-size` is the global batch: each rank trains on batch / N crops per step, and
  `BatchShardSampler` gives rank r the r-th share of global batch k, so together the ranks train
  on exactly the crops, in the same batches, of a single-process run with the same options;
- DDP averages the gradients; `batch_weight` corrects the (rare) last batch of an epoch whose
  shares are unequal, so every crop counts the same as in a single process;
- validation tiles are dealt out round-robin (`shard`); the sums it needs are all-reduced
  (`all_reduce_sum`), so its metrics are those of a single-process validation;
- rank 0 alone writes files and decides to stop (`broadcast_flag`).
"""
from __future__ import annotations

import logging
import math
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
from torch import distributed as dist
from torch.utils.data import Sampler

from roadseg_plugin.core.errors import ParamError

log = logging.getLogger(__name__)
T = TypeVar("T")
TIMEOUT = timedelta(minutes=30)  # a rank that waits longer on the others fails instead of hanging
_collective_device = torch.device("cpu")  # where collective tensors live: the rank's GPU with NCCL
_signalled: int | None = None  # SIGINT or SIGTERM received while in the process group


# ---- who am I ----------------------------------------------------------------------------------
def launched() -> bool:
    """True in a process started by torchrun (or anything else that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    """True while a process group is up (between `process_group`'s enter and exit)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    if active():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0)) if launched() else 0


def world_size() -> int:
    if active():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1)) if launched() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if launched() else 0


def is_main() -> bool:
    """Rank 0, the one process that writes files and logs (always True without torchrun)."""
    return rank() == 0


# ---- set-up and teardown -----------------------------------------------------------------------
def device_for(device: torch.device) -> torch.device:
    """The device this rank trains on: `cuda:LOCAL_RANK` for a CUDA device under torchrun (one
    GPU per process), else `device` itself.

    Raises:
        ParamError: a GPU named by index with several processes (each takes the one of its
            local rank); more processes than GPUs on the node; a device neither CUDA nor CPU
            (NCCL and gloo cover those two).
    """
    if not launched():
        return device
    if device.type == "cuda":
        if device.index is not None:  # one process on the GPU asked for; more cannot share it
            if world_size() > 1:
                raise ParamError("device", str(device), "names one GPU, but under torchrun each process uses "
                                 "the GPU of its LOCAL_RANK", "use --device cuda or auto")
            return device
        if local_rank() >= torch.cuda.device_count():
            raise ParamError("device", "cuda", f"process {local_rank()} on this node has no GPU of its own "
                             f"({torch.cuda.device_count()} found)", "start at most one process per GPU "
                             "(--nproc-per-node)")
        return torch.device("cuda", local_rank())
    if device.type != "cpu":
        raise ParamError("device", str(device), "multi-process training runs on CUDA (NCCL) or CPU (gloo)",
                         "use --device cuda or cpu")
    return device


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join the torchrun job for the duration: NCCL on a GPU, gloo on CPU; always left again
    (`destroy_process_group`), also on an error or Ctrl-C. Does nothing without torchrun."""
    global _collective_device
    if not launched() or active():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    _collective_device = device
    log.debug("process %d of %d (%s, %s)", rank(), world_size(), dist.get_backend(), device)
    try:
        with _recording_signals():
            yield
    finally:
        _collective_device = torch.device("cpu")
        dist.destroy_process_group()


@contextmanager
def _recording_signals() -> Iterator[None]:
    """Remember a SIGINT / SIGTERM before its usual handler (KeyboardInterrupt, the CLI's
    `Terminated`) runs. On Ctrl-C torchrun signals every process; one waiting in a collective
    may first see the error of a peer that already left ("Connection closed by peer"), and the
    interrupt itself can then be lost; `raise_if_signalled` turns that error back into it."""
    global _signalled
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def record(signum: int, frame: object) -> None:
        global _signalled
        _signalled = signum
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
        else:
            raise KeyboardInterrupt

    for sig, handler in previous.items():
        if callable(handler):  # a Python-level handler to keep; SIG_DFL/SIG_IGN stay as they are
            signal.signal(sig, record)
    _signalled = None
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if callable(handler):
                signal.signal(sig, handler)


def raise_if_signalled(exc: BaseException) -> None:
    """When this process got SIGINT / SIGTERM, raise what that signal raises (KeyboardInterrupt,
    the CLI's `Terminated`) from `exc`, the error of a collective whose peers left because of
    the same signal; else nothing."""
    if _signalled is None or isinstance(exc, KeyboardInterrupt):
        return
    handler = signal.getsignal(_signalled)
    try:
        if callable(handler):
            handler(_signalled, None)
        raise KeyboardInterrupt
    except BaseException as interrupt:
        raise interrupt from exc


def check_batch_size(batch_size: int) -> None:
    """`batch_size` is the global batch: refuse one the processes cannot share evenly."""
    world = world_size()
    if batch_size % world:
        raise ParamError("batch_size", batch_size, f"is the global batch and must be a multiple of the {world} "
                         "processes", f"e.g. {max(1, round(batch_size / world)) * world}")


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module the training step calls: `model` itself without a process group; else the
    DistributedDataParallel wrapper, which averages the gradients of all ranks in backward.

    On CUDA the BatchNorm layers become SyncBatchNorm (statistics over the global batch, as in a
    single-process run); PyTorch has no CPU SyncBatchNorm, so with gloo each rank normalises
    with its own share's statistics and the running statistics are rank 0's (`sync_buffers`).
    The layers are converted in place: `model` keeps the same state_dict keys, so checkpoints
    saved from it load like any other.
    """
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(model)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside a DDP (or torch.compile) wrapper."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


# ---- collectives (the identity in a world of one) ----------------------------------------------
def all_reduce_sum(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Element-wise sum over all ranks, in float64 (exact for counts below 2**53)."""
    array = np.asarray(values, dtype=np.float64)
    if not active() or world_size() == 1:
        return array
    tensor = torch.from_numpy(array.copy()).to(_collective_device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's `flag` on every rank: decisions (early stopping, time budget) are rank 0's."""
    if not active() or world_size() == 1:
        return bool(flag)
    tensor = torch.tensor([int(bool(flag))], dtype=torch.int32, device=_collective_device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def any_flag(flag: bool) -> bool:
    """True on every rank when it is True on any (cancellation requested by any process)."""
    return bool(all_reduce_sum([float(bool(flag))])[0] > 0)


def sync_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics): DDP broadcasts them at
    the start of each training step, so after the last step of an epoch each rank holds its own
    update; validation on every rank, and the checkpoint rank 0 saves, must use the same ones."""
    if not active() or world_size() == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of `items`, dealt round-robin (rank r: items r, r + N, ...)."""
    return list(items[rank()::world_size()])


class BatchShardSampler(Sampler[list[int]]):
    """This rank's indices of each global batch of an epoch, for `DataLoader(batch_sampler=...)`.

    Global batch k holds the indices k*B .. k*B + n - 1 (n = B but for a shorter last batch), as a
    single-process run with `shuffle=False` batches them; rank r takes the r-th of N consecutive,
    as-equal-as-possible shares. The crops are drawn by the dataset from (seed, epoch, index)
    (`RandomCropDataset.set_epoch`), so each rank sees different crops, a new set every epoch, and
    all ranks together the very crops of a single-process run. A last batch of fewer than N
    crops gives the ranks left without one the batch's first crop again (every rank must run
    every step).
    """

    def __init__(self, length: int, batch_size: int, rank_: int | None = None, world: int | None = None) -> None:
        self.length, self.batch_size = length, batch_size
        self.rank = rank() if rank_ is None else rank_
        self.world = world_size() if world is None else world

    def __len__(self) -> int:
        return math.ceil(self.length / self.batch_size)

    def shares(self, k: int) -> list[list[int]]:
        """The N shares of global batch k."""
        start = k * self.batch_size
        n = min(self.batch_size, self.length - start)
        bounds = [start + n * r // self.world for r in range(self.world + 1)]
        return [list(range(a, b)) or [start] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def global_size(self, k: int) -> int:
        """Crops trained on in global batch k, over all ranks (repeats of a short last batch included)."""
        return sum(len(s) for s in self.shares(k))

    def __iter__(self) -> Iterator[list[int]]:
        for k in range(len(self)):
            yield self.shares(k)[self.rank]


def batch_weight(sampler: BatchShardSampler, k: int, size: int) -> float:
    """Factor on this rank's (mean) loss of global batch k so that DDP's gradient average equals
    the crop-weighted mean of a single process: N * size / global size; 1 for equal shares."""
    return sampler.world * size / sampler.global_size(k)
