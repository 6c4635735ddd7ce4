"""The few ``torch.distributed`` collectives the trainer needs, with a one-process fallback.

Launch with ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``); :func:`init_distributed` then joins the process group, with NCCL on CUDA and gloo
on CPU. In one process every collective is a no-op.

Why not ``DistributedDataParallel``: DDP synchronises gradients from hooks armed by the wrapped
module's ``forward``, but the models compute scores through their own chunked ``_pgrank_backward``
(several forward/backward passes per step, a different number on each rank, often through
sub-modules rather than the wrapped ``forward``). The trainer therefore sums the gradients with one
bucketed all-reduce after the backward pass: the same traffic as DDP, without the overlap of
communication with the backward computation.

Shapes: ``Q`` queries in the global batch, ``q`` on this rank, ``N`` candidates.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["Distributed", "init_distributed"]

_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class Distributed:
    """Rank, world size and collectives; with ``world_size == 1`` nothing is communicated."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank = rank
        self.world_size = world_size
        self._with_grad: list[bool] | None = None  # which parameters get gradients on some rank

    @property
    def is_main(self) -> bool:
        """Whether this process validates, logs and writes checkpoints."""
        return self.rank == 0

    def shard(self, n_queries: int) -> range:
        """The contiguous rows of a global batch of ``n_queries`` that this rank processes."""
        per_rank, extra = divmod(n_queries, self.world_size)
        start = self.rank * per_rank + min(self.rank, extra)
        return range(start, start + per_rank + (self.rank < extra))

    def gather_rows(self, local: torch.Tensor, n_queries: int) -> torch.Tensor:
        """Concatenates every rank's ``[q, N]`` rows in rank order into the global ``[Q, N]`` tensor."""
        if self.world_size == 1:
            return local
        rows = max(len(Distributed(r, self.world_size).shard(n_queries)) for r in range(self.world_size))
        padded = local.new_zeros(rows, local.shape[1])  # [max q, N]
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        sizes = [len(Distributed(r, self.world_size).shard(n_queries)) for r in range(self.world_size)]
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])  # [Q, N]

    def sum_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Replaces each parameter's gradient with its sum over ranks.

        A parameter that no rank gives a gradient (e.g. an unused pooler) keeps ``grad = None``, so that the
        optimizer skips it as it would in one process; which parameters those are is found once, at the
        first call, with the only host synchronisation here.
        """
        if self.world_size == 1:
            return
        if self._with_grad is None:
            flags = torch.tensor([float(p.grad is not None) for p in parameters], device=parameters[0].device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            self._with_grad = flags.bool().tolist()
        parameters = [p for p, used in zip(parameters, self._with_grad) if used]
        if not parameters:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p, g in zip(parameters, grads):
            p.grad = flat[offset: offset + g.numel()].view_as(p).clone()
            offset += g.numel()

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copies rank 0's parameters and buffers to every rank."""
        if self.world_size == 1:
            return
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)

    def broadcast_flag(self, flag: bool, device: torch.device) -> bool:
        """Returns rank 0's ``flag`` on every rank."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([int(flag)], device=device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def barrier(self) -> None:
        """Waits until every rank gets here."""
        if self.world_size > 1:
            dist.barrier()


def init_distributed(device: torch.device, mode: str = "auto") -> Distributed:
    """Joins (or reuses) the ``torch.distributed`` process group that ``torchrun`` describes.

    Args:
        device: The device the model is on; on CUDA it must be ``cuda:LOCAL_RANK``.
        mode: ``'auto'`` (distributed when launched with ``WORLD_SIZE > 1`` or when a process group is
            already initialised), ``'off'`` (one process), or ``'on'`` (fail unless launched by ``torchrun``).

    Raises:
        RuntimeError: When the launch is misconfigured, with what is missing and how to launch.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed must be 'auto', 'on' or 'off', got {mode!r}")
    if mode == "off":
        return Distributed()
    if dist.is_available() and dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and mode == "auto":
        return Distributed()
    missing = [v for v in _LAUNCH_VARIABLES if v not in os.environ]
    if missing or not dist.is_available():
        raise RuntimeError(
            f"distributed training needs the variables {list(_LAUNCH_VARIABLES)} that torchrun sets, but "
            f"{missing} are missing. Launch with e.g. `torchrun --nproc_per_node=2 train.py`"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    index = device.index if device.index is not None or device.type != "cuda" else torch.cuda.current_device()
    if device.type == "cuda" and index != local_rank:
        raise RuntimeError(
            f"rank with LOCAL_RANK={local_rank} has its model on {device}; create the model with "
            f"device=f'cuda:{{LOCAL_RANK}}' so that each process uses its own GPU"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(index)
    dist.init_process_group(backend=backend)
    logger.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return Distributed(dist.get_rank(), dist.get_world_size())
