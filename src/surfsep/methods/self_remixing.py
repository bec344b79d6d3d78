"""Self-Remixing (Saijo and Ogawa 2023): the student's estimates of remixed mixtures are put back.

The student separates the remixed mixtures, and PIT aligns its slots to the teacher's shuffled
estimates. Each slot then goes back to the observed mixture it came from, the slots of each
observed mixture are summed, and the loss compares those sums with the observed mixtures.
"""

from __future__ import annotations

import torch

from surfsep.flow import one_step_estimate
from surfsep.methods.base import (
    Method, StepContext, regression_loss, remix_teacher_estimates, target_order, undo_permutation,
)
from surfsep.remix import unremix


def resum_to_observed(aligned: torch.Tensor, perm: torch.Tensor, source_index: torch.Tensor) -> torch.Tensor:
    """Sum rows that came from each observed mixture: undo the PIT order, then the shuffle.

    ``aligned`` (B, K, ...) is in PIT order, matching ``remix.sources[:, perm[:, j]]`` at slot j.
    """
    return unremix(undo_permutation(aligned, perm), source_index).sum(dim=1)


class SelfRemixing(Method):
    name = "self-remixing"
    needs_teacher = True
    one_step = True

    def loss(self, context: StepContext, mixtures: torch.Tensor, references: torch.Tensor | None) -> torch.Tensor:
        remixed = remix_teacher_estimates(context, mixtures)
        estimates = one_step_estimate(
            context.student, remixed.mixtures, context.sources, context.sigma, context.generator
        )
        # perm[:, j] is the shuffled teacher row that student slot j matches.
        perm = target_order(context, estimates, remixed.sources)
        resummed = resum_to_observed(estimates, perm, remixed.source_index)
        return regression_loss(context, resummed, mixtures)
