"""Separation of audio of any length in bounded memory: overlapping chunks, slot alignment, overlap-add.

A separator is given as ``separate_chunks(chunks) -> estimates``, mapping (N, L) float32 mono
chunks at the model's rate to (N, K, L) source estimates, with K the slot axis. The waveform is cut
into chunks of ``chunk_frames`` with hop ``chunk_frames - overlap_frames``, and the last chunk is
zero-padded. The slots of each chunk are put in the order of its predecessor's by the permutation
that maximises the normalised cross-correlation of their shared overlap. The aligned chunks are
then added with a crossfade window w, and every output sample is divided by the sum of the windows
that cover it:

    output[k, n] = sum_j w(n - s_j) * estimate_j[k, n - s_j] / sum_j w(n - s_j)

so the weights at every sample sum to one. Wherever each chunk's estimates sum over K to the chunk,
the output sums over K to the input waveform, up to float rounding.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from surfsep import interrupt
from surfsep.audio import AudioError, AudioWriter, audio_info, check_channel_mode, iter_audio
from surfsep.pit import best_permutation
from surfsep.progress import Progress

logger = logging.getLogger(__name__)

SeparateChunks = Callable[[torch.Tensor], torch.Tensor]

# Files longer than this many seconds get a log line with their chunk count and time.
LOG_LONGER_THAN_SECONDS = 60.0


def crossfade_window(chunk_frames: int, overlap_frames: int) -> np.ndarray:
    """Return a float64 window of ``chunk_frames``: raised-cosine ramps of ``overlap_frames`` at both ends, ones between.

    The ramps are ``sin^2`` and ``cos^2`` at half-sample offsets, so two copies shifted by the hop
    sum to one over their overlap when ``overlap_frames <= chunk_frames / 2``. Every value is
    positive, so the normalisation by the summed windows is defined for any overlap.
    """
    window = np.ones(chunk_frames, dtype=np.float64)
    if overlap_frames == 0:
        return window
    ramp = np.sin(0.5 * np.pi * (np.arange(overlap_frames) + 0.5) / overlap_frames) ** 2
    window[:overlap_frames] = np.minimum(window[:overlap_frames], ramp)
    window[chunk_frames - overlap_frames:] = np.minimum(window[chunk_frames - overlap_frames:], ramp[::-1])
    return window


def correlation_cost(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Return (1, K, K) costs ``-<current_i, previous_j> / (|current_i| |previous_j|)`` for (K, O) overlaps.

    A slot that is silent over the overlap gets cost 0 against every slot.
    """
    current = current.to(torch.float64)
    previous = previous.to(torch.float64)
    products = current @ previous.T
    norms = current.norm(dim=1)[:, None] * previous.norm(dim=1)[None, :]
    cost = -products / norms.clamp_min(torch.finfo(torch.float64).tiny)
    return cost.unsqueeze(0)


