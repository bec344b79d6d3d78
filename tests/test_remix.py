import pytest
import torch

from surfsep.methods.base import undo_permutation
from surfsep.methods.self_remixing import resum_to_observed
from surfsep.pit import apply_permutation
from surfsep.remix import constrained_shuffle, free_shuffle, remix, unremix


@pytest.mark.parametrize("batch,slots", [(2, 2), (3, 3), (8, 2), (64, 2), (7, 3), (16, 4)])
def test_remix_then_unremix_is_identity(batch, slots):
    generator = torch.Generator().manual_seed(batch * slots)
    estimates = torch.randn(batch, slots, 1, 4, 4, generator=generator)
    source_index = constrained_shuffle(batch, slots, generator)

    remixed = remix(estimates, source_index)

    assert torch.equal(unremix(remixed.sources, source_index), estimates)
    torch.testing.assert_close(remixed.mixtures, remixed.sources.sum(dim=1))


@pytest.mark.parametrize("batch,slots", [(2, 2), (3, 3), (5, 2), (64, 2), (7, 3), (16, 4), (4, 4)])
def test_constrained_shuffle_never_reunites_a_mixture(batch, slots):
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        source_index = constrained_shuffle(batch, slots, generator)
        origin = torch.div(source_index, slots, rounding_mode="floor")

        assert sorted(source_index.flatten().tolist()) == list(range(batch * slots))
        for row in origin.tolist():
            assert len(set(row)) == slots, f"new mixture {row} takes two rows of one mixture"


def test_constrained_shuffle_moves_slots_and_mixtures():
    generator = torch.Generator().manual_seed(0)
    draws = [constrained_shuffle(8, 2, generator) for _ in range(50)]
    slot_of_row = [index % 2 for draw in draws for index in draw[:, 0].tolist()]
    assert 0 in slot_of_row
    assert 1 in slot_of_row
    assert len({tuple(draw.flatten().tolist()) for draw in draws}) == 50


def test_constrained_shuffle_needs_batch_of_at_least_sources():
    with pytest.raises(ValueError, match="batch 2 < 3 sources"):
        constrained_shuffle(2, 3)


def test_free_shuffle_can_reunite_a_mixture():
    generator = torch.Generator().manual_seed(0)
    collisions = 0
    for _ in range(200):
        origin = torch.div(free_shuffle(4, 2, generator), 2, rounding_mode="floor")
        collisions += int((origin[:, 0] == origin[:, 1]).any())
    assert collisions > 0


def test_undo_permutation_inverts_apply():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(6, 3, 2, generator=generator)
    perm = torch.stack([torch.randperm(3, generator=generator) for _ in range(6)])
    assert torch.equal(undo_permutation(apply_permutation(values, perm), perm), values)


def test_resum_returns_observed_mixtures():
    # Estimates aligned to the shuffled rows by any PIT order sum back to the observed mixtures.
    generator = torch.Generator().manual_seed(0)
    estimates = torch.rand(8, 2, 1, 5, 5, generator=generator)
    observed = estimates.sum(dim=1)
    remixed = remix(estimates, constrained_shuffle(8, 2, generator))
    perm = torch.stack([torch.randperm(2, generator=generator) for _ in range(8)])
    aligned = apply_permutation(remixed.sources, perm)

    torch.testing.assert_close(resum_to_observed(aligned, perm, remixed.source_index), observed)
