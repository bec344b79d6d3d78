"""Mixture invariant training (MixIT, Wisdom et al. 2020).

Pairs of observed mixtures are summed into mixtures of mixtures (MoMs), and the network separates
each MoM into 2K slots in one-step mode. Every slot is then assigned to one of the two mixtures by
the assignment, out of 2^(2K) - 2 (each mixture gets at least one slot), with the lowest loss. The loss is the MSE for images and the
thresholded SNR (30 dB cap) for audio.
"""

from __future__ import annotations

import itertools

import torch

from surfsep.audio_metrics import thresholded_snr_loss
from surfsep.flow import one_step_estimate
from surfsep.methods.base import Method, StepContext


def assignment_matrices(slots: int, device: torch.device | None = None) -> torch.Tensor:
    """List the 2^slots - 2 assignments of slots to two mixtures that give each mixture a slot, as (A, 2, slots).

    The two assignments of every slot to one mixture are left out: the slots always sum to the
    mixture of mixtures, so their loss is a constant with no gradient, and a run that falls into
    them never leaves.
    """
    choices = [row for row in itertools.product((0, 1), repeat=slots) if 0 < sum(row) < slots]
    choices = torch.tensor(choices, dtype=torch.float32, device=device)
    return torch.stack([1 - choices, choices], dim=1)


def mixit_loss(
    estimates: torch.Tensor, first: torch.Tensor, second: torch.Tensor, audio: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-assignment loss of slot estimates (B, M, ...) against two mixtures (B, ...) each.

    The loss of one assignment is the MSE over both mixtures, or for ``audio`` the mean over the
    two mixtures of the thresholded SNR loss. Returns the mean loss and the chosen assignment index (B,) into ``assignment_matrices(M)``.
    """
    batch, slots = estimates.shape[:2]
    matrices = assignment_matrices(slots, estimates.device).to(estimates.dtype)  # (A, 2, M)
    flat = estimates.reshape(batch, slots, -1)
    remixed = torch.einsum("aim,bmd->baid", matrices, flat)  # (B, A, 2, D)
    targets = torch.stack([first.reshape(batch, -1), second.reshape(batch, -1)], dim=1).unsqueeze(1)
    if audio:
        per_assignment = thresholded_snr_loss(remixed, targets).mean(dim=2)  # (B, A)
    else:
        per_assignment = (remixed - targets).pow(2).mean(dim=(2, 3))
    best = per_assignment.detach().argmin(dim=1)
    return per_assignment.gather(1, best.unsqueeze(1)).mean(), best


class MixIT(Method):
    name = "mixit"
    one_step = True

    def loss(self, context: StepContext, mixtures: torch.Tensor, references: torch.Tensor | None) -> torch.Tensor:
        if mixtures.shape[0] < 2:
            raise ValueError("MixIT needs at least 2 mixtures per batch")
        usable = mixtures.shape[0] - mixtures.shape[0] % 2
        first, second = mixtures[0:usable:2], mixtures[1:usable:2]
        mixture_of_mixtures = first + second

        estimates = one_step_estimate(
            context.student, mixture_of_mixtures, 2 * context.sources, context.sigma, context.generator
        )
        loss, _ = mixit_loss(estimates, first, second, audio=context.audio)
        return loss