class ChunkedSeparator:
    """Stream separation: ``push`` mono blocks, get back the (K, n) output that no later chunk can change.

    Peak memory is bounded by ``batch_chunks`` chunks plus the pushed block, not by the stream's
    length. The outputs of all ``push`` calls and of ``finish`` concatenate to (K, L) for L pushed
    samples, equal to ``separate_waveform`` of the whole stream.
    """

    def __init__(self, separate_chunks: SeparateChunks, chunk_frames: int, overlap_frames: int,
                 batch_chunks: int, sources: int):
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be at least 1, got {chunk_frames}")
        if not 0 <= overlap_frames < chunk_frames:
            raise ValueError(
                f"overlap_frames must be at least 0 and less than chunk_frames ({chunk_frames}), got {overlap_frames}"
            )
        if batch_chunks < 1:
            raise ValueError(f"batch_chunks must be at least 1, got {batch_chunks}")
        if sources < 1:
            raise ValueError(f"sources must be at least 1, got {sources}")
        self.separate_chunks = separate_chunks
        self.chunk_frames = chunk_frames
        self.overlap_frames = overlap_frames
        self.hop_frames = chunk_frames - overlap_frames
        self.batch_chunks = batch_chunks
        self.sources = sources
        self.window = crossfade_window(chunk_frames, overlap_frames)

        self.received = 0                                    # samples pushed so far
        self.input = np.zeros(0, dtype=np.float32)           # pushed samples from input_start on
        self.input_start = 0
        self.next_start = 0                                  # start of the next chunk to cut
        self.ready: list[tuple[int, np.ndarray]] = []        # (start, chunk) cut but not yet separated
        self.numerator = np.zeros((sources, 0), dtype=np.float64)  # weighted estimates from emitted on
        self.denominator = np.zeros(0, dtype=np.float64)     # summed window weights from emitted on
        self.emitted = 0
        self.previous_tail: torch.Tensor | None = None       # last chunk's aligned (K, overlap) tail
        self.chunks = 0                                      # chunks separated so far
        self.finished = False

    def push(self, block: np.ndarray) -> np.ndarray:
        """Add (n,) samples; return the float32 (K, m) output finished so far (m may be 0)."""
        if self.finished:
            raise RuntimeError("push after finish; start a new ChunkedSeparator for a new stream")
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 1:
            raise ValueError(f"blocks must be mono with shape (frames,), got shape {block.shape}")
        self.input = np.concatenate([self.input, block])
        self.received += block.shape[0]

        pieces = []
        while self.next_start + self.chunk_frames <= self.received:
            offset = self.next_start - self.input_start
            self.ready.append((self.next_start, self.input[offset:offset + self.chunk_frames]))
            self.next_start += self.hop_frames
            if len(self.ready) == self.batch_chunks:
                self.run_batch()
                pieces.append(self.emit(self.next_start))
        self.input = self.input[self.next_start - self.input_start:]
        self.input_start = self.next_start
        return self.join(pieces)

    def finish(self) -> np.ndarray:
        """Separate what is left (zero-padding the last chunk) and return the rest of the output."""
        if self.finished:
            raise RuntimeError("finish called twice on one ChunkedSeparator")
        if self.received == 0:
            raise ValueError("no samples were pushed; separation needs at least one sample")
        self.finished = True

        covered = self.next_start - self.hop_frames + self.chunk_frames if self.next_start > 0 else 0
        if covered < self.received:
            tail = self.input[self.next_start - self.input_start:]
            chunk = np.zeros(self.chunk_frames, dtype=np.float32)
            chunk[:tail.shape[0]] = tail
            self.ready.append((self.next_start, chunk))
        if self.ready:
            self.run_batch()
        self.input = np.zeros(0, dtype=np.float32)
        return self.emit(self.received)

    def run_batch(self) -> None:
        """Separate the ready chunks, align each one's slots to its predecessor and add them to the output sums."""
        starts = [start for start, _ in self.ready]
        chunks = torch.from_numpy(np.stack([chunk for _, chunk in self.ready]))
        self.ready = []
        with torch.no_grad():
            estimates = self.separate_chunks(chunks)
        interrupt.raise_if_requested()
        expected = (chunks.shape[0], self.sources, self.chunk_frames)
        if not isinstance(estimates, torch.Tensor) or tuple(estimates.shape) != expected:
            shape = tuple(estimates.shape) if isinstance(estimates, torch.Tensor) else type(estimates).__name__
            raise ValueError(f"separate_chunks must return a tensor of shape {expected} (N, K, L), got {shape}")
        estimates = estimates.detach().to("cpu", torch.float32)
        if not torch.isfinite(estimates).all():
            raise ValueError(f"the separator returned NaN or infinite estimates for chunks starting at samples {starts}")

        for start, estimate in zip(starts, estimates):
            if self.previous_tail is not None and self.overlap_frames > 0:
                # NOTE: an overlap that is silent in every slot ties all costs, so the chunk keeps the
                # separator's slot order and the sources may swap slots across such a silence.
                cost = correlation_cost(estimate[:, :self.overlap_frames], self.previous_tail)
                estimate = estimate[best_permutation(cost)[0]]
            if self.overlap_frames > 0:
                self.previous_tail = estimate[:, self.chunk_frames - self.overlap_frames:].clone()
            self.add(start, estimate.numpy())
        self.chunks += len(starts)

    def add(self, start: int, estimate: np.ndarray) -> None:
        """Add a window-weighted (K, chunk_frames) estimate at absolute sample ``start``."""
        offset = start - self.emitted
        missing = offset + self.chunk_frames - self.denominator.shape[0]
        if missing > 0:
            self.numerator = np.concatenate([self.numerator, np.zeros((self.sources, missing))], axis=1)
            self.denominator = np.concatenate([self.denominator, np.zeros(missing)])
        self.numerator[:, offset:offset + self.chunk_frames] += self.window * estimate
        self.denominator[offset:offset + self.chunk_frames] += self.window

    def emit(self, end: int) -> np.ndarray:
        """Remove and return the normalised output up to absolute sample ``end``, as float32 (K, n)."""
        count = max(end - self.emitted, 0)
        output = (self.numerator[:, :count] / self.denominator[:count]).astype(np.float32)
        self.numerator = self.numerator[:, count:]
        self.denominator = self.denominator[count:]
        self.emitted += count
        return output

    def join(self, pieces: list[np.ndarray]) -> np.ndarray:
        if not pieces:
            return np.zeros((self.sources, 0), dtype=np.float32)
        return np.concatenate(pieces, axis=1)


