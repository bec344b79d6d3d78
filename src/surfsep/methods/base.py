"""The per-step inputs of every training method, and the pieces the teacher-student methods share."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from surfsep import flow
from surfsep.remix import Remix, constrained_shuffle, free_shuffle, remix


@dataclass
class StepContext:
    """The models and settings of one training step.

    Mixtures are (B, C, H, W) in the internal convention, the sum of the sources. References,
    when the method needs them, are (B, K, C, H, W). ``generator`` draws all of the step's noise.
    """

    student: nn.Module
    teacher: nn.Module | None
    sources: int
    sigma: float
    generator: torch.Generator
    teacher_steps: int = 1
    shuffle: str = "constrained"
    logs: dict = field(default_factory=dict)


class Method:
    """A training method: its name, what it needs, and its loss on one batch."""

    name = ""
    needs_references = False
    needs_teacher = False
    # One-step methods train a regression separator; flows sample with several steps.
    one_step = False

    def loss(self, context: StepContext, mixtures: torch.Tensor, references: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


@torch.no_grad()
def teacher_estimates(context: StepContext, mixtures: torch.Tensor) -> torch.Tensor:
    """Teacher separation of the observed mixtures, (B, K, ...), summing to each mixture."""
    if context.teacher_steps == 1:
        return flow.one_step_estimate(context.teacher, mixtures, context.sources, context.sigma, context.generator)
    return flow.sample(
        context.teacher, mixtures, context.sources, context.teacher_steps, context.sigma, context.generator
    )


def remix_teacher_estimates(context: StepContext, mixtures: torch.Tensor) -> Remix:
    """Separate with the teacher, shuffle the estimates across the batch and sum them into new mixtures."""
    estimates = teacher_estimates(context, mixtures)
    batch = mixtures.shape[0]
    if context.shuffle == "constrained":
        source_index = constrained_shuffle(batch, context.sources, context.generator)
    elif context.shuffle == "free":
        source_index = free_shuffle(batch, context.sources, context.generator)
    else:
        raise ValueError(f"unknown shuffle {context.shuffle!r}: use 'constrained' or 'free'")
    return remix(estimates, source_index)


def undo_permutation(aligned: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Inverse of ``apply_permutation``: put slot j of ``aligned`` back at slot ``perm[:, j]``."""
    index = perm.reshape(perm.shape + (1,) * (aligned.dim() - 2)).expand_as(aligned)
    return torch.zeros_like(aligned).scatter(1, index, aligned)
