"""Release models: ``model.safetensors`` (weights) plus ``model.json`` (everything else).

``model.json`` names the network and its keyword arguments, the number of sources, the mixture
convention of the files, the flow's noise scale and the sampler defaults, and how the model was
trained. Loading never unpickles anything.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from surfsep import flow
from surfsep.files import atomic_path, atomic_write_json
from surfsep.networks import build_network

MODEL_FORMAT = "surfsep-model"
MODEL_FORMAT_VERSION = 1
MIXTURE_CONVENTIONS = ("mean", "sum")


class ModelError(ValueError):
    """A model folder or file that cannot be loaded; the message names it."""


def save_model(folder: Path, network: nn.Module, metadata: dict) -> None:
    """Write the network's weights and ``metadata`` (which must hold the network name) to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as temporary:
        save_file(weights, temporary, metadata={"format": MODEL_FORMAT})
    document = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, **metadata}
    document["network"] = {"name": metadata["network"]["name"], "kwargs": network.config}
    atomic_write_json(folder / "model.json", document)


def resolve_model_folder(path: Path) -> Path:
    """Accept a run or model folder, or its model.json, and return the folder holding both files."""
    path = Path(path)
    folder = path.parent if path.name == "model.json" else path
    if not (folder / "model.json").is_file():
        raise ModelError(f"no model.json in {folder}; pass a folder written by `surfsep train`")
    if not (folder / "model.safetensors").is_file():
        raise ModelError(f"{folder} has model.json but no model.safetensors; the model is incomplete")
    return folder


def load_model(path: Path) -> tuple[nn.Module, dict]:
    """Load a release model folder; returns the network in eval mode and its metadata."""
    folder = resolve_model_folder(path)
    try:
        metadata = json.loads((folder / "model.json").read_text())
    except json.JSONDecodeError as error:
        raise ModelError(f"{folder / 'model.json'} is not valid JSON: {error}") from error
    if metadata.get("format") != MODEL_FORMAT:
        raise ModelError(f"{folder / 'model.json'} is not a surfsep model (format {metadata.get('format')!r})")
    if metadata.get("format_version", 0) > MODEL_FORMAT_VERSION:
        raise ModelError(
            f"{folder / 'model.json'} has format version {metadata['format_version']}; "
            f"this surfsep reads up to {MODEL_FORMAT_VERSION}, so upgrade surfsep"
        )
    network = build_network(metadata["network"]["name"], metadata["network"]["kwargs"])
    try:
        network.load_state_dict(load_file(folder / "model.safetensors"))
    except (RuntimeError, OSError) as error:
        raise ModelError(f"weights in {folder / 'model.safetensors'} do not fit the network: {error}") from error
    network.eval()
    return network, metadata


@dataclass
class Separator:
    """A trained separator for single-channel images.

    ``separate`` takes mixtures in the files' convention (``mixture`` in model.json: the mean or
    the sum of the sources) and returns K source estimates that add up, under that convention,
    to the mixture.
    """

    network: nn.Module
    metadata: dict

    @property
    def sources(self) -> int:
        return int(self.metadata["sources"])

    @property
    def default_steps(self) -> int:
        return int(self.metadata["sampler"]["steps"])

    def mixture_scale(self) -> float:
        """Factor from a file mixture to the internal sum-of-sources mixture."""
        return float(self.sources) if self.metadata.get("mixture", "mean") == "mean" else 1.0

    @torch.no_grad()
    def separate(
        self,
        mixture: torch.Tensor,
        sample_rate: int | None = None,
        steps: int | None = None,
        seed: int = 0,
        solver: str | None = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Separate (H, W), (N, H, W) or (N, 1, H, W) mixtures; returns (N, K, H, W) estimates.

        Mixtures are floats, in [0, 1] for images read from files. ``sample_rate`` must be None for
        image models. ``steps`` defaults to the model's sampler steps; a model trained in one-step
        mode always uses 1. The start-point noise of each mixture is seeded by ``seed`` and the
        mixture's values, so a mixture gets the same estimates (up to float rounding) whatever
        else is in the call. Estimates are not clipped.
        """
        if sample_rate is not None:
            raise ValueError(f"this is an image model; pass sample_rate=None, not {sample_rate}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        mixture = torch.as_tensor(mixture)
        if not mixture.is_floating_point():
            raise ValueError(
                f"mixtures must be floating point (image values in [0, 1]), got {mixture.dtype}; "
                f"divide 8-bit images by 255"
            )
        mixture = mixture.to(torch.float32)
        if mixture.dim() == 2:
            mixture = mixture.unsqueeze(0)
        if mixture.dim() == 3:
            mixture = mixture.unsqueeze(1)
        if mixture.dim() != 4 or mixture.shape[1] != 1:
            raise ValueError(f"expected mixtures of shape (H, W), (N, H, W) or (N, 1, H, W); got {tuple(mixture.shape)}")
        if mixture.shape[0] == 0:
            raise ValueError("no mixtures given: the batch axis has length 0")
        if not torch.isfinite(mixture).all():
            raise ValueError("mixture contains NaN or infinite values")

        steps = self.default_steps if steps is None else int(steps)
        if self.metadata.get("one_step", False):
            steps = 1
        solver = solver or self.metadata["sampler"].get("solver", "euler")
        sigma = float(self.metadata["sigma"])

        internal = mixture * self.mixture_scale()
        outputs = []
        for start in range(0, internal.shape[0], batch_size):
            chunk = internal[start : start + batch_size]
            x0 = torch.cat([
                flow.start_point(item.unsqueeze(0), self.sources, sigma, noise_generator(seed, item)) for item in chunk
            ])
            outputs.append(flow.sample(self.network, chunk, self.sources, steps, sigma, solver=solver, x0=x0))
        return torch.cat(outputs).squeeze(2)


def noise_generator(seed: int, mixture: torch.Tensor) -> torch.Generator:
    """A generator seeded by ``seed`` and the CRC-32 of the mixture's float32 values."""
    checksum = zlib.crc32(mixture.detach().to(torch.float32).contiguous().numpy().tobytes())
    state = np.random.SeedSequence([seed, checksum]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> 1))


def load(path: str | Path) -> Separator:
    """Load a model folder written by ``surfsep train`` as a ``Separator``."""
    network, metadata = load_model(Path(path))
    return Separator(network=network, metadata=metadata)
