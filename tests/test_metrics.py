import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from surfsep.metrics import psnr, score_images, ssim


def noisy_pair(seed, size=(28, 28)):
    generator = torch.Generator().manual_seed(seed)
    reference = torch.rand(size, generator=generator, dtype=torch.float64)
    estimate = (reference + 0.1 * torch.randn(size, generator=generator, dtype=torch.float64)).clamp(0, 1)
    return estimate, reference


@pytest.mark.parametrize("seed", range(5))
def test_psnr_matches_scikit_image(seed):
    estimate, reference = noisy_pair(seed)
    expected = peak_signal_noise_ratio(reference.numpy(), estimate.numpy(), data_range=1)
    assert psnr(estimate, reference).item() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("size", [(28, 28), (7, 7), (20, 33)])
def test_ssim_matches_scikit_image(size):
    estimate, reference = noisy_pair(sum(size), size)
    expected = structural_similarity(estimate.numpy(), reference.numpy(), data_range=1)
    assert ssim(estimate, reference).item() == pytest.approx(expected, abs=1e-9)


def test_ssim_rejects_small_images():
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(torch.zeros(5, 5), torch.zeros(5, 5))


def test_psnr_caps_identical_images():
    image = torch.rand(8, 8)
    assert psnr(image, image).item() == pytest.approx(100.0)


def test_score_images_uses_best_permutation_and_clips():
    generator = torch.Generator().manual_seed(0)
    references = torch.rand(4, 2, 10, 10, generator=generator)
    swapped = references[:, [1, 0]].clone()
    swapped[:, :, 0, 0] = 5.0  # out of range: clipped to 1 before scoring

    scores = score_images(swapped, references)

    assert scores["perm"].tolist() == [[1, 0]] * 4
    assert scores["aligned"].max().item() == 1.0
    assert (scores["psnr"] > 20).all()
    assert torch.allclose(scores["ssim"], torch.ones(4, dtype=torch.float64), atol=0.05)
