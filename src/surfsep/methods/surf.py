"""SURF (Li et al. 2026): a student flow learns from remixed estimates of an EMA teacher.

Per step: (1) the teacher separates the observed mixtures; (2) its estimates are shuffled across
the batch and summed into new mixtures; (3) the student's flow residual is computed on those pairs
with PIT at t = 0; (4) the loss is the mean squared residual (``remixit-flow``) or the squared sum
of the residual rows that came from each observed mixture (``self-remixing-flow``). The training
loop then steps the student and moves the teacher towards it by EMA.
"""

from __future__ import annotations

import torch

from surfsep.flow import flow_residual
from surfsep.methods.base import Method, StepContext, remix_teacher_estimates
from surfsep.methods.self_remixing import resum_to_observed

SURF_VARIANTS = ("remixit-flow", "self-remixing-flow")


class SURF(Method):
    name = "surf"
    needs_teacher = True

    def __init__(self, variant: str = "remixit-flow"):
        if variant not in SURF_VARIANTS:
            raise ValueError(f"unknown SURF variant {variant!r}; use one of {', '.join(SURF_VARIANTS)}")
        self.variant = variant

    def loss(self, context: StepContext, mixtures: torch.Tensor, references: torch.Tensor | None) -> torch.Tensor:
        remixed = remix_teacher_estimates(context, mixtures)

        result = flow_residual(
            context.student, remixed.mixtures, remixed.sources, context.sigma, context.generator, context.t_zero_fraction
        )

        if self.variant == "remixit-flow":
            return result.residual.pow(2).mean()
        # Rows of the residual follow the PIT order of the shuffled targets: undo both moves.
        per_observed = resum_to_observed(result.residual, result.perm, remixed.source_index)
        return per_observed.pow(2).mean()
