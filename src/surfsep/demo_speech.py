"""The speech demo: build ``speech``, train MixIT, SURF from the MixIT teacher and a supervised flow,
score them, SURF's EMA teacher and the mixture on the test split by SI-SDRi, and write the
separated WAV files of a few test mixtures.

The budget is counted in training steps, fixed below; the wall time of each run is recorded with
its results. A killed demo resumes where it stopped, like the digits demo.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from surfsep.audio import write_audio
from surfsep.config import TrainConfig
from surfsep.data.audio_sets import AudioReferenceSet
from surfsep.evaluate import evaluate_model, summarise
from surfsep.files import atomic_write_json
from surfsep.models import load
from surfsep.train import train

logger = logging.getLogger(__name__)

# Step budgets at scale 1, each a batch of 8 one-second crops.
SPEECH_DEMO_STEPS = {"mixit": 800, "surf": 1500, "supervised-flow": 1000}
SPEECH_BATCH = 8
SPEECH_SEGMENT_SECONDS = 1.0
# Start-point noise scale relative to the unit-RMS mixture.
SPEECH_SIGMA = 1.0
# The flows' sampler steps are chosen among these by SI-SDRi on the first valid mixtures.
SAMPLER_STEP_CHOICES = (1, 2, 5, 10)
VALID_MIXTURES = 50
EXAMPLE_MIXTURES = 4


def speech_demo_configs(out: Path, scale: float, threads: int | None) -> dict[str, TrainConfig]:
    data = out / "data"
    base = TrainConfig(data=str(data / "train"), sources=2, batch_size=SPEECH_BATCH,
                       segment_seconds=SPEECH_SEGMENT_SECONDS, sigma=SPEECH_SIGMA, threads=threads,
                       checkpoint_every=100, log_every=100)

    def steps(name: str) -> int:
        return max(2, int(round(SPEECH_DEMO_STEPS[name] * scale)))

    return {
        "mixit": replace(base, method="mixit", out=str(out / "mixit"), steps=steps("mixit")),
        "surf": replace(base, method="surf", variant="remixit-flow", init=str(out / "mixit"), out=str(out / "surf"),
                        steps=steps("surf"), teacher_steps=1),
        "supervised-flow": replace(base, method="supervised-flow", out=str(out / "supervised-flow"),
                                   steps=steps("supervised-flow")),
    }


def ensure_speech(data: Path, data_scale: float) -> None:
    from surfsep.data.speech import build_speech

    if (data / "dataset.json").is_file():
        logger.info("using the speech data set in %s", data)
        return
    logger.info("writing the speech data set to %s", data)
    build_speech(data, scale=data_scale)


def write_examples(out: Path, models: dict[str, Path], test: Path, steps: dict[str, int],
                   count: int = EXAMPLE_MIXTURES) -> Path:
    """Write mixture, references and each method's estimates (reference order) of the first test mixtures.

    Each model separates with its ``steps[name]`` sampler steps.
    """
    from surfsep.audio_metrics import score_audio

    reference_set = AudioReferenceSet.open(test, 2).first(count)
    folder = out / "examples"
    separators = {name: load(path) for name, path in models.items()}
    for index, name in enumerate(reference_set.names):
        mixture, references = reference_set.read(index)
        rate = reference_set.mixtures[index].sample_rate
        stem = Path(name).with_suffix("").as_posix()
        write_audio(folder / stem / "mixture.wav", mixture, rate)
        for k, reference in enumerate(references):
            write_audio(folder / stem / f"reference_s{k + 1}.wav", reference, rate)
        for method, separator in separators.items():
            estimates = separator.separate(torch.from_numpy(mixture), rate, steps=steps[method])
            aligned = score_audio(estimates.unsqueeze(0), torch.from_numpy(references).unsqueeze(0),
                                  torch.from_numpy(mixture).unsqueeze(0))["aligned"][0]
            for k, estimate in enumerate(aligned):
                write_audio(folder / stem / f"{method}_s{k + 1}.wav", estimate.numpy(), rate)
    return folder


def format_speech_table(results: dict) -> str:
    """Format the results as a Markdown table; SURF's seconds include the MixIT run it starts from."""
    lines = ["| estimate | SI-SDR dB | SI-SDRi dB | SDR dB | sampler steps | train steps | train s |",
             "|---|---|---|---|---|---|---|"]
    for name, row in results["methods"].items():
        seconds = row.get("training_seconds_with_init", row["training_seconds"])
        sdr = f"{row['sdr']:.2f}" if row.get("sdr") is not None else "-"
        lines.append(f"| {name} | {row['si_sdr']:.2f} | {row['si_sdri']:.2f} | {sdr} | {row.get('sampler_steps', '-')} "
                     f"| {row['training_steps']} | {seconds:.0f} |")
    return "\n".join(lines)


