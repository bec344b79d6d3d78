"""Scoring one benchmark stage: sampler steps chosen on valid/, the score on test/, one record per stage.

Images are scored by PSNR (and SSIM), audio by SI-SDRi (and SI-SDR), with the same code as
``surfsep evaluate`` and sampler noise seed 0 for every method.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np

from surfsep.bench import ARMS, BenchSettings, arm_base, base_config, init_folder, starts_from_mixit
from surfsep.data.audio_sets import detect_modality

PRIMARY = {"image": "psnr", "audio": "si_sdri"}


@functools.lru_cache(maxsize=8)
def reference_set(root: str, split: str, sources: int, limit: int | None):
    """Read the references of one split once per process; images are kept in memory."""
    folder = Path(root) / split
    if detect_modality(folder) == "audio":
        from surfsep.data.audio_sets import AudioReferenceSet

        references = AudioReferenceSet.open(folder, sources)
    else:
        from surfsep.data.images import ReferenceSet

        references = ReferenceSet.open(folder, sources)
    return references.first(limit) if limit else references


def score(separator, references, steps: int) -> dict[str, np.ndarray]:
    """Per-mixture scores of ``separator`` at ``steps`` sampler steps."""
    from surfsep.models import AudioSeparator

    if isinstance(separator, AudioSeparator):
        from surfsep.evaluate_audio import evaluate_audio_separator

        rows = evaluate_audio_separator(separator, references, steps=steps, seed=0, bss=False)
        return {name: np.array([row[name] for row in rows]) for name in ("si_sdri", "si_sdr")}
    from surfsep.evaluate import evaluate_separator

    scores = evaluate_separator(separator, references, steps=steps, seed=0)
    return {name: scores[name].double().numpy() for name in ("psnr", "ssim")}


def means(scores: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(np.nanmean(values)) for name, values in scores.items()}


def rounded(values: np.ndarray) -> list[float | None]:
    return [round(float(value), 4) if math.isfinite(value) else None for value in values]


def choose_steps(separator, settings: BenchSettings, sources: int, primary: str) -> tuple[int, dict[str, float]]:
    """Return the sweep entry with the best mean valid score (the fewest steps on a tie), and every valid mean."""
    if separator.metadata.get("one_step"):
        return 1, {}
    valid = reference_set(settings.data, "valid", sources, settings.valid_limit)
    valid_means = {str(steps): means(score(separator, valid, steps))[primary] for steps in settings.sweep}
    best = max(settings.sweep, key=lambda steps: (valid_means[str(steps)], -steps))
    return best, valid_means


def score_stage(settings: BenchSettings, arm: str, seed: int, run: Path, total_steps: int, own_steps: int,
                final: bool) -> dict:
    """Score the run's student (and, at the final stage, its EMA teacher) as one result record."""
    from surfsep.models import load

    config = base_config(settings)
    separator = load(run)
    modality = "audio" if separator.metadata.get("modality") == "audio" else "image"
    primary = PRIMARY[modality]
    sources = separator.sources
    method, variant = ARMS[arm_base(settings, arm)]
    training = separator.metadata["training"]
    seconds = float(training["seconds"])
    if starts_from_mixit(settings, arm):
        seconds += float(json.loads((init_folder(settings, seed) / "model.json").read_text())["training"]["seconds"])

    steps, valid_means = choose_steps(separator, settings, sources, primary)
    test = reference_set(settings.data, "test", sources, settings.test_limit)
    test_scores = score(separator, test, steps)
    record = {
        "arm": arm, "method": method, "variant": variant, "seed": seed, "modality": modality, "metric": primary,
        "total_steps": total_steps, "own_steps": own_steps, "batch_size": config.batch_size,
        "samples_seen": total_steps * config.batch_size, "training_seconds": round(seconds, 2),
        "threads": settings.threads, "sampler_steps": steps, "valid": valid_means,
        "test": means(test_scores), "test_mixtures": len(test), "final": final,
    }
    if final:
        record["per_file"] = rounded(test_scores[primary])
        if not separator.metadata.get("one_step"):
            record["sweep_test"] = {
                str(count): means(test_scores) if count == steps else means(score(separator, test, count))
                for count in settings.sweep
            }
        if (run / "teacher" / "model.json").exists():
            teacher = load(run / "teacher")
            teacher_scores = score(teacher, test, teacher.default_steps)
            record["teacher"] = {"sampler_steps": teacher.default_steps, "test": means(teacher_scores),
                                 "per_file": rounded(teacher_scores[primary])}
        average_folder = weight_average(run)
        if average_folder is not None:
            average = load(average_folder)
            average_steps, average_valid = choose_steps(average, settings, sources, primary)
            average_scores = score(average, test, average_steps)
            record["average"] = {"model": average_folder.name, "sampler_steps": average_steps, "valid": average_valid,
                                 "test": means(average_scores), "per_file": rounded(average_scores[primary])}
    return record


def weight_average(run: Path) -> Path | None:
    """Return the run's EMA of the student weights: RUN/ema, or an EMA teacher; None for other teachers."""
    if (run / "ema" / "model.json").exists():
        return run / "ema"
    config_path = run / "config.json"
    if (run / "teacher" / "model.json").exists() and config_path.exists():
        config = json.loads(config_path.read_text())
        if config.get("teacher_update", "ema") == "ema" and config.get("teacher_every", 1) == 1:
            return run / "teacher"
    return None
