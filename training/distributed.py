"""Process-group setup and the few collectives the training loop needs, identical for 1 and N processes.

Launched by torchrun (WORLD_SIZE > 1 in the environment) a process joins the group (NCCL on CUDA, Gloo
on CPU); otherwise it is rank 0 of 1 and every collective here is a no-op, so the training loop has
one code path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from training.errors import SpecError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # we initialised the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise SpecError(f"environment variable {name}={text!r} is not an integer (set by torchrun)") from None


def setup(device: str | torch.device | None = None) -> DistContext:
    """Join the process group when launched by torchrun; choose the device (cuda if available, else cpu)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    try:
        chosen = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    except (RuntimeError, TypeError):
        raise SpecError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if chosen.type not in ("cpu", "cuda"):
        raise SpecError(f"device {device!r} is not supported; use 'cpu', 'cuda' or 'cuda:N'")
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecError(f"device {device!r} asked for but CUDA is not available; use device 'cpu' or leave it unset")
        by_rank = chosen.index is None and world > 1
        if chosen.index is None:  # one GPU per process: torchrun's LOCAL_RANK picks it
            chosen = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        count = torch.cuda.device_count()
        if chosen.index >= count:  # else CUDA's own "invalid device ordinal" traceback, from one rank of many
            raise SpecError(f"process {local_rank} of {world} on this node would train on {chosen}, but this machine has {count} CUDA "
                            f"device(s): launch at most {count} per node (torchrun --nproc_per_node {count}) or use device 'cpu'"
                            if by_rank else f"device {chosen} does not exist: this machine has {count} CUDA device(s)")
        torch.cuda.set_device(chosen)
    owns = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                device_id=chosen if chosen.type == "cuda" else None)
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=chosen, owns_group=owns)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Sum of `values` over all processes (float64 on the device, so counts stay exact)."""
    values = values.to(device=ctx.device, dtype=torch.float64)
    if ctx.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_from_main(ctx: DistContext, tensors: list[torch.Tensor]) -> None:
    """Overwrite `tensors` on every process with rank 0's (in place)."""
    if ctx.distributed:
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)


def gather_json(ctx: DistContext, value: Any) -> list[Any]:
    """`value` of every process, by rank. Travels as JSON bytes in a tensor, never as pickle."""
    if not ctx.distributed:
        return [value]
    payload = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8).to(ctx.device)
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=ctx.device)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(int(s.item()) for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=ctx.device)
    padded[: payload.numel()] = payload
    gathered = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, padded)
    return [json.loads(bytes(g[: int(s.item())].cpu().tolist()).decode()) for g, s in zip(gathered, sizes, strict=True)]
