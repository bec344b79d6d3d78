"""Supervised one-step regression with permutation-invariant training (PIT)."""

from __future__ import annotations

import torch

from surfsep.flow import one_step_estimate
from surfsep.methods.base import Method, StepContext
from surfsep.pit import apply_permutation, best_permutation, pairwise_mse


def pit_mse(estimates: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MSE between estimates and targets (both (B, K, ...)) under each example's best target order."""
    perm = best_permutation(pairwise_mse(targets, estimates))
    return (estimates - apply_permutation(targets, perm)).pow(2).mean()


class SupervisedRegression(Method):
    name = "supervised-regression"
    needs_references = True
    one_step = True

    def loss(self, context: StepContext, mixtures: torch.Tensor, references: torch.Tensor | None) -> torch.Tensor:
        estimates = one_step_estimate(context.student, mixtures, context.sources, context.sigma, context.generator)
        return pit_mse(estimates, references)
