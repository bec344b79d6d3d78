"""Slot-equivariant networks.

Every network maps ``(x, mixture, t)`` to a velocity of the shape of x, with t (B,). For images
x is (B, K, C, H, W) and the mixture (B, C, H, W); for audio x is (B, K, L) and the mixture
(B, L). Each slot runs through the same weights, and slots exchange information only through
the mean over slots. So permuting the input slots permutes the output slots, and the same
weights run with any K.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def time_features(t: torch.Tensor, size: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1], shape (B, size)."""
    half = size // 2
    frequency = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angle = 1000.0 * t.unsqueeze(1) * frequency.unsqueeze(0)
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def group_count(channels: int) -> int:
    for groups in (8, 4, 2):
        if channels % groups == 0:
            return groups
    return 1


class SlotBlock(nn.Module):
    """3x3 convolutions with FiLM from the time embedding, a slot-mean exchange and a residual path.

    The exchange adds ``conv1x1(mean over slots of h)`` to every slot's features: the only path
    by which slots see each other, and a symmetric one. ``convolutions`` is 1 by default because
    one convolution per block trained 1.25x faster per step than two on 2 CPU cores
    (scripts/bench_network.py, docs/benchmarks.md).
    """
    # NOTE: quality per CPU-second of one against two convolutions per block has not been compared.

    def __init__(self, in_channels: int, out_channels: int, embedding_size: int, convolutions: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.GroupNorm(group_count(out_channels), out_channels)
        self.film = nn.Linear(embedding_size, 2 * out_channels)
        self.exchange = nn.Conv2d(out_channels, out_channels, 1)
        self.extra = nn.ModuleList(
            nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1),
                          nn.GroupNorm(group_count(out_channels), out_channels), nn.SiLU())
            for _ in range(convolutions - 1)
        )
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, h: torch.Tensor, embedding: torch.Tensor, slots: int) -> torch.Tensor:
        # h: (B*K, C, H, W) with the K slots of one example adjacent; embedding: (B*K, E)
        out = self.norm(self.conv(h))
        scale, shift = self.film(embedding).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        out = F.silu(out * (1 + scale) + shift)

        grouped = out.reshape((-1, slots) + tuple(out.shape[1:]))
        slot_mean = grouped.mean(dim=1)
        out = (grouped + self.exchange(slot_mean).unsqueeze(1)).reshape(out.shape)

        for layer in self.extra:
            out = layer(out)
        return out + self.skip(h)


