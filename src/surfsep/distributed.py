"""Training on several processes with PyTorch DDP, launched by ``torchrun``.

Each process computes the network on its own rows of every batch, and the rows are gathered
again after every network call. Everything else of a step then runs on the whole batch in every
process, exactly as in a single process: the random draws, the remix across the batch, PIT and the
loss. So a run does not depend on the number of processes beyond float rounding.

Gradients: every process computes the same loss L of the gathered outputs. Backward through the
gather sums the processes' gradients for each row, which gives each process W times dL/d(its
rows) for W processes; DDP's average over the processes then leaves exactly dL/d(weights).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


class DistributedError(ValueError):
    """A distributed setting that cannot work; the message names the change to make."""


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` processes; the default is a single process."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Return whether this process writes the run's files and logs."""
        return self.rank == 0

    def rows(self, batch: int) -> slice:
        """Return the rows of a batch of ``batch`` that this process computes: an equal, contiguous share."""
        if batch % self.world:
            raise DistributedError(
                f"a batch of {batch} rows cannot be split evenly over {self.world} processes; choose a "
                f"--batch-size that is a multiple of {self.world} (of {2 * self.world} for mixit, which "
                f"separates pairs of mixtures)"
            )
        share = batch // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def gather(self, part: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's ``part`` along the first dimension, in rank order.

        Differentiable: the gradient of a row flows back to the process that computed it.
        """
        if not self.active:
            return part
        if torch.is_grad_enabled() and part.requires_grad:
            return GatherRows.apply(part)
        parts = [torch.empty_like(part) for _ in range(self.world)]
        dist.all_gather(parts, part.contiguous())
        return torch.cat(parts)

    def any(self, flag: bool) -> bool:
        """Return whether ``flag`` is true in any process; every process gets the same result."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


class GatherRows(torch.autograd.Function):
    """All-gather along the first dimension; backward sums every process's gradient of each row."""

    @staticmethod
    def forward(ctx, part: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rows = slice(rank * part.shape[0], (rank + 1) * part.shape[0])
        parts = [torch.empty_like(part) for _ in range(world)]
        dist.all_gather(parts, part.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total[ctx.rows]


class RowSharded(nn.Module):
    """Run ``network`` on this process's rows of its batch-first inputs and gather the outputs.

    The wrapper takes and returns whole batches, so the flow and method code stays the same for
    any number of processes.
    """

    def __init__(self, network: nn.Module, shard: Shard):
        super().__init__()
        self.network = network
        self.shard = shard

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        rows = self.shard.rows(inputs[0].shape[0])
        return self.shard.gather(self.network(*(tensor[rows] for tensor in inputs)))


def launched_world() -> int:
    """Return the number of processes ``torchrun`` started, 1 when it did not start this one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start(device: torch.device) -> Shard:
    """Join the process group that ``torchrun`` set up (gloo on CPU, NCCL on CUDA), or stay single."""
    world = launched_world()
    if world == 1:
        return Shard()
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed; run without torchrun")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    shard = Shard(rank=dist.get_rank(), world=dist.get_world_size())
    if not shard.main:
        # Only rank 0 reports progress and warnings, which the other processes would repeat.
        logging.getLogger("surfsep").setLevel(logging.ERROR)
    return shard


def finish(status: int) -> None:
    """End a process that ``torchrun`` started, cleanly, and exit with ``status``.

    A gloo process can abort in the interpreter's own shutdown, so after a final barrier (on
    success) and leaving the process group, this flushes the output and exits at once.
    """
    if dist.is_available() and dist.is_initialized():
        if status == 0:
            dist.barrier()
        dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
