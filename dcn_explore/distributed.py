"""Multi-process training with ``DistributedDataParallel`` (launched by ``torchrun``).

``torchrun --nproc_per_node=N -m dcn_explore.cli train --distributed ...`` (or a script that
calls :func:`init` and then :func:`dcn_explore.fit`) trains one model on N processes:

- the global batch ``TrainConfig.batch_size`` is split evenly: every step each rank reads its
  own ``batch_size / N`` rows of the same seeded permutation (so the union of the ranks' rows
  is exactly the batch a single process would take, and the averaged gradient is the same);
  an epoch has ``N_train // batch_size`` steps (the remainder of each shuffle is dropped so
  every rank runs the same number of steps);
- validation rows are sharded too; predictions are gathered so every rank computes the same
  metrics (and the same early-stopping decision);
- only rank 0 writes checkpoints and output files.

Backend: ``nccl`` on CUDA, ``gloo`` on the CPU. Row-sparse embedding gradients are not used
under DDP (dense Adam).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import ConfigError


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init(backend: str | None = None, timeout_s: float = 600) -> tuple[int, int]:
    """Join the process group set up by ``torchrun``; returns ``(rank, world_size)``.

    On CUDA machines each process uses the GPU ``LOCAL_RANK``.
    """
    if not launched_by_torchrun():
        raise ConfigError("distributed training needs to be launched by torchrun (RANK/WORLD_SIZE are not set), "
                          "e.g. torchrun --nproc_per_node=2 -m dcn_explore.cli train --distributed ...")
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"), timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def local_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_true(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` holds on every rank (one tiny all-reduce)."""
    if not active():
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor from every rank (sizes may differ)."""
    if not active():
        return t
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, t.detach().cpu())
    return torch.cat(parts)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
