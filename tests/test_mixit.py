import torch

from surfsep.methods.mixit import assignment_matrices, mixit_loss


def test_assignment_matrices_cover_every_split():
    matrices = assignment_matrices(4)
    assert matrices.shape == (14, 2, 4)
    assert torch.equal(matrices.sum(dim=1), torch.ones(14, 4))
    assert len({tuple(m[0].tolist()) for m in matrices}) == 14
    assert matrices.sum(dim=2).min() == 1


def test_mixit_splits_slots_between_mixtures():
    # Mixture-consistent slots always sum to the mixture of mixtures. Giving them all to one mixture
    # would be a constant loss with no gradient, so the assignment must split them.
    generator = torch.Generator().manual_seed(2)
    first, second = torch.randn(2, 200, generator=generator), torch.randn(2, 200, generator=generator)
    noise = torch.randn(2, 4, 200, generator=generator)
    estimates = ((first + second) / 4).unsqueeze(1) + 3.0 * (noise - noise.mean(dim=1, keepdim=True))
    estimates.requires_grad_(True)

    loss, best = mixit_loss(estimates, first, second, audio=True)
    loss.backward()

    assert assignment_matrices(4)[best].sum(dim=2).min() >= 1
    assert estimates.grad.abs().sum() > 0


def test_mixit_picks_the_true_assignment():
    generator = torch.Generator().manual_seed(0)
    sources = torch.rand(3, 4, 1, 6, 6, generator=generator)
    # Mixture 1 contains sources {0, 2} in example 0, {1} in example 1 and {0, 1, 3} in example 2.
    owner = torch.tensor([[0, 1, 0, 1], [1, 0, 1, 1], [0, 0, 1, 0]], dtype=torch.float32)
    first = torch.einsum("bm,bmchw->bchw", 1 - owner, sources)
    second = torch.einsum("bm,bmchw->bchw", owner, sources)
    estimates = sources + 0.01 * torch.randn(sources.shape, generator=generator)

    loss, best = mixit_loss(estimates, first, second)

    chosen = assignment_matrices(4)[best][:, 1]  # 1 where a slot goes to the second mixture
    assert torch.equal(chosen, owner)
    assert loss.item() < 1e-3


def test_mixit_loss_is_zero_for_exact_estimates():
    generator = torch.Generator().manual_seed(1)
    sources = torch.rand(2, 4, 1, 3, 3, generator=generator)
    first = sources[:, 0] + sources[:, 3]
    second = sources[:, 1] + sources[:, 2]
    loss, _ = mixit_loss(sources, first, second)
    assert loss.item() < 1e-12
