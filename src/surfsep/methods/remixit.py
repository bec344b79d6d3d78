"""RemixIT (Tzinis et al. 2022): a one-step student learns the teacher's remixed estimates with PIT."""

from __future__ import annotations

import torch

from surfsep.flow import one_step_estimate
from surfsep.methods.base import Method, StepContext, pit_regression_loss, remix_teacher_estimates


class RemixIT(Method):
    name = "remixit"
    needs_teacher = True
    one_step = True

    def loss(self, context: StepContext, mixtures: torch.Tensor, references: torch.Tensor | None) -> torch.Tensor:
        remixed = remix_teacher_estimates(context, mixtures)
        estimates = one_step_estimate(
            context.student, remixed.mixtures, context.sources, context.sigma, context.generator
        )
        return pit_regression_loss(context, estimates, remixed.sources)
