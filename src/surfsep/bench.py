"""``surfsep bench``: every chosen method trained on the same data, network and budget, then scored alike.

The budget is counted in training mixtures seen. Each method and seed is one training run, trained
in stages. At each of ``points`` evenly spaced budgets the run stops and its student is scored on
the test split. The score goes to a small JSON file before training goes on. A finished
stage is never redone, so an interrupted benchmark resumes from the last stage and checkpoint.

Methods with a teacher start from the same seed's MixIT run, stopped at ``init_fraction`` of the
budget, and train for the rest: the MixIT samples count towards their budget and its seconds
towards their time. With ``teacher_start="scratch"`` they start from random weights instead and
train for the whole budget.

Nothing is chosen on the test split: the number of sampler steps of a flow is the one that
scores best on ``valid/`` at that stage, and the test score is reported at that number.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from surfsep import interrupt
from surfsep.config import TrainConfig, coerce_setting, load_yaml_overrides, validate_config
from surfsep.files import atomic_write_json, try_lock

logger = logging.getLogger(__name__)

# Benchmark entries: name -> (training method, SURF variant).
ARMS = {
    "supervised-flow": ("supervised-flow", None),
    "supervised-regression": ("supervised-regression", None),
    "mixit": ("mixit", None),
    "remixit": ("remixit", None),
    "self-remixing": ("self-remixing", None),
    "surf": ("surf", "remixit-flow"),
    "surf-self-remixing-flow": ("surf", "self-remixing-flow"),
}
TEACHER_ARMS = ("remixit", "self-remixing", "surf", "surf-self-remixing-flow")
# Settings that the benchmark sets for each run; a --config file may not set them.
BENCH_OWNED = ("method", "variant", "data", "out", "steps", "seed", "init", "valid", "valid_every", "teacher_start",
               "threads")
# Settings that every method must share, so a method variant may not change them.
SHARED_ONLY = ("batch_size", "network", "channels", "sources", "mixture", "sample_rate", "segment_seconds")
# Settings that may change between invocations of one benchmark.
EXTENSIBLE = ("methods", "seeds", "jobs", "threads", "variants")


class BenchError(ValueError):
    """A benchmark that cannot start or continue; the message gives the reason and the fix."""


@dataclass
class BenchSettings:
    """Everything that decides a benchmark. ``train`` contains the TrainConfig settings shared by all runs."""

    data: str
    out: str
    samples: int
    methods: list[str] = field(default_factory=lambda: list(ARMS))
    seeds: list[int] = field(default_factory=lambda: [0])
    points: int = 4
    init_fraction: float = 0.25
    teacher_start: str = "mixit"
    sweep: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 25])
    valid_limit: int = 250
    test_limit: int | None = None
    jobs: int = 1
    threads: int = 1
    train: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def folder(self) -> Path:
        return Path(self.out)


def read_train_overrides(path: Path | None, flags: dict) -> dict:
    """TrainConfig settings from a YAML file and flags; refuses the settings the benchmark sets itself."""
    values = load_yaml_overrides(path) if path else {}
    values.update({name: value for name, value in flags.items() if value is not None})
    owned = sorted(set(values) & set(BENCH_OWNED))
    if owned:
        raise BenchError(f"the benchmark sets {', '.join(owned)} for every run itself; remove "
                         f"{'them' if len(owned) > 1 else 'it'} from the config")
    return values


def read_variants(path: Path | None) -> dict:
    """Method variants from a YAML file: ``NAME: {from: METHOD, SETTING: VALUE, ...}``, checked and typed."""
    if path is None:
        return {}
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise BenchError(f"cannot read variants file {path}: {error}") from error
    if not isinstance(values, dict) or not all(isinstance(entry, dict) for entry in values.values()):
        raise BenchError(f"variants file {path} must map each variant name to a mapping of settings")
    variants = {}
    for name, entry in values.items():
        source = f"variant {name} in {path}"
        fields = set(TrainConfig().to_dict())
        # Unknown keys are kept as they are, for check_variants to name.
        settings = {key: coerce_setting(key, value, source) if key in fields else value
                    for key, value in entry.items() if key != "from"}
        variants[str(name)] = {"from": entry.get("from"), **settings}
    return variants


def check_variants(settings: BenchSettings) -> None:
    """Raise BenchError for a variant that names no method, clashes with one, or changes a shared setting."""
    fields = set(TrainConfig().to_dict())
    for name, entry in settings.variants.items():
        if name in ARMS:
            raise BenchError(f"variant {name} has the name of a built-in method; choose another name")
        if entry.get("from") not in ARMS:
            raise BenchError(f"variant {name} must name the method it changes with from: one of {', '.join(ARMS)}")
        keys = set(entry) - {"from"}
        unknown = sorted(keys - fields)
        shared = sorted(keys & (set(SHARED_ONLY) | set(BENCH_OWNED)))
        if unknown:
            raise BenchError(f"variant {name} sets unknown settings: {', '.join(unknown)}")
        if shared:
            raise BenchError(f"variant {name} sets {', '.join(shared)}, which every method of a benchmark shares "
                             f"or the benchmark sets itself; set shared values in --config")


def with_saved_variants(settings: BenchSettings) -> BenchSettings:
    """Add the variants that earlier invocations of the benchmark defined, so later ones can name them."""
    path = settings.folder / "bench.json"
    if not path.exists():
        return settings
    saved = json.loads(path.read_text())["settings"].get("variants", {})
    return replace(settings, variants={**saved, **settings.variants})


def arm_base(settings: BenchSettings, arm: str) -> str:
    """Return the built-in method an entry runs: itself, or the method a variant changes."""
    return arm if arm in ARMS else settings.variants[arm]["from"]


def arm_overrides(settings: BenchSettings, arm: str) -> dict:
    return {key: value for key, value in settings.variants.get(arm, {}).items() if key != "from"}


def is_teacher_arm(settings: BenchSettings, arm: str) -> bool:
    return arm_base(settings, arm) in TEACHER_ARMS


def check_settings(settings: BenchSettings) -> None:
    """Raise BenchError naming the first setting that cannot work."""
    check_variants(settings)
    unknown = [name for name in settings.methods if name not in ARMS and name not in settings.variants]
    choices = list(ARMS) + list(settings.variants)
    checks = [
        (not unknown, f"unknown method {', '.join(unknown)}; available: {', '.join(choices)}"),
        (len(settings.methods) >= 1, "--methods names no method"),
        (len(set(settings.methods)) == len(settings.methods), f"--methods repeats a method: {settings.methods}"),
        (len(settings.seeds) >= 1 and len(set(settings.seeds)) == len(settings.seeds),
         f"--seeds must name distinct seeds, got {settings.seeds}"),
        (min(settings.seeds, default=0) >= 0, f"--seeds must be 0 or more, got {settings.seeds}"),
        (settings.samples >= 1, f"--samples must be at least 1, got {settings.samples}"),
        (settings.points >= 1, f"--points must be at least 1, got {settings.points}"),
        (0.0 < settings.init_fraction < 1.0,
         f"--init-fraction must be above 0 and below 1, got {settings.init_fraction}"),
        (settings.teacher_start in ("mixit", "scratch"),
         f"--teacher-start must be 'mixit' or 'scratch', got {settings.teacher_start!r}"),
        (len(settings.sweep) >= 1 and min(settings.sweep) >= 1,
         f"--sweep must be positive step counts, got {settings.sweep}"),
        (settings.valid_limit >= 1, f"--valid-limit must be at least 1, got {settings.valid_limit}"),
        (settings.test_limit is None or settings.test_limit >= 1,
         f"--test-limit must be at least 1, got {settings.test_limit}"),
        (settings.jobs >= 1, f"--jobs must be at least 1, got {settings.jobs}"),
        (settings.threads >= 1, f"--threads must be at least 1, got {settings.threads}"),
    ]
    for passed, message in checks:
        if not passed:
            raise BenchError(message)
    root = Path(settings.data)
    if not root.is_dir():
        raise BenchError(f"data folder {root} not found; pass the folder that contains train/, valid/ and test/")
    missing = [split for split in ("train", "valid", "test") if not (root / split / "mix").is_dir()
               and not (root / split / "mix_clean").is_dir()]
    if missing:
        raise BenchError(f"{root} has no {', '.join(split + '/mix' for split in missing)}: the benchmark needs the "
                         f"folder that contains train/, valid/ and test/, each with mix/ and s1/ ... sK/, as "
                         f"`surfsep data NAME --out DIR` writes them")
    steps = budget_steps(settings)
    if steps * base_config(settings).batch_size != settings.samples:
        logger.warning("bench: --samples %d is not a multiple of the batch size %d, so every method sees %d mixtures",
                       settings.samples, base_config(settings).batch_size, steps * base_config(settings).batch_size)
    if steps < base_config(settings).warmup_steps:
        logger.warning("bench: the budget of %d steps is shorter than the %d warm-up steps, so the learning rate never "
                       "reaches its set value", steps, base_config(settings).warmup_steps)
    dropped = [total for total in point_steps(settings) if total <= init_steps(settings)]
    if dropped and settings.teacher_start == "mixit" and any(is_teacher_arm(settings, arm) for arm in settings.methods):
        logger.info("bench: the teacher methods have no score at step %s, which falls within their MixIT start",
                    ", ".join(map(str, dropped)))
    for arm in settings.methods:
        validate_config(run_config(settings, arm, settings.seeds[0], steps=1))


def base_config(settings: BenchSettings) -> TrainConfig:
    return replace(TrainConfig(data=str(Path(settings.data) / "train"), out="-", threads=settings.threads),
                   **settings.train)


def budget_steps(settings: BenchSettings) -> int:
    """Optimiser steps of the whole budget; the budget must hold at least one step per curve point."""
    batch = base_config(settings).batch_size
    steps = settings.samples // batch
    if steps < settings.points:
        raise BenchError(f"--samples {settings.samples} gives {steps} steps of batch {batch}, fewer than "
                         f"--points {settings.points}; raise --samples")
    return steps


def point_steps(settings: BenchSettings) -> list[int]:
    """Total steps (MixIT start included) at each curve point."""
    total = budget_steps(settings)
    return sorted({max(1, round(total * index / settings.points)) for index in range(1, settings.points + 1)})


def init_steps(settings: BenchSettings) -> int:
    return max(1, round(budget_steps(settings) * settings.init_fraction))


def starts_from_mixit(settings: BenchSettings, arm: str) -> bool:
    return is_teacher_arm(settings, arm) and settings.teacher_start == "mixit"


def run_folder(settings: BenchSettings, arm: str, seed: int) -> Path:
    return settings.folder / "runs" / arm / f"seed{seed}"


def init_folder(settings: BenchSettings, seed: int) -> Path:
    return settings.folder / "runs" / "mixit-start" / f"seed{seed}"


def result_path(settings: BenchSettings, arm: str, seed: int, total_steps: int) -> Path:
    return settings.folder / "results" / arm / f"seed{seed}" / f"step{total_steps:07d}.json"


def run_config(settings: BenchSettings, arm: str, seed: int, steps: int) -> TrainConfig:
    """Return the training config of ``arm`` for ``seed``, trained to ``steps`` steps of its own run."""
    method, variant = ARMS[arm_base(settings, arm)]
    config = replace(base_config(settings), method=method, variant=variant, seed=seed, steps=steps,
                     out=str(run_folder(settings, arm, seed)), **arm_overrides(settings, arm))
    if config.tensorboard:
        # Every run gets its own subfolder, so TensorBoard draws the methods side by side.
        config = replace(config, tensorboard=str(Path(config.tensorboard) / f"{arm}-seed{seed}"))
    if is_teacher_arm(settings, arm):
        if settings.teacher_start == "mixit":
            config = replace(config, init=str(init_folder(settings, seed)))
        else:
            config = replace(config, teacher_start="scratch")
    return config


def stages(settings: BenchSettings, arm: str) -> list[tuple[int, int]]:
    """List the (total steps, own run steps) of each curve point of ``arm``; a MixIT start counts in the total."""
    offset = init_steps(settings) if starts_from_mixit(settings, arm) else 0
    return [(total, total - offset) for total in point_steps(settings) if total > offset]


def check_saved_settings(settings: BenchSettings) -> None:
    """Raise BenchError when ``settings.out`` contains a benchmark whose settings differ from ``settings``."""
    path = settings.folder / "bench.json"
    if not path.exists():
        return
    saved = json.loads(path.read_text())["settings"]
    differences = [f"{name} ({saved.get(name)!r} there, {value!r} now)" for name, value in settings.to_dict().items()
                   if name not in EXTENSIBLE and name not in ("data", "out") and saved.get(name) != value]
    for name, entry in settings.variants.items():
        previous = saved.get("variants", {}).get(name)
        if previous is not None and previous != entry:
            differences.append(f"variant {name} ({previous!r} there, {entry!r} now)")
    if Path(saved.get("data", "")).resolve() != Path(settings.data).resolve():
        differences.append(f"data ({saved.get('data')!r} there, {settings.data!r} now)")
    if differences:
        raise BenchError(f"{path} contains a benchmark with other settings: {'; '.join(differences)}. "
                         f"Use the same settings to continue it (methods and seeds may be added), or a new --out")


def write_bench_file(settings: BenchSettings, command: str) -> None:
    """Record the settings and the command in bench.json, adding new methods and seeds to a benchmark there.

    The caller has checked the settings against a benchmark already there (check_saved_settings).
    """
    path = settings.folder / "bench.json"
    if path.exists():
        record = json.loads(path.read_text())
        saved = record["settings"]
        record["settings"]["methods"] = list(dict.fromkeys(saved["methods"] + settings.methods))
        record["settings"]["seeds"] = list(dict.fromkeys(saved["seeds"] + settings.seeds))
        record["settings"]["variants"] = {**saved.get("variants", {}), **settings.variants}
        record["commands"] = record.get("commands", []) + [command]
    else:
        record = {"settings": settings.to_dict(), "commands": [command]}
    settings.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)


def plan(settings: BenchSettings) -> dict:
    """Describe the runs a benchmark makes, with each run's settings resolved as training will, for ``--dry-run``."""
    from surfsep.train import resolve_defaults

    batch = base_config(settings).batch_size
    return {
        "settings": settings.to_dict(),
        "batch_size": batch,
        "budget_steps": budget_steps(settings),
        "mixit_start_steps": init_steps(settings) if settings.teacher_start == "mixit" else None,
        "runs": {arm: {"stages_total_steps": [total for total, _ in stages(settings, arm)],
                       "own_steps": [own for _, own in stages(settings, arm)],
                       "config": resolve_defaults(
                           run_config(settings, arm, settings.seeds[0], stages(settings, arm)[-1][1])).to_dict()}
                 for arm in settings.methods},
    }


