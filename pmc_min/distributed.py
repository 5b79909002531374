"""Many processes under torchrun: which rank this is, and the few collectives pmc_min needs.

`torchrun --nproc-per-node N run.py ...` starts N copies of the run; `init` joins
them into one process group (gloo on a CPU, NCCL on GPUs). Then:

- generation is shared: `qa.complete` gives each rank every N-th prompt and gathers
  the answers, so evaluation, y0 and PMC's draws are split N ways. Each prompt
  keeps the seed it has in one process (`rng`), so its samples do not change;
- training splits every micro-batch's rows between the ranks (`train.Engine`),
  and DistributedDataParallel or FSDP2 reduces the gradients;
- rank 0 alone writes files, prints and shows progress bars.

In one process (no torchrun) every function here is the identity or a no-op.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int = 0
    size: int = 1
    solo: bool = False  # inside `rank_zero_first`: every rank works on its own


WORLD = World()


def launched() -> bool:
    """Started by torchrun (or a launcher that sets RANK and WORLD_SIZE as it does)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init(device: str) -> str:
    """Join torchrun's process group; returns this rank's device (cuda:LOCAL_RANK on GPUs)."""
    if not launched() or dist.is_initialized():
        return device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    # long timeout: rank 0 may build a cache (the tiny default, a fine-tuned model) while the others wait
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=6))
    WORLD.rank, WORLD.size = dist.get_rank(), dist.get_world_size()
    return device


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    WORLD.rank, WORLD.size = 0, 1


def size() -> int:
    """Ranks that share the work now (1 inside `rank_zero_first`)."""
    return 1 if WORLD.solo else WORLD.size


def rank() -> int:
    return 0 if WORLD.solo else WORLD.rank


def main_rank() -> bool:
    """The rank that writes files and prints: rank 0, or the only process."""
    return WORLD.rank == 0


def share(n: int) -> list[int]:
    """This rank's items of n: every size()-th, from rank()."""
    return list(range(rank(), n, size()))


def gather(mine: list, n: int) -> list:
    """The n items of which this rank holds `share(n)`, in order, on every rank."""
    if size() == 1:
        return mine
    parts = [None] * size()
    dist.all_gather_object(parts, mine)
    out = [None] * n
    for r, part in enumerate(parts):
        out[r::size()] = part
    return out


def all_sum(values: list[float], device="cpu") -> list[float]:
    """Elementwise sums over the ranks (float64)."""
    if size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if size() > 1:
        dist.barrier()


@contextlib.contextmanager
def rank_zero_first():
    """Rank 0 runs the block first (it may build a cache), then the others (they find it
    built). Inside, each rank works on its own: generation is not shared."""
    if WORLD.size == 1 or WORLD.solo:
        yield
        return
    if WORLD.rank != 0:
        dist.barrier()
    WORLD.solo = True
    try:
        yield
    finally:
        WORLD.solo = False
        if WORLD.rank == 0:
            dist.barrier()
