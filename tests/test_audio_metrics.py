import logging
import sys

import fast_bss_eval
import numpy as np
import pesq
import pystoi
import pytest
import torch
from torchmetrics.functional.audio import permutation_invariant_training
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio as torchmetrics_si_sdr

from surfsep import audio_metrics, pit
from surfsep.audio_metrics import (
    bss_eval,
    pairwise_si_sdr,
    pairwise_thresholded_snr,
    perceptual_available,
    perceptual_scores,
    score_audio,
    si_sdr,
    thresholded_snr_loss,
)


def noisy_pairs(batch, length, noise, seed, offset=0.0):
    """Random float64 references and estimates at about -20 log10(noise) dB SNR, sharing a DC offset."""
    generator = torch.Generator().manual_seed(seed)
    references = torch.randn(batch, length, generator=generator, dtype=torch.float64) + offset
    estimates = references + noise * torch.randn(batch, length, generator=generator, dtype=torch.float64)
    return estimates, references


def mixed_sources(batch, sources, length, seed):
    """References and shuffled, partly mixed, noisy estimates: a permutation that is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    references = torch.randn(batch, sources, length, generator=generator, dtype=torch.float64) + 0.3
    leakage = 0.4 * torch.rand(batch, sources, sources, generator=generator, dtype=torch.float64)
    mixing = torch.eye(sources, dtype=torch.float64) + leakage
    noise = torch.randn(batch, sources, length, generator=generator, dtype=torch.float64)
    estimates = mixing @ references + 0.5 * noise
    shuffles = torch.stack([torch.randperm(sources, generator=generator) for _ in range(batch)])
    return pit.apply_permutation(estimates, shuffles), references


def speech_like(sample_rate, seconds=3.0):
    """Voiced bursts of a gliding harmonic tone, which PESQ's voice activity detection accepts."""
    time = np.arange(int(seconds * sample_rate)) / sample_rate
    envelope = (np.sin(2 * np.pi * 3 * time) > 0).astype(np.float64)
    glide = 1 + 0.05 * np.sin(2 * np.pi * 2 * time)
    pitches = [150, 300, 450, 600, 900]
    harmonics = sum(np.sin(2 * np.pi * pitch * time * glide) / (rank + 1) for rank, pitch in enumerate(pitches))
    return torch.from_numpy(0.3 * envelope * harmonics)


@pytest.mark.parametrize("zero_mean", [True, False])
def test_si_sdr_matches_fast_bss_eval(zero_mean):
    estimates, references = noisy_pairs(16, 4000, noise=0.4, seed=1, offset=0.5)

    ours = si_sdr(estimates, references, zero_mean=zero_mean)
    # fast_bss_eval takes (reference, estimate), defaults to zero_mean=False and always solves a
    # permutation over the channel axis. So each pair goes in as a batch item with one channel.
    theirs = fast_bss_eval.si_sdr(references.unsqueeze(1), estimates.unsqueeze(1), zero_mean=zero_mean).squeeze(1)

    assert ours.dtype == torch.float64
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-9)


def test_si_sdr_zero_mean_conventions_differ():
    estimates, references = noisy_pairs(8, 4000, noise=0.4, seed=2, offset=0.5)
    centred = si_sdr(estimates, references, zero_mean=True)
    raw = si_sdr(estimates, references, zero_mean=False)

    # The DC offset (energy 0.25 per sample) is shared, so keeping the mean scores about 1 dB higher.
    assert (raw - centred).min() > 0.5
    fast_raw = fast_bss_eval.si_sdr(references.unsqueeze(1), estimates.unsqueeze(1)).squeeze(1)
    assert torch.allclose(raw, fast_raw, rtol=0, atol=1e-9)


@pytest.mark.parametrize("zero_mean", [True, False])
def test_si_sdr_matches_torchmetrics(zero_mean):
    estimates, references = noisy_pairs(16, 4000, noise=0.7, seed=3, offset=0.2)

    ours = si_sdr(estimates, references, zero_mean=zero_mean)
    theirs = torchmetrics_si_sdr(estimates, references, zero_mean=zero_mean)

    assert torch.allclose(ours, theirs, rtol=0, atol=1e-9)


