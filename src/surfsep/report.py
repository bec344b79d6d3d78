"""``surfsep report``: one self-contained HTML page for a training run, a benchmark or a demo.

The page contains the metrics table, the training curves, examples of test mixtures separated by each
model (image tiles, or audio players with spectrograms), and the configuration and versions that
produced them. Pictures and sounds are embedded as data URIs, so the page opens without a network
and can be mailed or archived as one file.
"""

from __future__ import annotations

import html
import json
import logging
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from surfsep import __version__
from surfsep.files import atomic_write_bytes
from surfsep.models import ModelError, load
from surfsep.report_media import (
    SPECTROGRAM_RANGE_DB, audio_clip, common_gain, decibel_spectrogram, figure_png, image_tile, spectrogram_image,
)

logger = logging.getLogger(__name__)

GENERATOR = "surfsep report"
DEFAULT_EXAMPLES = {"image": 8, "audio": 4}
# Audio examples are cut to their first seconds, which keeps the page small for long recordings.
CLIP_SECONDS = 30.0
METRIC_NAMES = {"psnr": "PSNR", "si_sdri": "SI-SDRi"}


class ReportError(ValueError):
    """An error about a folder that cannot be reported on, with the reason and what to do."""


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class Model:
    """A model whose estimates the report shows, at the sampler steps its results were scored with."""
    name: str
    folder: Path
    steps: int | None = None


@dataclass
class Report:
    title: str
    source: Path
    notes: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)
    examples_html: str = ""
    examples_note: str = ""
    configuration: list[tuple[str, str]] = field(default_factory=list)
    versions: list[tuple[str, str]] = field(default_factory=list)


def folder_kind(folder: Path) -> str:
    """Return 'bench', 'demo' or 'run' for a folder written by surfsep bench, demo or train."""
    if (folder / "bench.json").is_file():
        return "bench"
    if (folder / "results.json").is_file() and (folder / "mixit" / "model.json").is_file():
        return "demo"
    if (folder / "config.json").is_file() and (folder / "model.json").is_file():
        return "run"
    raise ReportError(
        f"{folder} is not a run, benchmark or demo folder: it has no model.json and config.json (surfsep train), "
        f"bench.json (surfsep bench) or results.json with runs (surfsep demo)")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ReportError(f"cannot read {path}: {error}") from error


def read_metrics(run: Path) -> list[dict]:
    """Return the status lines of a run's metrics.jsonl, leaving out a line cut short by a killed run."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def training_figure(runs: dict[str, Path]) -> str | None:
    """Plot each run's training loss, and its validation scores where it logged any, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    histories = {name: read_metrics(folder) for name, folder in runs.items()}
    histories = {name: records for name, records in histories.items() if any("loss" in r for r in records)}
    if not histories:
        return None
    valid_keys = sorted({key for records in histories.values() for r in records for key in r
                         if key.startswith("valid_") and key != "valid_mixtures"})
    columns = 2 if valid_keys else 1
    figure, axes = pyplot.subplots(len(histories), columns, figsize=(4.2 * columns, 2.4 * len(histories)), dpi=100,
                                   squeeze=False)
    for row, (name, records) in enumerate(histories.items()):
        losses = [r for r in records if "loss" in r]
        axes[row][0].plot([r["step"] for r in losses], [r["loss"] for r in losses], linewidth=1)
        axes[row][0].set_title(f"{name}: training loss", fontsize=9)
        if valid_keys:
            for key in valid_keys:
                points = [r for r in records if key in r]
                if points:
                    axes[row][1].plot([r["step"] for r in points], [r[key] for r in points], marker=".",
                                      label=key.removeprefix("valid_").replace("_", " "))
            axes[row][1].set_title(f"{name}: validation", fontsize=9)
            if axes[row][1].lines:
                axes[row][1].legend(fontsize=7)
        for axis in axes[row]:
            axis.grid(alpha=0.3)
            axis.tick_params(labelsize=7)
    for axis in axes[-1]:
        axis.set_xlabel("training step", fontsize=8)
    figure.tight_layout()
    return figure_png(figure)


# Examples.

def open_models(models: list[Model]) -> list[tuple[Model, object]]:
    separators = []
    for model in models:
        try:
            separators.append((model, load(model.folder)))
        except (ModelError, OSError) as error:
            raise ReportError(f"failed to load the model of {model.name} from {model.folder}: {error}") from error
    kinds = {separator.metadata.get("modality", "image") for _, separator in separators}
    if len(kinds) > 1:
        raise ReportError("the models mix images and audio; a report shows one kind")
    return separators