class SlotUNet(nn.Module):
    """A small U-Net run per slot, for single-channel images.

    Per slot the input is the slot's current value and the mixture (2 channels). Each width in
    ``channels`` is one resolution level, and the size halves between levels. Inputs whose
    sides are not divisible by ``2 ** (levels - 1)`` are padded by edge replication and cropped back.
    """

    def __init__(
        self,
        channels: tuple[int, ...] = (16, 32, 64),
        embedding_size: int = 64,
        image_channels: int = 1,
        block_convolutions: int = 1,
    ):
        super().__init__()
        if len(channels) < 1:
            raise ValueError("channels needs at least one width")
        if block_convolutions < 1:
            raise ValueError(f"block_convolutions must be at least 1, got {block_convolutions}")
        self.config = {"channels": list(channels), "embedding_size": embedding_size,
                       "image_channels": image_channels, "block_convolutions": block_convolutions}
        self.channels = tuple(channels)
        self.image_channels = image_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(embedding_size, embedding_size), nn.SiLU(), nn.Linear(embedding_size, embedding_size)
        )
        self.embedding_size = embedding_size

        self.stem = nn.Conv2d(2 * image_channels, channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsample = nn.ModuleList()
        previous = channels[0]
        for index, width in enumerate(channels):
            self.down_blocks.append(SlotBlock(previous, width, embedding_size, block_convolutions))
            previous = width
            if index < len(channels) - 1:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.middle = SlotBlock(previous, previous, embedding_size, block_convolutions)

        self.upsample = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for width in reversed(channels[:-1]):
            self.upsample.append(nn.Conv2d(previous, width, 3, padding=1))
            self.up_blocks.append(SlotBlock(2 * width, width, embedding_size, block_convolutions))
            previous = width
        self.head = nn.Conv2d(previous, image_channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, mixture: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch, slots = x.shape[:2]
        height, width = x.shape[-2:]
        multiple = 2 ** (len(self.channels) - 1)
        pad_h = (-height) % multiple
        pad_w = (-width) % multiple

        per_slot_mixture = mixture.unsqueeze(1).expand_as(x)
        h = torch.cat([x, per_slot_mixture], dim=2).reshape((batch * slots, -1, height, width))
        if pad_h or pad_w:
            h = F.pad(h, (0, pad_w, 0, pad_h), mode="replicate")

        embedding = self.time_mlp(time_features(t, self.embedding_size))
        embedding = embedding.repeat_interleave(slots, dim=0)

        h = self.stem(h)
        skips = []
        for index, block in enumerate(self.down_blocks):
            h = block(h, embedding, slots)
            if index < len(self.downsample):
                skips.append(h)
                h = self.downsample[index](h)
        h = self.middle(h, embedding, slots)
        for upsample, block in zip(self.upsample, self.up_blocks):
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([upsample(h), skip], dim=1), embedding, slots)

        out = self.head(h)[..., :height, :width]
        return out.reshape(x.shape)


class SlotTCNBlock(nn.Module):
    """One dilated depthwise-separable convolution block of a TCN, run per slot.

    1x1 convolution to ``hidden`` channels, FiLM from the time embedding and from the slot's
    features averaged over time, a slot-mean exchange, a dilated depthwise convolution and a 1x1
    convolution back, added to the input. The time average lets a slot act on something constant
    over the whole signal, such as a statistic of its start-point noise, so the choice of which
    source a slot takes can stay the same over time.
    """

    def __init__(self, channels: int, hidden: int, kernel: int, dilation: int, embedding_size: int):
        super().__init__()
        self.expand = nn.Conv1d(channels, hidden, 1)
        self.norm_in = nn.GroupNorm(1, hidden)
        self.film = nn.Linear(embedding_size, 2 * hidden)
        self.context = nn.Linear(hidden, 2 * hidden)
        self.exchange = nn.Conv1d(hidden, hidden, 1)
        self.depthwise = nn.Conv1d(hidden, hidden, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2,
                                   groups=hidden)
        self.norm_out = nn.GroupNorm(1, hidden)
        self.project = nn.Conv1d(hidden, channels, 1)

    def forward(self, h: torch.Tensor, embedding: torch.Tensor, slots: int) -> torch.Tensor:
        # h: (B*K, channels, frames) with the K slots of one example adjacent; embedding: (B*K, E)
        out = self.norm_in(self.expand(h))
        modulation = self.film(embedding) + self.context(out.mean(dim=-1))
        scale, shift = modulation.unsqueeze(-1).chunk(2, dim=1)
        out = F.silu(out * (1 + scale) + shift)

        grouped = out.reshape((-1, slots) + tuple(out.shape[1:]))
        out = (grouped + self.exchange(grouped.mean(dim=1)).unsqueeze(1)).reshape(out.shape)

        out = F.silu(self.norm_out(self.depthwise(out)))
        return h + self.project(out)


class SlotTasNet(nn.Module):
    """A Conv-TasNet-like waveform network run per slot, for single-channel audio.

    A learned filterbank (a strided 1-D convolution of ``filters`` channels, ``kernel`` samples
    long with 50% overlap) encodes the slot's current waveform and the mixture. Their sum goes
    through a TCN of ``repeats`` stacks of ``blocks`` dilated blocks (dilations 1, 2, 4, ...),
    and a transposed convolution decodes the velocity waveform. Inputs of any length are padded
    at the end to a multiple of the stride and cropped back.
    """

    def __init__(
        self,
        filters: int = 64,
        bottleneck: int = 64,
        hidden: int = 128,
        blocks: int = 6,
        repeats: int = 2,
        kernel: int = 16,
        tcn_kernel: int = 3,
        embedding_size: int = 64,
    ):
        super().__init__()
        if kernel < 2 or kernel % 2:
            raise ValueError(f"kernel must be an even number of samples of at least 2, got {kernel}")
        if min(filters, bottleneck, hidden, blocks, repeats) < 1:
            raise ValueError("filters, bottleneck, hidden, blocks and repeats must be at least 1")
        self.config = {"filters": filters, "bottleneck": bottleneck, "hidden": hidden, "blocks": blocks,
                       "repeats": repeats, "kernel": kernel, "tcn_kernel": tcn_kernel,
                       "embedding_size": embedding_size}
        self.stride = kernel // 2
        self.embedding_size = embedding_size
        self.time_mlp = nn.Sequential(
            nn.Linear(embedding_size, embedding_size), nn.SiLU(), nn.Linear(embedding_size, embedding_size)
        )
        self.encode_slot = nn.Conv1d(1, filters, kernel, stride=self.stride, bias=False)
        self.encode_mixture = nn.Conv1d(1, filters, kernel, stride=self.stride, bias=False)
        self.norm = nn.GroupNorm(1, filters)
        self.bottleneck = nn.Conv1d(filters, bottleneck, 1)
        self.blocks = nn.ModuleList(
            SlotTCNBlock(bottleneck, hidden, tcn_kernel, 2**index, embedding_size)
            for _ in range(repeats) for index in range(blocks)
        )
        self.head = nn.Conv1d(bottleneck, filters, 1)
        self.decode = nn.ConvTranspose1d(filters, 1, kernel, stride=self.stride, bias=False)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, mixture: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch, slots, length = x.shape
        # Pad so that the frames cover every sample and the decoder returns at least ``length``.
        padded = max(length, self.stride * 2)
        # Not +=: under tracing, padded may be the same size object as length, and length must not change.
        padded = padded + (-padded) % self.stride
        padding = padded - length + self.stride
        x_padded = F.pad(x.reshape(batch * slots, 1, length), (0, padding))
        mixture_padded = F.pad(mixture.reshape(batch, 1, length), (0, padding))

        embedding = self.time_mlp(time_features(t, self.embedding_size)).repeat_interleave(slots, dim=0)
        mixture_code = self.encode_mixture(mixture_padded).repeat_interleave(slots, dim=0)
        h = self.bottleneck(self.norm(self.encode_slot(x_padded) + mixture_code))
        for block in self.blocks:
            h = block(h, embedding, slots)

        out = self.decode(self.head(h))
        return out[..., :length].reshape(batch, slots, length)


NETWORKS = {"slot-unet": SlotUNet, "slot-tasnet": SlotTasNet}


def build_network(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Instantiate a registered network from its name and keyword arguments (as stored in model.json)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; available: {', '.join(sorted(NETWORKS))}")
    if name == "slot-unet" and "channels" in kwargs:
        kwargs = dict(kwargs, channels=tuple(kwargs["channels"]))
    return NETWORKS[name](**kwargs)
