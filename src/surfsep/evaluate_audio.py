"""Scoring an audio separator against references: SI-SDR(i), BSS-Eval and optional PESQ and STOI.

Every file is separated whole (long files in chunks), at the rate of its files, and scored under
the SI-SDR permutation of ``audio_metrics.score_audio``. The results go to ``per_file.csv`` and a
``summary.json`` that states the metric conventions.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import logging
import math
import platform
from pathlib import Path

import numpy as np
import scipy
import torch

from surfsep import __version__
from surfsep.audio_metrics import bss_eval, metric_notes, perceptual_available, perceptual_scores, score_audio
from surfsep.data.audio_sets import AudioReferenceSet
from surfsep.evaluate import summarise
from surfsep.files import atomic_write_bytes, atomic_write_json
from surfsep.models import AudioSeparator
from surfsep.progress import Progress

logger = logging.getLogger(__name__)

AUDIO_PACKAGES = ("soundfile", "soxr", "fast_bss_eval")
SUMMARY_METRICS = ("si_sdr", "si_sdri", "sdr", "sir", "sar", "pesq", "stoi")


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def score_file(separator: AudioSeparator, reference_set: AudioReferenceSet, index: int, steps: int | None,
               seed: int, bss: bool, perceptual: bool) -> tuple[dict, torch.Tensor]:
    """Separate mixture ``index`` and score it; returns a flat dict of scores and the aligned estimates (K, L)."""
    mixture, references = reference_set.read(index)
    rate = reference_set.mixtures[index].sample_rate
    estimates = separator.separate(torch.from_numpy(mixture), rate, steps=steps, seed=seed)
    mixture_tensor = torch.from_numpy(mixture)
    reference_tensor = torch.from_numpy(references)

    scores = score_audio(estimates.unsqueeze(0), reference_tensor.unsqueeze(0), mixture_tensor.unsqueeze(0))
    row = {
        "si_sdr": float(scores["si_sdr"][0]),
        "si_sdri": float(scores["si_sdri"][0]),
        "mixture_si_sdr": float((scores["si_sdr"][0] - scores["si_sdri"][0])),
        "si_sdr_per_source": scores["si_sdr_per_source"][0].tolist(),
        "permutation": scores["perm"][0].tolist(),
        "silent_references": int(scores["silent_references"][0]),
        "under_separated": int(scores["under_separated"][0]),
        "over_separated": int(scores["over_separated"][0]),
    }
    aligned = scores["aligned"][0]
    if bss:
        try:
            bss_scores = bss_eval(estimates, reference_tensor, mixture_tensor)
            for name in ("sdr", "sir", "sar"):
                row[name] = float(torch.nanmean(bss_scores[name]))
        except ValueError as error:
            logger.warning("BSS-Eval skipped for %s: %s", reference_set.names[index], error)
            row.update(sdr=math.nan, sir=math.nan, sar=math.nan)
    if perceptual:
        values = [perceptual_scores(aligned[k], reference_tensor[k], rate) for k in range(aligned.shape[0])
                  if math.isfinite(row["si_sdr_per_source"][k])]
        row["pesq"] = float(np.mean([next(v for key, v in value.items() if key.startswith("pesq")) for value in values]))
        row["stoi"] = float(np.mean([value["stoi"] for value in values]))
    return row, aligned


def evaluate_audio_separator(separator: AudioSeparator, reference_set: AudioReferenceSet, steps: int | None = None,
                             seed: int = 0, bss: bool = True, perceptual: bool = False) -> list[dict]:
    """Score every mixture of ``reference_set``; returns one row of scores per file, in file order."""
    if reference_set.sources != separator.sources:
        raise ValueError(
            f"the model separates {separator.sources} sources but {reference_set.folder} has "
            f"{reference_set.sources} reference folders"
        )
    rows = []
    with Progress(len(reference_set), "scoring", unit="files") as progress:
        for index in range(len(reference_set)):
            row, _ = score_file(separator, reference_set, index, steps, seed, bss, perceptual)
            rows.append({"file": reference_set.names[index], **row})
            progress.update()
    return rows


def write_per_file_csv(path: Path, rows: list[dict], sources: int) -> None:
    columns = ["file", "si_sdr", "si_sdri", *[f"si_sdr_s{k + 1}" for k in range(sources)], "mixture_si_sdr"]
    columns += [name for name in ("sdr", "sir", "sar", "pesq", "stoi") if name in rows[0]]
    columns += ["permutation", "silent_references", "under_separated", "over_separated"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        values = []
        for column in columns:
            if column.startswith("si_sdr_s"):
                value = row["si_sdr_per_source"][int(column[len("si_sdr_s"):]) - 1]
            elif column == "permutation":
                value = " ".join(str(k + 1) for k in row["permutation"])
            else:
                value = row[column]
            values.append(f"{value:.4f}" if isinstance(value, float) else value)
        writer.writerow(values)
    atomic_write_bytes(path, buffer.getvalue().encode())


def evaluate_audio_model(separator: AudioSeparator, model_folder: Path, data: Path, out: Path, steps: int | None,
                         seed: int, perceptual: bool = False, limit: int | None = None) -> dict:
    """Evaluate an audio model on the split ``data``; writes per_file.csv and summary.json to ``out``."""
    if perceptual and not perceptual_available():
        raise ValueError("--perceptual needs the pesq and pystoi packages: pip install surfsep[quality]")
    reference_set = AudioReferenceSet.open(Path(data), separator.sources)
    if limit is not None:
        reference_set = reference_set.first(limit)
    used_steps = separator.resolve_sampler(steps, None)[0]
    logger.info("evaluating %s on %d mixture%s of %s with %d sampler step%s", model_folder, len(reference_set),
                "" if len(reference_set) == 1 else "s", data, used_steps, "" if used_steps == 1 else "s")

    rows = evaluate_audio_separator(separator, reference_set, steps=steps, seed=seed, perceptual=perceptual)

    summary = {
        "model": str(model_folder),
        "method": separator.metadata.get("method"),
        "variant": separator.metadata.get("variant"),
        "training": separator.metadata.get("training", {}),
        "data": str(data),
        "mixtures": len(reference_set),
        "sample_rate": separator.sample_rate,
        "sampler": {"solver": separator.metadata["sampler"].get("solver", "euler"), "steps": used_steps},
        "seed": seed,
        "metrics": metric_notes(),
        **{name: summarise([row[name] for row in rows]) for name in SUMMARY_METRICS if name in rows[0]},
        "mixture": {"si_sdr": summarise([row["mixture_si_sdr"] for row in rows])},
        "silent_references": sum(row["silent_references"] for row in rows),
        "under_separated": sum(row["under_separated"] for row in rows),
        "over_separated": sum(row["over_separated"] for row in rows),
        "versions": {"surfsep": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__, **{name: package_version(name) for name in AUDIO_PACKAGES},
                     "python": platform.python_version()},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_per_file_csv(out / "per_file.csv", rows, separator.sources)
    atomic_write_json(out / "summary.json", summary)
    logger.info("SI-SDR %.2f dB, SI-SDRi %.2f dB (mixture %.2f dB); results in %s", summary["si_sdr"]["mean"],
                summary["si_sdri"]["mean"], summary["mixture"]["si_sdr"]["mean"], out)
    return summary
