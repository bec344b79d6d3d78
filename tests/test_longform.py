import logging
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import fast_bss_eval
import numpy as np
import soxr
import pytest
import torch

from surfsep import interrupt
from surfsep.audio import AudioError, audio_info, read_audio, write_audio
from surfsep.longform import (
    ChunkedSeparator, crossfade_window, separate_file, separate_stream, separate_waveform,
)


def nonlinear_separator(chunks: torch.Tensor) -> torch.Tensor:
    """Two estimates that sum to each chunk, with a slot order that depends on the chunk's content."""
    first = 0.5 * torch.tanh(3 * chunks) + 0.1 * chunks.roll(1, dims=1)
    estimates = torch.stack([first, chunks - first], dim=1)
    swap = chunks.sum(dim=1) > 0
    estimates[swap] = estimates[swap].flip(1)
    return estimates


class PermutingOracle:
    """A separator that returns the true sources of each chunk, in a slot order chosen per chunk.

    It checks that every chunk it gets is the mixture at the expected position, zero-padded at the end.
    """

    def __init__(self, sources: torch.Tensor, chunk_frames: int, hop_frames: int, orders: list[list[int]]):
        padding = chunk_frames * 2
        self.sources = torch.nn.functional.pad(sources, (0, padding))
        self.mixture = self.sources.sum(dim=0)
        self.chunk_frames = chunk_frames
        self.hop_frames = hop_frames
        self.orders = orders
        self.calls = 0
        self.largest_batch = 0

    def __call__(self, chunks: torch.Tensor) -> torch.Tensor:
        self.largest_batch = max(self.largest_batch, chunks.shape[0])
        outputs = []
        for chunk in chunks:
            start = self.calls * self.hop_frames
            window = slice(start, start + self.chunk_frames)
            assert torch.allclose(chunk, self.mixture[window], atol=1e-6), f"chunk {self.calls} is misplaced"
            outputs.append(self.sources[self.orders[self.calls % len(self.orders)], window])
            self.calls += 1
        return torch.stack(outputs)


def test_window_shifts_sum_to_one():
    for chunk_frames, overlap_frames in [(1000, 250), (1000, 500), (7, 3), (8, 1)]:
        window = crossfade_window(chunk_frames, overlap_frames)
        hop = chunk_frames - overlap_frames
        total = np.zeros(hop * 4 + chunk_frames)
        for shift in range(0, hop * 5, hop):
            total[shift:shift + chunk_frames] += window
        assert np.all(window > 0)
        assert np.allclose(total[hop:hop * 5], 1.0, rtol=0, atol=1e-12)


def test_swapped_slots_aligned():
    rate, frames = 8000, 10037
    t = torch.arange(frames) / rate
    generator = torch.Generator().manual_seed(0)
    sources = torch.stack([0.5 * torch.sin(2 * torch.pi * 220 * t), 0.3 * torch.randn(frames, generator=generator)])
    oracle = PermutingOracle(sources, chunk_frames=1000, hop_frames=750, orders=[[0, 1], [1, 0]])

    estimates = separate_waveform(oracle, sources.sum(dim=0), 1000, 250, 3, 2)
    assert oracle.calls == 14
    assert estimates.shape == (2, frames)
    assert torch.allclose(estimates, sources, atol=1e-5)
    sdr = fast_bss_eval.si_sdr(sources.double(), estimates.double())
    assert (sdr > 80).all(), sdr


def test_three_sources_random_orders():
    frames = 20011
    generator = torch.Generator().manual_seed(1)
    t = torch.arange(frames) / 16000
    sources = torch.stack([
        0.4 * torch.sin(2 * torch.pi * 330 * t),
        0.2 * torch.randn(frames, generator=generator),
        0.3 * torch.sign(torch.sin(2 * torch.pi * 55 * t)),
    ])
    orders = [torch.randperm(3, generator=generator).tolist() for _ in range(40)]
    oracle = PermutingOracle(sources, chunk_frames=1600, hop_frames=1200, orders=orders)

    estimates = separate_waveform(oracle, sources.sum(dim=0), 1600, 400, 4, 3)
    assert oracle.calls == 17
    assert len({tuple(order) for order in orders[:17]}) > 1
    # The first chunk's slot order is kept for the whole waveform.
    assert torch.allclose(estimates, sources[orders[0]], atol=1e-5)


