"""The one training loop that runs every method, with checkpoints that resume exactly.

All randomness of step n (batch order, noise, t, shuffles) comes from generators seeded by
``(seed, n)``, so a run resumed from a checkpoint continues exactly as an uninterrupted run.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from surfsep import __version__
from surfsep.config import (
    RESUMABLE_CHANGES, TrainConfig, network_kwargs, resolve_for_modality, teacher_steps_at, validate_config,
)
from surfsep.data.audio_sets import AudioCrops, AudioMixtureSet, AudioReferenceSet, common_sample_rate, detect_modality
from surfsep.data.images import MixtureSet, ReferenceSet
from surfsep.methods import Method, StepContext, get_method
from surfsep.methods.base import teacher_estimates
from surfsep.checkpoint import load_state, save_state
from surfsep.distributed import RowSharded, Shard, launched_world, start as start_distributed
from surfsep.files import LOCK_FILE, atomic_write_bytes, atomic_write_json, try_lock
from surfsep.models import load_model, save_model
from surfsep.networks import build_network
from surfsep.progress import Progress

logger = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"
# Checkpoints of surfsep 0.1.0 before the safetensors format; read with PyTorch's restricted
# unpickler (tensors and plain containers only) and replaced at the next checkpoint.
LEGACY_STATE_FILE = "state.pt"
# Files a run writes before its first checkpoint; a folder holding only these starts afresh.
RUN_START_FILES = {"config.json", "log.txt", "metrics.jsonl", LOCK_FILE}
MAX_CONSECUTIVE_SKIPS = 20


class TrainingError(RuntimeError):
    """A training run that cannot start or continue; the message gives the reason and the fix."""


def seeded_generator(*keys: int) -> torch.Generator:
    seed = int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def batch_indices(step: int, data_size: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of the mixtures in training step ``step``: epochs of a fresh permutation, last partial batch dropped."""
    batches_per_epoch = data_size // batch_size
    epoch, position = divmod(step, batches_per_epoch)
    order = torch.randperm(data_size, generator=seeded_generator(seed, 1, epoch))
    return order[position * batch_size : (position + 1) * batch_size]


def default_sampler_steps(method: Method) -> int:
    return 1 if method.one_step else 25


def model_metadata(
    config: TrainConfig, method: Method, data_size: int, step: int, seconds: float, processes: int = 1
) -> dict:
    """Build the model.json fields other than the format and the network kwargs.

    ``batch_size`` is the batch of one optimiser step over all ``processes``.
    """
    audio = config.sample_rate is not None
    metadata = {
        "surfsep_version": __version__,
        "network": {"name": config.network},
        "modality": "audio" if audio else "image",
        "sources": config.sources,
        "mixture": config.mixture,
        "method": method.name,
        "variant": getattr(method, "variant", None),
        "one_step": method.one_step,
        "sigma": config.sigma,
        "sampler": {"solver": "euler", "steps": config.sampler_steps or default_sampler_steps(method)},
        "training": {
            "steps": step,
            "seconds": round(seconds, 2),
            "batch_size": config.batch_size,
            "processes": processes,
            "mixtures_seen": step * config.batch_size,
            "seed": config.seed,
            "data": str(config.data),
            "data_size": data_size,
            "init": config.init,
        },
    }
    if audio:
        metadata["sample_rate"] = config.sample_rate
        metadata["normalisation"] = "unit-rms"
        metadata["training"]["segment_seconds"] = config.segment_seconds
    return metadata


PATH_FIELDS = ("data", "out", "init", "valid")


def same_setting(name: str, saved, current) -> bool:
    """Compare a saved setting with the current one; paths compare by the folder they name.

    The run folder may have moved since it was saved, and the start model may be a copy elsewhere
    with the same weights: neither changes how the run goes on.
    """
    if name == "out":
        return True
    if name == "init" and saved and current and same_weights(Path(saved), Path(current)):
        return True
    if name in PATH_FIELDS and saved and current:
        return Path(saved).resolve() == Path(current).resolve()
    return saved == current


def same_weights(first: Path, second: Path) -> bool:
    """Return whether two model folders hold byte-identical weight files."""
    files = [folder / "model.safetensors" for folder in (first, second)]
    return all(path.is_file() for path in files) and files[0].read_bytes() == files[1].read_bytes()


