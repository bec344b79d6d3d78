import logging
import os
import re

import numpy as np
import pytest
import soundfile
import torch

from surfsep.audio import (
    AudioError, AudioWriter, audio_info, iter_audio, list_audio, read_audio, resampled_length, write_audio,
)
from surfsep.data.images import DataError


def tone(frequency: float, rate: int, frames: int, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(frames) / rate)).astype(np.float32)


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.shape[-1])))
    return float(np.fft.rfftfreq(samples.shape[-1], 1 / rate)[spectrum.argmax()])


def random_audio(channels: int, frames: int, seed: int = 0, scale: float = 0.4) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal((channels, frames))).clip(-0.95, 0.95).astype(np.float32)


@pytest.mark.parametrize("suffix, subtype, bits", [
    (".wav", "PCM_16", 16), (".wav", "PCM_24", 24), (".flac", "PCM_16", 16), (".flac", "PCM_24", 24),
])
def test_round_trip_pcm(tmp_path, suffix, subtype, bits):
    waveform = random_audio(2, 4001)
    path = tmp_path / f"out{suffix}"
    write_audio(path, waveform, 16000, subtype)

    samples, rate = read_audio(path, channels="split")
    scale = 2.0 ** (bits - 1)
    expected = (np.rint(waveform.astype(np.float64) * scale) / scale).astype(np.float32)
    assert rate == 16000
    assert samples.dtype == np.float32
    assert np.array_equal(samples, expected)
    info = audio_info(path)
    assert (info.frames, info.channels, info.subtype) == (4001, 2, subtype)
    assert info.duration == pytest.approx(4001 / 16000)


def test_round_trip_float_wav(tmp_path, caplog):
    waveform = random_audio(3, 999, scale=2.0)
    waveform[0, :3] = [1.5, -2.0, 1e-30]
    path = tmp_path / "float.wav"
    with caplog.at_level(logging.WARNING, logger="surfsep.audio"):
        write_audio(path, waveform, 8000, "FLOAT")

    samples, _ = read_audio(path, channels="split")
    assert np.array_equal(samples, waveform)
    assert audio_info(path).subtype == "FLOAT"
    assert not caplog.records


def test_pcm_write_clips_and_warns(tmp_path, caplog):
    path = tmp_path / "loud.wav"
    with caplog.at_level(logging.WARNING, logger="surfsep.audio"):
        write_audio(path, np.array([0.5, 1.0, -1.0, 2.0, -3.0, 0.0]), 8000)

    samples, _ = read_audio(path)
    top = 32767 / 32768
    assert np.array_equal(samples[0], np.array([0.5, top, -1.0, top, -1.0, 0.0], dtype=np.float32))
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [f"clipped 3 of 6 samples to [-1, 1) while writing {path} as PCM_16"]


@pytest.mark.parametrize("subtype, data", [
    ("PCM_U8", np.array([0, 2**14, -2**14, -2**15, 2**13], dtype=np.int16)),
    ("PCM_16", np.array([0, 2**14, -2**14, -2**15, 2**13], dtype=np.int16)),
    ("PCM_24", np.array([0, 2**30, -2**30, -2**31, 2**29], dtype=np.int32)),
    ("PCM_32", np.array([0, 2**30, -2**30, -2**31, 2**29], dtype=np.int32)),
    ("FLOAT", np.array([0, 0.5, -0.5, -1.0, 0.25], dtype=np.float32)),
    ("DOUBLE", np.array([0, 0.5, -0.5, -1.0, 0.25], dtype=np.float64)),
])
def test_read_wav_subtypes(tmp_path, subtype, data):
    path = tmp_path / f"{subtype}.wav"
    soundfile.write(path, data, 11025, subtype=subtype)

    samples, rate = read_audio(path)
    assert rate == 11025
    assert samples.dtype == np.float32
    assert np.array_equal(samples[0], np.array([0, 0.5, -0.5, -1.0, 0.25], dtype=np.float32))
    assert audio_info(path).subtype == subtype


