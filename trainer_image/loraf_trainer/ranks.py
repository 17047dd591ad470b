"""Which rank this process is, as torchrun's env says, and the few collectives the
trainer itself needs (everything else is the Trainer's, through accelerate).

Rank 0 alone writes status, uploads checkpoints and artifacts; every rank trains,
evaluates and takes part in the stop/save decisions, which must agree (`agree`): a rank
that stops a step early would leave the others blocked in an all-reduce.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node_rank: int = 0  # torchrun's GROUP_RANK: which pod (node) of the run

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current(env: Mapping[str, str] | None = None) -> Ranks:
    """From torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK, GROUP_RANK); one rank without it."""
    e = os.environ if env is None else env
    return Ranks(
        rank=int(e.get("RANK", 0)),
        world_size=int(e.get("WORLD_SIZE", 1)),
        local_rank=int(e.get("LOCAL_RANK", 0)),
        node_rank=int(e.get("GROUP_RANK", 0)),
    )


def under_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """True inside a worker that torchrun started (it sets TORCHELASTIC_RUN_ID)."""
    return "TORCHELASTIC_RUN_ID" in (os.environ if env is None else env)


def init(r: Ranks) -> None:
    """Join the process group before anything needs a collective (the checkpoint download
    below, before the Trainer exists). nccl on GPUs, gloo on the CPU; accelerate then uses
    this group."""
    if not under_torchrun():
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(r.local_rank)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def agree(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on any rank becomes true on every rank (one small all-reduce)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flags
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(x) for x in t.tolist())


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