def check_resume_config(saved: dict, config: TrainConfig, run: Path, trained: int) -> None:
    """Raise TrainingError unless ``config`` continues the run that ``saved`` configured.

    The teacher's sampler steps may change for the steps still to come, but not for the ``trained`` ones.
    """
    # A setting that an older version did not save had its current default then.
    defaults = TrainConfig().to_dict()
    saved = {**defaults, **saved}
    schedule = ("teacher_steps", "teacher_steps_start")
    differences = [
        f"{name} ({saved.get(name)!r} in the run, {value!r} now)"
        for name, value in config.to_dict().items()
        if name not in RESUMABLE_CHANGES + schedule and not same_setting(name, saved.get(name), value)
    ]
    before = dataclasses.replace(config, **{name: saved[name] for name in schedule})
    changed = [step for step in range(trained) if teacher_steps_at(before, step) != teacher_steps_at(config, step)]
    if changed:
        step = changed[0]
        differences.append(f"teacher sampler steps at step {step} ({teacher_steps_at(before, step)} in the run, "
                           f"{teacher_steps_at(config, step)} now; --teacher-steps-start {trained} or later keeps "
                           f"the steps already trained)")
    if differences:
        raise TrainingError(
            f"{run} contains a run with other settings: {'; '.join(differences)}. "
            f"Use the same settings to resume it, or choose a new --out"
        )


