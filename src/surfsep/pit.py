"""Permutation solving shared by the training losses and the metrics.

A cost tensor has shape (B, K, K): ``cost[b, i, j]`` is the cost of matching estimate slot i
to reference slot j in example b. Every caller that needs a best permutation goes through
``best_permutation``, so training (PIT) and evaluation follow one rule.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

# Exhaustive search builds a (B, K!) table; past this K the Hungarian algorithm is cheaper.
MAX_EXHAUSTIVE_SLOTS = 6


def all_permutations(slots: int, device: torch.device | None = None) -> torch.Tensor:
    """Return every permutation of range(slots) as a (slots!, slots) long tensor."""
    return torch.tensor(list(itertools.permutations(range(slots))), dtype=torch.long, device=device)


def best_permutation(cost: torch.Tensor) -> torch.Tensor:
    """Find, per example, the estimate order that minimises the summed pairwise cost.

    Returns ``perm`` of shape (B, K) such that estimate ``perm[b, j]`` is matched to reference j,
    so ``estimates[b, perm[b]]`` lines up with ``references[b]``. Ties go to the permutation that
    comes first in lexicographic order, which keeps the identity order when costs are equal.
    """
    if cost.dim() != 3 or cost.shape[1] != cost.shape[2]:
        raise ValueError(f"cost must have shape (B, K, K), got {tuple(cost.shape)}")
    batch, slots, _ = cost.shape
    cost = cost.detach()

    if slots <= MAX_EXHAUSTIVE_SLOTS:
        perms = all_permutations(slots, cost.device)  # (P, K)
        reference_index = torch.arange(slots, device=cost.device).expand_as(perms)
        # totals[b, p] = sum_j cost[b, perms[p, j], j]
        totals = cost[:, perms, reference_index].sum(dim=-1)
        return perms[totals.argmin(dim=1)]

    # Only more than MAX_EXHAUSTIVE_SLOTS sources need SciPy, whose import adds about 0.3 s to every command.
    from scipy.optimize import linear_sum_assignment

    result = np.empty((batch, slots), dtype=np.int64)
    for b, matrix in enumerate(cost.to(torch.float64).cpu().numpy()):
        estimate_index, reference_index = linear_sum_assignment(matrix)
        result[b, reference_index] = estimate_index
    return torch.from_numpy(result).to(cost.device)


def apply_permutation(slots: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Reorder the slot axis (dim 1) of ``slots`` (B, K, ...) by ``perm`` (B, K)."""
    index = perm.reshape(perm.shape + (1,) * (slots.dim() - 2)).expand_as(slots)
    return torch.gather(slots, 1, index)


def pairwise_mse(estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Mean squared error of every estimate slot against every reference slot.

    Both inputs are (B, K, ...); returns (B, K, K) with entry [b, i, j] = MSE(estimate i, reference j).
    """
    flat_est = estimates.flatten(2)
    flat_ref = references.flatten(2)
    difference = flat_est.unsqueeze(2) - flat_ref.unsqueeze(1)
    return difference.pow(2).mean(dim=-1)
