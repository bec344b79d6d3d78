"""Release models: ``model.safetensors`` (weights) plus ``model.json`` (everything else).

``model.json`` names the network and its keyword arguments, the number of sources, the mixture
convention of the files, the flow's noise scale and the sampler defaults, and how the model was
trained. Loading never unpickles anything.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from surfsep import flow
from surfsep.data.audio_sets import SILENT_RMS
from surfsep.files import atomic_path, atomic_write_json
from surfsep.networks import build_network
from surfsep.traced import ShapeTraced

logger = logging.getLogger(__name__)

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


BUILTIN_PREFIX = "builtin:"


def builtin_root() -> Path:
    """Return the folder of the models shipped inside the package, one subfolder per name."""
    return Path(str(resources.files("surfsep").joinpath("builtin")))


def builtin_models() -> list[str]:
    root = builtin_root()
    if not root.is_dir():
        return []
    return sorted(folder.name for folder in root.iterdir() if (folder / "model.json").is_file())


def resolve_model_folder(path: Path) -> Path:
    """Accept a run or model folder, its model.json, or ``builtin:NAME``, and return the folder holding both files."""
    text = str(path)
    if text.startswith(BUILTIN_PREFIX) and not Path(text).exists():
        name = text[len(BUILTIN_PREFIX):]
        available = builtin_models()
        if name not in available:
            raise ModelError(f"no built-in model {name!r}; available: "
                             f"{', '.join(BUILTIN_PREFIX + item for item in available) or 'none in this installation'}")
        path = builtin_root() / name
    path = Path(path)
    folder = path.parent if path.name == "model.json" else path
    if not (folder / "model.json").is_file():
        raise ModelError(f"no model.json in {folder}; pass a folder written by `surfsep train`")
    if not (folder / "model.safetensors").is_file():
        raise ModelError(f"{folder} has model.json but no model.safetensors; the model is incomplete")
    return folder


# The first byte of a pickle (protocol 2 and later), as in PyTorch's .pt and .pth files.
PICKLE_MAGIC = b"\x80"


def check_metadata(metadata, path: Path) -> None:
    """Raise ModelError unless ``metadata`` has every entry a separator needs, with a usable type and value."""
    def fail(problem: str) -> None:
        raise ModelError(f"{path} {problem}; the model folder is damaged or was not written by surfsep")

    if not isinstance(metadata, dict):
        fail(f"holds a JSON {type(metadata).__name__}, not an object")
    if metadata.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path} is not a surfsep model (format {metadata.get('format')!r})")
    version = metadata.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        fail(f"has format_version {version!r}, not a whole number")
    if version > MODEL_FORMAT_VERSION:
        raise ModelError(f"{path} has format version {version}; this surfsep reads up to {MODEL_FORMAT_VERSION}, "
                         f"so upgrade surfsep")
    network = metadata.get("network")
    if not isinstance(network, dict) or not isinstance(network.get("name"), str) \
            or not isinstance(network.get("kwargs"), dict):
        fail("lacks the network entry, {\"name\": ..., \"kwargs\": {...}}")
    sources = metadata.get("sources")
    if not isinstance(sources, int) or isinstance(sources, bool) or sources < 1:
        fail(f"has sources {sources!r}, not a positive whole number")
    sigma = metadata.get("sigma")
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0 or sigma == float("inf"):
        fail(f"has sigma {sigma!r}, not a positive number")
    sampler = metadata.get("sampler")
    if not isinstance(sampler, dict) or not isinstance(sampler.get("steps"), int) or sampler["steps"] < 1:
        fail("lacks the sampler entry with a positive whole number of steps")
    if sampler.get("solver", "euler") not in ("euler", "heun"):
        fail(f"has the unknown sampler solver {sampler.get('solver')!r}")
    if metadata.get("mixture", "mean") not in MIXTURE_CONVENTIONS:
        fail(f"has mixture {metadata.get('mixture')!r}, not one of {', '.join(MIXTURE_CONVENTIONS)}")
    modality = metadata.get("modality", "image")
    if modality not in ("image", "audio"):
        fail(f"has modality {modality!r}, not image or audio")
    if modality == "audio":
        rate = metadata.get("sample_rate")
        if not isinstance(rate, int) or isinstance(rate, bool) or rate < 1:
            fail(f"has sample_rate {rate!r}, not a positive whole number of Hz")


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Read the tensor names and shapes from a safetensors header; a pickle in its place is rejected, never unpickled."""
    with open(path, "rb") as stream:
        start = stream.read(1)
    if start == PICKLE_MAGIC:
        raise ModelError(f"{path} is a pickle (as PyTorch's .pt files are), not safetensors; surfsep never loads "
                         f"pickles, because they can run code. Convert trusted weights with safetensors.torch.save_file")
    try:
        with safe_open(path, framework="pt") as weights:
            return {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise ModelError(f"{path} is not a readable safetensors file ({error}); the model is damaged") from error


def check_shapes(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], path: Path) -> None:
    """Raise ModelError naming the missing, unexpected and misshapen tensors of ``found``."""
    problems = [f"missing {name}" for name in expected if name not in found]
    problems += [f"unexpected {name}" for name in found if name not in expected]
    problems += [f"{name} has shape {list(found[name])}, the network needs {list(shape)}"
                 for name, shape in expected.items() if name in found and found[name] != shape]
    if problems:
        listed = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ModelError(f"weights in {path} do not fit the network in model.json: {listed}")