def has_references(split: Path) -> bool:
    return (split / "mix").is_dir() and (split / "s1").is_dir()


def selected_indices(names: list[str], selected: list[str] | None, count: int, split: Path) -> list[int]:
    """Return the indices of the ``selected`` mixture names, or of the first ``count`` mixtures without any."""
    if not selected:
        return list(range(min(count, len(names))))
    position = {name: index for index, name in enumerate(names)}
    missing = [name for name in selected if name not in position]
    if missing:
        raise ReportError(f"{split} has no mixture named {', '.join(missing)}; names are paths under the mixture "
                          f"folder, such as {names[0]}")
    return [position[name] for name in selected]


def image_examples(models: list[Model], split: Path, count: int, seed: int,
                   selected: list[str] | None = None) -> tuple[str, dict[str, float]]:
    """Return the HTML grid of mixtures, references and each model's estimates, and each model's mean PSNR.

    Without references (a folder of mixtures alone) the grid shows the estimates in the model's
    output order, and there are no scores.
    """
    from surfsep.data.images import MixtureSet, ReferenceSet
    from surfsep.evaluate import evaluate_separator

    separators = open_models(models)
    sources = separators[0][1].sources
    scored = {}
    if has_references(split):
        full = ReferenceSet.open(split, sources)
        indices = selected_indices(full.names, selected, count, split)
        references = ReferenceSet(folder=full.folder, names=[full.names[i] for i in indices],
                                  mixtures=full.mixtures[indices], references=full.references[indices])
        names, mixtures = references.names, references.mixtures
        for model, separator in separators:
            logger.info("report: separating %d mixtures of %s with %s", len(names), split, model.name)
            scored[model.name] = evaluate_separator(separator, references, steps=model.steps, seed=seed)
    else:
        references = None
        mixture_set = MixtureSet.open(split)
        indices = selected_indices(mixture_set.names, selected, count, split)
        names, mixtures = [mixture_set.names[i] for i in indices], mixture_set.mixtures[indices]
        for model, separator in separators:
            logger.info("report: separating %d mixtures of %s with %s", len(names), split, model.name)
            scored[model.name] = {"aligned": separator.separate(mixtures, steps=model.steps, seed=seed)}

    header = ["mixture", *(["references"] if references else []), *[model.name for model, _ in separators]]
    rows = []
    for index, name in enumerate(names):
        cells = [tiles([mixtures[index, 0]])]
        if references:
            cells.append(tiles(list(references.references[index, :, 0])))
        for model, _ in separators:
            scores = scored[model.name]
            cell = tiles(list(scores["aligned"][index]))
            if "psnr" in scores:
                cell += f'<div class="score">PSNR {float(scores["psnr"][index]):.1f} dB</div>'
            cells.append(cell)
        rows.append(f'<tr><th class="name">{html.escape(name)}</th>' + "".join(f"<td>{cell}</td>" for cell in cells)
                    + "</tr>")
    head = "<tr><th>file</th>" + "".join(f"<th>{html.escape(text)}</th>" for text in header) + "</tr>"
    grid = f'<table class="grid">{head}{"".join(rows)}</table>'
    means = {name: float(scores["psnr"].mean()) for name, scores in scored.items() if "psnr" in scores}
    return grid, means


def tiles(images: list[torch.Tensor]) -> str:
    return "".join(f'<img class="tile" alt="" src="{image_tile(image)}">' for image in images)


def read_clips(split: Path, sources: int, count: int,
               selected: list[str] | None) -> list[tuple[str, np.ndarray, np.ndarray | None, int]]:
    """Return (name, mixture, references or None, rate) of the chosen mixtures, each cut to CLIP_SECONDS."""
    from surfsep.audio import read_audio
    from surfsep.data.audio_sets import AudioMixtureSet, AudioReferenceSet

    clips = []
    if has_references(split):
        references = AudioReferenceSet.open(split, sources)
        for index in selected_indices(references.names, selected, count, split):
            name = references.names[index]
            mixture, reference = references.read(index)
            rate = references.mixtures[index].sample_rate
            frames = int(CLIP_SECONDS * rate)
            clips.append((name, mixture[:frames], reference[:, :frames], rate))
    else:
        mixture_set = AudioMixtureSet.open(split)
        for index in selected_indices(mixture_set.names, selected, count, split):
            entry, name = mixture_set.entries[index], mixture_set.names[index]
            mixture, rate = read_audio(entry.path, frames=min(entry.frames, int(CLIP_SECONDS * entry.sample_rate)))
            clips.append((name, mixture[0], None, rate))
    return clips