def separate_stream(separate_chunks: SeparateChunks, blocks: Iterable[np.ndarray], chunk_frames: int,
                    overlap_frames: int, batch_chunks: int, sources: int) -> Iterator[np.ndarray]:
    """Separate a stream of mono (n,) blocks; yield float32 (K, m) output blocks as soon as they are final.

    The yielded blocks concatenate to ``separate_waveform`` of the concatenated input.
    """
    separator = ChunkedSeparator(separate_chunks, chunk_frames, overlap_frames, batch_chunks, sources)
    for block in blocks:
        output = separator.push(block)
        if output.shape[1]:
            yield output
    yield separator.finish()


def separate_waveform(separate_chunks: SeparateChunks, waveform: torch.Tensor, chunk_frames: int,
                      overlap_frames: int, batch_chunks: int, sources: int) -> torch.Tensor:
    """Separate a mono (L,) waveform of any length L >= 1 into float32 (K, L) source estimates."""
    if waveform.dim() != 1:
        raise ValueError(f"waveform must be mono with shape (frames,), got shape {tuple(waveform.shape)}")
    separator = ChunkedSeparator(separate_chunks, chunk_frames, overlap_frames, batch_chunks, sources)
    samples = waveform.detach().to("cpu", torch.float32).numpy()
    pieces = [separator.push(samples), separator.finish()]
    return torch.from_numpy(np.concatenate(pieces, axis=1))


