"""The per-step inputs of every training method, and the pieces the teacher-student methods share."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from surfsep import flow
from surfsep.audio_metrics import pairwise_thresholded_snr, thresholded_snr_loss
from surfsep.pit import apply_permutation, best_permutation, pairwise_mse
from surfsep.remix import Remix, constrained_shuffle, free_shuffle, remix


@dataclass
class StepContext:
    """The models and settings of one training step.

    Mixtures are (B, C, H, W) images or (B, L) audio in the internal convention, the sum of the
    sources. References, when the method needs them, are (B, K, C, H, W) or (B, K, L).
    ``generator`` draws all of the step's noise. A ``t_zero_fraction`` of the flow examples train at
    t = 0. ``audio`` selects the regression loss: the thresholded SNR (30 dB cap) for audio, the MSE
    for images. ``estimates``, when set, are the teacher's estimates of these mixtures made at an
    earlier step, used instead of separating them again.
    """

    student: nn.Module
    teacher: nn.Module | None
    sources: int
    sigma: float
    generator: torch.Generator
    t_zero_fraction: float = 0.0
    teacher_steps: int = 1
    shuffle: str = "constrained"
    audio: bool = False
    estimates: torch.Tensor | None = None
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
    """Separate with the teacher (or take the reused estimates), shuffle them across the batch and sum them into new mixtures."""
    estimates = context.estimates if context.estimates is not None else teacher_estimates(context, mixtures)
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


def regression_loss(context: StepContext, estimates: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean loss of estimates against targets of the same shape and order (B, ...): SNR for audio, MSE for images."""
    if context.audio:
        return thresholded_snr_loss(estimates, targets).mean()
    return (estimates - targets).pow(2).mean()


def target_order(context: StepContext, estimates: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """PIT order (B, K) of the targets: target ``perm[:, j]`` goes with estimate slot j, minimising the loss.

    The thresholded SNR is not symmetric, so the cost is always the loss of an estimate against a target.
    """
    if context.audio:
        cost = pairwise_thresholded_snr(estimates, targets)  # [b, i, j]: estimate i against target j
    else:
        cost = pairwise_mse(estimates, targets)
    return best_permutation(cost.transpose(1, 2))


def pit_regression_loss(context: StepContext, estimates: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Regression loss of estimates (B, K, ...) against targets under each example's best target order."""
    perm = target_order(context, estimates, targets)
    return regression_loss(context, estimates, apply_permutation(targets, perm))