@pytest.mark.parametrize("channels", [2, 6])
def test_downmix_and_split(tmp_path, channels):
    waveform = random_audio(channels, 3001, seed=channels)
    path = tmp_path / f"{channels}.wav"
    write_audio(path, waveform, 16000, "FLOAT")

    mixed, _ = read_audio(path)
    split, _ = read_audio(path, channels="split")
    assert mixed.shape == (1, 3001)
    assert split.shape == (channels, 3001)
    assert np.array_equal(split, waveform)
    assert np.allclose(mixed[0], waveform.mean(axis=0), atol=1e-7)


def test_read_segment(tmp_path):
    waveform = random_audio(2, 5000)
    path = tmp_path / "segment.flac"
    write_audio(path, waveform, 8000, "PCM_24")

    whole, _ = read_audio(path, channels="split")
    part, _ = read_audio(path, channels="split", start=1234, frames=777)
    tail, _ = read_audio(path, channels="split", start=4990)
    assert np.array_equal(part, whole[:, 1234:2011])
    assert np.array_equal(tail, whole[:, 4990:])


def test_resample_96k_to_8k(tmp_path, caplog):
    frames = 96007
    path = tmp_path / "tone96k.wav"
    write_audio(path, np.stack([tone(1000, 96000, frames), tone(5000, 96000, frames)]), 96000, "FLOAT")

    with caplog.at_level(logging.INFO, logger="surfsep.audio"):
        samples, rate = read_audio(path, sample_rate=8000, channels="split")
        read_audio(path, sample_rate=8000, channels="split")
    assert rate == 8000
    assert samples.shape == (2, resampled_length(frames, 96000, 8000)) == (2, 8001)
    middle = samples[:, 400:-400]
    assert abs(dominant_frequency(middle[0], 8000) - 1000) < 2
    assert np.sqrt(np.mean(middle[0] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)
    # 5 kHz lies above the 4 kHz Nyquist frequency, so the anti-aliasing filter removes it.
    assert np.sqrt(np.mean(middle[1] ** 2)) < 1e-4
    resampled = [record.getMessage() for record in caplog.records if "resampled" in record.getMessage()]
    assert resampled == [f"resampled {path} from 96000 Hz to 8000 Hz, and so every other 96000 Hz file (logged once)"]


def test_resampled_length_rounds_half_up():
    assert resampled_length(5, 16000, 8000) == 3
    assert resampled_length(7, 16000, 8000) == 4
    assert resampled_length(1, 48000, 8000) == 0
    assert resampled_length(3, 48000, 8000) == 1
    assert resampled_length(96007, 96000, 8000) == 8001


@pytest.mark.parametrize("suffix, format_name, subtype", [(".mp3", "MP3", "MPEG_LAYER_III"), (".ogg", "OGG", "VORBIS")])
def test_read_compressed(tmp_path, suffix, format_name, subtype):
    path = tmp_path / f"tone{suffix}"
    soundfile.write(path, tone(440, 16000, 16000), 16000, format=format_name, subtype=subtype)

    info = audio_info(path)
    samples, rate = read_audio(path)
    resampled, _ = read_audio(path, sample_rate=8000)
    assert (info.format, info.sample_rate, info.channels) == (format_name, 16000, 1)
    assert samples.shape == (1, info.frames)
    assert abs(info.frames - 16000) < 2000
    assert abs(dominant_frequency(samples[0], rate) - 440) < 2
    assert resampled.shape == (1, resampled_length(info.frames, 16000, 8000))
    assert abs(dominant_frequency(resampled[0], 8000) - 440) < 2


@pytest.mark.parametrize("rate, channels, block_frames", [
    (None, "mix", 1000), (16000, "split", 777), (8000, "mix", 1), (48000, "split", 4096),
])
def test_iter_audio_matches_read(tmp_path, rate, channels, block_frames):
    path = tmp_path / "stream.wav"
    write_audio(path, random_audio(2, 22051), 44100, "FLOAT")

    whole, whole_rate = read_audio(path, sample_rate=rate, channels=channels)
    blocks = list(iter_audio(path, block_frames, sample_rate=rate, channels=channels))
    streamed = np.concatenate(blocks, axis=1)
    assert whole_rate == (rate or 44100)
    assert streamed.shape == whole.shape == ((1 if channels == "mix" else 2), resampled_length(22051, 44100, whole_rate))
    assert all(block.shape[1] == block_frames for block in blocks[:-1])
    assert 1 <= blocks[-1].shape[1] <= block_frames
    # soxr's stream and one-shot resamplers run the same filter; the difference is float rounding.
    assert np.max(np.abs(streamed - whole)) < 1e-6


def test_iter_audio_rejects_nan_block(tmp_path):
    waveform = random_audio(1, 3000)
    waveform[0, 2345] = np.inf
    path = tmp_path / "inf.wav"
    soundfile.write(path, waveform[0], 8000, subtype="FLOAT")

    blocks = iter_audio(path, 100)
    message = rf"^audio file {re.escape(str(path))} has a non-finite sample \(inf\) at frame 2345, channel 0;"
    with pytest.raises(AudioError, match=message):
        list(blocks)


def make_error_file(tmp_path, case: str):
    """Create the bad input for one error case; return its path and a phrase the message contains."""
    path = tmp_path / "bad.wav"
    if case == "missing":
        return path, "not found"
    if case == "folder":
        path.mkdir()
        return path, "is a folder"
    if case == "empty":
        path.write_bytes(b"")
        return path, "empty"
    if case == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
        return path, "cannot read"
    if case == "truncated header":
        write_audio(path, tone(440, 8000, 800), 8000)
        path.write_bytes(path.read_bytes()[:30])
        return path, "cannot read"
    if case == "unsupported suffix":
        path = tmp_path / "bad.aiff"
        soundfile.write(path, tone(440, 8000, 800), 8000, format="AIFF")
        return path, "unsupported suffix"
    if case == "zero frames":
        soundfile.write(path, np.zeros(0, dtype=np.float32), 8000)
        return path, "no audio frames"
    if case == "nan":
        waveform = tone(440, 8000, 800)
        waveform[7] = np.nan
        soundfile.write(path, waveform, 8000, subtype="FLOAT")
        return path, "non-finite sample .* at frame 7"
    if case == "too short":
        write_audio(path, tone(440, 8000, 800), 8000)
        return path, "too short: 800 frames"
    raise AssertionError(case)


ERROR_CASES = ["missing", "folder", "empty", "random bytes", "truncated header", "unsupported suffix",
               "zero frames", "nan", "too short"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_read_errors(tmp_path, case):
    path, phrase = make_error_file(tmp_path, case)

    with pytest.raises(AudioError, match=phrase) as raised:
        read_audio(path, min_frames=801 if case == "too short" else 1)
    assert str(path) in str(raised.value)
    assert isinstance(raised.value, DataError)


@pytest.mark.parametrize("case", ["missing", "folder", "empty", "random bytes", "truncated header", "zero frames"])
def test_info_and_iter_errors(tmp_path, case):
    path, phrase = make_error_file(tmp_path, case)

    with pytest.raises(AudioError, match=phrase):
        audio_info(path)
    with pytest.raises(AudioError, match=phrase):
        iter_audio(path, 100)


def test_read_range_errors(tmp_path):
    path = tmp_path / "short.wav"
    write_audio(path, tone(440, 8000, 800), 8000)

    with pytest.raises(AudioError, match=f"start frame 800 is outside {path}"):
        read_audio(path, start=800)
    with pytest.raises(AudioError, match=f"cannot read 701 frames from frame 100 of {path}"):
        read_audio(path, start=100, frames=701)
    with pytest.raises(ValueError, match="channels must be 'mix'"):
        read_audio(path, channels="left")
    with pytest.raises(ValueError, match="sample_rate must be a positive"):
        read_audio(path, sample_rate=0)


@pytest.mark.parametrize("name, subtype, phrase", [
    ("out.mp3", None, "writes .wav and .flac files"),
    ("out.flac", "FLOAT", "FLAC stores integer samples only"),
    ("out.wav", "PCM_8", "unknown subtype 'PCM_8'"),
])
def test_write_rejects_format(tmp_path, name, subtype, phrase):
    path = tmp_path / name
    with pytest.raises(AudioError, match=phrase) as raised:
        write_audio(path, tone(440, 8000, 100), 8000, subtype)
    assert str(path) in str(raised.value)
    assert os.listdir(tmp_path) == []


def test_write_rejects_bad_waveform(tmp_path):
    path = tmp_path / "out.wav"
    with pytest.raises(ValueError, match=r"shape \(frames,\) or \(channels, frames\)"):
        write_audio(path, np.zeros((1, 2, 3)), 8000)
    with pytest.raises(ValueError, match="floating point"):
        write_audio(path, np.zeros(10, dtype=np.int16), 8000)
    with pytest.raises(ValueError, match="no frames"):
        write_audio(path, np.zeros((2, 0)), 8000)
    with pytest.raises(ValueError, match="positive whole number"):
        write_audio(path, np.zeros(10), 0)
    assert os.listdir(tmp_path) == []


def test_write_creates_parents_atomically(tmp_path):
    path = tmp_path / "a" / "b" / "out.flac"
    write_audio(path, torch.from_numpy(tone(440, 8000, 1000)), 8000)

    assert os.listdir(path.parent) == ["out.flac"]
    samples, _ = read_audio(path)
    assert samples.shape == (1, 1000)


def test_failed_write_keeps_existing(tmp_path):
    path = tmp_path / "out.wav"
    write_audio(path, tone(440, 8000, 1000), 8000)
    original = path.read_bytes()
    bad = tone(220, 8000, 1000)
    bad[500] = np.nan

    with pytest.raises(ValueError, match=f"{path}.*non-finite sample at frame 500, channel 0"):
        write_audio(path, bad, 8000)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["out.wav"]


def test_writer_streams_blocks(tmp_path):
    waveform = random_audio(2, 10000)
    path = tmp_path / "stream.wav"
    with AudioWriter(path, 16000, 2, "FLOAT") as writer:
        for start in range(0, 10000, 3333):
            writer.write(waveform[:, start:start + 3333])
        assert not path.exists()
        assert len(os.listdir(tmp_path)) == 1

    samples, _ = read_audio(path, channels="split")
    assert np.array_equal(samples, waveform)
    assert os.listdir(tmp_path) == ["stream.wav"]


def test_writer_exception_removes_temporary(tmp_path):
    path = tmp_path / "out.flac"
    write_audio(path, tone(440, 8000, 1000), 8000)
    original = path.read_bytes()

    with pytest.raises(KeyError):
        with AudioWriter(path, 8000, 1) as writer:
            writer.write(tone(220, 8000, 500))
            raise KeyError("stop")
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["out.flac"]


def test_writer_rejects_wrong_channels(tmp_path):
    path = tmp_path / "out.wav"
    with pytest.raises(ValueError, match="has 1 channels, but the file has 2"):
        with AudioWriter(path, 8000, 2) as writer:
            writer.write(tone(220, 8000, 500))
    with pytest.raises(AudioError, match=f"no audio was written to {path}"):
        with AudioWriter(path, 8000, 2):
            pass
    assert os.listdir(tmp_path) == []


def test_list_audio(tmp_path):
    for name in ["b/c.flac", "a.WAV", "z.mp3", "b/d.ogg", ".hidden.wav", ".git/e.wav", "notes.txt", "x.aiff"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.wav").mkdir()

    found = [path.relative_to(tmp_path).as_posix() for path in list_audio(tmp_path)]
    assert found == ["a.WAV", "b/c.flac", "b/d.ogg", "z.mp3"]
    with pytest.raises(AudioError, match="not found"):
        list_audio(tmp_path / "missing")