def separate_file(separate_chunks: SeparateChunks, input_path: Path, outputs: list[Path], model_rate: int,
                  chunk_seconds: float, overlap_seconds: float, batch_chunks: int, channels: str = "mix",
                  subtype: str | None = None, progress: Progress | None = None) -> list[Path]:
    """Separate an audio file of any length into one file per source, at the input's rate and length.

    The input is streamed with ``iter_audio`` and resampled to ``model_rate``; the estimates are
    resampled back to the input's rate as a stream too, so every output has the input's frame
    count. (Estimates of an input above the model's rate carry nothing above ``model_rate / 2``.)
    ``channels="mix"`` separates the channel mean; ``"split"`` separates every channel on its own,
    and each output keeps the input's channel count. All K outputs are written to temporary files
    and renamed only after the whole input has been separated; existing files at the output paths
    are replaced then. ``subtype`` is as in ``write_audio``. ``progress`` counts the seconds of
    input separated. Returns ``outputs``.
    """
    check_channel_mode(channels)
    info = audio_info(input_path)
    outputs = [Path(path) for path in outputs]
    if not outputs:
        raise ValueError(f"no output paths given for {input_path}; pass one per source")
    resolved = [path.resolve() for path in outputs]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"the output paths for {input_path} must differ, got {', '.join(map(str, outputs))}")
    if info.path.resolve() in resolved:
        raise AudioError(f"an output path equals the input {input_path}; choose another output folder")

    chunk_frames = round(chunk_seconds * model_rate)
    overlap_frames = round(overlap_seconds * model_rate)
    if chunk_frames < 1 or not 0 <= overlap_frames < chunk_frames:
        raise ValueError(
            f"chunks of {chunk_seconds} s with {overlap_seconds} s overlap at {model_rate} Hz give {chunk_frames} and "
            f"{overlap_frames} frames; the chunk needs at least one frame and more than the overlap"
        )
    output_channels = 1 if channels == "mix" else info.channels
    sources = len(outputs)
    started = time.perf_counter()

    separators = [
        ChunkedSeparator(separate_chunks, chunk_frames, overlap_frames, batch_chunks, sources)
        for _ in range(output_channels)
    ]
    blocks = iter_audio(info.path, chunk_frames, model_rate, channels)
    with contextlib.ExitStack() as stack:
        writers = [
            RateRestoringWriter(stack.enter_context(AudioWriter(path, info.sample_rate, output_channels, subtype)),
                                model_rate, info.sample_rate, output_channels, info.frames)
            for path in outputs
        ]
        for block in blocks:
            write_sources(writers, [separator.push(samples) for separator, samples in zip(separators, block)])
            if progress is not None:
                progress.update(len(block[0]) / model_rate)
        write_sources(writers, [separator.finish() for separator in separators])
        for writer in writers:
            writer.finish()

    if info.duration > LOG_LONGER_THAN_SECONDS:
        logger.info("separated %s (%.1f s, %d channel(s)) in %d chunks of %d frames at %d Hz in %.1f s",
                    input_path, info.duration, output_channels, sum(separator.chunks for separator in separators),
                    chunk_frames, model_rate, time.perf_counter() - started)
    return outputs


class RateRestoringWriter:
    """Resample (C, n) blocks from the model's rate to the file's rate as a stream and write exactly ``frames``.

    soxr's streamed length can differ from the input's by a frame, so the end is trimmed or zero-padded.
    """

    def __init__(self, writer: AudioWriter, model_rate: int, file_rate: int, channels: int, frames: int):
        import soxr

        self.writer = writer
        self.channels = channels
        self.frames = frames
        self.written = 0
        self.resampler = None
        if model_rate != file_rate:
            self.resampler = soxr.ResampleStream(model_rate, file_rate, channels, dtype="float32", quality="HQ")

    def write(self, block: np.ndarray) -> None:
        if self.resampler is not None:
            block = self.resampler.resample_chunk(np.ascontiguousarray(block.T), last=False).T
        self.write_at_most(block)

    def write_at_most(self, block: np.ndarray) -> None:
        block = block[:, :max(self.frames - self.written, 0)]
        if block.shape[1]:
            self.writer.write(block)
            self.written += block.shape[1]

    def finish(self) -> None:
        if self.resampler is not None:
            rest = self.resampler.resample_chunk(np.zeros((0, self.channels), dtype=np.float32), last=True).T
            self.write_at_most(rest)
        if self.written < self.frames:
            self.writer.write(np.zeros((self.channels, self.frames - self.written), dtype=np.float32))
            self.written = self.frames


def write_sources(writers: list["RateRestoringWriter"], channel_outputs: list[np.ndarray]) -> None:
    """Write per-channel (K, n) outputs as one (C, n) block to each source's writer."""
    stacked = np.stack(channel_outputs)  # (C, K, n)
    if stacked.shape[2] == 0:
        return
    for source, writer in enumerate(writers):
        writer.write(stacked[:, source])
