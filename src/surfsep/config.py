"""Training configuration: one dataclass, filled from defaults, an optional YAML file and the CLI."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

# Fields that may change when a run is resumed; every other field must match the saved config. A
# diverging run can continue with a lower learning rate or gradient clip.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every", "valid_every", "valid_limit", "threads",
                     "learning_rate", "grad_clip", "device", "precision", "tensorboard")


@dataclass
class TrainConfig:
    """Everything that decides a training run. Steps count optimiser updates of ``batch_size`` mixtures."""

    method: str = "surf"
    variant: str | None = None
    data: str = ""
    out: str = ""
    sources: int = 2
    mixture: str | None = None
    sample_rate: int | None = None
    segment_seconds: float | None = None
    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    grad_clip: float = 1.0
    sigma: float = 0.5
    t_zero_fraction: float = 0.0
    ema: float = 0.999
    teacher_steps: int = 1
    teacher_steps_start: int = 0
    teacher_update: str = "ema"
    teacher_every: int = 1
    teacher_reuse: int = 1
    teacher_start: str = "init"
    shuffle: str = "constrained"
    init: str | None = None
    network: str | None = None
    channels: list[int] | None = None
    sampler_steps: int | None = None
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 50
    valid: str | None = None
    valid_every: int = 0
    valid_limit: int = 250
    tensorboard: str | None = None
    threads: int | None = None
    device: str = "cpu"
    precision: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def teacher_steps_at(config: TrainConfig, step: int) -> int:
    """Return the Euler steps of the teacher's separation at training step ``step``."""
    return config.teacher_steps if step >= config.teacher_steps_start else 1


def config_fields() -> dict[str, dataclasses.Field]:
    return {item.name: item for item in dataclasses.fields(TrainConfig)}


INTEGER_FIELDS = {"sources", "sample_rate", "steps", "batch_size", "warmup_steps", "teacher_steps", "teacher_steps_start",
                  "teacher_every", "teacher_reuse", "sampler_steps", "seed",
                  "checkpoint_every", "log_every", "valid_every", "valid_limit", "threads"}
FLOAT_FIELDS = {"segment_seconds", "learning_rate", "grad_clip", "sigma", "t_zero_fraction", "ema"}
OPTIONAL_FIELDS = {"variant", "mixture", "sample_rate", "segment_seconds", "init", "network", "channels",
                   "sampler_steps", "valid", "threads", "tensorboard"}

# Settings left unset (None) take these values for the modality of the training data.
MODALITY_DEFAULTS = {
    "image": {"mixture": "mean", "network": "slot-unet"},
    "audio": {"mixture": "sum", "network": "slot-tasnet", "segment_seconds": 2.0},
}
NETWORK_CHANNELS = {"slot-unet": [16, 32, 64], "slot-tasnet": [64, 64, 128]}


def coerce_setting(name: str, value, source: str):
    """Convert a setting read from a file to its field's type; raise ValueError naming it otherwise."""
    if value is None and name in OPTIONAL_FIELDS:
        return None
    try:
        if name in INTEGER_FIELDS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if name in FLOAT_FIELDS:
            if isinstance(value, bool):
                raise ValueError
            return float(value)  # PyYAML reads 1e-3 (no dot) as a string
        if name == "channels":
            widths = value if isinstance(value, list) else [value]
            if any(isinstance(width, bool) for width in widths):
                raise ValueError
            return [int(width) for width in widths]
    except (TypeError, ValueError):
        if name in INTEGER_FIELDS:
            expected = "an integer"
        elif name in FLOAT_FIELDS:
            expected = "a number"
        else:
            expected = "a list of integers"
        raise ValueError(f"{source}: {name} must be {expected}, got {value!r}") from None
    if not isinstance(value, str):
        raise ValueError(f"{source}: {name} must be a string, got {value!r}")
    return value


