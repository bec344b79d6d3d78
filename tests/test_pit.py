import itertools
from types import SimpleNamespace

import pytest
import torch

from surfsep import pit
from surfsep.metrics import score_images
from surfsep.methods.base import pit_regression_loss


@pytest.mark.parametrize("order", list(itertools.permutations(range(2))) + list(itertools.permutations(range(3))))
def test_pit_recovers_shuffled_order(order):
    slots = len(order)
    generator = torch.Generator().manual_seed(len(order) * 10 + sum(i * v for i, v in enumerate(order)))
    references = torch.rand(1, slots, 1, 6, 6, generator=generator)
    estimates = references[:, list(order)] + 0.01 * torch.randn(1, slots, 1, 6, 6, generator=generator)

    perm = pit.best_permutation(pit.pairwise_mse(estimates, references))

    # Estimate perm[j] is matched to reference j, so estimates[perm] lines up with the references.
    assert torch.allclose(pit.apply_permutation(estimates, perm), references, atol=0.05)
    expected = [list(order).index(j) for j in range(slots)]
    assert perm[0].tolist() == expected


def test_pit_constructed_three_source_costs():
    # Row i = estimate i, column j = reference j; the best total (1 + 2 + 0) matches
    # estimate 1 to reference 0, estimate 2 to reference 1 and estimate 0 to reference 2.
    cost = torch.tensor([[[9.0, 9.0, 0.0], [1.0, 9.0, 9.0], [9.0, 2.0, 9.0]]])
    assert pit.best_permutation(cost)[0].tolist() == [1, 2, 0]


def test_pit_prefers_identity_on_ties():
    cost = torch.ones(2, 3, 3)
    assert pit.best_permutation(cost).tolist() == [[0, 1, 2], [0, 1, 2]]


def test_hungarian_agrees_with_exhaustive_search(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    cost = torch.rand(20, 5, 5, generator=generator)
    exhaustive = pit.best_permutation(cost)
    monkeypatch.setattr(pit, "MAX_EXHAUSTIVE_SLOTS", 1)
    hungarian = pit.best_permutation(cost)
    assert torch.equal(exhaustive, hungarian)


def test_pit_rejects_non_square_cost():
    with pytest.raises(ValueError, match="shape"):
        pit.best_permutation(torch.zeros(1, 2, 3))


def test_training_pit_and_metric_pick_same_order():
    generator = torch.Generator().manual_seed(1)
    references = torch.rand(16, 3, 8, 8, generator=generator)
    shuffles = torch.stack([torch.randperm(3, generator=generator) for _ in range(16)])
    estimates = pit.apply_permutation(references, shuffles) + 0.05 * torch.randn(16, 3, 8, 8, generator=generator)
    estimates = estimates.clamp(0, 1)

    training_perm = pit.best_permutation(pit.pairwise_mse(estimates, references))
    metric_perm = score_images(estimates, references)["perm"]

    assert torch.equal(training_perm, metric_perm)


def test_pit_mse_is_zero_for_permuted_targets():
    targets = torch.rand(4, 3, 1, 5, 5)
    estimates = targets[:, [2, 0, 1]]
    assert pit_regression_loss(SimpleNamespace(audio=False), estimates, targets).item() == 0.0


def test_pit_snr_reaches_cap_for_permuted_targets():
    targets = torch.randn(4, 3, 400)
    estimates = targets[:, [1, 2, 0]]
    unordered = pit_regression_loss(SimpleNamespace(audio=True), estimates, targets).item()
    assert unordered == pytest.approx(-30.0, abs=1e-3)