def check_existing_files(settings: BenchSettings) -> None:
    """Raise BenchError when a MixIT start or a stage result in the folder does not fit these settings.

    Both can come from a benchmark of a smaller budget whose runs were copied in to continue them.
    """
    steps = init_steps(settings)
    for seed in settings.seeds:
        start = init_folder(settings, seed) / "model.json"
        if start.exists() and (trained := json.loads(start.read_text())["training"]["steps"]) != steps:
            raise BenchError(f"{start.parent} is a MixIT start of {trained} steps, but this benchmark starts from "
                             f"{steps} steps (--init-fraction {settings.init_fraction:g} of {budget_steps(settings)}); "
                             f"set --init-fraction to match, or remove that folder")
    points = point_steps(settings)
    for arm in settings.methods:
        for seed in settings.seeds:
            for path in sorted((settings.folder / "results" / arm / f"seed{seed}").glob("step*.json")):
                if int(path.stem.removeprefix("step")) not in points:
                    raise BenchError(f"{path} scores a step that is not a curve point of this benchmark "
                                     f"({', '.join(map(str, points))}); choose --points so that it is one, "
                                     f"or remove the file")


def prepare_mixit_start(settings: BenchSettings, seed: int) -> None:
    """Train MixIT for ``init_steps`` and keep that model as the start of the teacher methods of ``seed``."""
    from surfsep.models import load_model, save_model
    from surfsep.train import train

    target = init_folder(settings, seed)
    if (target / "model.json").exists():
        return
    steps = init_steps(settings)
    mixit_run = run_folder(settings, "mixit", seed)
    trained = json.loads((mixit_run / "model.json").read_text())["training"]["steps"] \
        if (mixit_run / "model.json").exists() else 0
    if trained > steps:
        # The MixIT run has passed the start point already: train the start on its own.
        mixit_run = target.parent / f"seed{seed}-run"
    logger.info("bench: training the MixIT start of seed %d (%d steps)", seed, steps)
    train(replace(run_config(settings, "mixit", seed, steps), out=str(mixit_run)))
    network, metadata = load_model(mixit_run)
    partial = target.parent / f".{target.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    save_model(partial, network, metadata)
    partial.rename(target)


