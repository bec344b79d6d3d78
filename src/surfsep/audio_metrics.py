"""Audio separation metrics (SI-SDR, SI-SDRi, BSS-Eval, PESQ, STOI) and the thresholded SNR loss.

Signals are tensors whose last axis is time. Estimate and reference sets are (N, K, L), with the
source slot on axis 1. Every metric converts its inputs to float64 first. Permutations come from
``surfsep.pit.best_permutation``, so training and evaluation use one solver and one convention:
estimate ``perm[j]`` is matched to reference j.

Silence: SI-SDR is scale invariant, so whether a signal is silent can only be judged against
something else. ``score_audio`` calls a reference or estimate silent when its energy is at most
``silence_db`` (default -60 dB) relative to the energy of its mixture. Silent references are left
out of the permutation and of the mean, and counted.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

import torch

from surfsep.pit import MAX_EXHAUSTIVE_SLOTS, apply_permutation, best_permutation

logger = logging.getLogger(__name__)

# SI-SDR, SDR, SIR and SAR are clamped to +-100 dB, like the PSNR of the image metrics. A silent
# signal then scores -100 dB and a perfect estimate +100 dB instead of +-inf.
SI_SDR_LIMIT_DB = 100.0
SILENCE_DB = -60.0
# Length of the distortion filter that BSS-Eval allows (fast_bss_eval's default).
BSS_EVAL_FILTER_LENGTH = 512
# Energy floor, in squared amplitude units, that keeps the thresholded SNR loss finite for silent targets.
LOSS_EPSILON = 1e-8
PESQ_MODES = {8000: "nb", 16000: "wb"}
QUALITY_EXTRA = "pip install surfsep[quality]"


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor, zero_mean: bool = True) -> torch.Tensor:
    """Compute SI-SDR in dB over the last axis in float64. Shapes (..., L) broadcast to (...).

    SI-SDR = 10 log10(||a s||^2 / ||a s - e||^2) with a = <e, s> / ||s||^2, for estimate e and
    reference s, each with its mean removed first when ``zero_mean``. Each signal is divided by its
    peak before the sums, which changes nothing in exact arithmetic (SI-SDR is invariant to scaling
    either signal) but keeps the energies away from float64 overflow and underflow. The result is
    clamped to +-100 dB, so an all-zero estimate or reference scores -100 dB, not NaN.
    """
    _check_broadcastable(estimate, reference, "estimate", "reference")
    estimate = _normalise_peak(_as_float64("estimate", estimate, zero_mean))
    reference = _normalise_peak(_as_float64("reference", reference, zero_mean))
    tiny = torch.finfo(torch.float64).tiny

    reference_energy = reference.pow(2).sum(dim=-1, keepdim=True)
    scale = (estimate * reference).sum(dim=-1, keepdim=True) / reference_energy.clamp_min(tiny)
    target = scale * reference
    noise = estimate - target

    ratio = target.pow(2).sum(dim=-1) / noise.pow(2).sum(dim=-1).clamp_min(tiny)
    return (10.0 * torch.log10(ratio)).clamp(-SI_SDR_LIMIT_DB, SI_SDR_LIMIT_DB)


def pairwise_si_sdr(estimates: torch.Tensor, references: torch.Tensor, zero_mean: bool = True) -> torch.Tensor:
    """Compute SI-SDR of every estimate slot against every reference slot: (..., K, L) twice -> (..., K, K).

    Entry [..., i, j] is SI-SDR(estimate i, reference j). The loop over reference slots keeps the
    float64 intermediates no larger than the input.
    """
    _check_same_shape(estimates, references, "estimates", "references")
    if estimates.dim() < 2:
        raise ValueError(f"estimates and references must have shape (..., K, L), got {tuple(estimates.shape)}")
    columns = [si_sdr(estimates, references[..., j : j + 1, :], zero_mean) for j in range(references.shape[-2])]
    return torch.stack(columns, dim=-1)


def score_audio(
    estimates: torch.Tensor,
    references: torch.Tensor,
    mixtures: torch.Tensor,
    zero_mean: bool = True,
    silence_db: float = SILENCE_DB,
) -> dict[str, torch.Tensor]:
    """Score (N, K, L) estimates against (N, K, L) references of (N, L) mixtures by SI-SDR.

    A reference or estimate is silent when its energy is at most ``silence_db`` dB relative to its
    mixture's energy (both with the mean removed when ``zero_mean``). The permutation maximises the
    summed SI-SDR over the active references only. Returns:

    - ``si_sdr``, ``si_sdri`` (N,): means over the active references, NaN where none is active;
    - ``si_sdr_per_source``, ``si_sdri_per_source`` (N, K), in reference order, NaN for silent
      references. SI-SDRi subtracts the SI-SDR of the mixture used as the estimate of that source;
    - ``perm`` (N, K): estimate ``perm[n, j]`` is matched to reference j;
    - ``aligned`` (N, K, L): the estimates in reference order, in their input dtype;
    - ``silent_references`` (N,): how many references are silent;
    - ``under_separated`` (N,): silent estimates matched to active references (sources missed);
    - ``over_separated`` (N,): active estimates matched to silent references (a source split up
      or an invented one).
    """
    if estimates.dim() != 3:
        raise ValueError(f"estimates must have shape (N, K, L), got {tuple(estimates.shape)}")
    _check_same_shape(estimates, references, "estimates", "references")
    if mixtures.shape != (estimates.shape[0], estimates.shape[2]):
        raise ValueError(
            f"mixtures must have shape (N, L) = {(estimates.shape[0], estimates.shape[2])} to match the "
            f"estimates {tuple(estimates.shape)}, got {tuple(mixtures.shape)}"
        )

    # 1. Silence, judged against each mixture's energy.
    mixture_energy = _energy("mixtures", mixtures, zero_mean)
    threshold = (mixture_energy * 10.0 ** (silence_db / 10.0)).unsqueeze(1)  # (N, 1)
    silent_reference = _energy("references", references, zero_mean) <= threshold  # (N, K)

    # 2. Permutation: silent references get a constant column, so they cannot change which
    #    estimates go to the active references.
    pairwise = pairwise_si_sdr(estimates, references, zero_mean)  # (N, K_est, K_ref)
    perm = best_permutation(-pairwise.masked_fill(silent_reference.unsqueeze(1), 0.0))
    aligned = apply_permutation(estimates, perm)

    # 3. Scores of the matched pairs and of the mixture as the estimate of every source.
    matched = pairwise.gather(1, perm.unsqueeze(1)).squeeze(1)  # (N, K), reference order
    mixture_scores = si_sdr(mixtures.unsqueeze(1), references, zero_mean)  # (N, K)
    per_source = matched.masked_fill(silent_reference, float("nan"))
    per_source_improvement = (matched - mixture_scores).masked_fill(silent_reference, float("nan"))

    # 4. Under-separation (silent estimate, active reference) and over-separation (the reverse).
    silent_estimate = _energy("estimates", aligned, zero_mean) <= threshold
    no_active = silent_reference.all(dim=1)
    if no_active.any():
        logger.warning(
            "%d of %d mixtures have no active reference; their mean SI-SDR is NaN", int(no_active.sum()), len(no_active)
        )

    return {
        "si_sdr": per_source.nanmean(dim=1),
        "si_sdri": per_source_improvement.nanmean(dim=1),
        "si_sdr_per_source": per_source,
        "si_sdri_per_source": per_source_improvement,
        "perm": perm,
        "aligned": aligned,
        "silent_references": silent_reference.sum(dim=1),
        "under_separated": (silent_estimate & ~silent_reference).sum(dim=1),
        "over_separated": (~silent_estimate & silent_reference).sum(dim=1),
    }


def bss_eval(
    estimates: torch.Tensor,
    references: torch.Tensor,
    mixture: torch.Tensor | None = None,
    silence_db: float = SILENCE_DB,
) -> dict[str, torch.Tensor]:
    """Compute BSS-Eval SDR, SIR and SAR in dB of (K, L) estimates against (K, L) references.

    fast_bss_eval computes them in float64 with 512-tap distortion filters and means kept. The
    permutation is ``score_audio``'s rule (maximum summed zero-mean SI-SDR over the active
    references, with silence judged against ``mixture``, by default the sum of the references),
    not fast_bss_eval's own. Returns ``sdr``, ``sir`` and ``sar`` (K,) in reference order, NaN for
    silent references, and ``perm`` (K,). Each signal is divided by its peak first, which the
    metrics are invariant to. Values are clamped to +-100 dB, so an all-zero estimate scores
    -100 dB on all three.
    """
    import fast_bss_eval

    if estimates.dim() != 2:
        raise ValueError(f"estimates must have shape (K, L), got {tuple(estimates.shape)}")
    _check_same_shape(estimates, references, "estimates", "references")
    sources, length = estimates.shape
    # NOTE: near this limit the distortion filters nearly span the signal, so SAR is biased upward.
    if length <= sources * BSS_EVAL_FILTER_LENGTH:
        raise ValueError(
            f"BSS-Eval with {sources} sources and {BSS_EVAL_FILTER_LENGTH}-tap filters needs signals longer "
            f"than {sources * BSS_EVAL_FILTER_LENGTH} samples, got {length}; score longer excerpts"
        )
    if mixture is None:
        mixture = references.sum(dim=0)

    scores = score_audio(estimates.unsqueeze(0), references.unsqueeze(0), mixture.unsqueeze(0), silence_db=silence_db)
    perm = scores["perm"][0]
    active = torch.isfinite(scores["si_sdr_per_source"][0])
    aligned = _normalise_peak(_as_float64("estimates", scores["aligned"][0], zero_mean=False))
    references = _normalise_peak(_as_float64("references", references, zero_mean=False))

    results = {name: torch.full((sources,), float("nan"), dtype=torch.float64) for name in ("sdr", "sir", "sar")}
    if active.any():
        sdr, sir, sar = fast_bss_eval.bss_eval_sources(
            references[active],
            aligned[active],
            filter_length=BSS_EVAL_FILTER_LENGTH,
            clamp_db=SI_SDR_LIMIT_DB,
            compute_permutation=False,
        )
        # An all-zero estimate has neither target nor interference, so fast_bss_eval's SIR is 0/0.
        silent = aligned[active].abs().amax(dim=-1) == 0
        sir = sir.masked_fill(silent, -SI_SDR_LIMIT_DB)
        results["sdr"][active], results["sir"][active], results["sar"][active] = sdr, sir, sar
    results["perm"] = perm
    return results


def metric_notes(zero_mean: bool = True, silence_db: float = SILENCE_DB) -> dict[str, str]:
    """One-line descriptions of the metric variants, for an evaluation summary."""
    mean_rule = "means removed first" if zero_mean else "means kept"
    return {
        "si_sdr": f"SI-SDR in dB, float64, {mean_rule}, clamped to +-{SI_SDR_LIMIT_DB:g} dB, mean over active sources",
        "si_sdri": "SI-SDR of the estimate minus SI-SDR of the mixture used as the estimate of the same source",
        "permutation": "per mixture, maximum summed SI-SDR over active references "
        f"(exhaustive search up to {MAX_EXHAUSTIVE_SLOTS} sources, Hungarian algorithm beyond)",
        "silence": f"a reference or estimate is silent at or below {silence_db:g} dB of its mixture's energy; "
        "silent references are excluded from the permutation and the means and counted",
        "separation_counts": "under_separated: silent estimates matched to active references; "
        "over_separated: active estimates matched to silent references",
        "bss_eval": f"SDR, SIR, SAR from fast_bss_eval in float64, {BSS_EVAL_FILTER_LENGTH}-tap distortion filters, "
        f"means kept, clamped to +-{SI_SDR_LIMIT_DB:g} dB, under the SI-SDR permutation",
        "pesq": "PESQ from the pesq package: narrow-band (ITU-T P.862) at 8 kHz, wide-band (P.862.2) at 16 kHz",
        "stoi": "STOI (pystoi, not the extended variant)",
    }


METRIC_NOTES = metric_notes()


def perceptual_available() -> bool:
    """Return whether the optional packages for PESQ and STOI (pesq, pystoi) can be imported."""
    try:
        importlib.import_module("pesq")
        importlib.import_module("pystoi")
    except ImportError:
        return False
    return True


def perceptual_scores(estimate: torch.Tensor, reference: torch.Tensor, sample_rate: int) -> dict[str, float]:
    """Compute PESQ and STOI of one (L,) estimate against its (L,) reference.

    Returns ``pesq_nb`` at 8 kHz or ``pesq_wb`` at 16 kHz, and ``stoi``. Other sample rates raise
    ValueError because PESQ is defined only for those two. Needs ``pip install surfsep[quality]``.
    """
    pesq_module = _import_quality_package("pesq", "PESQ")
    stoi_module = _import_quality_package("pystoi", "STOI")
    if estimate.dim() != 1:
        raise ValueError(f"estimate must have shape (L,), got {tuple(estimate.shape)}")
    _check_same_shape(estimate, reference, "estimate", "reference")
    if sample_rate not in PESQ_MODES:
        raise ValueError(
            f"PESQ needs a sample rate of 8000 or 16000 Hz, got {sample_rate!r}; resample the signals first"
        )

    mode = PESQ_MODES[sample_rate]
    degraded = _as_float64("estimate", estimate, zero_mean=False).cpu().numpy()
    clean = _as_float64("reference", reference, zero_mean=False).cpu().numpy()
    try:
        pesq_score = pesq_module.pesq(sample_rate, clean, degraded, mode)
    except pesq_module.PesqError as error:
        raise ValueError(f"PESQ failed on a {len(clean) / sample_rate:.2f} s signal: {_error_text(error)}") from error
    stoi_score = stoi_module.stoi(clean, degraded, sample_rate, extended=False)
    return {f"pesq_{mode}": float(pesq_score), "stoi": float(stoi_score)}


def thresholded_snr_loss(estimates: torch.Tensor, targets: torch.Tensor, snr_max_db: float = 30.0) -> torch.Tensor:
    """Compute the negative SNR with a soft cap per example over the last axis: (..., L) twice -> (...).

    loss = 10 log10(||s - e||^2 + tau ||s||^2 + eps) - 10 log10(||s||^2 + eps), with
    tau = 10^(-snr_max_db / 10) and eps = 1e-8 for estimate e and target s. Lower is better, and
    the loss is never below -snr_max_db, the value of a perfect estimate (up to eps). Shapes
    broadcast. Half-precision inputs are computed in float32, other dtypes as they are.
    """
    _check_broadcastable(estimates, targets, "estimates", "targets")
    if snr_max_db < 0:
        raise ValueError(f"snr_max_db must be at least 0 dB, got {snr_max_db}")
    # eps = 1e-8 rounds to 0 in float16, which would give log10(0) for a silent target.
    dtype = torch.promote_types(torch.promote_types(estimates.dtype, targets.dtype), torch.float32)
    estimates, targets = estimates.to(dtype), targets.to(dtype)
    tau = 10.0 ** (-snr_max_db / 10.0)
    target_energy = targets.pow(2).sum(dim=-1)
    error_energy = (targets - estimates).pow(2).sum(dim=-1)
    return 10.0 * torch.log10(error_energy + tau * target_energy + LOSS_EPSILON) - 10.0 * torch.log10(
        target_energy + LOSS_EPSILON
    )


def pairwise_thresholded_snr(estimates: torch.Tensor, targets: torch.Tensor, snr_max_db: float = 30.0) -> torch.Tensor:
    """Compute the thresholded SNR loss of every estimate slot against every target slot: (B, K, L) -> (B, K, K).

    Entry [b, i, j] is the loss of estimate i against target j, a cost for ``best_permutation``.
    """
    if estimates.dim() != 3:
        raise ValueError(f"estimates must have shape (B, K, L), got {tuple(estimates.shape)}")
    _check_same_shape(estimates, targets, "estimates", "targets")
    return thresholded_snr_loss(estimates.unsqueeze(2), targets.unsqueeze(1), snr_max_db)


def _as_float64(name: str, signal: torch.Tensor, zero_mean: bool) -> torch.Tensor:
    if not torch.is_floating_point(signal):
        raise ValueError(f"{name} must be a floating-point tensor, got {signal.dtype}")
    if not torch.isfinite(signal).all():
        raise ValueError(f"{name} contains NaN or infinite samples; check the separator output or the audio files")
    signal = signal.to(torch.float64)
    if zero_mean:
        signal = signal - signal.mean(dim=-1, keepdim=True)
    return signal


def _normalise_peak(signal: torch.Tensor) -> torch.Tensor:
    """Divide each signal by its peak magnitude; all-zero signals stay zero."""
    peak = signal.abs().amax(dim=-1, keepdim=True)
    return signal / peak.clamp_min(torch.finfo(torch.float64).tiny)


def _energy(name: str, signal: torch.Tensor, zero_mean: bool) -> torch.Tensor:
    return _as_float64(name, signal, zero_mean).pow(2).sum(dim=-1)


def _check_same_shape(first: torch.Tensor, second: torch.Tensor, first_name: str, second_name: str) -> None:
    if first.shape != second.shape:
        raise ValueError(
            f"{first_name} {tuple(first.shape)} and {second_name} {tuple(second.shape)} must have the same shape"
        )


def _check_broadcastable(first: torch.Tensor, second: torch.Tensor, first_name: str, second_name: str) -> None:
    try:
        torch.broadcast_shapes(first.shape, second.shape)
    except RuntimeError:
        raise ValueError(
            f"{first_name} {tuple(first.shape)} and {second_name} {tuple(second.shape)} "
            "have shapes that do not broadcast"
        ) from None


def _import_quality_package(name: str, metric: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"{metric} needs the optional package {name!r}; install it with: {QUALITY_EXTRA}") from error


def _error_text(error: Exception) -> str:
    """Decode the message of a pesq error, whose argument is bytes."""
    message = error.args[0] if error.args else error
    return message.decode(errors="replace") if isinstance(message, bytes) else str(message)