def load_yaml_overrides(path: Path) -> dict:
    """Read a YAML mapping of TrainConfig fields, converted to their types; unknown keys raise ValueError."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read config file {path}: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must contain a mapping of settings, got {type(values).__name__}")
    unknown = sorted(str(key) for key in set(values) - set(config_fields()))
    if unknown:
        raise ValueError(f"config file {path} has unknown settings: {', '.join(unknown)}")
    return {name: coerce_setting(name, value, f"config file {path}") for name, value in values.items()}


def validate_config(config: TrainConfig) -> None:
    """Raise ValueError naming the first setting that cannot work."""
    checks = [
        (config.sources >= 1, f"--sources must be at least 1, got {config.sources}"),
        (config.steps >= 1, f"--steps must be at least 1, got {config.steps}"),
        (config.seed >= 0, f"--seed must be 0 or more, got {config.seed}"),
        (config.batch_size >= 2, f"--batch-size must be at least 2, got {config.batch_size}"),
        (config.learning_rate > 0, f"--learning-rate must be positive, got {config.learning_rate}"),
        (config.warmup_steps >= 0, f"--warmup-steps must be 0 or more, got {config.warmup_steps}"),
        (config.sigma > 0, f"--sigma must be positive, got {config.sigma}"),
        (0.0 <= config.t_zero_fraction < 1.0, f"--t-zero-fraction must be in [0, 1), got {config.t_zero_fraction}"),
        (0.0 <= config.ema < 1.0, f"--ema must be in [0, 1), got {config.ema}"),
        (config.teacher_steps >= 1, f"--teacher-steps must be at least 1, got {config.teacher_steps}"),
        (config.teacher_steps_start >= 0,
         f"--teacher-steps-start must be 0 or more, got {config.teacher_steps_start}"),
        (config.teacher_update in ("ema", "replace"),
         f"--teacher-update must be 'ema' or 'replace', got {config.teacher_update!r}"),
        (config.teacher_every >= 0, f"--teacher-every must be 0 (once per epoch) or more, got {config.teacher_every}"),
        (config.teacher_reuse >= 1, f"--teacher-reuse must be at least 1, got {config.teacher_reuse}"),
        (config.teacher_start in ("init", "scratch"),
         f"--teacher-start must be 'init' or 'scratch', got {config.teacher_start!r}"),
        (config.shuffle in ("constrained", "free"), f"--shuffle must be 'constrained' or 'free', got {config.shuffle!r}"),
        (config.mixture in (None, "mean", "sum"), f"--mixture must be 'mean' or 'sum', got {config.mixture!r}"),
        (config.sample_rate is None or config.sample_rate >= 1000,
         f"--sample-rate must be at least 1000 Hz, got {config.sample_rate}"),
        (config.segment_seconds is None or config.segment_seconds > 0,
         f"--segment-seconds must be positive, got {config.segment_seconds}"),
        (config.checkpoint_every >= 1, f"--checkpoint-every must be at least 1, got {config.checkpoint_every}"),
        (config.log_every >= 1, f"--log-every must be at least 1, got {config.log_every}"),
        (config.channels is None or (len(config.channels) >= 1 and min(config.channels) >= 1),
         f"--channels must be positive widths, got {config.channels}"),
        (config.sampler_steps is None or config.sampler_steps >= 1, f"--sampler-steps must be at least 1, got {config.sampler_steps}"),
        (config.threads is None or config.threads >= 1, f"--threads must be at least 1, got {config.threads}"),
        (re.fullmatch(r"cpu|cuda(:\d+)?", config.device) is not None,
         f"--device must be cpu, cuda or cuda:N, got {config.device!r}"),
        (config.precision in (None, "fp32", "bf16"), f"--precision must be fp32 or bf16, got {config.precision!r}"),
        (config.valid_every >= 0, f"--valid-every must be 0 or more, got {config.valid_every}"),
        (config.valid_limit >= 1, f"--valid-limit must be at least 1, got {config.valid_limit}"),
        (bool(config.data), "--data is required: a folder of mixtures, or a split folder with mix/"),
        (bool(config.out), "--out is required: the run folder to write"),
    ]
    for passed, message in checks:
        if not passed:
            raise ValueError(message)

    # Imported here because the methods and networks import torch, which a dry run need not load early.
    from surfsep.methods import get_method
    from surfsep.networks import NETWORKS

    method = get_method(config.method, config.variant)
    if config.network is not None and config.network not in NETWORKS:
        raise ValueError(f"unknown network {config.network!r}; available: {', '.join(sorted(NETWORKS))}")
    if config.network == "slot-tasnet" and config.channels is not None and len(config.channels) != 3:
        raise ValueError(
            f"--channels for slot-tasnet are 3 widths (filterbank, bottleneck, hidden), got {config.channels}"
        )
    if method.needs_teacher and config.teacher_start == "init" and not config.init:
        raise ValueError(
            f"method {method.name} starts its teacher from a trained separator: pass --init RUN "
            f"with a mixit run (train one with `surfsep train --method mixit`), or --teacher-start scratch"
        )
    if config.teacher_start == "scratch" and config.init:
        raise ValueError(f"--teacher-start scratch starts from random weights, so it cannot take --init {config.init}; "
                         f"drop one of the two")


def resolve_for_modality(config: TrainConfig, modality: str) -> TrainConfig:
    """Fill the settings left unset with the defaults of ``modality`` ("image" or "audio")."""
    values = {name: value for name, value in MODALITY_DEFAULTS[modality].items() if getattr(config, name) is None}
    resolved = dataclasses.replace(config, **values)
    if resolved.channels is None:
        resolved = dataclasses.replace(resolved, channels=list(NETWORK_CHANNELS[resolved.network]))
    if modality == "image" and (resolved.sample_rate is not None or resolved.segment_seconds is not None):
        raise ValueError("--sample-rate and --segment-seconds apply to audio data; this data set contains images")
    expected = {"image": "slot-unet", "audio": "slot-tasnet"}[modality]
    if resolved.network != expected:
        raise ValueError(f"network {resolved.network} does not take {modality} input; use {expected}")
    return resolved


def network_kwargs(config: TrainConfig) -> dict:
    """Keyword arguments of the network from the resolved ``channels``."""
    if config.network == "slot-tasnet":
        filters, bottleneck, hidden = config.channels
        return {"filters": filters, "bottleneck": bottleneck, "hidden": hidden}
    return {"channels": list(config.channels)}
