"""Joining a torchrun job: the device, the ranks, collectives that are no-ops in a single process, and
which rank builds the data cache first."""

import contextlib
import os

import torch
import torch.distributed as dist

from src.device import pick_device


def setup_distributed(device_name: str) -> tuple[int, int, int, torch.device]:
    """(rank, local rank, world size, device). Under torchrun, join the group: NCCL on GPUs, gloo on CPU."""
    device = pick_device(device_name)
    if "RANK" not in os.environ:
        return 0, 0, 1, device
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), local_rank, dist.get_world_size(), device


def all_reduce(t: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """Reduce in place across ranks (a no-op in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t


@contextlib.contextmanager
def local_rank_zero_first(local_rank: int):
    """Local rank 0 of every node runs the block first (e.g. builds the data cache on that node's disk);
    the node's other ranks then reuse its result. Nodes sharing a disk are serialised by the cache's
    own file lock."""
    if local_rank != 0:
        dist.barrier()
    yield
    if local_rank == 0 and dist.is_initialized():
        dist.barrier()