def run_unit(settings: BenchSettings, arm: str, seed: int) -> list[Path]:
    """Train ``arm`` for ``seed`` stage by stage, scoring each stage once; returns the result files."""
    from surfsep.bench_scoring import score_stage
    from surfsep.train import train

    written = []
    all_stages = stages(settings, arm)
    for index, (total, own) in enumerate(all_stages):
        path = result_path(settings, arm, seed, total)
        if path.exists():
            written.append(path)
            continue
        config = run_config(settings, arm, seed, own)
        if own == total:
            logger.info("bench: %s seed %d, training to step %d of %d", arm, seed, total, all_stages[-1][0])
        else:
            logger.info("bench: %s seed %d, training to step %d of %d (%d after the %d-step MixIT start)", arm, seed,
                        total, all_stages[-1][0], own, total - own)
        run = train(config)
        started = time.perf_counter()
        record = score_stage(settings, arm, seed, run, total, own, final=index == len(all_stages) - 1)
        record["scoring_seconds"] = round(time.perf_counter() - started, 2)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)
        written.append(path)
    return written


def unit_worker(settings: dict, arm: str, seed: int, quiet: bool) -> list[str]:
    """Entry point of a worker process: set up logging and threads, then run one method and seed."""
    import torch

    from surfsep.cli import configure_logging

    for handler in list(logging.getLogger("surfsep").handlers):
        # The worker's own console handler, set up when it started; the prefixed one replaces it.
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            logging.getLogger("surfsep").removeHandler(handler)
    configure_logging(quiet, prefix=f"[{arm} seed {seed}] ")
    torch.set_num_threads(settings["threads"])
    return [str(path) for path in run_unit(BenchSettings(**settings), arm, seed)]


