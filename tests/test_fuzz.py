"""Property-based tests of the loaders and of long-audio chunking (hypothesis), bounded so CI stays fast.

Whatever bytes or documents they are given, the loaders either return a valid result or raise the
project's own error type with a message naming the file. The chunked separation of a waveform of
any length, chunk size and overlap returns estimates of the input's length that add up to it.
"""

import io
import json
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import random_network
from surfsep.audio import AudioError, audio_info, read_audio, scan_audio
from surfsep.data.images import DataError, read_png
from surfsep.longform import separate_waveform
from surfsep.models import ModelError, load, save_model

# Each property runs a bounded number of examples, without hypothesis's per-example deadline
# (the machines running the tests are shared and slow).
BOUNDED = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def write_temporary(data: bytes, suffix: str) -> Path:
    handle = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)
    handle.write(data)
    handle.close()
    return Path(handle.name)


def valid_wav(frames: int, channels: int, rate: int, subtype: str) -> bytes:
    buffer = io.BytesIO()
    samples = np.random.default_rng(frames).uniform(-1, 1, (frames, channels)).astype(np.float32)
    soundfile.write(buffer, samples, rate, subtype=subtype, format="WAV")
    return buffer.getvalue()


@st.composite
def damaged_wav(draw) -> bytes:
    """A valid WAV file with bytes cut off, overwritten or appended."""
    data = bytearray(valid_wav(draw(st.integers(1, 300)), draw(st.integers(1, 3)), 8000,
                               draw(st.sampled_from(["PCM_16", "PCM_24", "FLOAT", "PCM_U8"]))))
    cut = draw(st.integers(0, len(data)))
    data = data[:cut] if draw(st.booleans()) else data
    for position, value in draw(st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=6)):
        if position < len(data):
            data[position] = value
    return bytes(data) + draw(st.binary(max_size=40))


@BOUNDED
@given(data=st.one_of(st.binary(max_size=600), damaged_wav()))
def test_audio_loader_returns_audio_or_names_the_file(data):
    path = write_temporary(data, ".wav")
    try:
        info, _ = scan_audio(path)
        samples, rate = read_audio(path)
        assert rate == info.sample_rate
        assert samples.dtype == np.float32 and samples.shape == (1, info.frames)
        assert np.isfinite(samples).all()
    except AudioError as error:
        assert str(path) in str(error)
    finally:
        path.unlink()


@BOUNDED
@given(frames=st.integers(1, 2000), channels=st.integers(1, 6), rate=st.sampled_from([8000, 11025, 16000, 44100]),
       subtype=st.sampled_from(["PCM_16", "PCM_24", "FLOAT"]))
def test_valid_wav_reads_back_at_any_rate_and_channel_count(frames, channels, rate, subtype):
    path = write_temporary(valid_wav(frames, channels, rate, subtype), ".wav")
    try:
        info = audio_info(path)
        assert (info.frames, info.channels, info.sample_rate) == (frames, channels, rate)
        expected = np.random.default_rng(frames).uniform(-1, 1, (frames, channels)).astype(np.float32).mean(axis=1)
        samples, _ = read_audio(path)
        np.testing.assert_allclose(samples[0], expected, atol=1e-4)
    finally:
        path.unlink()


def png_bytes(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


@st.composite
def damaged_png(draw) -> bytes:
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    array = np.random.default_rng(height * width).integers(0, 256, (height, width)).astype(np.uint8)
    data = bytearray(png_bytes(array, draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "LA"]))))
    data = data[:draw(st.integers(0, len(data)))]
    for position, value in draw(st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=6)):
        if position < len(data):
            data[position] = value
    return bytes(data)


@BOUNDED
@given(data=st.one_of(st.binary(max_size=400), damaged_png()))
def test_image_loader_returns_an_image_or_names_the_file(data):
    path = write_temporary(data, ".png")
    try:
        image = read_png(path)
        assert image.dtype == np.float32 and image.ndim == 2
        assert 0.0 <= image.min() and image.max() <= 1.0
    except DataError as error:
        assert str(path) in str(error)
    finally:
        path.unlink()


@BOUNDED
@given(height=st.integers(1, 40), width=st.integers(1, 40), deep=st.booleans())
def test_grayscale_png_reads_back_exactly(height, width, deep):
    values = np.random.default_rng(height * 41 + width).integers(0, 65536 if deep else 256, (height, width))
    array = values.astype(np.uint16 if deep else np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    path = write_temporary(buffer.getvalue(), ".png")
    try:
        np.testing.assert_array_equal(read_png(path), array.astype(np.float32) / (65535.0 if deep else 255.0))
    finally:
        path.unlink()


@pytest.fixture(scope="module")
def model_parts(tmp_path_factory) -> tuple[dict, bytes]:
    folder = tmp_path_factory.mktemp("model")
    save_model(folder, random_network(), {"network": {"name": "slot-unet"}, "modality": "image", "sources": 2,
                                          "mixture": "mean", "sigma": 0.5, "sampler": {"solver": "euler", "steps": 1}})
    return json.loads((folder / "model.json").read_text()), (folder / "model.safetensors").read_bytes()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(string.printable,
                                                                                                   max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@st.composite
def edited_description(draw, original: dict) -> dict:
    """The intact model.json with some entries removed or replaced by arbitrary JSON."""
    document = json.loads(json.dumps(original))
    for key in draw(st.lists(st.sampled_from(sorted(document)), max_size=3, unique=True)):
        if draw(st.booleans()):
            del document[key]
        else:
            document[key] = draw(json_values)
    if "network" in document and isinstance(document["network"], dict) and draw(st.booleans()):
        document["network"]["kwargs"] = draw(st.dictionaries(st.sampled_from(["channels", "embedding_size", "depth"]),
                                                             json_values, max_size=2))
    return document


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_model_loader_loads_or_raises_model_error(data, model_parts, tmp_path):
    description, weights = model_parts
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    document = data.draw(st.one_of(edited_description(description), json_values))
    (folder / "model.json").write_text(json.dumps(document))
    damaged = data.draw(st.booleans())
    if damaged:
        start = data.draw(st.integers(0, len(weights)))
        (folder / "model.safetensors").write_bytes(weights[:start] + data.draw(st.binary(max_size=30)))
    else:
        (folder / "model.safetensors").write_bytes(weights)
    try:
        separator = load(folder)
    except ModelError as error:
        assert str(folder) in str(error)
        return
    # Whatever loaded must be the intact model.
    assert separator.sources == 2


class SplitByShape:
    """A deterministic separator: slot 1 takes tanh of each chunk, slot 2 the rest, so they add up to the chunk."""

    def __call__(self, chunks: torch.Tensor) -> torch.Tensor:
        first = 0.5 * torch.tanh(2 * chunks)
        return torch.stack([first, chunks - first], dim=1)


@BOUNDED
@given(length=st.integers(1, 5000), chunk=st.integers(2, 700), overlap_share=st.floats(0, 0.9),
       batch=st.integers(1, 5))
def test_chunked_separation_keeps_length_and_sums_to_the_mixture(length, chunk, overlap_share, batch):
    overlap = min(int(chunk * overlap_share), chunk - 1)
    waveform = torch.from_numpy(np.random.default_rng(length).normal(0, 0.3, length).astype(np.float32))

    estimates = separate_waveform(SplitByShape(), waveform, chunk, overlap, batch, sources=2)

    assert estimates.shape == (2, length)
    assert torch.isfinite(estimates).all()
    torch.testing.assert_close(estimates.sum(dim=0), waveform, atol=1e-5, rtol=0)