@pytest.mark.parametrize("overlap_frames", [0, 25, 50, 75, 99])
def test_lengths_and_mixture_sum(overlap_frames):
    chunk_frames = 100
    hop = chunk_frames - overlap_frames
    generator = torch.Generator().manual_seed(overlap_frames)
    for frames in [1, 2, chunk_frames - 1, chunk_frames, chunk_frames + 1, chunk_frames + hop,
                   chunk_frames + hop + 1, 5 * chunk_frames + 3]:
        mixture = torch.randn(frames, generator=generator)
        estimates = separate_waveform(nonlinear_separator, mixture, chunk_frames, overlap_frames, 3, 2)
        assert estimates.shape == (2, frames)
        assert estimates.dtype == torch.float32
        assert torch.allclose(estimates.sum(dim=0), mixture, rtol=0, atol=1e-5), frames


def test_streaming_equals_in_memory():
    frames = 12347
    mixture = torch.randn(frames, generator=torch.Generator().manual_seed(2))
    expected = separate_waveform(nonlinear_separator, mixture, 1000, 300, 3, 2)

    rng = np.random.default_rng(3)
    sizes = [1, 999, 1, 2500, 17] + rng.integers(1, 1500, size=20).tolist()
    bounds = np.cumsum([0] + sizes)
    blocks = [mixture.numpy()[start:end] for start, end in zip(bounds[:-1], bounds[1:]) if start < frames]
    if bounds[-1] < frames:
        blocks.append(mixture.numpy()[bounds[-1]:])
    outputs = list(separate_stream(nonlinear_separator, blocks, 1000, 300, 3, 2))

    assert sum(block.shape[0] for block in blocks) == frames
    assert len(outputs) > 3
    assert torch.equal(torch.from_numpy(np.concatenate(outputs, axis=1)), expected)


def test_stream_emits_early():
    separator = ChunkedSeparator(nonlinear_separator, 100, 20, 2, 2)
    assert separator.push(np.ones(179, dtype=np.float32)).shape == (2, 0)
    # The second chunk [80, 180) completes the batch; samples before the third chunk's start (160) are final.
    assert separator.push(np.ones(1, dtype=np.float32)).shape == (2, 160)
    assert separator.finish().shape == (2, 20)
    with pytest.raises(RuntimeError, match="push after finish"):
        separator.push(np.ones(1, dtype=np.float32))


def test_separator_output_checked():
    mixture = torch.randn(500)
    with pytest.raises(ValueError, match=r"shape \(1, 2, 500\) \(N, K, L\), got \(1, 3, 500\)"):
        separate_waveform(lambda chunks: chunks[:, None].repeat(1, 3, 1), mixture, 500, 100, 4, 2)
    with pytest.raises(ValueError, match="NaN or infinite estimates"):
        separate_waveform(lambda chunks: torch.full((chunks.shape[0], 2, 500), float("nan")), mixture, 500, 100, 4, 2)


@pytest.mark.parametrize("arguments, phrase", [
    ((0, 0, 1, 2), "chunk_frames must be at least 1"),
    ((100, 100, 1, 2), "less than chunk_frames"),
    ((100, -1, 1, 2), "at least 0"),
    ((100, 10, 0, 2), "batch_chunks must be at least 1"),
    ((100, 10, 1, 0), "sources must be at least 1"),
])
def test_bad_arguments(arguments, phrase):
    with pytest.raises(ValueError, match=phrase):
        separate_waveform(nonlinear_separator, torch.randn(300), *arguments)


def test_empty_waveform_rejected():
    with pytest.raises(ValueError, match="at least one sample"):
        separate_waveform(nonlinear_separator, torch.zeros(0), 100, 10, 1, 2)
    with pytest.raises(ValueError, match="mono"):
        separate_waveform(nonlinear_separator, torch.zeros(2, 100), 100, 10, 1, 2)


