"""Training in several processes (torchrun): the process group, ranks and collectives.

``torchrun --nproc_per_node=N -m lrcn train ...`` starts N processes and gives each its place
in the environment: ``RANK`` (0 .. WORLD_SIZE - 1 over all machines), ``WORLD_SIZE`` and
``LOCAL_RANK`` (its index on this machine, which picks its GPU). Without them (a plain
``lrcn train``) there is one process, no group is made, and every helper here answers for
that one process, so the trainer calls them unconditionally.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lrcn.errors import LrcnError

# A process that waits longer than this in a collective (a peer stuck or gone) raises instead
# of hanging. Every wait in training is short: all processes do the same work between
# collectives (evaluation is split over them too).
TIMEOUT = timedelta(minutes=30)


def launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun); readable before init."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    """Whether this process is in a process group of several."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files and logs progress."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


@contextmanager
def process_group(device: str) -> Iterator[None]:
    """Join torchrun's process group for the block (nothing without torchrun), then leave it.

    The backend is gloo on the CPU and NCCL on CUDA, where each process first takes the GPU
    of its LOCAL_RANK.
    """
    if launched_world_size() <= 1:
        yield
        return
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        if local_rank() >= torch.cuda.device_count():
            raise LrcnError(f"process {rank()} has LOCAL_RANK {local_rank()}, but this machine "
                            f"has {torch.cuda.device_count()} CUDA devices; start at most that "
                            "many processes per machine (--nproc_per_node)")
        torch.cuda.set_device(local_rank())
    try:
        dist.init_process_group(backend, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as exc:
        raise LrcnError(
            f"process {rank()} of {launched_world_size()} cannot join the {backend} process "
            f"group at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}: "
            f"{str(exc).splitlines()[0]}") from None
    try:
        yield
    finally:
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """This process's device: its own GPU (LOCAL_RANK) when several processes share CUDA."""
    if device.type == "cuda" and active():
        return torch.device("cuda", local_rank())
    return device


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` in every process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order, in every process."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over processes of `tensor` (each process's copy is replaced by it)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is true in any process: what every process then acts on together
    (skip a step, stop), so that none waits in a collective the others have left."""
    if not active():
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0)


def sync_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every process.

    DDP sends them before each forward, but each process then updates its own copy from its
    own questions; after the last step the processes differ, and rank 0's are the saved ones.
    """
    if active():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