def run_bench(settings: BenchSettings, command: str = "", quiet: bool = False) -> dict:
    """Run every missing stage of the benchmark, then write results.json, results.csv, results.md and the plot."""
    check_settings(settings)
    check_saved_settings(settings)
    check_existing_files(settings)
    lock = try_lock(settings.folder)
    if lock is None:
        raise BenchError(f"another surfsep bench is running in {settings.folder}; wait for it to finish, or stop it "
                         f"and run one command with every method you need in --methods (--jobs runs them side by side)")
    with lock:
        return run_locked(settings, command, quiet)


def run_locked(settings: BenchSettings, command: str, quiet: bool) -> dict:
    """Run the benchmark's missing stages and write its results. The caller has locked the folder."""
    from surfsep.bench_results import write_results

    write_bench_file(settings, command)
    logger.info("bench: %d method(s) x %d seed(s), %d samples (%d steps of batch %d) each, %d job(s) of %d thread(s)",
                len(settings.methods), len(settings.seeds), settings.samples, budget_steps(settings),
                base_config(settings).batch_size, settings.jobs, settings.threads)
    units = [(arm, seed) for arm in settings.methods for seed in settings.seeds
             if not all(result_path(settings, arm, seed, total).exists() for total, _ in stages(settings, arm))]
    start_seeds = sorted({seed for arm, seed in units if starts_from_mixit(settings, arm)})
    logger.info("bench: %d of %d runs have stages left to train", len(units),
                len(settings.methods) * len(settings.seeds))
    if settings.jobs == 1:
        for seed in start_seeds:
            prepare_mixit_start(settings, seed)
        for arm, seed in units:
            run_unit(settings, arm, seed)
    else:
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        with concurrent.futures.ProcessPoolExecutor(settings.jobs, mp_context=context, initializer=start_worker,
                                                    initargs=(quiet, settings.threads, stop)) as pool:
            try:
                # The MixIT starts train in the MixIT run folders, so the MixIT and teacher runs wait for them.
                # The supervised runs share nothing with them and start at once.
                starts = [pool.submit(prepare_mixit_start, settings, seed) for seed in start_seeds]
                independent = [(arm, seed) for arm, seed in units
                               if not is_teacher_arm(settings, arm) and arm_base(settings, arm) != "mixit"]
                jobs = [pool.submit(unit_worker, settings.to_dict(), arm, seed, quiet) for arm, seed in independent]
                wait_all(starts)
                jobs += [pool.submit(unit_worker, settings.to_dict(), arm, seed, quiet)
                         for arm, seed in units if (arm, seed) not in independent]
                wait_all(jobs)
            except KeyboardInterrupt:
                # Ctrl-C reaches every process of the terminal's group, but a SIGTERM sent to this process
                # alone does not reach the workers. The event passes it on, and each worker checkpoints and stops.
                if interrupt.requested:
                    stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return write_results(read_bench(settings.folder))


