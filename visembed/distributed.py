"""Process-group set-up for `torchrun` and the gather that contrastive losses need.

A contrastive loss wants every negative of the global batch, so each rank gathers the features of
all ranks. `gather_with_grad` keeps the autograd path to the local features, and its backward sums
the gradient that every rank's (identical) loss sends to this rank's slice. DDP then averages the
parameter gradients over ranks, which gives exactly the gradient of the full-batch loss: a run on
2 processes with 64 samples each takes the same step as 1 process with 128.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def best_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and in a plain single process): the one that logs and writes files."""
    return rank() == 0


def init_distributed() -> tuple[int, int, int, torch.device]:
    """Join the process group that `torchrun` describes in the environment.

    Returns (rank, world_size, local_rank, device). Outside torchrun this is a plain single
    process on the best device. The backend is nccl on CUDA and gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, best_device()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)  # env:// from MASTER_ADDR/PORT, RANK, WORLD_SIZE
    return dist.get_rank(), dist.get_world_size(), local_rank, device


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def reduce_number(value: int | float, op: str = "sum", device: torch.device | str = "cpu") -> int | float:
    """A Python number summed ("sum") or minimised ("min") over ranks; unchanged in one process."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN}[op])
    return type(value)(t.item())


def all_gather_sizes(n: int, device: torch.device) -> list[int]:
    """First-dimension sizes of every rank (batches can shrink when broken images are skipped)."""
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(s.item()) for s in sizes]


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # x: (n_local, ...)
        sizes = all_gather_sizes(x.shape[0], x.device)
        padded = x.new_zeros((max(sizes), *x.shape[1:]))  # all_gather wants equal shapes
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        me = dist.get_rank()
        parts[me] = x  # the local slot holds the local tensor itself
        ctx.sizes, ctx.rank = sizes, me
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])  # (n_global, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # grad: (n_global, ...)
        # Every rank computed a loss from the same gathered tensor; the gradient of their sum
        # with respect to our slice is the sum of what each rank sends back for it.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (n_local, ...) from all ranks in rank order -> (n_global, ...).

    Gradients flow back to the local `x`; sizes may differ between ranks. With one process this
    returns `x` unchanged.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)
