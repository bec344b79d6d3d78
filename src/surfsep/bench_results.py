"""The benchmark's outputs: results.json, results.csv, a Markdown table and a plot of the learning curves.

The table reports each method at the full budget. With two or more seeds the mean and the 95%
interval are over seeds (t distribution). With one seed the interval is over the test mixtures
(normal approximation). The table states which.
"""

from __future__ import annotations

import csv
import io
import logging
import platform
from datetime import datetime, timezone

import numpy as np

from surfsep import __version__
from surfsep.bench import (
    BenchSettings, arm_base, arm_overrides, base_config, budget_steps, load_results, mean_interval,
)
from surfsep.bench_scoring import reference_set
from surfsep.evaluate import summarise
from surfsep.files import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)

LABELS = {
    "supervised-flow": "supervised flow (clean sources)",
    "supervised-regression": "supervised PIT regression (clean sources)",
    "mixit": "MixIT",
    "remixit": "RemixIT",
    "self-remixing": "Self-Remixing",
    "surf": "SURF (remixit-flow)",
    "surf-self-remixing-flow": "SURF (self-remixing-flow)",
}
METRIC_TEXT = {"psnr": ("PSNR", "dB"), "si_sdri": ("SI-SDRi", "dB")}


def mixture_baseline(settings: BenchSettings, sources: int, record: dict) -> dict[str, float]:
    """Return the mean scores of the mixture itself as every source's estimate, on the test split."""
    if record["modality"] == "audio":
        # SI-SDRi is the SI-SDR minus the mixture's, so any scored record gives the mixture's mean.
        return {"si_sdr": record["test"]["si_sdr"] - record["test"]["si_sdri"], "si_sdri": 0.0}
    from surfsep.evaluate import score_mixture_baseline

    baseline = score_mixture_baseline(reference_set(settings.data, "test", sources, settings.test_limit))
    return {"psnr": float(baseline["psnr"].mean()), "ssim": float(baseline["ssim"].mean())}


def summarise_arm(records: list[dict], seeds: list[int], role: str = "student") -> dict | None:
    """Full-budget summary of one method over its seeds; None until every seed has finished."""
    finals = {record["seed"]: record for record in records if record["final"]}
    if any(seed not in finals for seed in seeds):
        return None
    rows = [finals[seed] if role == "student" else finals[seed].get(role) for seed in seeds]
    if any(row is None for row in rows):
        return None
    primary = finals[seeds[0]]["metric"]
    seed_means = [row["test"][primary] for row in rows]
    mean, half = mean_interval(seed_means)
    interval_over = "seeds"
    if half is None:
        per_file = np.array([value for value in rows[0]["per_file"] if value is not None])
        half = float(1.96 * per_file.std(ddof=1) / np.sqrt(len(per_file))) if len(per_file) > 1 else None
        interval_over = "test mixtures"
    summary = {
        "mean": mean, "ci95": None if half is None else [mean - half, mean + half], "interval_over": interval_over,
        "seed_means": seed_means, "all_metrics": {name: float(np.mean([row["test"][name] for row in rows]))
                                                  for name in rows[0]["test"]},
        "sampler_steps": [row["sampler_steps"] for row in rows],
        "samples_seen": finals[seeds[0]]["samples_seen"],
        "training_seconds": float(np.mean([finals[seed]["training_seconds"] for seed in seeds])),
        "threads": finals[seeds[0]]["threads"],
    }
    if role == "student" and "sweep_test" in rows[0]:
        summary["sweep"] = {count: float(np.mean([row["sweep_test"][count][primary] for row in rows]))
                            for count in rows[0]["sweep_test"]}
    return summary


# Methods that every other method is compared with, paired over the same test mixtures or seeds.
PAIRED_REFERENCES = ("supervised-flow", "mixit")