def build_described_network(metadata: dict, path: Path, device: str = "cpu") -> nn.Module:
    """Build the network that model.json names; ``device="meta"`` builds it without allocating its weights."""
    try:
        with torch.device(device):
            return build_network(metadata["network"]["name"], metadata["network"]["kwargs"])
    except (ValueError, TypeError, RuntimeError) as error:
        raise ModelError(f"{path} describes a network this surfsep cannot build ({error}); "
                         f"upgrade surfsep or check the file") from error


def load_model(path: Path) -> tuple[nn.Module, dict]:
    """Load a release model folder; returns the network in eval mode and its metadata.

    The network is first built without memory (on PyTorch's meta device) and its tensor shapes are
    compared with the safetensors header, so a damaged or hostile model.json cannot make surfsep
    allocate a network that its weights do not fill.
    """
    folder = resolve_model_folder(path)
    description, weights_path = folder / "model.json", folder / "model.safetensors"
    try:
        metadata = json.loads(description.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"{description} is not valid JSON: {error}") from error
    check_metadata(metadata, description)
    expected = {name: tuple(tensor.shape)
                for name, tensor in build_described_network(metadata, description, "meta").state_dict().items()}
    check_shapes(expected, weight_shapes(weights_path), weights_path)
    network = build_described_network(metadata, description)
    try:
        network.load_state_dict(load_file(weights_path))
    except Exception as error:  # the header was readable, so this is damaged tensor data
        raise ModelError(f"weights in {weights_path} cannot be read ({error}); the model is damaged") from error
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
    # Input sample rates above the model's already warned about, so each is reported once.
    warned_rates: set[int] = field(default_factory=set, repr=False, compare=False)

    @property
    def sources(self) -> int:
        return int(self.metadata["sources"])

    @property
    def default_steps(self) -> int:
        return int(self.metadata["sampler"]["steps"])

    @property
    def device(self) -> torch.device:
        """The device the network runs on (the CPU for a plain callable); inputs and outputs stay on the CPU."""
        parameters = getattr(self.network, "parameters", None)
        first = next(parameters(), None) if parameters is not None else None
        return torch.device("cpu") if first is None else first.device

    def to(self, device: str | torch.device) -> "Separator":
        """Move the network to ``device`` (such as "cuda"); returns the separator."""
        self.network.to(device)
        self.traced = None
        return self

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
            estimates = flow.sample(self.network, chunk.to(self.device), self.sources, steps, sigma, solver=solver,
                                    x0=x0.to(self.device))
            outputs.append(estimates.cpu())
        return torch.cat(outputs).squeeze(2)