def test_si_sdr_accepts_float32_and_float16():
    estimates, references = noisy_pairs(4, 2000, noise=0.5, seed=4)
    expected = si_sdr(estimates.float().double(), references.float().double())

    assert torch.equal(si_sdr(estimates.float(), references.float()), expected)
    assert si_sdr(estimates.half(), references.half()).dtype == torch.float64


def test_si_sdr_huge_amplitude_float32():
    estimates, references = noisy_pairs(4, 4000, noise=0.3, seed=5)
    huge_estimates, huge_references = (1e20 * estimates).float(), (1e20 * references).float()

    # Squares near 1e40 overflow float32, so float32 arithmetic gives NaN.
    float32_result = torchmetrics_si_sdr(huge_estimates, huge_references)
    assert not torch.isfinite(float32_result).any()

    expected = torchmetrics_si_sdr(huge_estimates.double(), huge_references.double())
    ours = si_sdr(huge_estimates, huge_references, zero_mean=False)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, expected, rtol=0, atol=1e-9)


def test_si_sdr_tiny_amplitude_float32():
    estimates, references = noisy_pairs(4, 4000, noise=0.3, seed=6)
    tiny_estimates, tiny_references = (1e-25 * estimates).float(), (1e-25 * references).float()

    # Squares near 1e-50 underflow to zero in float32, so the ratio collapses to about 0 dB.
    expected = torchmetrics_si_sdr(tiny_estimates.double() * 1e25, tiny_references.double() * 1e25)
    float32_result = torchmetrics_si_sdr(tiny_estimates, tiny_references)
    assert (float32_result - expected).abs().min() > 5.0

    ours = si_sdr(tiny_estimates, tiny_references, zero_mean=False)
    assert torch.allclose(ours, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 7.5, -2.0, 1e9])
def test_si_sdr_scale_invariance(scale):
    estimates, references = noisy_pairs(8, 3000, noise=0.6, seed=7, offset=0.1)
    base = si_sdr(estimates, references)

    assert torch.allclose(si_sdr(scale * estimates, references), base, rtol=0, atol=1e-10)
    assert torch.allclose(si_sdr(estimates, scale * references), base, rtol=0, atol=1e-10)


def test_si_sdr_silent_signals():
    _, references = noisy_pairs(2, 1000, noise=0.0, seed=8)
    silent = torch.zeros_like(references)
    limit = audio_metrics.SI_SDR_LIMIT_DB

    assert torch.equal(si_sdr(silent, references), torch.full((2,), -limit, dtype=torch.float64))
    assert torch.equal(si_sdr(references, silent), torch.full((2,), -limit, dtype=torch.float64))
    assert torch.equal(si_sdr(silent, silent), torch.full((2,), -limit, dtype=torch.float64))
    # A constant signal is silent once its mean is removed.
    assert torch.equal(si_sdr(torch.ones(2, 1000), references), torch.full((2,), -limit, dtype=torch.float64))
    assert torch.equal(si_sdr(references, references), torch.full((2,), limit, dtype=torch.float64))


def test_si_sdr_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN or infinite"):
        si_sdr(torch.tensor([1.0, float("nan"), 0.0]), torch.ones(3))
    with pytest.raises(ValueError, match="do not broadcast"):
        si_sdr(torch.ones(2, 100), torch.ones(3, 100))
    with pytest.raises(ValueError, match="floating-point"):
        si_sdr(torch.ones(10, dtype=torch.int64), torch.ones(10))


def test_pairwise_si_sdr_entries():
    estimates, references = mixed_sources(3, 4, 1500, seed=9)
    pairwise = pairwise_si_sdr(estimates, references)

    assert pairwise.shape == (3, 4, 4)
    for i in range(4):
        for j in range(4):
            assert torch.equal(pairwise[:, i, j], si_sdr(estimates[:, i], references[:, j]))