def audio_examples(models: list[Model], split: Path, count: int, seed: int,
                   selected: list[str] | None = None) -> tuple[str, dict[str, float]]:
    """Return the HTML players and spectrograms of the selected mixtures, and each model's mean SI-SDRi on them.

    Without references the estimates are in the model's output order, and there are no scores.
    """
    from surfsep.audio_metrics import score_audio

    separators = open_models(models)
    sources = separators[0][1].sources
    clips = read_clips(split, sources, count, selected)
    logger.info("report: separating %d mixtures of %s with %s", len(clips), split,
                ", ".join(model.name for model, _ in separators))
    blocks, improvements = [], {model.name: [] for model, _ in separators}
    for name, mixture, reference, rate in clips:
        rows = [("mixture", [mixture], None)]
        if reference is not None:
            rows.append(("references", list(reference), None))
        for model, separator in separators:
            estimates = separator.separate(torch.from_numpy(mixture), rate, steps=model.steps, seed=seed)
            if reference is None:
                rows.append((model.name, [signal.numpy() for signal in estimates], None))
                continue
            scores = score_audio(estimates.unsqueeze(0), torch.from_numpy(reference).unsqueeze(0),
                                 torch.from_numpy(mixture).unsqueeze(0))
            improvement = float(scores["si_sdri"][0])
            improvements[model.name].append(improvement)
            per_source = [float(value) for value in scores["si_sdri_per_source"][0]]
            rows.append((model.name, [signal.numpy() for signal in scores["aligned"][0]], (improvement, per_source)))
        blocks.append(audio_block(name, rate, rows, sources))
    means = {name: float(np.nanmean(values)) for name, values in improvements.items() if values}
    return "".join(blocks), means


def audio_block(name: str, rate: int, rows: list, sources: int) -> str:
    """Return the HTML of one mixture: players and spectrograms of the mixture, the references and each model's estimates."""
    signals = [signal for _, group, _ in rows for signal in group]
    gain = common_gain(signals)
    top_db = max(float(decibel_spectrogram(signal * gain, rate).max()) for signal in signals)
    seconds = len(signals[0]) / rate
    lines = [f'<section class="example"><h3>{html.escape(name)}</h3><table class="audio">',
             "<tr><th></th>" + "".join(f"<th>source {k + 1}</th>" for k in range(sources)) + "</tr>"]
    for label, group, score in rows:
        caption = html.escape(label)
        if score is not None:
            caption += f'<div class="score">SI-SDRi {score[0]:.1f} dB</div>'
        cells = []
        for k, signal in enumerate(group):
            picture = spectrogram_image(decibel_spectrogram(signal * gain, rate), top_db, seconds)
            detail = "" if score is None else f'<div class="score">{score[1][k]:.1f} dB</div>'
            cells.append(f'<td><audio controls preload="auto" src="{audio_clip(signal, rate, gain)}"></audio>'
                         f'<img class="spectrogram" alt="spectrogram" src="{picture}">{detail}</td>')
        span = f' colspan="{sources}"' if len(group) == 1 and sources > 1 else ""
        if span:
            cells = [cells[0].replace("<td>", f"<td{span}>", 1)]
        lines.append(f"<tr><th>{caption}</th>{''.join(cells)}</tr>")
    lines.append("</table></section>")
    return "".join(lines)