def noise_generator(seed: int, mixture: torch.Tensor) -> torch.Generator:
    """A generator seeded by ``seed`` and the CRC-32 of the mixture's float32 values."""
    checksum = zlib.crc32(mixture.detach().to(torch.float32).contiguous().numpy().tobytes())
    state = np.random.SeedSequence([seed, checksum]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> 1))


def resample_waveform(signal: np.ndarray, old_rate: int, new_rate: int, length: int | None = None) -> np.ndarray:
    """Resample float32 (L,) or (K, L) along the last axis with soxr; then trim or zero-pad to ``length``."""
    import soxr

    if old_rate != new_rate:
        logger.info("resampling from %d Hz to %d Hz", old_rate, new_rate)
        signal = soxr.resample(np.ascontiguousarray(signal.T), old_rate, new_rate, quality="HQ").T
    signal = np.asarray(signal, dtype=np.float32)
    if length is not None and signal.shape[-1] != length:
        fitted = np.zeros(signal.shape[:-1] + (length,), dtype=np.float32)
        copied = min(length, signal.shape[-1])
        fitted[..., :copied] = signal[..., :copied]
        signal = fitted
    return np.ascontiguousarray(signal)


# More channels than this on the first axis, with at most this many on the second, means (frames, channels).
MAX_CHANNELS = 64
DEFAULT_CHUNK_SECONDS = 4.0
DEFAULT_OVERLAP_SECONDS = 1.0