@pytest.mark.parametrize("sources, seed", [(2, 10), (3, 11), (7, 12)])
def test_permutation_matches_torchmetrics_and_fast_bss_eval(sources, seed):
    estimates, references = mixed_sources(12, sources, 2000, seed=seed)
    if sources == 7:
        assert sources > pit.MAX_EXHAUSTIVE_SLOTS  # this case takes the Hungarian path

    scores = score_audio(estimates, references, references.sum(dim=1))
    _, torchmetrics_perm = permutation_invariant_training(
        estimates, references, torchmetrics_si_sdr, mode="speaker-wise", eval_func="max", zero_mean=True
    )
    fast_values, fast_perm = fast_bss_eval.si_sdr(references, estimates, zero_mean=True, return_perm=True)

    assert not torch.equal(scores["perm"], torch.arange(sources).expand(12, sources))
    assert torch.equal(scores["perm"], torchmetrics_perm)
    assert torch.equal(scores["perm"], fast_perm)
    assert torch.allclose(scores["si_sdr_per_source"], fast_values, rtol=0, atol=1e-9)
    assert torch.equal(scores["aligned"], pit.apply_permutation(estimates, scores["perm"]))


def test_score_silent_reference_masked():
    generator = torch.Generator().manual_seed(13)
    references = torch.randn(2, 3, 3000, generator=generator, dtype=torch.float64)
    estimates = references + 0.3 * torch.randn(2, 3, 3000, generator=generator, dtype=torch.float64)
    # Mixture 0: reference 2 is 100 dB below the others and a scaled copy of estimate 0, which would
    # then score the +100 dB cap against it. Estimate 2 is unrelated noise.
    references[0, 2] = 1e-5 * estimates[0, 0]
    estimates[0, 2] = torch.randn(3000, generator=generator, dtype=torch.float64)
    mixtures = references.sum(dim=1)

    scores = score_audio(estimates, references, mixtures)

    # Unmasked, the silent reference would take estimate 0 away from reference 0.
    unmasked = pit.best_permutation(-pairwise_si_sdr(estimates, references))
    assert unmasked[0].tolist() != [0, 1, 2]
    assert scores["perm"].tolist() == [[0, 1, 2], [0, 1, 2]]

    per_source = scores["si_sdr_per_source"]
    assert torch.isnan(per_source[0, 2])
    assert torch.isnan(scores["si_sdri_per_source"][0, 2])
    assert torch.isfinite(per_source[0, :2]).all()
    assert torch.isfinite(per_source[1]).all()
    expected_mean = si_sdr(estimates[0, :2], references[0, :2]).mean()
    assert torch.allclose(scores["si_sdr"][0], expected_mean, rtol=0, atol=1e-12)
    assert torch.isfinite(scores["si_sdr"]).all()
    assert torch.isfinite(scores["si_sdri"]).all()

    assert scores["silent_references"].tolist() == [1, 0]
    assert scores["over_separated"].tolist() == [1, 0]
    assert scores["under_separated"].tolist() == [0, 0]


def test_score_silent_estimate_under_separation():
    generator = torch.Generator().manual_seed(14)
    references = torch.randn(1, 3, 3000, generator=generator, dtype=torch.float64)
    estimates = references[:, [2, 0, 1]] + torch.randn(1, 3, 3000, generator=generator, dtype=torch.float64)
    estimates[0, 1] = 0.0  # the estimate of reference 0 is missing

    scores = score_audio(estimates, references, references.sum(dim=1))

    # The silent estimate scores the floor, so it is matched last and cannot beat an active estimate.
    assert scores["perm"].tolist() == [[1, 2, 0]]
    assert scores["si_sdr_per_source"][0, 0] == -audio_metrics.SI_SDR_LIMIT_DB
    assert scores["under_separated"].tolist() == [1]
    assert scores["over_separated"].tolist() == [0]
    assert scores["silent_references"].tolist() == [0]