def test_file_mix_resampled(tmp_path):
    path = tmp_path / "input.wav"
    write_audio(path, np.random.default_rng(4).uniform(-0.5, 0.5, (2, 52919)).astype(np.float32), 16000, "FLOAT")
    outputs = [tmp_path / "out" / "s1.wav", tmp_path / "out" / "s2.wav"]

    written = separate_file(nonlinear_separator, path, outputs, 8000, 0.5, 0.125, 4, subtype="FLOAT")
    at_model_rate, _ = read_audio(path, sample_rate=8000)
    # The estimates come back at the input's rate: they add up to the input band-limited to 4 kHz.
    band_limited = soxr.resample(at_model_rate.T, 8000, 16000, quality="HQ").T[:, :52919]
    estimates = [read_audio(output)[0] for output in outputs]
    assert written == outputs
    for output, estimate in zip(outputs, estimates):
        assert audio_info(output).sample_rate == 16000
        assert estimate.shape == (1, 52919)
    assert np.allclose(estimates[0] + estimates[1], band_limited, rtol=0, atol=1e-5)
    assert sorted(os.listdir(tmp_path / "out")) == ["s1.wav", "s2.wav"]


def test_file_split_channels(tmp_path):
    path = tmp_path / "input.flac"
    waveform = np.random.default_rng(5).uniform(-0.4, 0.4, (3, 20001)).astype(np.float32)
    write_audio(path, waveform, 8000, "PCM_24")
    outputs = [tmp_path / "s1.wav", tmp_path / "s2.wav"]

    separate_file(nonlinear_separator, path, outputs, 8000, 0.25, 0.05, 3, channels="split", subtype="FLOAT")
    mixture, _ = read_audio(path, channels="split")
    estimates = [read_audio(output, channels="split")[0] for output in outputs]
    assert estimates[0].shape == (3, 20001)
    assert np.allclose(estimates[0] + estimates[1], mixture, rtol=0, atol=1e-5)
    for channel in range(3):
        alone = separate_waveform(nonlinear_separator, torch.from_numpy(mixture[channel]), 2000, 400, 3, 2)
        assert np.array_equal(np.stack([estimates[0][channel], estimates[1][channel]]), alone.numpy())


def test_file_failure_keeps_outputs(tmp_path):
    path = tmp_path / "input.wav"
    write_audio(path, np.random.default_rng(6).uniform(-0.5, 0.5, 40000).astype(np.float32), 8000)
    outputs = [tmp_path / "s1.wav", tmp_path / "s2.wav"]
    for output in outputs:
        write_audio(output, np.zeros(10), 8000)
    originals = [output.read_bytes() for output in outputs]
    calls = []

    def failing(chunks: torch.Tensor) -> torch.Tensor:
        calls.append(chunks.shape[0])
        if len(calls) == 3:
            raise RuntimeError("model failed")
        return nonlinear_separator(chunks)

    with pytest.raises(RuntimeError, match="model failed"):
        separate_file(failing, path, outputs, 8000, 0.25, 0.05, 2)
    assert [output.read_bytes() for output in outputs] == originals
    assert sorted(os.listdir(tmp_path)) == ["input.wav", "s1.wav", "s2.wav"]


def test_lost_sigterm_still_stops_the_file(tmp_path, monkeypatch):
    path = tmp_path / "input.wav"
    write_audio(path, np.random.default_rng(7).uniform(-0.5, 0.5, 40000).astype(np.float32), 8000)
    outputs = [tmp_path / "s1.wav", tmp_path / "s2.wav"]
    monkeypatch.setattr(interrupt, "requested", False)
    calls = []

    def separator_losing_the_raise(chunks: torch.Tensor) -> torch.Tensor:
        calls.append(chunks.shape[0])
        if len(calls) == 2:
            # The handler runs where its KeyboardInterrupt is swallowed, as inside a C extension's import.
            try:
                interrupt.on_sigterm(signal.SIGTERM, None)
            except KeyboardInterrupt:
                pass
        return nonlinear_separator(chunks)

    with pytest.raises(KeyboardInterrupt):
        separate_file(separator_losing_the_raise, path, outputs, 8000, 0.25, 0.05, 2)
    assert len(calls) == 2
    assert sorted(os.listdir(tmp_path)) == ["input.wav"]


