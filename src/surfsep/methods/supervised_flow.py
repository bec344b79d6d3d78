"""Supervised flow matching with the clean sources as the end of the path (FLOSS); the upper bound."""

from __future__ import annotations

import torch

from surfsep.flow import flow_residual
from surfsep.methods.base import Method, StepContext


class SupervisedFlow(Method):
    name = "supervised-flow"
    needs_references = True

    def loss(self, context: StepContext, mixtures: torch.Tensor, references: torch.Tensor | None) -> torch.Tensor:
        """Mean squared velocity residual, target order chosen by PIT at t = 0."""
        result = flow_residual(
            context.student, mixtures, references, context.sigma, context.generator, context.t_zero_fraction
        )
        return result.residual.pow(2).mean()