def test_score_silent_estimate_for_silent_reference():
    generator = torch.Generator().manual_seed(26)
    references = torch.randn(1, 3, 3000, generator=generator, dtype=torch.float64)
    references[0, 2] = 0.0
    # The separator found both active sources in slots 1 and 2 and left slot 0 silent.
    estimates = torch.zeros_like(references)
    estimates[0, 1:] = references[0, :2] + 0.2 * torch.randn(2, 3000, generator=generator, dtype=torch.float64)

    scores = score_audio(estimates, references, references.sum(dim=1))

    assert scores["perm"].tolist() == [[1, 2, 0]]
    assert scores["silent_references"].tolist() == [1]
    assert scores["under_separated"].tolist() == [0]
    assert scores["over_separated"].tolist() == [0]
    assert torch.allclose(scores["si_sdr"], si_sdr(estimates[0, 1:], references[0, :2]).mean(), rtol=0, atol=1e-12)


def test_score_all_silent_mixture(caplog):
    references = torch.zeros(2, 2, 1000, dtype=torch.float64)
    references[1] = torch.randn(2, 1000, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    estimates = references.flip(1)

    with caplog.at_level(logging.WARNING, logger="surfsep.audio_metrics"):
        scores = score_audio(estimates, references, references.sum(dim=1))

    assert torch.isnan(scores["si_sdr"][0])
    assert torch.isfinite(scores["si_sdr"][1])
    assert scores["silent_references"].tolist() == [2, 0]
    assert "1 of 2 mixtures have no active reference" in caplog.text


def test_mixture_si_sdri_is_zero():
    _, references = mixed_sources(5, 3, 2000, seed=16)
    mixtures = references.sum(dim=1)
    as_estimates = mixtures.unsqueeze(1).expand(-1, 3, -1)

    scores = score_audio(as_estimates, references, mixtures)

    assert torch.equal(scores["si_sdri"], torch.zeros(5, dtype=torch.float64))
    assert torch.equal(scores["si_sdri_per_source"], torch.zeros(5, 3, dtype=torch.float64))
    assert torch.equal(scores["si_sdr_per_source"], si_sdr(as_estimates, references))


def test_score_improvement_over_mixture():
    estimates, references = mixed_sources(4, 2, 2000, seed=17)
    mixtures = references.sum(dim=1)
    scores = score_audio(estimates, references, mixtures)

    baseline = si_sdr(mixtures.unsqueeze(1), references)
    assert torch.allclose(scores["si_sdri_per_source"], scores["si_sdr_per_source"] - baseline, rtol=0, atol=1e-12)
    assert torch.allclose(scores["si_sdri"], (scores["si_sdr_per_source"] - baseline).mean(dim=1), rtol=0, atol=1e-12)


def test_score_rejects_mismatched_shapes():
    estimates = torch.zeros(2, 3, 100)
    with pytest.raises(ValueError, match=r"estimates \(2, 3, 100\) and references \(2, 2, 100\)"):
        score_audio(estimates, torch.zeros(2, 2, 100), torch.zeros(2, 100))
    with pytest.raises(ValueError, match=r"mixtures must have shape \(N, L\) = \(2, 100\)"):
        score_audio(estimates, torch.zeros(2, 3, 100), torch.zeros(2, 99))
    with pytest.raises(ValueError, match=r"\(N, K, L\)"):
        score_audio(torch.zeros(3, 100), torch.zeros(3, 100), torch.zeros(3, 100))


def test_bss_eval_matches_fast_bss_eval():
    generator = torch.Generator().manual_seed(18)
    references = torch.randn(3, 8000, generator=generator, dtype=torch.float64)
    estimates = references + 0.4 * torch.randn(3, 8000, generator=generator, dtype=torch.float64)
    shuffled = estimates[[2, 0, 1]]

    ours = bss_eval(shuffled, references)
    direct = fast_bss_eval.bss_eval_sources(references, estimates, compute_permutation=False)
    _, _, _, own_perm = fast_bss_eval.bss_eval_sources(references, shuffled)

    assert ours["perm"].tolist() == [1, 2, 0]
    assert torch.equal(ours["perm"], own_perm)
    for name, expected in zip(("sdr", "sir", "sar"), direct):
        assert torch.allclose(ours[name], expected, rtol=0, atol=1e-8), name


def test_bss_eval_silent_reference_and_estimate():
    generator = torch.Generator().manual_seed(19)
    references = torch.randn(3, 6000, generator=generator, dtype=torch.float64)
    estimates = references + 0.4 * torch.randn(3, 6000, generator=generator, dtype=torch.float64)
    # Reference 2 is silent and so are estimates 1 and 2. An active estimate 2 would win reference 1.
    references[2] = 0.0
    estimates[1:] = 0.0

    ours = bss_eval(estimates, references)
    direct = fast_bss_eval.bss_eval_sources(references[:2], estimates[:2], compute_permutation=False, clamp_db=100.0)

    assert ours["perm"].tolist() == [0, 1, 2]

    for name, expected in zip(("sdr", "sir", "sar"), direct):
        assert torch.isnan(ours[name][2]), name
        assert torch.allclose(ours[name][0], expected[0], rtol=0, atol=1e-8), name
    # fast_bss_eval's SIR of an all-zero estimate is 0/0, so NaN. Ours is the floor, like SDR and SAR.
    assert torch.isnan(direct[1][1])
    assert ours["sdr"][1] == -100.0
    assert ours["sir"][1] == -100.0
    assert ours["sar"][1] == -100.0


def test_bss_eval_rejects_short_signals():
    with pytest.raises(ValueError, match="longer than 1024 samples, got 1000"):
        bss_eval(torch.randn(2, 1000), torch.randn(2, 1000))


@pytest.mark.parametrize("sample_rate, mode", [(8000, "nb"), (16000, "wb")])
def test_perceptual_scores_match_packages(sample_rate, mode):
    reference = speech_like(sample_rate)
    noise = torch.randn(len(reference), generator=torch.Generator().manual_seed(20), dtype=torch.float64)
    estimate = reference + 0.05 * noise

    scores = perceptual_scores(estimate.float(), reference.float(), sample_rate)
    clean_scores = perceptual_scores(reference, reference, sample_rate)

    assert set(scores) == {f"pesq_{mode}", "stoi"}
    expected_pesq = pesq.pesq(sample_rate, reference.float().double().numpy(), estimate.float().double().numpy(), mode)
    expected_stoi = pystoi.stoi(reference.float().double().numpy(), estimate.float().double().numpy(), sample_rate)
    assert scores[f"pesq_{mode}"] == pytest.approx(expected_pesq, abs=1e-9)
    assert scores["stoi"] == pytest.approx(expected_stoi, abs=1e-9)
    assert clean_scores[f"pesq_{mode}"] > scores[f"pesq_{mode}"] + 1.0
    assert clean_scores["stoi"] == pytest.approx(1.0, abs=1e-6)


def test_perceptual_scores_reject_bad_input():
    reference = speech_like(16000, seconds=1.0)
    with pytest.raises(ValueError, match="8000 or 16000 Hz, got 44100"):
        perceptual_scores(reference, reference, 44100)
    with pytest.raises(ValueError, match="PESQ failed .* No utterances detected"):
        perceptual_scores(reference, torch.zeros_like(reference), 16000)
    with pytest.raises(ValueError, match=r"shape \(L,\)"):
        perceptual_scores(reference.reshape(2, -1), reference.reshape(2, -1), 16000)


@pytest.mark.parametrize("package", ["pesq", "pystoi"])
def test_perceptual_missing_package(monkeypatch, package):
    assert perceptual_available()
    monkeypatch.setitem(sys.modules, package, None)  # makes the import fail as if not installed

    assert not perceptual_available()
    reference = speech_like(16000, seconds=1.0)
    with pytest.raises(ImportError, match=rf"'{package}'.*pip install surfsep\[quality\]"):
        perceptual_scores(reference, reference, 16000)


def test_metric_notes_follow_settings():
    notes = audio_metrics.metric_notes(zero_mean=False, silence_db=-45.0)

    assert "means kept" in notes["si_sdr"]
    assert "float64" in notes["si_sdr"]
    assert "-45 dB" in notes["silence"]
    assert f"{audio_metrics.BSS_EVAL_FILTER_LENGTH}-tap" in notes["bss_eval"]
    assert "means removed first" in audio_metrics.METRIC_NOTES["si_sdr"]
    assert all(isinstance(line, str) and "\n" not in line for line in notes.values())


def test_thresholded_snr_loss_sign_and_cap():
    generator = torch.Generator().manual_seed(21)
    targets = torch.randn(8, 2000, generator=generator)
    noise = torch.randn(8, 2000, generator=generator)

    perfect = thresholded_snr_loss(targets, targets, snr_max_db=30.0)
    close = thresholded_snr_loss(targets + 0.01 * noise, targets)
    far = thresholded_snr_loss(targets + 0.5 * noise, targets)

    assert perfect.shape == (8,)
    assert perfect.dtype == torch.float32
    assert torch.allclose(perfect, torch.full((8,), -30.0), rtol=0, atol=1e-4)
    assert (close >= -30.0).all()
    assert (close < far).all()  # lower is better
    # At 40 dB SNR the soft cap dominates: 10 log10(1e-4 + 1e-3) = -29.59 dB.
    assert torch.allclose(close, torch.full((8,), -29.59), rtol=0, atol=0.05)
    target_energy = targets.double().pow(2).sum(dim=-1)
    error_energy = (0.5 * noise.double()).pow(2).sum(dim=-1)
    expected_far = 10 * torch.log10(error_energy / target_energy + 1e-3)
    assert torch.allclose(far.double(), expected_far, rtol=0, atol=1e-4)
    assert torch.allclose(thresholded_snr_loss(targets, targets, snr_max_db=10.0), torch.full((8,), -10.0), atol=1e-4)


def test_thresholded_snr_loss_silent_target():
    estimates = torch.randn(3, 500, generator=torch.Generator().manual_seed(22), requires_grad=True)
    targets = torch.zeros(3, 500)

    loss = thresholded_snr_loss(estimates, targets)
    loss.sum().backward()

    assert torch.isfinite(loss).all()
    assert (loss > 80.0).all()  # 10 log10(||e||^2 / 1e-8) with ||e||^2 near 500
    assert torch.isfinite(estimates.grad).all()
    assert thresholded_snr_loss(torch.zeros(3, 500), targets).abs().max() == 0.0


def test_thresholded_snr_loss_half_precision():
    estimates = torch.randn(3, 500, generator=torch.Generator().manual_seed(25)).half()
    silent = torch.zeros(3, 500, dtype=torch.float16)

    loss = thresholded_snr_loss(estimates, silent)

    assert loss.dtype == torch.float32
    assert torch.isfinite(loss).all()
    assert thresholded_snr_loss(silent, silent).abs().max() == 0.0
    with pytest.raises(ValueError, match="snr_max_db must be at least 0 dB, got -5"):
        thresholded_snr_loss(estimates, silent, snr_max_db=-5.0)


def test_thresholded_snr_loss_gradcheck():
    generator = torch.Generator().manual_seed(23)
    estimates = torch.randn(2, 3, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randn(2, 3, 16, generator=generator, dtype=torch.float64)

    assert torch.autograd.gradcheck(lambda e: thresholded_snr_loss(e, targets), (estimates,))


def test_pairwise_thresholded_snr_for_pit():
    generator = torch.Generator().manual_seed(24)
    targets = torch.randn(6, 3, 800, generator=generator)
    shuffles = torch.stack([torch.randperm(3, generator=generator) for _ in range(6)])
    estimates = pit.apply_permutation(targets, shuffles) + 0.3 * torch.randn(6, 3, 800, generator=generator)

    pairwise = pairwise_thresholded_snr(estimates, targets)
    perm = pit.best_permutation(pairwise)

    assert pairwise.shape == (6, 3, 3)
    for i in range(3):
        for j in range(3):
            assert torch.equal(pairwise[:, i, j], thresholded_snr_loss(estimates[:, i], targets[:, j]))
    expected = pit.apply_permutation(estimates, shuffles.argsort(dim=1))
    assert torch.equal(pit.apply_permutation(estimates, perm), expected)