def add_examples(report: Report, models: list[Model], split: Path, count: int | None, seed: int,
                 selected: list[str] | None = None) -> dict[str, float]:
    """Separate the selected mixtures of ``split`` with every model into the report; returns each model's mean score.

    ``split`` is a split folder with references, or a folder of mixtures alone (then no scores).
    """
    if not models:
        return {}
    if not split.is_dir():
        raise ReportError(f"{split} is not a folder; pass --data with a split folder (mix/ and s1/ ... sK/) or a "
                          f"folder of mixtures")
    modality = read_json(models[0].folder / "model.json").get("modality", "image")
    count = count or DEFAULT_EXAMPLES[modality]
    scored = has_references(split)
    if modality == "audio":
        report.examples_html, means = audio_examples(models, split, count, seed, selected)
        unit = ("SI-SDRi (dB), mean over the sources; below each estimate its own SI-SDRi. Spectrograms: 0 Hz at "
                f"the bottom to half the sample rate, {SPECTROGRAM_RANGE_DB:.0f} dB of range, every clip of a "
                f"mixture at one gain; clips stop after {CLIP_SECONDS:.0f} s")
    else:
        report.examples_html, means = image_examples(models, split, count, seed, selected)
        unit = "PSNR (dB), mean over the sources"
    steps = ", ".join(f"{model.name} {model.steps or 'its default'}" for model in models)
    order = f"estimates in reference order; score {unit}" if scored else (
        "no references, so no scores, and the estimates are in each model's output order")
    shown = f"The mixtures {', '.join(selected)}" if selected else f"The first mixtures (up to {count})"
    report.examples_note = (f"{shown} of {split}, {order}. Sampler steps: {steps}; "
                            f"sampler noise seed {seed}.")
    return means


# The three kinds of folder.

def run_report(folder: Path, data: Path | None, count: int | None, steps: int | None, seed: int,
               selected: list[str] | None) -> Report:
    config = read_json(folder / "config.json")
    metadata = read_json(folder / "model.json")
    report = Report(title=f"Training run {folder.name}: {metadata.get('method', '?')}", source=folder)
    training = metadata.get("training", {})
    report.notes.append(
        f"{metadata.get('method')} ({metadata.get('modality')}, {metadata.get('sources')} sources), "
        f"{training.get('steps', '?')} steps of batch {training.get('batch_size', '?')}, "
        f"{training.get('mixtures_seen', '?')} mixtures seen, {training.get('seconds', 0.0) / 60:.1f} minutes of training.")

    history = read_metrics(folder)
    validations = [record for record in history if "valid_mixtures" in record]
    split = data or (Path(config["valid"]) if config.get("valid") else None)
    rows = []
    if validations:
        last = validations[-1]
        for key, value in last.items():
            if key.startswith("valid_") and key != "valid_mixtures":
                rows.append([f"last validation ({key.removeprefix('valid_').replace('_', ' ')}), step {last['step']}",
                             f"{value:.2f}", f"{last['valid_mixtures']} mixtures of {config.get('valid')}"])
    models = [Model("student", folder, steps)]
    if (folder / "teacher" / "model.json").is_file():
        models.append(Model("EMA teacher", folder / "teacher", steps))
    if split is None:
        report.notes.append("No examples: the run has no validation split; pass --data with a split folder (mix/ and "
                            "s1/ ... sK/) or a folder of mixtures.")
    else:
        means = add_examples(report, models, Path(split), count, seed, selected)
        metric = "PSNR" if metadata.get("modality", "image") == "image" else "SI-SDRi"
        for name, mean in means.items():
            rows.append([f"{name}, {metric} on the examples", f"{mean:.2f}", f"mean over the mixtures shown below"])
    if rows:
        report.tables.append(Table("Scores (dB)", ["what", "dB", "over"], rows))
    figure = training_figure({folder.name: folder})
    if figure:
        report.figures.append(("Training loss and validation scores by step", figure))
    report.configuration.append(("config.json", json.dumps(config, indent=1)))
    report.configuration.append(("model.json", json.dumps(metadata, indent=1)))
    report.versions = model_versions({"student": metadata})
    return report