class AudioSeparator(Separator):
    """A trained separator for single-channel audio at the model's ``sample_rate``.

    Waveforms of any length are cut into overlapping chunks, each chunk is scaled to unit RMS
    (the scale the model was trained at), separated, scaled back and overlap-added with the
    source order aligned between neighbouring chunks (``surfsep.longform``). The K estimates add
    up to the mixture.
    """

    @property
    def sample_rate(self) -> int:
        return int(self.metadata["sample_rate"])

    def chunk_separator(self, steps: int, seed: int, solver: str):
        """Return ``separate_chunks``: (N, L) float32 chunks at the model's rate to (N, K, L) estimates."""
        sigma = float(self.metadata["sigma"])
        # Kept between calls, so that every file separated with this separator reuses the traces.
        if getattr(self, "traced", None) is None:
            self.traced = ShapeTraced(self.network)
        network = self.traced

        @torch.inference_mode()
        def separate_chunks(chunks: torch.Tensor) -> torch.Tensor:
            chunks = chunks.to(torch.float32)
            rms = chunks.pow(2).mean(dim=-1).sqrt()
            silent = rms <= SILENT_RMS
            scale = torch.where(silent, torch.ones_like(rms), rms)
            scaled = chunks / scale[:, None]
            x0 = torch.cat([
                flow.start_point(item.unsqueeze(0), self.sources, sigma, noise_generator(seed, item)) for item in scaled
            ])
            estimates = flow.sample(network, scaled.to(self.device), self.sources, steps, sigma, solver=solver,
                                    x0=x0.to(self.device)).cpu()
            estimates = estimates * scale[:, None, None]
            # A silent chunk has nothing to separate; every source gets an equal share of it.
            equal_share = (chunks / self.sources).unsqueeze(1).expand_as(estimates)
            return torch.where(silent[:, None, None], equal_share, estimates)

        return separate_chunks

    def resolve_sampler(self, steps: int | None, solver: str | None) -> tuple[int, str]:
        steps = self.default_steps if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if self.metadata.get("one_step", False):
            steps = 1
        return steps, solver or self.metadata["sampler"].get("solver", "euler")

    @torch.no_grad()
    def separate(
        self,
        mixture,
        sample_rate: int | None = None,
        steps: int | None = None,
        seed: int = 0,
        solver: str | None = None,
        batch_size: int = 8,
        channels: str = "mix",
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
        overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
    ) -> torch.Tensor:
        """Separate a waveform (L,) or (C, L) at ``sample_rate`` Hz; returns (K, L), or (C, K, L) for ``channels="split"``.

        Multi-channel input is downmixed to mono by the channel mean (``channels="mix"``) or
        separated channel by channel (``"split"``). Input at another rate than the model's is
        resampled to it (soxr) and the estimates resampled back, so they have the input's rate and
        length. ``batch_size`` chunks of ``chunk_seconds`` run per network call.
        """
        from surfsep import longform

        if sample_rate is None or isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or sample_rate <= 0:
            raise ValueError(f"pass the waveform's sample_rate in Hz (this model runs at {self.sample_rate}); "
                             f"got {sample_rate!r}")
        if channels not in ("mix", "split"):
            raise ValueError(f"channels must be 'mix' or 'split', got {channels!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        waveform = torch.as_tensor(np.asarray(mixture) if not torch.is_tensor(mixture) else mixture)
        if not waveform.is_floating_point():
            raise ValueError(f"the waveform must be floating point in [-1, 1], got {waveform.dtype}; "
                             f"divide 16-bit samples by 32768")
        if waveform.dim() == 1:
            waveform = waveform.unsqueeze(0)
        if waveform.dim() != 2:
            raise ValueError(f"expected a waveform of shape (L,) or (C, L), got {tuple(waveform.shape)}")
        if waveform.shape[0] > MAX_CHANNELS and waveform.shape[1] <= MAX_CHANNELS:
            raise ValueError(
                f"got a waveform of shape {tuple(waveform.shape)}, which looks like (frames, channels) as "
                f"soundfile.read returns it; pass it transposed, as (channels, frames)"
            )
        if waveform.shape[-1] == 0 or waveform.shape[0] == 0:
            raise ValueError(f"the waveform is empty: shape {tuple(waveform.shape)}")
        if not torch.isfinite(waveform).all():
            raise ValueError("the waveform contains NaN or infinite values")

        steps, solver = self.resolve_sampler(steps, solver)
        chunk_frames = int(round(chunk_seconds * self.sample_rate))
        overlap_frames = int(round(overlap_seconds * self.sample_rate))
        if chunk_frames < 1 or not 0 <= overlap_frames < chunk_frames:
            raise ValueError(f"need chunk_seconds > overlap_seconds >= 0, got {chunk_seconds} and {overlap_seconds}")
        separate_chunks = self.chunk_separator(steps, seed, solver)

        if sample_rate > self.sample_rate and sample_rate not in self.warned_rates:
            self.warned_rates.add(sample_rate)
            logger.warning("the input runs at %d Hz but the model at %d Hz: the estimates hold only the band below "
                           "%d Hz and add up to the mixture within that band", sample_rate, self.sample_rate,
                           self.sample_rate // 2)
        waveform = waveform.to(torch.float32)
        signals = waveform.mean(dim=0, keepdim=True) if channels == "mix" else waveform
        results = []
        for signal in signals:
            at_model_rate = resample_waveform(signal.numpy(), int(sample_rate), self.sample_rate)
            estimates = longform.separate_waveform(separate_chunks, torch.from_numpy(at_model_rate), chunk_frames,
                                                   overlap_frames, batch_size, self.sources)
            back = resample_waveform(estimates.numpy(), self.sample_rate, int(sample_rate), length=signal.shape[-1])
            results.append(torch.from_numpy(back))
        return results[0] if channels == "mix" else torch.stack(results)


def load(path: str | Path, device: str | torch.device = "cpu") -> Separator:
    """Load a model folder written by ``surfsep train`` as a ``Separator`` (``AudioSeparator`` for audio).

    The network runs on ``device``, such as "cuda"; mixtures and estimates stay on the CPU.
    """
    check_device(device)
    network, metadata = load_model(Path(path))
    kind = AudioSeparator if metadata.get("modality", "image") == "audio" else Separator
    return kind(network=network, metadata=metadata).to(device)


def check_device(device: str | torch.device) -> None:
    """Raise ModelError unless ``device`` is the CPU or a CUDA GPU that this PyTorch can use."""
    name = str(device)
    try:
        device = torch.device(device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ModelError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    if device.type == "cpu":
        return
    if not torch.cuda.is_available():
        raise ModelError(f"device {device} needs a CUDA GPU, and PyTorch {torch.__version__} finds none; use cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelError(f"device {device} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
