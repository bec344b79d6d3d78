"""Image metrics: PSNR and SSIM with data range 1, scored under the best permutation per mixture.

Estimates are clipped to [0, 1] before scoring. SSIM is the Wang et al. (2004) index as
scikit-image computes it by default: 7x7 uniform window, K1 = 0.01, K2 = 0.03, sample
covariance, averaged over the window positions that lie fully inside the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from surfsep.pit import apply_permutation, best_permutation

PSNR_MAX_DB = 100.0
SSIM_WINDOW = 7


def psnr(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for data range 1 over the last two axes; capped at 100 dB for identical images."""
    mse = (estimate.double() - reference.double()).pow(2).mean(dim=(-2, -1))
    return -10.0 * torch.log10(mse.clamp_min(10.0 ** (-PSNR_MAX_DB / 10.0)))


def ssim(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """SSIM for data range 1 of images (..., H, W), both sides at least 7 pixels; returns (...)."""
    if min(estimate.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(estimate.shape[-2:])}")
    leading = estimate.shape[:-2]
    x = estimate.double().reshape((-1, 1) + tuple(estimate.shape[-2:]))
    y = reference.double().reshape((-1, 1) + tuple(reference.shape[-2:]))

    def window_mean(image: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(image, SSIM_WINDOW, stride=1)

    mean_x, mean_y = window_mean(x), window_mean(y)
    sample_correction = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1)
    var_x = sample_correction * (window_mean(x * x) - mean_x * mean_x)
    var_y = sample_correction * (window_mean(y * y) - mean_y * mean_y)
    covariance = sample_correction * (window_mean(x * y) - mean_x * mean_y)

    c1, c2 = 0.01**2, 0.03**2
    numerator = (2 * mean_x * mean_y + c1) * (2 * covariance + c2)
    denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    return (numerator / denominator).mean(dim=(-3, -2, -1)).reshape(leading)


def score_images(estimates: torch.Tensor, references: torch.Tensor) -> dict[str, torch.Tensor]:
    """Score (N, K, H, W) estimates against (N, K, H, W) references under the best permutation.

    The permutation maximises the mean PSNR over the K sources. Returns per-mixture ``psnr`` and
    ``ssim`` (N,), per-source ``psnr_per_source`` (N, K), the ``perm`` (N, K) (estimate ``perm[j]``
    is matched to reference j) and the ``aligned`` clipped estimates.
    """
    if estimates.shape != references.shape:
        raise ValueError(f"estimates {tuple(estimates.shape)} and references {tuple(references.shape)} differ in shape")
    clipped = estimates.double().clamp(0.0, 1.0)
    references = references.double()
    pairwise = psnr(clipped.unsqueeze(2), references.unsqueeze(1))  # (N, K_est, K_ref)
    perm = best_permutation(-pairwise)
    aligned = apply_permutation(clipped, perm)
    per_source_psnr = psnr(aligned, references)
    per_source_ssim = ssim(aligned, references)
    return {
        "psnr": per_source_psnr.mean(dim=1),
        "ssim": per_source_ssim.mean(dim=1),
        "psnr_per_source": per_source_psnr,
        "ssim_per_source": per_source_ssim,
        "perm": perm,
        "aligned": aligned,
    }