def demo_report(folder: Path, count: int | None, seed: int, selected: list[str] | None) -> Report:
    results = read_json(folder / "results.json")
    methods = results.get("methods", {})
    audio = any("si_sdri" in row for row in methods.values())
    report = Report(title=f"Demo {folder.name}: MixIT, SURF and a supervised flow on built-in "
                          f"{'speech' if audio else 'digits'}", source=folder)

    columns = ["si_sdr", "si_sdri", "sdr"] if audio else ["psnr", "ssim"]
    names = {"si_sdr": "SI-SDR dB", "si_sdri": "SI-SDRi dB", "sdr": "SDR dB", "psnr": "PSNR dB", "ssim": "SSIM"}
    rows = []
    for name, row in methods.items():
        seconds = row.get("training_seconds_with_init", row.get("training_seconds", 0.0))
        values = ["" if row.get(key) is None else f"{row[key]:.{3 if key == 'ssim' else 2}f}" for key in columns]
        rows.append([name, *values, str(row.get("sampler_steps", "")), str(row.get("training_steps", "")),
                     f"{seconds:.0f}"])
    report.tables.append(Table(
        f"Test scores on {results.get('mixtures', '?')} mixtures of {results.get('data')}; SURF's seconds include "
        f"the MixIT run it starts from", ["estimate", *[names[key] for key in columns], "sampler steps", "train steps",
                                          "train seconds"], rows))

    runs = {name: folder / name for name in ("mixit", "surf", "supervised-flow") if (folder / name).is_dir()}
    figure = training_figure(runs)
    if figure:
        report.figures.append(("Training loss by step", figure))
    models = [Model(name, path, methods.get(name, {}).get("sampler_steps")) for name, path in runs.items()
              if (path / "model.json").is_file()]
    # The demo records its test split as the path it was given, which may be relative to another folder.
    split = Path(results.get("data", folder / "data" / "test"))
    if not split.is_dir():
        split = folder / "data" / "test"
    add_examples(report, models, split, count, seed, selected)

    for name, path in runs.items():
        if (path / "config.json").is_file():
            report.configuration.append((f"{name}/config.json", (path / "config.json").read_text()))
    report.versions = model_versions({name: read_json(path / "model.json") for name, path in runs.items()
                                      if (path / "model.json").is_file()})
    return report


def bench_report(folder: Path, count: int | None, seed: int, selected: list[str] | None) -> Report:
    from surfsep.bench import read_bench, run_folder

    settings = read_bench(folder)
    if not (folder / "results.json").is_file():
        raise ReportError(f"{folder} has no results.json yet; run `surfsep bench` there until a stage is scored")
    results = read_json(folder / "results.json")
    report = Report(title=f"Benchmark {folder.name}", source=folder)
    table = folder / "results.md"
    if table.is_file():
        report.tables.extend(markdown_tables(table.read_text(), report.notes))
    curve = folder / "curve.png"
    if curve.is_file():
        from surfsep.report_media import data_uri

        report.figures.append(("Test score against training mixtures seen (curve.png)",
                               data_uri("image/png", curve.read_bytes())))
    first_seed = settings.seeds[0]
    runs = {arm: run_folder(settings, arm, first_seed) for arm in settings.methods}
    present = {arm: path for arm, path in runs.items() if (path / "model.json").is_file()}
    figure = training_figure(present)
    if figure:
        report.figures.append((f"Training loss by step, seed {first_seed}", figure))

    finals = {record["arm"]: record for record in results.get("records", [])
              if record["seed"] == first_seed and record.get("final")}
    models = []
    for arm, path in present.items():
        trained = read_json(path / "model.json").get("training", {}).get("steps")
        if arm not in finals:
            report.notes.append(f"{arm}: its run has not reached the full budget (step {trained}); not shown.")
            continue
        models.append(Model(arm, path, finals[arm].get("sampler_steps")))
    missing = [arm for arm in settings.methods if arm not in present]
    if missing:
        report.notes.append(f"No run folder, so no examples, for: {', '.join(missing)} (the benchmark keeps "
                            f"each stage's scores in results/, and the models only in runs/).")
    split = Path(settings.data) / "test"
    if models and not split.is_dir():
        report.notes.append(f"No examples: the benchmark's test split {split} is not found from here. The benchmark "
                            f"records its --data as given, so write the report from the folder it ran in.")
    else:
        add_examples(report, models, split, count, seed, selected)
    report.configuration.append(("bench.json", (folder / "bench.json").read_text()))
    report.versions = model_versions({arm: read_json(path / "model.json") for arm, path in present.items()})
    return report


def markdown_tables(text: str, notes: list[str]) -> list[Table]:
    """Split the Markdown of results.md into tables (each captioned by the paragraph before it)."""
    tables, caption, rows = [], "", []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= {"-", ":"} for cell in cells):
                rows.append(cells)
            continue
        if rows:
            tables.append(Table(caption, rows[0], rows[1:]))
            caption, rows = "", []
        if line.strip():
            if caption:
                notes.append(caption)
            caption = line.strip()
    if caption:
        notes.append(caption)
    return tables


