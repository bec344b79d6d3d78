"""Scoring a separator against references: per-file CSV and a JSON summary.

Every file is scored under its best permutation (maximum mean PSNR), and the mixture itself is
scored the same way as a baseline, used as the estimate of every source.
"""

from __future__ import annotations

import csv
import io
import logging
import platform
from pathlib import Path

import numpy as np
import PIL
import scipy
import torch

from surfsep import __version__
from surfsep.data.images import ReferenceSet
from surfsep.metrics import score_images
from surfsep.files import atomic_write_bytes, atomic_write_json
from surfsep.models import AudioSeparator, Separator, load, resolve_model_folder
from surfsep.progress import Progress

logger = logging.getLogger(__name__)

METRIC_NOTES = {
    "psnr": "PSNR in dB, data range 1, estimates clipped to [0, 1], mean over sources, best permutation per mixture",
    "ssim": "SSIM, data range 1, 7x7 uniform window, K1 0.01, K2 0.03, sample covariance (scikit-image defaults)",
}


def evaluate_separator(
    separator: Separator, reference_set: ReferenceSet, steps: int | None = None, seed: int = 0, batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """Separate every mixture of ``reference_set`` and score it; see ``metrics.score_images``."""
    if reference_set.references.shape[1] != separator.sources:
        raise ValueError(
            f"the model separates {separator.sources} sources but {reference_set.folder} has "
            f"{reference_set.references.shape[1]} reference folders"
        )
    # Each mixture's noise depends only on the seed and the mixture, so separating batch by batch
    # gives the estimates of one call.
    batches = []
    with Progress(len(reference_set.mixtures), "separating", unit="images") as progress:
        for start in range(0, len(reference_set.mixtures), batch_size):
            batch = reference_set.mixtures[start : start + batch_size]
            batches.append(separator.separate(batch, steps=steps, seed=seed, batch_size=batch_size))
            progress.update(len(batch))
    estimates = torch.cat(batches)
    scores = score_images(estimates, reference_set.references.squeeze(2))
    scores["estimates"] = estimates
    return scores


def score_mixture_baseline(reference_set: ReferenceSet) -> dict[str, torch.Tensor]:
    """Score the mixture file itself as the estimate of every source."""
    sources = reference_set.references.shape[1]
    as_estimates = reference_set.mixtures.expand(-1, sources, -1, -1)
    return score_images(as_estimates, reference_set.references.squeeze(2))


def summarise(values) -> dict:
    """Return the mean, median, standard deviation and a normal-approximation 95% interval of the finite values.

    ``values`` is any sequence of numbers (a tensor too). One value gives no spread, so no
    interval; no finite value gives no mean either.
    """
    array = np.asarray(values.tolist() if isinstance(values, torch.Tensor) else list(values), dtype=np.float64)
    array = array[np.isfinite(array)]
    count = len(array)
    if count == 0:
        return {"mean": None, "median": None, "std": None, "ci95": None, "count": 0}
    mean = float(array.mean())
    if count == 1:
        return {"mean": mean, "median": mean, "std": None, "ci95": None, "count": 1}
    std = float(array.std(ddof=1))
    half_width = float(1.96 * std / np.sqrt(count))
    return {"mean": mean, "median": float(np.median(array)), "std": std, "ci95": [mean - half_width, mean + half_width],
            "count": count}


def evaluate_model(model: Path, data: Path, out: Path, steps: int | None = None, seed: int = 0,
                   overwrite: bool = False, batch_size: int = 64, perceptual: bool = False,
                   limit: int | None = None) -> dict:
    """Evaluate the model at ``model`` on the split ``data``; writes per_file.csv and summary.json to ``out``.

    ``perceptual`` adds PESQ and STOI (audio only); ``limit`` scores the first mixtures only.
    """
    out = Path(out)
    targets = [out / "per_file.csv", out / "summary.json"]
    existing = [path for path in targets if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass --overwrite to replace it or choose another --out")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")

    separator = load(model)
    if isinstance(separator, AudioSeparator):
        from surfsep.evaluate_audio import evaluate_audio_model

        return evaluate_audio_model(separator, resolve_model_folder(model), Path(data), out, steps, seed,
                                    perceptual=perceptual, limit=limit)
    if perceptual:
        raise ValueError("--perceptual (PESQ and STOI) applies to audio models; this is an image model")
    reference_set = ReferenceSet.open(Path(data), separator.sources)
    if limit is not None:
        reference_set = reference_set.first(limit)
    used_steps = 1 if separator.metadata.get("one_step") else (steps or separator.default_steps)
    logger.info("evaluating %s on %d mixtures of %s with %d sampler step%s", model, len(reference_set), data,
                used_steps, "" if used_steps == 1 else "s")

    scores = evaluate_separator(separator, reference_set, steps=steps, seed=seed, batch_size=batch_size)
    baseline = score_mixture_baseline(reference_set)

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    sources = separator.sources
    writer.writerow(["file", "psnr", "ssim", *[f"psnr_s{k + 1}" for k in range(sources)],
                     "mixture_psnr", "mixture_ssim", "psnr_improvement", "permutation"])
    for index, name in enumerate(reference_set.names):
        writer.writerow([
            name,
            f"{scores['psnr'][index]:.4f}",
            f"{scores['ssim'][index]:.5f}",
            *[f"{value:.4f}" for value in scores["psnr_per_source"][index].tolist()],
            f"{baseline['psnr'][index]:.4f}",
            f"{baseline['ssim'][index]:.5f}",
            f"{scores['psnr'][index] - baseline['psnr'][index]:.4f}",
            " ".join(str(k + 1) for k in scores["perm"][index].tolist()),
        ])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "per_file.csv", buffer.getvalue().encode())

    folder = resolve_model_folder(model)
    summary = {
        "model": str(folder),
        "method": separator.metadata.get("method"),
        "variant": separator.metadata.get("variant"),
        "training": separator.metadata.get("training", {}),
        "data": str(data),
        "mixtures": len(reference_set),
        "sampler": {"solver": separator.metadata["sampler"].get("solver", "euler"), "steps": used_steps},
        "seed": seed,
        "metrics": METRIC_NOTES,
        "psnr": summarise(scores["psnr"]),
        "ssim": summarise(scores["ssim"]),
        "psnr_improvement": summarise(scores["psnr"] - baseline["psnr"]),
        "mixture": {"psnr": summarise(baseline["psnr"]), "ssim": summarise(baseline["ssim"])},
        "versions": {"surfsep": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__, "pillow": PIL.__version__, "python": platform.python_version()},
    }
    atomic_write_json(out / "summary.json", summary)
    logger.info("PSNR %.2f dB (mixture %.2f dB), SSIM %.3f (mixture %.3f); results in %s",
                summary["psnr"]["mean"], summary["mixture"]["psnr"]["mean"], summary["ssim"]["mean"],
                summary["mixture"]["ssim"]["mean"], out)
    return summary