def paired_difference(records: list[dict], arm: str, reference: str, seeds: list[int],
                      role: str = "student") -> dict | None:
    """Return the mean of ``arm`` minus ``reference`` at the full budget with its 95% interval.

    ``role`` compares the students, or the two methods' EMA weights ("average"). With one seed the
    difference is paired over the test mixtures that both scored (normal approximation). With more
    seeds it is the difference of the seed means, paired over seeds (t distribution). Returns None
    until both have finished every seed.
    """
    finals = {(record["arm"], record["seed"]): record for record in records if record["final"]}
    if any((name, seed) not in finals for name in (arm, reference) for seed in seeds):
        return None
    scored = {key: record if role == "student" else record.get(role) for key, record in finals.items()}
    if any(scored[name, seed] is None for name in (arm, reference) for seed in seeds):
        return None
    per_seed = []
    for seed in seeds:
        scores = zip(scored[arm, seed]["per_file"], scored[reference, seed]["per_file"])
        summary = summarise([value - other for value, other in scores if value is not None and other is not None])
        if summary["count"] == 0:
            return None
        per_seed.append(summary)
    if len(seeds) == 1:
        return {"mean": per_seed[0]["mean"], "ci95": per_seed[0]["ci95"], "interval_over": "test mixtures"}
    mean, half = mean_interval([summary["mean"] for summary in per_seed])
    return {"mean": mean, "ci95": [mean - half, mean + half], "interval_over": "seeds"}


def paired_differences(records: list[dict], settings: BenchSettings) -> dict[str, dict[str, dict]]:
    """Per reference method in the benchmark, every other method's paired difference from it.

    Keys are table keys: ``ARM`` for the students, ``ARM:average`` for EMA weights against the
    reference's EMA weights.
    """
    result: dict[str, dict[str, dict]] = {}
    for base in PAIRED_REFERENCES:
        # A benchmark without the method itself compares with its first variant, if it has one.
        reference = next((arm for arm in settings.methods if arm == base), None) or \
            next((arm for arm in settings.methods if arm_base(settings, arm) == base), None)
        if reference is None:
            continue
        rows = {}
        for role in ("student", "average"):
            for arm in settings.methods:
                row = None if arm == reference else paired_difference(records, arm, reference, settings.seeds, role)
                if row is not None:
                    rows[arm if role == "student" else f"{arm}:average"] = row
        result[reference] = rows
    return result


def average_is_teacher(records: list[dict]) -> bool:
    """Return whether every final EMA-weights score is the teacher's, at the teacher's sampler steps."""
    finals = [record for record in records if record["final"] and "average" in record]
    return bool(finals) and all(
        record["average"]["model"] == "teacher" and "teacher" in record
        and record["average"]["sampler_steps"] == record["teacher"]["sampler_steps"]
        for record in finals
    )


def curves(records: list[dict]) -> dict[str, list[dict]]:
    """Per method, the mean test score over the seeds that reached each point, and their number."""
    points: dict[str, dict[int, list[float]]] = {}
    for record in records:
        points.setdefault(record["arm"], {}).setdefault(record["samples_seen"], []).append(
            record["test"][record["metric"]])
    return {arm: [{"samples_seen": samples, "mean": float(np.mean(values)), "seeds": len(values)}
                  for samples, values in sorted(by_samples.items())]
            for arm, by_samples in points.items()}


