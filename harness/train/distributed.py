"""Data-parallel training under ``torchrun --nproc_per_node=N`` (or ``accelerate launch``).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; ``start`` joins the process group (gloo on CPU, NCCL on
CUDA). Every rank holds the whole draft network wrapped in DistributedDataParallel, which averages the
gradients over the ranks in backward. Each global batch (the one a single process would take) is split
by rank, and each rank's loss is weighted by its share of the batch's loss positions, so the averaged
gradient is the gradient of the global batch's mean loss: the same loss curve as one process. Rank 0
alone writes checkpoints and logs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class Group:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> str:
        return f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"


def start() -> Group | None:
    """The process group torchrun describes in the environment; None for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class LossModule(nn.Module):
    """The objective's loss as the forward of a module, so DistributedDataParallel sees one forward per step
    whatever methods of the network the objective calls."""

    def __init__(self, net: nn.Module, objective) -> None:
        super().__init__()
        self.net, self.objective = net, objective

    def forward(self, batch) -> tuple[Tensor, dict]:
        return self.objective.loss(self.net, batch)


def wrap(net: nn.Module, objective, group: Group) -> nn.Module:
    device_ids = [group.local_rank] if torch.cuda.is_available() else None
    return nn.parallel.DistributedDataParallel(LossModule(net, objective), device_ids=device_ids)


def my_part(indices: list[int], group: Group) -> tuple[list[int], bool]:
    """This rank's share of one global batch, and whether it is real: a rank left without samples (a last
    batch smaller than the world) runs the first sample with weight 0, so every rank joins the step."""
    mine = indices[group.rank::group.world]
    return (mine, True) if mine else (indices[:1], False)


def positions(batch) -> Tensor:
    """Loss positions of a batch: answer tokens with a next token (what the EAGLE objectives average over)."""
    return (batch.loss_mask[:, 1:] & batch.valid[:, 1:]).sum()


def weight(count: Tensor, group: Group) -> tuple[float, Tensor]:
    """(this rank's loss weight, the global count): ranks' weighted losses, averaged by DDP, give the mean
    over the whole global batch."""
    total = count.detach().double().clone()
    dist.all_reduce(total)
    return float(count) * group.world / max(float(total), 1.0), total


def global_logs(logs: dict, share: float, group: Group) -> dict:
    """Each logged mean over the global batch: the ranks' values weighted by their share of positions (a key
    some rank lacks, such as a head without labels in its part, averages over the ranks that have it)."""
    parts: list = [None] * group.world
    dist.all_gather_object(parts, (logs, share))
    keys = dict.fromkeys(k for part, _ in parts for k in part)
    out = {}
    for key in keys:
        have = [(part[key], w) for part, w in parts if key in part and w > 0]
        total = sum(w for _, w in have)
        out[key] = sum(v * w for v, w in have) / total if total else 0.0
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (a time budget seen by one rank stops all together)."""
    value = torch.tensor([1 if flag else 0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_main(obj):
    """Rank 0's object on every rank (resume state read by rank 0)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    dist.barrier()