def read_bench(folder: Path) -> BenchSettings:
    """The settings of the benchmark in ``folder``, with every method and seed any invocation has asked for."""
    path = Path(folder) / "bench.json"
    if not path.exists():
        raise BenchError(f"{folder} contains no benchmark: bench.json is missing; run `surfsep bench` first")
    settings = BenchSettings(**json.loads(path.read_text())["settings"])
    ordered = [arm for arm in [*ARMS, *settings.variants] if arm in settings.methods]
    return replace(settings, out=str(folder), methods=ordered, seeds=sorted(settings.seeds))


def start_worker(quiet: bool, threads: int, stop: multiprocessing.synchronize.Event) -> None:
    import torch

    from surfsep.cli import configure_logging

    configure_logging(quiet)
    torch.set_num_threads(threads)
    threading.Thread(target=forward_stop, args=(stop,), daemon=True).start()


def forward_stop(stop: multiprocessing.synchronize.Event) -> None:
    """Send this worker SIGTERM once the bench's main process sets ``stop``."""
    stop.wait()
    os.kill(os.getpid(), signal.SIGTERM)


def wait_all(futures: list[concurrent.futures.Future]) -> None:
    """Wait for every job; raise the first error once all have stopped, so finished work is kept."""
    concurrent.futures.wait(futures)
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error


def load_results(settings: BenchSettings) -> list[dict]:
    """Every stage result of the benchmark's methods and seeds, in method, seed and step order."""
    records, budget = [], budget_steps(settings)
    for arm in settings.methods:
        for seed in settings.seeds:
            folder = settings.folder / "results" / arm / f"seed{seed}"
            for path in sorted(folder.glob("step*.json")):
                record = json.loads(path.read_text())
                # Runs copied from a benchmark of a smaller budget bring that budget's final stage along, and a
                # run copied to continue as a variant brings the name of the method it was trained as.
                record["final"] = record["total_steps"] == budget
                record["arm"] = arm
                records.append(record)
    return records


def mean_interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and half-width of a t-distribution 95% interval of the mean (None for one value)."""
    from scipy import stats

    array = np.asarray(values, dtype=np.float64)
    if len(array) < 2:
        return float(array.mean()), None
    half = float(stats.t.ppf(0.975, len(array) - 1) * array.std(ddof=1) / np.sqrt(len(array)))
    return float(array.mean()), half
