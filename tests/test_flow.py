import pytest
import torch

from conftest import random_network
from surfsep import flow


def mixtures(batch=4, size=12, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, size, size, generator=generator) * 2


@pytest.mark.parametrize("slots", [2, 3])
@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 2, 5, 25])
def test_sampled_estimates_sum_to_mixture(slots, solver, steps):
    network = random_network()
    mixture = mixtures()
    estimates = flow.sample(network, mixture, slots, steps, sigma=0.5,
                            generator=torch.Generator().manual_seed(0), solver=solver)

    assert estimates.shape == (4, slots, 1, 12, 12)
    torch.testing.assert_close(estimates.sum(dim=1), mixture, atol=1e-5, rtol=0)
    # The estimates must not be the trivial equal split.
    assert (estimates[:, 0] - estimates[:, 1]).abs().max() > 1e-3


def test_one_step_estimate_sums_to_mixture():
    mixture = mixtures()
    estimate = flow.one_step_estimate(random_network(), mixture, 4, 0.5, torch.Generator().manual_seed(3))
    torch.testing.assert_close(estimate.sum(dim=1), mixture, atol=1e-5, rtol=0)


def test_start_point_is_mixture_plus_zero_sum_noise():
    mixture = mixtures()
    x0 = flow.start_point(mixture, 3, sigma=0.7, generator=torch.Generator().manual_seed(0))
    noise = x0 - (mixture / 3).unsqueeze(1)

    torch.testing.assert_close(x0.sum(dim=1), mixture, atol=1e-5, rtol=0)
    torch.testing.assert_close(noise.sum(dim=1), torch.zeros_like(mixture), atol=1e-5, rtol=0)
    assert noise.std() > 0.3


def test_start_point_rejects_zero_sigma():
    with pytest.raises(ValueError, match="sigma must be positive"):
        flow.start_point(mixtures(), 2, sigma=0.0)


def test_sampler_steps_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        flow.sample(random_network(), mixtures(), 2, 0, sigma=0.5)


class StraightLineModel(torch.nn.Module):
    """The exact velocity ``(x1 - x_t) / (1 - t)`` towards fixed zero-sum-consistent targets."""

    def __init__(self, targets):
        super().__init__()
        self.targets = targets

    def forward(self, x, mixture, t):
        remaining = (1 - t).reshape(-1, 1, 1, 1, 1)
        return (self.targets - x) / remaining


@pytest.mark.parametrize("steps", [1, 3, 10])
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_sampler_follows_exact_velocity_to_target(steps, solver):
    generator = torch.Generator().manual_seed(5)
    targets = torch.rand(3, 2, 1, 6, 6, generator=generator)
    mixture = targets.sum(dim=1)

    result = flow.sample(StraightLineModel(targets), mixture, 2, steps, sigma=0.5, solver=solver,
                         generator=torch.Generator().manual_seed(1))

    torch.testing.assert_close(result, targets, atol=1e-5, rtol=0)


class FixedEstimateModel(torch.nn.Module):
    """A velocity whose one-step estimate ``x0 + v`` is a fixed tensor (up to ``P_perp``)."""

    def __init__(self, estimate):
        super().__init__()
        self.estimate = estimate

    def forward(self, x, mixture, t):
        return self.estimate - x


def test_flow_residual_orders_targets_by_one_step_estimate():
    generator = torch.Generator().manual_seed(2)
    sources = torch.rand(2, 3, 1, 5, 5, generator=generator)
    mixture = sources.sum(dim=1)
    # Example 0 estimates the sources in order (2, 0, 1), example 1 in order (1, 2, 0).
    order = torch.tensor([[2, 0, 1], [1, 2, 0]])
    estimate = torch.stack([sources[b, order[b]] for b in range(2)])

    result = flow.flow_residual(FixedEstimateModel(estimate), mixture, sources, sigma=0.5,
                                generator=torch.Generator().manual_seed(0))

    assert result.perm.tolist() == order.tolist()
    assert result.residual.shape == sources.shape
    torch.testing.assert_close(result.residual.sum(dim=1), torch.zeros_like(mixture), atol=1e-5, rtol=0)


def test_t_zero_fraction_trains_the_one_step_estimate():
    generator = torch.Generator().manual_seed(4)
    sources = torch.rand(64, 2, 1, 6, 6, generator=generator)
    mixture = sources.sum(dim=1)
    network = random_network()

    def residual(fraction):
        return flow.flow_residual(network, mixture, sources, sigma=0.5,
                                  generator=torch.Generator().manual_seed(0), t_zero_fraction=fraction)

    uniform, mixed = residual(0.0), residual(0.5)

    at_zero = mixed.t == 0
    # About half of the 64 examples take t = 0; the others keep the t that the uniform draw gives them.
    assert 16 <= int(at_zero.sum()) <= 48
    torch.testing.assert_close(mixed.t[~at_zero], uniform.t[~at_zero], atol=0, rtol=0)
    assert not (uniform.t == 0).any()
    # At t = 0 the residual is the error of the one-step estimate against the PIT-ordered targets.
    estimate = flow.one_step_estimate(network, mixture, 2, 0.5, torch.Generator().manual_seed(0))
    targets = torch.stack([sources[b, mixed.perm[b]] for b in range(64)])
    torch.testing.assert_close(mixed.residual[at_zero], (estimate - targets)[at_zero], atol=1e-5, rtol=0)


def test_waveform_start_noise_is_filtered_mixture():
    time = torch.arange(4000) / 8000
    tone = torch.sin(2 * torch.pi * 500 * time).expand(3, -1).contiguous()

    x0 = flow.start_point(tone, 2, sigma=1.0, generator=torch.Generator().manual_seed(0))
    noise = x0 - (tone / 2).unsqueeze(1)

    torch.testing.assert_close(x0.sum(dim=1), tone, atol=1e-5, rtol=0)
    assert noise.abs().max() > 0.05
    spectrum = torch.fft.rfft(noise[..., 100:-100], dim=-1).abs()
    peak_hz = spectrum.argmax(dim=-1) * 8000 / (tone.shape[1] - 200)
    assert torch.all((peak_hz - 500).abs() < 5)


def test_waveform_start_noise_is_silent_on_silence():
    x0 = flow.start_point(torch.zeros(2, 500), 3, sigma=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.count_nonzero(x0) == 0
