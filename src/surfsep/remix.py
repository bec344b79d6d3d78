"""Remixing teacher estimates across a batch, and undoing it.

Estimates are (B, K, ...): B observed mixtures with K estimated sources each, row ``(b, k)``
being slot k of mixture b. A remix builds B new mixtures, each the sum of K rows, and records
for every new row the flat index ``b * K + k`` of the row it came from, so the move can be undone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Remix:
    """New sources (B, K, ...), their sums (B, ...), and ``source_index`` (B, K) into the old rows."""

    sources: torch.Tensor
    mixtures: torch.Tensor
    source_index: torch.Tensor

    @property
    def origin_mixture(self) -> torch.Tensor:
        """Index (B, K) of the observed mixture each new row came from."""
        return torch.div(self.source_index, self.sources.shape[1], rounding_mode="floor")


def constrained_shuffle(batch: int, slots: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``source_index`` (B, K) for a remix in which no new mixture takes two rows of one old mixture.

    Each old row is used exactly once. Slot k of new mixture b is slot ``slot_order[o, k]`` of
    old mixture ``o = order[(b + shift[k]) mod B]``: the K shifts are distinct, so the K origins
    differ, and ``slot_order`` is a random slot permutation per old mixture.
    """
    if batch < slots:
        raise ValueError(
            f"a constrained remix needs at least as many mixtures per batch as sources: "
            f"batch {batch} < {slots} sources; raise the batch size"
        )
    order = torch.randperm(batch, generator=generator)
    shift = torch.randperm(batch, generator=generator)[:slots]
    slot_order = torch.argsort(torch.rand(batch, slots, generator=generator), dim=1)

    new_position = torch.arange(batch).unsqueeze(1)  # (B, 1)
    origin = order[(new_position + shift.unsqueeze(0)) % batch]  # (B, K)
    origin_slot = slot_order[origin, torch.arange(slots).unsqueeze(0).expand(batch, slots)]
    return origin * slots + origin_slot


def free_shuffle(batch: int, slots: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``source_index`` (B, K) from one random permutation of all B*K rows (collisions allowed)."""
    return torch.randperm(batch * slots, generator=generator).reshape(batch, slots)


def remix(estimates: torch.Tensor, source_index: torch.Tensor) -> Remix:
    """Gather the rows named by ``source_index`` into new mixtures and sum each over its slots."""
    batch, slots = estimates.shape[:2]
    flat = estimates.reshape((batch * slots,) + tuple(estimates.shape[2:]))
    sources = flat[source_index.reshape(-1)].reshape(estimates.shape)
    return Remix(sources=sources, mixtures=sources.sum(dim=1), source_index=source_index)


def unremix(remixed: torch.Tensor, source_index: torch.Tensor) -> torch.Tensor:
    """Put every row of ``remixed`` (B, K, ...) back at the position it was taken from."""
    batch, slots = remixed.shape[:2]
    flat = remixed.reshape((batch * slots,) + tuple(remixed.shape[2:]))
    restored = torch.empty_like(flat)
    restored[source_index.reshape(-1)] = flat
    return restored.reshape(remixed.shape)