def model_versions(metadata: dict[str, dict]) -> list[tuple[str, str]]:
    """Return the surfsep version each model was trained with, and the versions of the software writing the report."""
    versions = [(f"{name}: trained with surfsep", str(meta.get("surfsep_version", "unknown")))
                for name, meta in metadata.items()]
    versions += [
        ("report written by surfsep", __version__),
        ("Python", platform.python_version()),
        ("PyTorch", torch.__version__),
        ("NumPy", np.__version__),
        ("platform", platform.platform()),
        ("written at", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("command", " ".join(["surfsep", *sys.argv[1:]]) if Path(sys.argv[0]).name in ("surfsep", "__main__.py")
         else "Python API"),
    ]
    return versions


# The page.

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1em; margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
caption { caption-side: top; text-align: left; padding-bottom: 0.4em; color: #444; }
.grid td, .audio td { text-align: center; }
.tile { image-rendering: pixelated; margin: 1px; }
.spectrogram { display: block; margin-top: 4px; max-width: 100%; }
audio { width: 240px; }
.score { font-size: 0.85em; color: #555; }
.name { font-weight: normal; font-family: monospace; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
figure { margin: 1em 0; } figcaption { color: #444; font-size: 0.9em; }
figure img { max-width: 100%; }
"""


def render(report: Report) -> str:
    escape = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta name="generator" content="{GENERATOR} {__version__}">', '<link rel="icon" href="data:,">',
        f"<title>{escape(report.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(report.title)}</h1>", f"<p>From <code>{escape(str(report.source))}</code>.</p>",
    ]
    parts.append("<h2>Results</h2>")
    for table in report.tables:
        parts.append(f"<table><caption>{escape(table.caption)}</caption><tr>"
                     + "".join(f"<th>{escape(cell)}</th>" for cell in table.header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows]
        parts.append("</table>")
    parts += [f"<p>{escape(note)}</p>" for note in report.notes]
    if report.figures:
        parts.append("<h2>Training curves</h2>")
        parts += [f'<figure><img alt="{escape(caption)}" src="{uri}"><figcaption>{escape(caption)}</figcaption></figure>'
                  for caption, uri in report.figures]
    if report.examples_html:
        parts += ["<h2>Examples</h2>", f"<p>{escape(report.examples_note)}</p>", report.examples_html]
    parts.append("<h2>Configuration and versions</h2><table>")
    parts += [f"<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>" for name, value in report.versions]
    parts.append("</table>")
    parts += [f"<details><summary>{escape(name)}</summary><pre>{escape(text)}</pre></details>"
              for name, text in report.configuration]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def check_target(path: Path) -> None:
    """Raise ReportError if ``path`` is a folder, or a file that is not a report written by surfsep."""
    if path.is_dir():
        raise ReportError(f"{path} is a folder; give --out a file name such as report.html")
    if path.exists():
        with path.open("rb") as handle:
            start = handle.read(512)
        if f'name="generator" content="{GENERATOR}'.encode() not in start:
            raise ReportError(f"{path} exists and is not a report written by surfsep; choose another --out")


def write_report(source: Path, out: Path | None = None, data: Path | None = None, examples: int | None = None,
                 steps: int | None = None, seed: int = 0, mixtures: list[str] | None = None) -> Path:
    """Write the report of the run, benchmark or demo folder ``source``; returns the HTML file's path.

    ``out`` defaults to ``source/report.html``. ``data`` is the split to take examples from; by
    default a benchmark or demo uses its test split and a run its validation split. ``examples`` is
    the number of mixtures to show (default 8 images or 4 recordings), and ``mixtures`` names them
    instead (paths under the mixture folder). ``steps`` overrides a run's
    sampler steps.
    """
    source = Path(source)
    if not source.exists():
        raise ReportError(f"{source} not found; give a run, benchmark or demo folder")
    if not source.is_dir():
        raise ReportError(f"{source} is a file; give a run, benchmark or demo folder")
    if examples is not None and mixtures:
        raise ReportError("give --examples or --mixtures, not both")
    if examples is not None and examples < 1:
        raise ReportError(f"--examples must be at least 1, got {examples}")
    if steps is not None and steps < 1:
        raise ReportError(f"--steps must be at least 1, got {steps}")
    out = Path(out) if out else source / "report.html"
    check_target(out)
    kind = folder_kind(source)
    if kind != "run" and (data is not None or steps is not None):
        raise ReportError(f"--data and --steps apply to a training run; {source} is a {kind}, whose test split and "
                          f"sampler steps come from its results")
    if kind == "run":
        report = run_report(source, data, examples, steps, seed, mixtures)
    elif kind == "demo":
        report = demo_report(source, examples, seed, mixtures)
    else:
        report = bench_report(source, examples, seed, mixtures)
    atomic_write_bytes(out, render(report).encode("utf-8"))
    logger.info("report: wrote %s", out)
    return out