def format_number(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def markdown_table(settings: BenchSettings, summaries: dict, mixture: dict, primary: str, modality: str,
                   missing: list[str], differences: dict[str, dict[str, dict]]) -> str:
    name, unit = METRIC_TEXT[primary]
    seeds = ", ".join(str(seed) for seed in settings.seeds)
    over = next((summary["interval_over"] for summary in summaries.values() if summary), "seeds")
    interval = "seeds (t distribution)" if over == "seeds" else "test mixtures (normal approximation)"
    config = base_config(settings)
    start = (f"a MixIT run of {settings.init_fraction * 100:g}% of the budget" if settings.teacher_start == "mixit"
             else "random weights")
    lines = [
        f"Test {name} ({unit}) at the full budget of {budget_steps(settings) * config.batch_size:,} training "
        f"mixtures per method ({budget_steps(settings):,} steps of {config.batch_size}), "
        f"seed{'s' if len(settings.seeds) > 1 else ''} {seeds}; 95% interval over {interval}. Flows use the "
        f"sampler steps that scored best on valid/ (listed per seed), and so do the EMA weights of each run (the EMA "
        f"teacher, or the average that a method without a teacher keeps); teachers are also scored at their training "
        f"sampler steps, and where that is the same model at the same steps only the teacher row is shown. The teacher methods start from {start}. "
        f"Shared settings: {settings_text(settings, modality)}.",
        "",
        f"| method | {name} {unit} | 95% interval | sampler steps | samples seen | training minutes | CPU minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    mixture_value = mixture.get("psnr" if primary == "psnr" else "si_sdri")
    lines.append(f"| the mixture itself | {format_number(mixture_value)} | | | | | |")
    for key, summary in summaries.items():
        if summary is None:
            continue
        interval = "" if summary["ci95"] is None else f"{summary['ci95'][0]:.2f} to {summary['ci95'][1]:.2f}"
        minutes = summary["training_seconds"] / 60.0
        lines.append(
            f"| {label(key, settings)} | {summary['mean']:.2f} | {interval} | {'/'.join(map(str, summary['sampler_steps']))} | "
            f"{summary['samples_seen']:,} | {minutes:.1f} | {minutes * summary['threads']:.1f} |")
    if missing:
        lines += ["", f"Not finished yet: {', '.join(missing)}."]
    sweeps = {key: summary["sweep"] for key, summary in summaries.items() if summary and "sweep" in summary}
    if sweeps:
        counts = list(next(iter(sweeps.values())))
        lines += ["", f"Test {name} ({unit}) of the flows at the full budget by sampler steps "
                      f"(Euler, mean over seeds):", "",
                  "| method | " + " | ".join(f"{count} step{'' if count == '1' else 's'}" for count in counts) + " |",
                  "|---|" + "---|" * len(counts)]
        for key, sweep in sweeps.items():
            lines.append(f"| {label(key, settings)} | " + " | ".join(f"{sweep[count]:.2f}" for count in counts) + " |")
    for reference, rows in differences.items():
        if not rows:
            continue
        over = next(iter(rows.values()))["interval_over"]
        lines += ["", f"Each method minus {label(reference, settings)}: test {name} ({unit}) at the full budget, "
                      f"paired over the same {over}, with the 95% interval of the mean difference. Rows of EMA "
                      f"weights are compared with the EMA weights of {label(reference, settings)}:", "",
                  "| method | difference | 95% interval |", "|---|---|---|"]
        for arm, row in rows.items():
            interval = "" if row["ci95"] is None else f"{row['ci95'][0]:+.2f} to {row['ci95'][1]:+.2f}"
            lines.append(f"| {label(arm, settings)} | {row['mean']:+.2f} | {interval} |")
    return "\n".join(lines) + "\n"


def settings_text(settings: BenchSettings, modality: str) -> str:
    """Name the network and the training settings that every run shares."""
    from surfsep.config import resolve_for_modality

    config = resolve_for_modality(base_config(settings), modality)
    every = {0: "once per epoch", 1: "every step"}.get(config.teacher_every, f"every {config.teacher_every} steps")
    teacher = (f"teacher EMA {config.ema:g} {every}" if config.teacher_update == "ema"
               else f"teacher replaced by the student {every}")
    return (f"network {config.network} {config.channels}, learning rate {config.learning_rate:g}, sigma "
            f"{config.sigma:g}, {teacher}, {config.teacher_steps} teacher sampler step"
            f"{'s' if config.teacher_steps > 1 else ''}, {settings.threads} thread{'s' if settings.threads > 1 else ''} "
            f"per run")


def label(key: str, settings: BenchSettings) -> str:
    """Name a table row: a method, a variant with the settings it changes, or either one's teacher or EMA weights."""
    arm, _, role = key.partition(":")
    if arm in LABELS:
        text = LABELS[arm]
    else:
        changes = ", ".join(f"{name} {value}" for name, value in arm_overrides(settings, arm).items())
        text = f"{arm}: {LABELS[arm_base(settings, arm)]} with {changes}"
    return {"": text, "teacher": f"{text}, its teacher", "average": f"{text}, EMA of its weights"}[role]


def plot_curves(path, curve_data: dict, mixture_value: float | None, primary: str, settings: BenchSettings) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    name, unit = METRIC_TEXT[primary]
    figure, axes = pyplot.subplots(figsize=(7, 4.5), dpi=120)
    for arm, points in curve_data.items():
        axes.plot([point["samples_seen"] for point in points], [point["mean"] for point in points], marker="o",
                  label=label(arm, settings))
    if mixture_value is not None:
        axes.axhline(mixture_value, color="grey", linestyle="--", label="the mixture itself")
    axes.set_xlabel("training mixtures seen")
    axes.set_ylabel(f"test {name} ({unit})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def write_results(settings: BenchSettings) -> dict:
    """Gather every stage result into results.json, results.csv, results.md and curve.png."""
    records = load_results(settings)
    if not records:
        raise ValueError(f"{settings.folder} contains no finished stage yet; run `surfsep bench` to train one")
    primary = records[0]["metric"]
    modality = records[0]["modality"]
    sources = int(settings.train.get("sources", 2))
    mixture = mixture_baseline(settings, sources, records[0])

    summaries: dict[str, dict | None] = {}
    missing = []
    for arm in settings.methods:
        arm_records = [record for record in records if record["arm"] == arm]
        summaries[arm] = summarise_arm(arm_records, settings.seeds)
        if summaries[arm] is None:
            missing.append(arm)
        for role in ("teacher", "average"):
            summary = summarise_arm(arm_records, settings.seeds, role=role)
            if summary is not None and not (role == "average" and average_is_teacher(arm_records)):
                summaries[f"{arm}:{role}"] = summary
    curve_data = curves(records)
    differences = paired_differences(records, settings)

    folder = settings.folder
    results = {
        "settings": settings.to_dict(), "metric": primary, "mixture": mixture, "summary": summaries,
        "paired_differences": differences, "curves": curve_data, "records": records,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"surfsep": __version__, "python": platform.python_version()},
        "machine": {"processor": platform.machine(), "system": platform.system()},
    }
    atomic_write_json(folder / "results.json", results)

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    metric_names = sorted({name for record in records for name in record["test"]})
    writer.writerow(["method", "variant", "model", "seed", "total_steps", "samples_seen", "training_seconds",
                     "sampler_steps", *[f"test_{name}" for name in metric_names], "final"])
    for record in records:
        rows = [("student", record)]
        for role in ("teacher", "average"):
            if role in record:
                rows.append((role, record[role]))
        for role, scores in rows:
            writer.writerow([record["arm"], record["variant"] or "", role, record["seed"], record["total_steps"],
                             record["samples_seen"], record["training_seconds"], scores["sampler_steps"],
                             *[f"{scores['test'].get(name, float('nan')):.4f}" for name in metric_names],
                             record["final"]])
    atomic_write_bytes(folder / "results.csv", buffer.getvalue().encode())

    table = markdown_table(settings, summaries, mixture, primary, modality, missing, differences)
    atomic_write_bytes(folder / "results.md", table.encode())
    plot_curves(folder / "curve.png", curve_data, mixture.get("psnr" if primary == "psnr" else "si_sdri"), primary,
                settings)
    logger.info("bench: results in %s (results.md, results.csv, results.json, curve.png)", folder)
    results["table"] = table
    return results