class BatchSource:
    """The mixtures (and references) of each step, on the training device.

    Each process reads its rows of the batch, and the rows are gathered. With ``ahead`` > 0 the
    batches of the next ``ahead`` steps are read in advance on a thread; training on a GPU does that
    for audio, so that reading files does not hold the GPU up. When teacher estimates are reused for
    ``stride`` steps, only the batches of every ``stride``-th step are read.
    """

    def __init__(self, data, config: TrainConfig, shard: Shard, device: torch.device, ahead: int = 0, stride: int = 1):
        self.data, self.config, self.shard, self.device = data, config, shard, device
        self.ahead, self.stride = ahead, stride
        self.pending: dict = {}
        self.pool = None
        if self.ahead:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="surfsep-batches")

    def read(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        index = batch_indices(step, len(self.data), self.config.batch_size, self.config.seed)
        mixtures, references = self.data.batch(index, seeded_generator(self.config.seed, 3, step),
                                               self.shard.rows(len(index)))
        if self.pool is not None and self.device.type == "cuda":
            mixtures = mixtures.pin_memory()
            references = None if references is None else references.pin_memory()
        return mixtures, references

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pool is None:
            mixtures, references = self.read(step)
        else:
            future = self.pending.pop(step, None) or self.pool.submit(self.read, step)
            last = min(step + self.stride * (1 + self.ahead), self.config.steps)
            for later in range(step + self.stride, last, self.stride):
                if later not in self.pending:
                    self.pending[later] = self.pool.submit(self.read, later)
            mixtures, references = future.result()
        mixtures = mixtures.to(self.device, non_blocking=True)
        references = None if references is None else references.to(self.device, non_blocking=True)
        if self.shard.active:
            mixtures = self.shard.gather(mixtures)
            references = None if references is None else self.shard.gather(references)
        return mixtures, references

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class ReusedEstimates:
    """One batch and its teacher estimates, kept for ``steps`` consecutive training steps.

    The batch of the block's first step is separated once, at that step, and each step of the
    block remixes the same estimates with its own shuffle. The block is part of the checkpoint, so
    a run resumed within a block goes on exactly as it would have without the stop.
    """

    def __init__(self, steps: int):
        self.steps = steps
        self.start: int | None = None
        self.mixtures: torch.Tensor | None = None
        self.estimates: torch.Tensor | None = None

    def get(self, step: int, context: StepContext, batches: BatchSource) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the block's mixtures and estimates, separating them if ``step`` starts a new block."""
        start = step - step % self.steps
        if self.start != start:
            mixtures, _ = batches.get(start)
            self.start, self.mixtures, self.estimates = start, mixtures, teacher_estimates(context, mixtures)
        return self.mixtures, self.estimates

    def state(self) -> dict:
        if self.start is None:
            return {}
        return {"start": self.start, "mixtures": self.mixtures, "estimates": self.estimates}

    def load(self, state: dict, device: torch.device) -> None:
        if state:
            self.start = int(state["start"])
            self.mixtures, self.estimates = state["mixtures"].to(device), state["estimates"].to(device)


class ImageTensors:
    """Training images held in memory: mixtures (N, 1, H, W) in the sum convention, references (N, K, 1, H, W)."""

    def __init__(self, mixtures: torch.Tensor, references: torch.Tensor | None):
        self.mixtures = mixtures
        self.references = references

    def __len__(self) -> int:
        return self.mixtures.shape[0]

    def batch(
        self, index: torch.Tensor, generator: torch.Generator, rows: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        index = index[rows].to(self.mixtures.device)
        return self.mixtures[index], None if self.references is None else self.references[index]

    def to(self, device: torch.device) -> "ImageTensors":
        """Move the whole set to ``device`` (it is small), so that batches need no copy."""
        references = None if self.references is None else self.references.to(device)
        return ImageTensors(self.mixtures.to(device), references)


def resolve_data_settings(config: TrainConfig) -> TrainConfig:
    """Fill the settings that depend on the training data: modality defaults and the audio sample rate."""
    modality = detect_modality(Path(config.data))
    config = resolve_for_modality(config, modality)
    if config.precision is None:
        config = dataclasses.replace(config, precision="bf16" if config.device.startswith("cuda") else "fp32")
    if modality == "audio" and config.sample_rate is None:
        entries = AudioMixtureSet.open(Path(config.data)).entries
        config = dataclasses.replace(config, sample_rate=common_sample_rate(entries, Path(config.data)))
    return config


def resolve_defaults(config: TrainConfig) -> TrainConfig:
    """Return ``config`` with every setting left to a default filled with the value training will use."""
    config = resolve_data_settings(config)
    method = get_method(config.method, config.variant)
    return dataclasses.replace(config, variant=getattr(method, "variant", None),
                               sampler_steps=config.sampler_steps or default_sampler_steps(method))


def load_training_data(config: TrainConfig, method: Method) -> ImageTensors | AudioCrops:
    """The training set as an object whose ``batch(index, generator)`` returns mixtures and references."""
    if config.sample_rate is not None:
        if method.needs_references:
            reference_set = AudioReferenceSet.open(Path(config.data), config.sources)
            return AudioCrops(reference_set.mixtures, reference_set.references, config.sample_rate,
                              config.segment_seconds)
        return AudioCrops(AudioMixtureSet.open(Path(config.data)).entries, None, config.sample_rate,
                          config.segment_seconds)
    scale = float(config.sources) if config.mixture == "mean" else 1.0
    if method.needs_references:
        reference_set = ReferenceSet.open(Path(config.data), config.sources)
        return ImageTensors(reference_set.mixtures * scale, reference_set.references)
    return ImageTensors(MixtureSet.open(Path(config.data)).mixtures * scale, None)


def build_student(config: TrainConfig, method: Method) -> nn.Module:
    if config.init:
        network, metadata = load_model(Path(config.init))
        logger.info("initialising from %s (method %s, %s steps)", config.init, metadata.get("method"),
                    metadata.get("training", {}).get("steps"))
        expected = network_kwargs(config)
        found = {name: network.config.get(name) for name in expected}
        if metadata["network"]["name"] != config.network or found != expected:
            raise TrainingError(
                f"--init {config.init} has network {metadata['network']['name']} with {found}, "
                f"but this run asks for {config.network} with {expected}; pass matching --network and --channels"
            )
        if metadata.get("sample_rate") != config.sample_rate:
            raise TrainingError(
                f"--init {config.init} was trained at sample rate {metadata.get('sample_rate')}, "
                f"but this run uses {config.sample_rate}; pass --sample-rate {metadata.get('sample_rate')}"
            )
        network.train()
        return network
    if method.needs_teacher and config.teacher_start != "scratch":
        raise TrainingError(
            f"method {method.name} starts its teacher from a trained separator: pass --init RUN "
            f"with a mixit run (train one with `surfsep train --method mixit`), or --teacher-start scratch"
        )
    torch.manual_seed(config.seed)
    return build_network(config.network, network_kwargs(config))


def ema_update(teacher: nn.Module, student: nn.Module, rate: float) -> None:
    """``theta_T <- rate * theta_T + (1 - rate) * theta_S`` for every parameter and buffer."""
    with torch.no_grad():
        for teacher_tensor, student_tensor in zip(teacher.state_dict().values(), student.state_dict().values()):
            if teacher_tensor.is_floating_point():
                teacher_tensor.lerp_(student_tensor, 1.0 - rate)
            else:
                teacher_tensor.copy_(student_tensor)


def teacher_period(config: TrainConfig, data_size: int) -> int:
    """Steps between teacher updates: ``teacher_every``, or one epoch when it is 0."""
    return config.teacher_every or max(1, data_size // config.batch_size)


def warn_slow_teacher(config: TrainConfig, period: int) -> None:
    """Warn when the EMA teacher would still be mostly its starting weights at the end of the run."""
    if config.teacher_update != "ema":
        return
    updates = config.steps // period
    start_share = config.ema ** updates
    if start_share > 0.5:
        logger.warning(
            "the teacher gets %d EMA updates at rate %g in %d steps, so %.0f%% of it is still its starting weights "
            "at the end; lower --ema or --teacher-every, or train for more steps",
            updates, config.ema, config.steps, 100 * start_share,
        )


def warn_slow_average(config: TrainConfig, run: Path) -> None:
    """Warn when RUN/ema would still be mostly the initial weights at the end of the run."""
    start_share = config.ema ** config.steps
    if start_share > 0.5:
        logger.warning(
            "%s averages the student's weights at rate %g per step, so after %d steps %.0f%% of it is still the "
            "initial weights; separate with %s itself, lower --ema, or train for more steps",
            run / "ema", config.ema, config.steps, 100 * start_share, run,
        )


def update_teacher(teacher: nn.Module, student: nn.Module, config: TrainConfig) -> None:
    """Move the teacher towards the student by EMA, or replace it by the student."""
    if config.teacher_update == "replace":
        with torch.no_grad():
            for teacher_tensor, student_tensor in zip(teacher.state_dict().values(), student.state_dict().values()):
                teacher_tensor.copy_(student_tensor)
    else:
        ema_update(teacher, student, config.ema)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint a resumed run starts from."""
    if not path.exists():
        return
    kept_lines = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short when the run was killed
        if record.get("step", 0) <= step:
            kept_lines.append(line)
    atomic_write_bytes(path, ("\n".join(kept_lines) + "\n" if kept_lines else "").encode())


def attach_log_file(run: Path) -> tuple[logging.Handler, int]:
    """Send INFO and above of the ``surfsep`` loggers to ``run/log.txt``; returns the handler and the old level."""
    handler = logging.FileHandler(run / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    package_logger = logging.getLogger("surfsep")
    previous_level = package_logger.level
    if package_logger.getEffectiveLevel() > logging.INFO:
        # The console keeps its own handler level; only the file needs INFO records.
        package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    return handler, previous_level


class StopRequest:
    """Turn SIGINT (Ctrl-C) and SIGTERM into a flag checked between steps, so the checkpoint is written between steps."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {number: signal.signal(number, self.request) for number in (signal.SIGINT, signal.SIGTERM)}

    def request(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def training_device(config: TrainConfig) -> torch.device:
    """Return the device of ``--device``; under torchrun, ``cuda`` means the GPU of the process's local rank."""
    device = torch.device(config.device)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise TrainingError(f"--device {config.device} needs a CUDA GPU, and PyTorch {torch.__version__} finds none; "
                            f"train with --device cpu")
    if device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if launched_world() > 1 else 0)
    if device.index >= torch.cuda.device_count():
        raise TrainingError(f"--device {device} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    torch.cuda.set_device(device)
    return device


def check_batch_split(config: TrainConfig, method: Method, shard: Shard) -> None:
    """Raise TrainingError unless every network call of a step splits evenly over the processes."""
    # MixIT separates mixtures of pairs of mixtures: half as many rows as the batch.
    rows = config.batch_size // 2 if method.name == "mixit" else config.batch_size
    if shard.active and rows % shard.world:
        multiple = shard.world * (2 if method.name == "mixit" else 1)
        raise TrainingError(
            f"--batch-size {config.batch_size} does not split evenly over {shard.world} processes for method "
            f"{method.name}; use a multiple of {multiple}"
        )


def train(config: TrainConfig, shard: Shard | None = None) -> Path:
    """Run (or resume) training as configured; returns the run folder holding model.json.

    Under ``torchrun`` the process joins the process group (unless ``shard`` gives its place), and
    each process computes its share of every batch. ``batch_size`` stays the batch of one step over
    all processes, so the schedule and the result do not depend on their number. Only rank 0
    writes to the run folder. End the process with ``surfsep.distributed.finish``.
    """
    validate_config(config)
    config = resolve_data_settings(config)
    method = get_method(config.method, config.variant)
    device = training_device(config)
    shard = shard or start_distributed(device)
    check_batch_split(config, method, shard)
    check_tensorboard(config)
    run = Path(config.out)
    lock = lock_run(run) if shard.main else None
    try:
        return start_training(config, method, run, shard, device)
    finally:
        if lock is not None:
            lock.close()


def lock_run(run: Path):
    """Create ``run`` and lock it for this process, so that a second trainer cannot write to it too.

    Returns the open lock file, whose closing releases the lock.
    """
    handle = try_lock(run)
    if handle is None:
        raise TrainingError(f"another process is training {run}; wait for it to finish or stop it, "
                            f"or choose another --out")
    return handle


def start_training(config: TrainConfig, method: Method, run: Path, shard: Shard, device: torch.device) -> Path:
    """Check the run folder against ``config``, then write its start files and train."""
    state_path = run / STATE_FILE
    resuming = state_path.exists() or (run / LEGACY_STATE_FILE).exists()
    if resuming:
        saved = json.loads((run / "config.json").read_text())
        trained = json.loads((run / "model.json").read_text())["training"]["steps"]
        check_resume_config(saved, config, run, trained)
        if trained > config.steps:
            raise TrainingError(
                f"{run} has already trained {trained} steps, more than --steps {config.steps}; "
                f"pass --steps {trained} or more to use or continue it"
            )
    elif run.exists() and any(path.name not in RUN_START_FILES for path in run.iterdir()):
        raise TrainingError(f"{run} already exists and contains no training state; choose a new --out or remove it")
    # Every process has read the folder before rank 0 writes to it.
    shard.barrier()
    if not shard.main:
        return run_training(config, method, run, state_path, resuming, shard, device)
    if not resuming and (run / "metrics.jsonl").exists():
        # A run that stopped before its first checkpoint starts again from step 0.
        (run / "metrics.jsonl").unlink()
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run / "config.json", config.to_dict())
    log_handler, previous_level = attach_log_file(run)
    try:
        return run_training(config, method, run, state_path, resuming, shard, device)
    except Exception as error:
        # The command line reports the error on stderr; log.txt gets it too, for runs watched by their log.
        log_handler.handle(logging.LogRecord("surfsep.train", logging.ERROR, __file__, 0, "training stopped: %s",
                                             (error,), None))
        raise
    finally:
        package_logger = logging.getLogger("surfsep")
        package_logger.removeHandler(log_handler)
        package_logger.setLevel(previous_level)
        log_handler.close()


def read_checkpoint(run: Path) -> dict:
    """Read the run's checkpoint: state.safetensors, or the older state.pt."""
    if (run / STATE_FILE).exists():
        return load_state(run / STATE_FILE)
    legacy = run / LEGACY_STATE_FILE
    try:
        return torch.load(legacy, weights_only=True)
    except Exception as error:  # the restricted unpickler rejects anything but tensors and plain containers
        raise TrainingError(f"checkpoint {legacy} cannot be read ({error}); restore the file, or remove it to "
                            f"train the run again from step 0") from error


def apply_changed_learning_rate(optimizer: torch.optim.Optimizer, scheduler, learning_rate: float, step: int) -> None:
    """Give a resumed run a new peak learning rate, keeping its place in the warm-up schedule."""
    previous = optimizer.param_groups[0].get("initial_lr", learning_rate)
    if previous == learning_rate:
        return
    logger.warning("the learning rate changes from %g to %g at step %d", previous, learning_rate, step)
    scheduler.base_lrs = [learning_rate] * len(optimizer.param_groups)
    for group, rate_lambda in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * rate_lambda(scheduler.last_epoch)


def run_training(
    config: TrainConfig, method: Method, run: Path, state_path: Path, resuming: bool, shard: Shard = Shard(),
    device: torch.device = torch.device("cpu"),
) -> Path:
    if config.threads:
        torch.set_num_threads(config.threads)
    data = load_training_data(config, method)
    if isinstance(data, ImageTensors):
        data = data.to(device)
    data_size = len(data)
    if data_size < config.batch_size:
        raise TrainingError(f"{config.data} contains {data_size} mixtures, fewer than --batch-size {config.batch_size}")
    if method.needs_teacher and config.shuffle == "constrained" and config.batch_size < config.sources:
        raise TrainingError(f"the constrained remix needs --batch-size of at least --sources ({config.sources})")
    logger.info(
        "training %s%s on %d mixtures from %s, %d sources, batch %d, %d threads, surfsep %s",
        method.name, f" ({method.variant})" if getattr(method, "variant", None) else "", data_size, config.data,
        config.sources, config.batch_size, torch.get_num_threads(), __version__,
    )

    student = build_student(config, method).to(device)
    teacher = copy.deepcopy(student).eval() if method.needs_teacher else None
    if teacher is not None:
        teacher.requires_grad_(False)
    # Methods without a teacher keep an EMA of the student's weights, saved as RUN/ema: flows usually
    # separate better with averaged weights, and a teacher method's EMA teacher is that average already.
    average = copy.deepcopy(student).eval() if teacher is None else None
    if average is not None:
        average.requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    )

    reuse = ReusedEstimates(config.teacher_reuse) if teacher is not None and config.teacher_reuse > 1 else None
    step, seconds, skipped = 0, 0.0, 0
    if resuming:
        state = read_checkpoint(run)
        student.load_state_dict(state["student"])
        if teacher is not None:
            teacher.load_state_dict(state["teacher"])
        if average is not None:
            if state.get("average"):
                average.load_state_dict(state["average"])
            else:
                logger.info("the checkpoint contains no weight average, so the average starts at step %d",
                            int(state["step"]))
                average.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, seconds, skipped = int(state["step"]), float(state["seconds"]), int(state.get("skipped", 0))
        if reuse is not None:
            reuse.load(state.get("reused", {}), device)
        apply_changed_learning_rate(optimizer, scheduler, config.learning_rate, step)
        truncate_metrics(run / "metrics.jsonl", step)
        logger.info("resuming at step %d from %s", step,
                    state_path if state_path.exists() else run / LEGACY_STATE_FILE)

    def save_checkpoint() -> None:
        if not shard.main:
            return
        state = {
            "student": student.state_dict(),
            "teacher": teacher.state_dict() if teacher is not None else {},
            "average": average.state_dict() if average is not None else {},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "seconds": seconds,
            "skipped": skipped,
            "reused": reuse.state() if reuse is not None else {},
        }
        save_state(state_path, state)
        (run / LEGACY_STATE_FILE).unlink(missing_ok=True)
        save_model(run, student, model_metadata(config, method, data_size, step, seconds, shard.world))
        if teacher is not None:
            # The teacher separates in teacher_steps Euler steps during training; keep that as its default.
            teacher_metadata = model_metadata(config, method, data_size, step, seconds, shard.world)
            teacher_metadata["sampler"]["steps"] = config.teacher_steps
            teacher_metadata["role"] = "EMA teacher"
            save_model(run / "teacher", teacher, teacher_metadata)
        if average is not None:
            average_metadata = model_metadata(config, method, data_size, step, seconds, shard.world)
            average_metadata["role"] = f"EMA of the student weights (rate {config.ema:g} per step)"
            save_model(run / "ema", average, average_metadata)

    # Each process computes its rows of every network call; the teacher needs no gradient sync.
    network_for_loss, teacher_for_loss = student, teacher
    if shard.active:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        network_for_loss = RowSharded(DistributedDataParallel(student, device_ids=device_ids), shard)
        teacher_for_loss = RowSharded(teacher, shard) if teacher is not None else None
        logger.info("%d processes, each computing %d of the %d mixtures of a step", shard.world,
                    config.batch_size // shard.world, config.batch_size)
    if device.type != "cpu":
        logger.info("training on %s (%s), precision %s", device, torch.cuda.get_device_name(device), config.precision)

    validator = make_validator(config, method) if config.valid and config.valid_every and shard.main else None
    period = teacher_period(config, data_size)
    defaults = TrainConfig()
    # The EMA rate also sets the weight average of methods without a teacher.
    teacher_settings = ("teacher_update", "teacher_every", "teacher_reuse", "teacher_start", "teacher_steps",
                        "teacher_steps_start")
    changed = [name for name in teacher_settings if getattr(config, name) != getattr(defaults, name)]
    if teacher is None and changed:
        flags = ", ".join("--" + name.replace("_", "-") for name in changed)
        logger.warning("method %s has no teacher, so %s %s no effect", method.name, flags,
                       "has" if len(changed) == 1 else "have")
    if teacher is not None:
        update = "EMA" if config.teacher_update == "ema" else "replaced by the student"
        logger.info("teacher: %s every %d step%s (started from %s)", update, period, "" if period == 1 else "s",
                    config.init or "random weights")
        warn_slow_teacher(config, period)
        if reuse is not None:
            logger.info("each teacher separation serves %d steps, remixed with a new shuffle at each", reuse.steps)
    else:
        warn_slow_average(config, run)
    stop = StopRequest()
    batches = BatchSource(data, config, shard, device,
                          ahead=4 if device.type == "cuda" and isinstance(data, AudioCrops) else 0,
                          stride=reuse.steps if reuse is not None else 1)
    metrics_file = (run / "metrics.jsonl").open("a") if shard.main else open(os.devnull, "w")
    tensorboard = open_tensorboard(config, step) if shard.main else None
    consecutive_skips = 0
    window_loss, window_count, window_skipped, window_start = 0.0, 0, 0, time.perf_counter()
    # On a terminal a bar shows every step; the status lines below are the log's record either way.
    progress = Progress(config.steps - step, f"training {method.name}", unit="steps", status_seconds=None,
                        draw=shard.main).__enter__()
    try:
        while step < config.steps:
            started = time.perf_counter()
            student.train()
            context = StepContext(
                student=network_for_loss, teacher=teacher_for_loss, sources=config.sources, sigma=config.sigma,
                t_zero_fraction=config.t_zero_fraction,
                generator=seeded_generator(config.seed, 2, step), teacher_steps=teacher_steps_at(config, step),
                shuffle=config.shuffle, audio=config.sample_rate is not None,
            )
            if reuse is None:
                mixtures, references = batches.get(step)

            # NOTE: the CUDA path (device moves, NCCL, bf16 on a GPU) has not run on a GPU yet; only bf16
            # on the CPU is tested. scripts/gpu_check.py is the check to run on one.
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                if reuse is not None:
                    # The teacher separates a new block under the same precision as every other network call.
                    # Teacher methods train on mixtures alone, so there are no references to keep.
                    (mixtures, context.estimates), references = reuse.get(step, context, batches), None
                loss = method.loss(context, mixtures, references)

            optimizer.zero_grad(set_to_none=True)
            problem = None
            if not torch.isfinite(loss):
                problem = f"the loss is {loss.item()}"
            else:
                loss.backward()
                step_grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
                if not torch.isfinite(step_grad_norm):
                    problem = f"the gradient norm is {step_grad_norm.item()}"
                    optimizer.zero_grad(set_to_none=True)
            if problem is None:
                consecutive_skips = 0
                grad_norm = step_grad_norm
                optimizer.step()
                scheduler.step()
                step_loss = loss.item()
                window_loss += step_loss
                window_count += 1
            else:
                consecutive_skips += 1
                skipped += 1
                window_skipped += 1
                logger.warning("skipping step %d: %s, so the weights were not updated (%d step%s skipped in this run)",
                               step, problem, skipped, "" if skipped == 1 else "s")
            step += 1
            progress.update(1, detail=None if problem else f"loss {step_loss:.4g}")
            if teacher is not None and step % period == 0:
                update_teacher(teacher, student, config)
            if average is not None:
                ema_update(average, student, config.ema)
            seconds += time.perf_counter() - started
            if consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                # The checkpoint contains the state after this step, as a resumed run expects.
                first = step - consecutive_skips
                save_checkpoint()
                shard.barrier()
                raise TrainingError(
                    f"steps {first} to {step - 1} all had a non-finite loss or gradient, so training stopped. "
                    f"{run} holds a checkpoint at step {step} with the weights from before step {first}: resume "
                    f"it with the same command and a lower --learning-rate or --grad-clip, or check the data"
                )

            if window_count and (step % config.log_every == 0 or step == config.steps):
                rate = window_count / max(time.perf_counter() - window_start, 1e-9)
                record = {"step": step, "loss": window_loss / window_count, "grad_norm": float(grad_norm),
                          "lr": scheduler.get_last_lr()[0], "steps_per_second": rate, "seconds": seconds,
                          "skipped": window_skipped}
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                write_scalars(tensorboard, record)
                logger.info("step %d/%d loss %.5f, %.2f steps/s", step, config.steps, record["loss"], rate)
                window_loss, window_count, window_skipped, window_start = 0.0, 0, 0, time.perf_counter()

            if validator is not None and step % config.valid_every == 0:
                record = validator(step, student, teacher)
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                write_scalars(tensorboard, record)

            if step % config.checkpoint_every == 0 or step == config.steps:
                save_checkpoint()
            # A stop requested during the last step comes too late to matter: the run is complete.
            if shard.any(stop.requested) and step < config.steps:
                logger.warning("interrupted at step %d; saved a checkpoint to resume from", step)
                save_checkpoint()
                shard.barrier()
                raise KeyboardInterrupt
    finally:
        progress.close(finished=False)
        if tensorboard is not None:
            tensorboard.close()
        stop.restore()
        batches.close()
        metrics_file.close()

    if not (run / "model.json").exists():
        save_checkpoint()
    note = f" ({skipped} skipped for a non-finite loss or gradient)" if skipped else ""
    logger.info("finished %s: %d steps%s in %.1f s; model in %s", method.name, step, note, seconds, run)
    return run


def check_tensorboard(config: TrainConfig) -> None:
    """Raise TrainingError when ``config`` requests TensorBoard logging and tensorboardX is missing."""
    if config.tensorboard and importlib.util.find_spec("tensorboardX") is None:
        raise TrainingError(f"--tensorboard {config.tensorboard} needs the tensorboardX package: "
                            f"pip install tensorboardX, or pip install 'surfsep[tensorboard]'")


def open_tensorboard(config: TrainConfig, step: int):
    """Return a TensorBoard event writer into ``config.tensorboard``, or None when it is not set.

    A resumed run starts the writer at its checkpoint's ``step``, so TensorBoard drops the events
    that the stopped run wrote after it, as metrics.jsonl does.
    """
    if not config.tensorboard:
        return None
    check_tensorboard(config)
    from tensorboardX import SummaryWriter

    # tensorboardX names a file by the second it opens it and truncates an existing one, so a run
    # resumed within the same second would erase its first events without a suffix of its own.
    return SummaryWriter(config.tensorboard, purge_step=step or None, filename_suffix=f".step{step}.pid{os.getpid()}")


def write_scalars(writer, record: dict) -> None:
    """Write every number of a metrics.jsonl record to TensorBoard: train/NAME, or valid/NAME for scores."""
    if writer is None:
        return
    for key, value in record.items():
        if key in ("step", "valid_mixtures") or not isinstance(value, (int, float)):
            continue
        tag = "valid/" + key.removeprefix("valid_") if key.startswith("valid_") else "train/" + key
        writer.add_scalar(tag, value, record["step"])
    writer.flush()


def make_validator(config: TrainConfig, method: Method):
    """Return a function that scores the student (and teacher) on the references of ``config.valid``.

    Images are scored by mean PSNR and SSIM, audio by mean SI-SDRi.
    """
    from surfsep.models import AudioSeparator, Separator

    if config.sample_rate is not None:
        from surfsep.evaluate_audio import evaluate_audio_separator

        reference_set = AudioReferenceSet.open(Path(config.valid), config.sources).first(config.valid_limit)

        def score(network: nn.Module, metadata: dict) -> dict[str, float]:
            rows = evaluate_audio_separator(AudioSeparator(network, metadata), reference_set, seed=config.seed,
                                            bss=False)
            return {"si_sdri": float(np.nanmean([row["si_sdri"] for row in rows]))}
    else:
        from surfsep.evaluate import evaluate_separator

        reference_set = ReferenceSet.open(Path(config.valid), config.sources).first(config.valid_limit)

        def score(network: nn.Module, metadata: dict) -> dict[str, float]:
            scores = evaluate_separator(Separator(network, metadata), reference_set, seed=config.seed)
            return {"psnr": float(scores["psnr"].mean()), "ssim": float(scores["ssim"].mean())}

    def validate(step: int, student: nn.Module, teacher: nn.Module | None) -> dict:
        record = {"step": step, "valid_mixtures": len(reference_set)}
        for role, network in (("student", student), ("teacher", teacher)):
            if network is None:
                continue
            metadata = model_metadata(config, method, 0, step, 0.0)
            if role == "teacher":
                metadata["sampler"]["steps"] = config.teacher_steps
            network.eval()
            for name, value in score(network, metadata).items():
                record[f"valid_{role}_{name}"] = value
        logger.info("step %d validation: %s", step, ", ".join(
            f"{key} {value:.3f}" for key, value in record.items() if key.startswith("valid_") and isinstance(value, float)))
        return record

    return validate
