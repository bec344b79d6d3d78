"""Supervised one-step regression with permutation-invariant training (PIT)."""

from __future__ import annotations

import torch

from surfsep.flow import one_step_estimate
from surfsep.methods.base import Method, StepContext, pit_regression_loss


class SupervisedRegression(Method):
    name = "supervised-regression"
    needs_references = True
    one_step = True

    def loss(self, context: StepContext, mixtures: torch.Tensor, references: torch.Tensor | None) -> torch.Tensor:
        estimates = one_step_estimate(context.student, mixtures, context.sources, context.sigma, context.generator)
        return pit_regression_loss(context, estimates, references)