def run_speech_demo(out: Path, scale: float = 1.0, threads: int | None = None, data_scale: float = 1.0) -> dict:
    """Run the whole speech demo into ``out``; returns the results also written to ``out/results.json``."""
    if scale <= 0:
        raise ValueError(f"--scale must be positive, got {scale}")
    out = Path(out)
    if threads:
        torch.set_num_threads(threads)
    ensure_speech(out / "data", data_scale)

    configs = speech_demo_configs(out, scale, threads)
    for name, config in configs.items():
        logger.info("speech demo: training %s for %d steps", name, config.steps)
        train(config)

    test = out / "data" / "test"
    results = {"data": str(test), "scale": scale, "methods": {}, "valid_sampler_sweep": {}}
    evaluated = {name: Path(config.out) for name, config in configs.items()}
    evaluated["surf-teacher"] = Path(configs["surf"].out) / "teacher"
    for name, folder in evaluated.items():
        steps = None
        if not load(folder).metadata.get("one_step") and name != "surf-teacher":
            sweep = sampler_sweep(folder, out / "data" / "valid")
            results["valid_sampler_sweep"][name] = sweep
            steps = max(sweep, key=sweep.get)
            logger.info("speech demo: %s separates with %d sampler steps, the best on the valid split", name, steps)
        summary = evaluate_model(folder, test, folder / "eval", steps=steps, overwrite=True)
        if "mixture" not in results["methods"]:
            results["methods"]["mixture"] = {"si_sdr": summary["mixture"]["si_sdr"]["mean"], "si_sdri": 0.0,
                                             "sdr": None, "training_steps": 0, "training_seconds": 0.0}
        results["methods"][name] = {
            "si_sdr": summary["si_sdr"]["mean"],
            "si_sdri": summary["si_sdri"]["mean"],
            "si_sdri_ci95": summary["si_sdri"]["ci95"],
            "sdr": summary["sdr"]["mean"],
            "sampler_steps": summary["sampler"]["steps"],
            "training_steps": summary["training"]["steps"],
            "training_seconds": summary["training"]["seconds"],
        }
    for name in ("surf", "surf-teacher"):
        row = results["methods"][name]
        row["training_seconds_with_init"] = row["training_seconds"] + results["methods"]["mixit"]["training_seconds"]
    results["mixtures"] = summary["mixtures"]
    results["paired_surf_minus_mixit"] = paired_difference(evaluated["surf"] / "eval", evaluated["mixit"] / "eval")

    models = {name: Path(config.out) for name, config in configs.items()}
    chosen_steps = {name: results["methods"][name]["sampler_steps"] for name in models}
    results["examples"] = str(write_examples(out, models, test, chosen_steps))
    atomic_write_json(out / "results.json", results)
    results["table"] = format_speech_table(results)
    return results


def sampler_sweep(model: Path, valid: Path) -> dict[int, float]:
    """Mean SI-SDRi on the first valid mixtures for each of ``SAMPLER_STEP_CHOICES`` sampler steps."""
    from surfsep.evaluate_audio import evaluate_audio_separator

    separator = load(model)
    reference_set = AudioReferenceSet.open(valid, separator.sources).first(VALID_MIXTURES)
    sweep = {}
    for steps in SAMPLER_STEP_CHOICES:
        rows = evaluate_audio_separator(separator, reference_set, steps=steps, bss=False)
        sweep[steps] = float(np.nanmean([row["si_sdri"] for row in rows]))
    return sweep


def paired_difference(first: Path, second: Path) -> dict:
    """Mean and standard error of the per-file SI-SDRi difference between two evaluations of one split."""
    import csv

    def read(folder: Path) -> dict[str, float]:
        with open(folder / "per_file.csv", newline="") as stream:
            return {row["file"]: float(row["si_sdri"]) for row in csv.DictReader(stream)}

    a, b = read(first), read(second)
    summary = summarise([a[name] - b[name] for name in a if name in b])
    error = None if summary["std"] is None else summary["std"] / np.sqrt(summary["count"])
    return {"mean": summary["mean"], "standard_error": error, "count": summary["count"]}
