"""Pictures and sounds of a report, encoded as data URIs so that one HTML file contains them all."""

from __future__ import annotations

import base64
import io

import numpy as np
import soundfile
import torch
from PIL import Image

# Images are small (28 x 28 for digits): draw each pixel as a block of this many screen pixels.
IMAGE_ZOOM = 3
SPECTROGRAM_HEIGHT = 128
SPECTROGRAM_PIXELS_PER_SECOND = 100
SPECTROGRAM_RANGE_DB = 80.0
# Clips are scaled together so that the loudest sample of an example is at this level.
PEAK_LEVEL = 0.9


def data_uri(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def image_tile(pixels: torch.Tensor) -> str:
    """Return an (H, W) image with values in [0, 1] as a zoomed grey PNG data URI."""
    grey = (np.clip(pixels.detach().double().cpu().numpy(), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    picture = Image.fromarray(grey, mode="L")
    picture = picture.resize((grey.shape[1] * IMAGE_ZOOM, grey.shape[0] * IMAGE_ZOOM), Image.NEAREST)
    return data_uri("image/png", png_bytes(picture))


def common_gain(signals: list[np.ndarray]) -> float:
    """Return the gain that puts the loudest sample of all ``signals`` at ``PEAK_LEVEL``.

    One gain for every clip of an example keeps their loudness relative to each other.
    """
    peak = max(float(np.max(np.abs(signal))) if signal.size else 0.0 for signal in signals)
    return PEAK_LEVEL / peak if peak > 0.0 else 1.0


def audio_clip(signal: np.ndarray, rate: int, gain: float) -> str:
    """Return a mono signal as a 16-bit FLAC data URI, scaled by ``gain``.

    FLAC is lossless, about half the size of WAV for speech, and every current browser plays it.
    """
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(signal * gain, -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")
    return data_uri("audio/flac", buffer.getvalue())


def decibel_spectrogram(signal: np.ndarray, rate: int) -> np.ndarray:
    """Return the (frequency, frame) power spectrogram of a mono signal in dB, lowest frequency first.

    The window is 32 ms with a hop of 8 ms.
    """
    n_fft = max(16, int(2 ** np.round(np.log2(0.032 * rate))))
    samples = torch.as_tensor(signal, dtype=torch.float32)
    if samples.numel() < n_fft:
        samples = torch.nn.functional.pad(samples, (0, n_fft - samples.numel()))
    spectrum = torch.stft(samples, n_fft=n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft),
                          return_complex=True)
    return (10.0 * torch.log10(spectrum.abs().square() + 1e-12)).numpy()


def spectrogram_image(decibels: np.ndarray, top_db: float, seconds: float) -> str:
    """Return a spectrogram as a PNG data URI, coloured from ``top_db - SPECTROGRAM_RANGE_DB`` to ``top_db``.

    Its width is proportional to ``seconds``, so clips of one length draw alike. The PNG stores one
    palette index per pixel, a third of the size of RGB.
    """
    from matplotlib import colormaps

    level = np.clip((decibels - (top_db - SPECTROGRAM_RANGE_DB)) / SPECTROGRAM_RANGE_DB, 0.0, 1.0)
    indices = (level[::-1] * 255.0).round().astype(np.uint8)
    width = max(1, int(round(seconds * SPECTROGRAM_PIXELS_PER_SECOND)))
    resized = Image.fromarray(indices, mode="L").resize((width, SPECTROGRAM_HEIGHT), Image.BILINEAR)
    picture = Image.frombytes("P", resized.size, resized.tobytes())
    palette = (colormaps["magma"](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).round().astype(np.uint8)
    picture.putpalette(palette.tobytes())
    return data_uri("image/png", png_bytes(picture))


def figure_png(figure) -> str:
    """Return a matplotlib figure as a PNG data URI and close it."""
    from matplotlib import pyplot

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    return data_uri("image/png", buffer.getvalue())