def test_file_rejects_outputs(tmp_path):
    path = tmp_path / "input.wav"
    write_audio(path, np.zeros(1000), 8000)
    with pytest.raises(AudioError, match="equals the input"):
        separate_file(nonlinear_separator, path, [tmp_path / "s1.wav", path], 8000, 0.05, 0.01, 2)
    with pytest.raises(ValueError, match="must differ"):
        separate_file(nonlinear_separator, path, [tmp_path / "s.wav", tmp_path / "s.wav"], 8000, 0.05, 0.01, 2)
    with pytest.raises(ValueError, match="more than the overlap"):
        separate_file(nonlinear_separator, path, [tmp_path / "s1.wav", tmp_path / "s2.wav"], 8000, 0.05, 0.05, 2)
    with pytest.raises(AudioError, match="not found"):
        separate_file(nonlinear_separator, tmp_path / "missing.wav", [tmp_path / "s1.wav"], 8000, 0.05, 0.01, 2)


def separate_traced(tmp_path, minutes: int, rate: int = 8000) -> tuple[int, list[int], list[Path]]:
    """Separate a synthetic file of ``minutes`` with a cheap separator; return the traced peak bytes,
    the batch sizes the separator got and the output paths."""
    frames = rate * 60 * minutes
    path = tmp_path / f"{minutes}min.wav"
    write_audio(path, 0.3 * np.sin(2 * np.pi * 440 * np.arange(frames) / rate).astype(np.float32), rate)
    outputs = [tmp_path / f"{minutes}min-s1.wav", tmp_path / f"{minutes}min-s2.wav"]
    batches = []

    def cheap(chunks: torch.Tensor) -> torch.Tensor:
        batches.append(chunks.shape[0])
        return torch.stack([0.25 * chunks, 0.75 * chunks], dim=1)

    # Multi-threaded torch kernels run several times slower while tracemalloc is on.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tracemalloc.start()
    try:
        separate_file(cheap, path, outputs, rate, 4.0, 0.5, 8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        torch.set_num_threads(threads)
    return peak, batches, outputs


def test_long_file_bounded_memory(tmp_path, caplog):
    started = time.perf_counter()
    short_peak, _, _ = separate_traced(tmp_path, 2)
    with caplog.at_level(logging.INFO, logger="surfsep.longform"):
        long_peak, batches, outputs = separate_traced(tmp_path, 20)
    seconds = time.perf_counter() - started

    frames = 8000 * 60 * 20
    for output in outputs:
        assert audio_info(output).frames == frames
    assert max(batches) == 8
    assert sum(batches) == 343
    # The 20-minute input alone is 38.4 MB as float32; the pipeline holds a few 4 s chunks,
    # so its peak does not grow with the file's length.
    assert long_peak < frames * 4 / 2, long_peak
    assert long_peak < short_peak * 1.05, (short_peak, long_peak)
    assert seconds < 15
    assert any("in 343 chunks of 32000 frames" in record.getMessage() for record in caplog.records)
    spot, _ = read_audio(outputs[1], start=frames // 2, frames=1000)
    reference, _ = read_audio(tmp_path / "20min.wav", start=frames // 2, frames=1000)
    assert np.allclose(spot, 0.75 * reference, rtol=0, atol=1 / 32768)


def test_bench_script_fixed_split():
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_long_audio.py"
    result = subprocess.run([sys.executable, str(script), "--fixed-split", "--via", "function", "--minutes", "0.05", "0.1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

    rows = [line for line in result.stdout.splitlines() if line.startswith("| longform.separate_file")]
    assert len(rows) == 2
    cells = [row.split("|")[1:-1] for row in rows]
    assert [cell[1].strip() for cell in cells] == ["0.05 min at 8000 Hz", "0.1 min at 8000 Hz"]
    for cell in cells:
        assert float(cell[2]) > 0
        assert 10 < float(cell[3]) < 10_000
