"""Mixture-consistent flow matching over the slot axis.

Shapes: a mixture is (B, ...) and its K sources are stacked on dim 1 as (B, K, ...). Inside the
code a mixture is always the sum of its sources, ``m = sum_k x_k``. ``P`` replaces every slot by
the slot mean and ``P_perp = I - P`` removes it, so a tensor with ``P_perp`` applied sums to zero
over the slots.

The network ``velocity_model(x_t, mixture, t)`` takes (B, K, ...), (B, ...), (B,) and returns
(B, K, ...). Every function here applies ``P_perp`` to its output, which keeps ``sum_k x_k = m`` at
every point of the path and in every sampled estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from surfsep.pit import apply_permutation, best_permutation, pairwise_mse

VelocityModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def project_zero_sum(x: torch.Tensor) -> torch.Tensor:
    """Apply ``P_perp``: subtract the mean over the slot axis (dim 1)."""
    return x - x.mean(dim=1, keepdim=True)


# Taps of the random filters that shape the start-point noise of waveforms.
NOISE_FILTER_TAPS = 32


def start_noise(mixture: torch.Tensor, slots: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw the noise z (B, K, ...) of the start point, before ``P_perp``.

    Images (B, C, H, W) get white Gaussian noise. A waveform mixture (B, L) gets, per slot, the
    mixture filtered by its own random ``NOISE_FILTER_TAPS``-tap FIR filter (taps N(0, 1/taps)):
    every slot starts as the mixture with a random spectral tilt. White noise over thousands of
    samples is nearly orthogonal to any difference between the sources, so a one-step separator
    could not turn it into a consistent choice of source per slot. A random tilt leans each slot
    towards the sources whose energy lies in the bands it favours.
    """
    shape = (mixture.shape[0], slots) + tuple(mixture.shape[1:])
    if mixture.dim() != 2:
        return torch.randn(shape, generator=generator, dtype=mixture.dtype, device="cpu").to(mixture.device)

    batch, length = mixture.shape
    taps = torch.randn(batch * slots, 1, NOISE_FILTER_TAPS, generator=generator, dtype=mixture.dtype, device="cpu")
    taps = (taps / NOISE_FILTER_TAPS**0.5).to(mixture.device)
    # One group per mixture: its K output channels are the K filtered copies of that mixture.
    filtered = torch.nn.functional.conv1d(mixture.unsqueeze(0), taps, padding=NOISE_FILTER_TAPS // 2, groups=batch)
    return filtered[0, :, :length].reshape(shape)


def start_point(
    mixture: torch.Tensor, slots: int, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``x0 = (m / K) stacked K times + sigma P_perp z`` with z from ``start_noise``.

    The mixture part of x0 is exact, and the noise lives only in the zero-sum subspace. The noise
    is what breaks the symmetry between slots, so sigma must be positive.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive so the slots can differ, got {sigma}")
    noise = start_noise(mixture, slots, generator)
    mean_part = (mixture / slots).unsqueeze(1).expand(noise.shape)
    return mean_part + sigma * project_zero_sum(noise)


def velocity(model: VelocityModel, t: torch.Tensor, x_t: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
    """Network velocity with ``P_perp`` applied: ``v(t, x_t, m)``, shape (B, K, ...)."""
    # Under autocast the network may return bfloat16, so its output is cast back to the input's precision.
    return project_zero_sum(model(x_t, mixture, t).to(x_t.dtype))


def one_step_estimate(
    model: VelocityModel,
    mixture: torch.Tensor,
    slots: int,
    sigma: float,
    generator: torch.Generator | None = None,
    x0: torch.Tensor | None = None,
) -> torch.Tensor:
    """Regression output ``D_0 = x0 + v(0, x0, m)``; sums to the mixture over the slots."""
    if x0 is None:
        x0 = start_point(mixture, slots, sigma, generator)
    t = torch.zeros(mixture.shape[0], dtype=mixture.dtype, device=mixture.device)
    return x0 + velocity(model, t, x0, mixture)


@dataclass
class FlowResidual:
    """Residual ``R = P_perp v(t, x_t, m) - (x1 - x0)`` of one flow-matching draw.

    ``perm`` (B, K) is the target order chosen by PIT at t = 0: target slot j is ``x1[:, perm[:, j]]``.
    """

    residual: torch.Tensor
    perm: torch.Tensor
    t: torch.Tensor


def flow_residual(
    model: VelocityModel,
    mixture: torch.Tensor,
    targets: torch.Tensor,
    sigma: float,
    generator: torch.Generator | None = None,
    t_zero_fraction: float = 0.0,
) -> FlowResidual:
    """Draw x0 and t, pick the target order by PIT at t = 0, and return the velocity residual.

    ``targets`` (B, K, ...) are the x1 of the path. The order is the one that best matches the
    one-step estimate ``x0 + v(0, x0, m)``, chosen without gradient, and the whole path uses it.
    A ``t_zero_fraction`` of the examples, drawn at random, take t = 0: there the squared residual
    is the squared error of the one-step estimate, so these examples train the network's one-step
    separation directly.
    """
    slots = targets.shape[1]
    x0 = start_point(mixture, slots, sigma, generator)

    with torch.no_grad():
        estimate = one_step_estimate(model, mixture, slots, sigma, x0=x0)
        # cost[b, i, j] matches estimate slot i to target slot j; reorder targets to the estimates.
        perm = best_permutation(pairwise_mse(targets, estimate))
    x1 = apply_permutation(targets, perm)

    t = torch.rand(mixture.shape[0], generator=generator, dtype=mixture.dtype).to(mixture.device)
    if t_zero_fraction > 0:
        at_zero = torch.rand(mixture.shape[0], generator=generator).to(mixture.device) < t_zero_fraction
        t = torch.where(at_zero, torch.zeros_like(t), t)
    t_slots = t.reshape((-1,) + (1,) * (x0.dim() - 1))
    x_t = (1 - t_slots) * x0 + t_slots * x1
    residual = velocity(model, t, x_t, mixture) - (x1 - x0)
    return FlowResidual(residual=residual, perm=perm, t=t)


@torch.no_grad()
def sample(
    model: VelocityModel,
    mixture: torch.Tensor,
    slots: int,
    steps: int,
    sigma: float,
    generator: torch.Generator | None = None,
    solver: str = "euler",
    x0: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate the flow from t = 0 to 1 with ``steps`` uniform steps; returns (B, K, ...).

    ``solver`` is "euler" or "heun" (Heun's second-order method, one extra network call per step
    except the last). ``x0`` replaces the drawn start point. Every iterate sums to the mixture.
    """
    if steps < 1:
        raise ValueError(f"the number of sampler steps must be at least 1, got {steps}")
    if solver not in ("euler", "heun"):
        raise ValueError(f"unknown solver {solver!r}: use 'euler' or 'heun'")

    x = start_point(mixture, slots, sigma, generator) if x0 is None else x0
    batch = mixture.shape[0]
    step_size = 1.0 / steps
    for index in range(steps):
        t = torch.full((batch,), index * step_size, dtype=mixture.dtype, device=mixture.device)
        v = velocity(model, t, x, mixture)
        if solver == "heun" and index < steps - 1:
            x_next = x + step_size * v
            v_next = velocity(model, t + step_size, x_next, mixture)
            v = 0.5 * (v + v_next)
        x = x + step_size * v
    return x
