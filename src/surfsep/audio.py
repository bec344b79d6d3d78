"""Reading and writing audio files with soundfile (libsndfile), resampling with soxr.

Audio inside surfsep is float32, shape (channels, frames), values nominally in [-1, 1]. Reads
downmix to mono by the channel mean (``channels="mix"``) or keep every channel (``"split"``).
Integer PCM is written by surfsep's own quantisation, ``round(x * 2**(bits - 1))`` clipped to the
integer range, so reading a written file back gives exactly those integers over ``2**(bits - 1)``.
Every output file is written to a temporary name in its folder and renamed when complete.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile
import soxr
import torch

from surfsep.data.images import DataError
from surfsep.files import atomic_path

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
WRITE_SUFFIXES = (".wav", ".flac")
WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
DEFAULT_SUBTYPE = "PCM_16"
PCM_BITS = {"PCM_16": 16, "PCM_24": 24}
CHANNEL_MODES = ("mix", "split")
RESAMPLE_QUALITY = "HQ"
# A sample of this magnitude or more counts as full scale; many of them mean the recording clipped.
FULL_SCALE = 0.99
SCAN_BLOCK_FRAMES = 1 << 18

# libsndfile raises its errors as RuntimeError subclasses; the rest cover I/O and bad arguments.
SOUNDFILE_ERRORS = (RuntimeError, OSError, ValueError, TypeError)

# (file rate, target rate) pairs already reported: the first file of each pair is logged, so a
# folder of many files at another rate gives one line, not one per file.
resample_logged: set[tuple[int, int]] = set()


class AudioError(DataError):
    """An audio file that cannot be read or written; the message names it and gives the fix."""


@dataclass(frozen=True)
class AudioInfo:
    """Header of an audio file: frame count, rate in Hz, channel count and libsndfile format names."""

    path: Path
    frames: int
    sample_rate: int
    channels: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


def resampled_length(frames: int, old_rate: int, new_rate: int) -> int:
    """Return ``frames * new_rate / old_rate`` rounded half up, the length soxr produces."""
    return (2 * frames * new_rate + old_rate) // (2 * old_rate)


def check_channel_mode(channels: str) -> None:
    if channels not in CHANNEL_MODES:
        raise ValueError(f"channels must be 'mix' (downmix to mono) or 'split' (keep every channel), got {channels!r}")


def check_sample_rate(sample_rate: int | None, name: str) -> None:
    if sample_rate is None:
        return
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"{name} must be a positive whole number of Hz, got {sample_rate!r}")


def audio_info(path: Path) -> AudioInfo:
    """Read the header of an audio file; raise AudioError if it is missing, empty or not readable audio."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"audio file {path} not found; check the path")
    if path.is_dir():
        raise AudioError(f"{path} is a folder, not an audio file; pass a file, or list a folder with list_audio")
    if path.suffix.lower() not in AUDIO_SUFFIXES:
        raise AudioError(
            f"{path} has the unsupported suffix {path.suffix or '(none)'!r}; surfsep reads "
            f"{', '.join(AUDIO_SUFFIXES)} files, so convert it to WAV or FLAC first"
        )
    if path.stat().st_size == 0:
        raise AudioError(f"audio file {path} is empty (0 bytes); write it again or remove it")

    try:
        header = soundfile.info(str(path))
    except SOUNDFILE_ERRORS as error:
        raise AudioError(
            f"cannot read {path} as audio ({error}); check that it is a complete WAV, FLAC, OGG or MP3 file"
        ) from error

    if header.frames <= 0:
        raise AudioError(f"audio file {path} contains no audio frames; write it again or remove it")
    return AudioInfo(
        path=path,
        frames=int(header.frames),
        sample_rate=int(header.samplerate),
        channels=int(header.channels),
        format=header.format,
        subtype=header.subtype,
    )


def check_finite(samples: np.ndarray, path: Path, first_frame: int) -> None:
    """Raise AudioError at the first NaN or infinity of (frames, channels) ``samples``."""
    finite = np.isfinite(samples)
    if finite.all():
        return
    frame, channel = np.argwhere(~finite)[0]
    raise AudioError(
        f"audio file {path} has a non-finite sample ({samples[frame, channel]}) at frame "
        f"{first_frame + int(frame)}, channel {int(channel)}; fix or remove the file"
    )


def scan_audio(path: Path) -> tuple[AudioInfo, int]:
    """Decode every sample of an audio file once, in blocks; return its header and its count of full-scale samples.

    Raises AudioError for what ``audio_info`` rejects, for a block that does not decode and at the
    first NaN or infinity, so a file that passes can be separated to the end.
    """
    info = audio_info(path)
    full_scale = sum(int(np.count_nonzero(np.abs(samples) >= FULL_SCALE))
                     for samples in read_finite_blocks(info, SCAN_BLOCK_FRAMES))
    return info, full_scale


def read_finite_blocks(info: AudioInfo, frames: int) -> Iterator[np.ndarray]:
    """Yield the file's float32 (frames, channels) samples in blocks of up to ``frames``, checked for NaN and infinity."""
    frames_read = 0
    with open_audio(info.path) as audio_file:
        while True:
            samples = read_block(audio_file, frames)
            if samples.shape[0] == 0:
                return
            check_finite(samples, info.path, frames_read)
            frames_read += samples.shape[0]
            yield samples


def log_resampling(path: Path, old_rate: int, new_rate: int) -> None:
    key = (old_rate, new_rate)
    if key not in resample_logged:
        resample_logged.add(key)
        logger.info("resampled %s from %d Hz to %d Hz, and so every other %d Hz file (logged once)", path, old_rate,
                    new_rate, old_rate)


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad (frames, channels) ``samples`` to ``length`` frames."""
    if samples.shape[0] >= length:
        return samples[:length]
    padding = np.zeros((length - samples.shape[0], samples.shape[1]), dtype=samples.dtype)
    return np.concatenate([samples, padding])


def read_audio(path: Path, sample_rate: int | None = None, channels: str = "mix", start: int = 0,
               frames: int | None = None, min_frames: int = 1) -> tuple[np.ndarray, int]:
    """Read audio as float32 (C, L) and its rate in Hz, optionally resampled to ``sample_rate``.

    ``start`` and ``frames`` count frames at the file's own rate (``frames=None`` reads to the end).
    ``channels="mix"`` returns the channel mean (C == 1), ``"split"`` every channel. A result shorter
    than ``min_frames`` (at the returned rate) raises AudioError, as does any NaN or infinity.
    """
    check_channel_mode(channels)
    check_sample_rate(sample_rate, "sample_rate")
    info = audio_info(path)
    path = info.path
    target_rate = sample_rate or info.sample_rate

    if start < 0 or start >= info.frames:
        raise AudioError(f"start frame {start} is outside {path}, which has {info.frames} frames")
    available = info.frames - start
    if frames is None:
        frames = available
    elif frames <= 0 or frames > available:
        raise AudioError(
            f"cannot read {frames} frames from frame {start} of {path}, which has {info.frames} frames; "
            f"request at most {available}"
        )
    expected = resampled_length(frames, info.sample_rate, target_rate)
    if expected < min_frames:
        raise AudioError(
            f"audio file {path} is too short: {expected} frames at {target_rate} Hz, at least {min_frames} needed"
        )

    try:
        samples = soundfile.read(str(path), frames=frames, start=start, dtype="float32", always_2d=True)[0]
    except SOUNDFILE_ERRORS as error:
        raise AudioError(f"cannot decode {path} ({error}); check that the file is complete") from error
    if samples.shape[0] < frames:
        raise AudioError(
            f"audio file {path} ended after {start + samples.shape[0]} frames, but its header gives "
            f"{info.frames}; the file is probably truncated"
        )
    check_finite(samples, path, start)

    if channels == "mix":
        samples = samples.mean(axis=1, keepdims=True, dtype=np.float32)
    if target_rate != info.sample_rate:
        samples = soxr.resample(samples, info.sample_rate, target_rate, quality=RESAMPLE_QUALITY)
        samples = fit_length(samples, expected)
        log_resampling(path, info.sample_rate, target_rate)
    return np.ascontiguousarray(samples.T, dtype=np.float32), target_rate


def iter_audio(path: Path, block_frames: int, sample_rate: int | None = None,
               channels: str = "mix") -> Iterator[np.ndarray]:
    """Stream a file as float32 (C, block_frames) blocks at ``sample_rate``; the last block may be shorter.

    ``block_frames`` counts frames at the returned rate. Memory stays bounded by the block size: the
    file is read block by block and resampled by ``soxr.ResampleStream``. The blocks concatenate to
    ``resampled_length(frames, file rate, sample_rate)`` frames, equal to ``read_audio`` of the whole
    file up to float rounding. The file is checked when this is called, before the first block.
    """
    check_channel_mode(channels)
    check_sample_rate(sample_rate, "sample_rate")
    if block_frames <= 0:
        raise ValueError(f"block_frames must be positive, got {block_frames}")
    info = audio_info(path)
    return stream_blocks(info, block_frames, sample_rate or info.sample_rate, channels)


@contextlib.contextmanager
def open_audio(path: Path) -> Iterator[soundfile.SoundFile]:
    """Open an audio file for reading; raise AudioError if libsndfile cannot open it."""
    try:
        audio_file = soundfile.SoundFile(str(path))
    except SOUNDFILE_ERRORS as error:
        raise AudioError(f"cannot read {path} as audio ({error}); check that the file is complete") from error
    with audio_file:
        yield audio_file


def read_block(audio_file: soundfile.SoundFile, frames: int) -> np.ndarray:
    """Read up to ``frames`` float32 (frames, channels) samples; raise AudioError if decoding fails."""
    try:
        return audio_file.read(frames, dtype="float32", always_2d=True)
    except SOUNDFILE_ERRORS as error:
        raise AudioError(f"cannot decode {audio_file.name} ({error}); check that the file is complete") from error


def stream_blocks(info: AudioInfo, block_frames: int, target_rate: int, channels: str) -> Iterator[np.ndarray]:
    output_channels = 1 if channels == "mix" else info.channels
    resampler = None
    read_frames = block_frames
    if target_rate != info.sample_rate:
        resampler = soxr.ResampleStream(info.sample_rate, target_rate, output_channels,
                                        dtype="float32", quality=RESAMPLE_QUALITY)
        read_frames = max(1, math.ceil(block_frames * info.sample_rate / target_rate))
        log_resampling(info.path, info.sample_rate, target_rate)

    pending: list[np.ndarray] = []  # (frames, channels) pieces not yet yielded
    pending_frames = 0
    frames_read = 0
    frames_yielded = 0
    for samples in read_finite_blocks(info, read_frames):
        frames_read += samples.shape[0]

        if channels == "mix":
            samples = samples.mean(axis=1, keepdims=True, dtype=np.float32)
        if resampler is not None:
            samples = resampler.resample_chunk(samples, last=False)
        pending.append(samples)
        pending_frames += samples.shape[0]

        # Yield no more than the length of what has been read so far, so the total below is exact.
        allowed = resampled_length(frames_read, info.sample_rate, target_rate) - frames_yielded
        while pending_frames >= block_frames and allowed >= block_frames:
            joined = np.concatenate(pending)
            yield np.ascontiguousarray(joined[:block_frames].T)
            pending = [joined[block_frames:]]
            pending_frames -= block_frames
            frames_yielded += block_frames
            allowed -= block_frames

    if resampler is not None:
        pending.append(resampler.resample_chunk(np.zeros((0, output_channels), dtype=np.float32), last=True))
    rest = np.concatenate(pending) if pending else np.zeros((0, output_channels), dtype=np.float32)

    total = resampled_length(frames_read, info.sample_rate, target_rate)
    rest = fit_length(rest, total - frames_yielded)
    for start in range(0, rest.shape[0], block_frames):
        yield np.ascontiguousarray(rest[start:start + block_frames].T)


def check_output_path(path: Path, subtype: str) -> str:
    """Return the libsndfile format for ``path``'s suffix; raise AudioError for an unsupported pair."""
    suffix = Path(path).suffix.lower()
    if suffix not in WRITE_FORMATS:
        raise AudioError(
            f"cannot write {path}: surfsep writes {' and '.join(WRITE_SUFFIXES)} files, so use one of those suffixes"
        )
    if subtype not in SUBTYPES:
        raise AudioError(f"cannot write {path}: unknown subtype {subtype!r}; use one of {', '.join(SUBTYPES)}")
    if subtype == "FLOAT" and suffix == ".flac":
        raise AudioError(f"cannot write {path}: FLAC stores integer samples only; use PCM_16 or PCM_24, or a .wav file")
    return WRITE_FORMATS[suffix]


def as_channels_first(waveform: np.ndarray | torch.Tensor, path: Path) -> np.ndarray:
    """Convert a (L,) or (C, L) array or tensor to a float (C, L) numpy array."""
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu().numpy()
    waveform = np.asarray(waveform)
    if waveform.ndim == 1:
        waveform = waveform[None]
    if waveform.ndim != 2:
        raise ValueError(f"audio for {path} must have shape (frames,) or (channels, frames), got {waveform.shape}")
    if not np.issubdtype(waveform.dtype, np.floating):
        raise ValueError(f"audio for {path} must be floating point in [-1, 1], got dtype {waveform.dtype}")
    return waveform


def quantise(block: np.ndarray, subtype: str) -> tuple[np.ndarray, int]:
    """Convert float (C, n) to what soundfile writes for ``subtype``, as (n, C); also count clipped samples.

    PCM_16 becomes int16 ``round(x * 2**15)``. PCM_24 becomes ``round(x * 2**23)`` shifted into the top
    24 bits of an int32, which libsndfile stores unchanged. Both clip to the integer range, so to [-1, 1).
    """
    if subtype == "FLOAT":
        return np.ascontiguousarray(block.T, dtype=np.float32), 0

    scale = 2.0 ** (PCM_BITS[subtype] - 1)
    levels = np.rint(block.T.astype(np.float64) * scale)
    clipped = int(np.count_nonzero((levels < -scale) | (levels > scale - 1)))
    levels = np.clip(levels, -scale, scale - 1)
    if subtype == "PCM_16":
        return levels.astype(np.int16), clipped
    return levels.astype(np.int32) << 8, clipped


class AudioWriter:
    """Write an audio file block by block, under a temporary name renamed to ``path`` on a clean exit.

    Use as a context manager and call ``write`` with float (C, n) blocks (or (n,) when C == 1). On an
    exception the temporary file is removed and an existing file at ``path`` is left untouched.
    """

    def __init__(self, path: Path, sample_rate: int, channels: int, subtype: str | None = None):
        self.path = Path(path)
        self.subtype = subtype or DEFAULT_SUBTYPE
        self.format = check_output_path(self.path, self.subtype)
        check_sample_rate(sample_rate, f"the sample rate of {self.path}")
        if channels < 1:
            raise ValueError(f"cannot write {self.path} with {channels} channels; it needs at least one")
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.frames = 0
        self.clipped = 0
        self.stack: contextlib.ExitStack | None = None
        self.file: soundfile.SoundFile | None = None

    def __enter__(self) -> "AudioWriter":
        stack = contextlib.ExitStack()
        try:
            temporary = stack.enter_context(atomic_path(self.path))
            self.file = soundfile.SoundFile(str(temporary), "w", samplerate=self.sample_rate, channels=self.channels,
                                            subtype=self.subtype, format=self.format)
        except SOUNDFILE_ERRORS as error:
            stack.__exit__(type(error), error, error.__traceback__)
            raise AudioError(f"cannot write {self.path} ({error}); check that its folder is writable") from error
        # Unwinding closes the file first, then renames it (clean exit) or removes it (exception).
        stack.callback(self.file.close)
        self.stack = stack
        return self

    def write(self, block: np.ndarray | torch.Tensor) -> None:
        """Append float (C, n) samples; raise ValueError for a wrong channel count or a NaN or infinity."""
        if self.file is None:
            raise RuntimeError(f"AudioWriter for {self.path} is not open; use it in a with statement")
        block = as_channels_first(block, self.path)
        if block.shape[0] != self.channels:
            raise ValueError(f"a block for {self.path} has {block.shape[0]} channels, but the file has {self.channels}")
        bad = np.argwhere(~np.isfinite(block))
        if bad.size:
            channel, frame = bad[0]
            raise ValueError(
                f"audio for {self.path} has a non-finite sample at frame {self.frames + int(frame)}, channel "
                f"{int(channel)}; check the model output"
            )
        samples, clipped = quantise(block, self.subtype)
        self.file.write(samples)
        self.frames += block.shape[1]
        self.clipped += clipped

    def __exit__(self, exc_type, exc, traceback) -> bool:
        stack, self.stack, self.file = self.stack, None, None
        if exc_type is None and self.frames == 0:
            error = AudioError(f"no audio was written to {self.path}; an audio file needs at least one frame")
            stack.__exit__(AudioError, error, None)
            raise error
        stack.__exit__(exc_type, exc, traceback)
        if exc_type is None and self.clipped:
            logger.warning("clipped %d of %d samples to [-1, 1) while writing %s as %s", self.clipped,
                           self.frames * self.channels, self.path, self.subtype)
        return False


def write_audio(path: Path, waveform: np.ndarray | torch.Tensor, sample_rate: int, subtype: str | None = None) -> None:
    """Write (L,) or (C, L) float audio to a .wav or .flac file, atomically; parent folders are created.

    ``subtype`` is "PCM_16" (the default), "PCM_24" or "FLOAT" (WAV only). PCM output is clipped to
    [-1, 1), and the number of clipped samples is logged as a warning.
    """
    waveform = as_channels_first(waveform, Path(path))
    if waveform.shape[1] == 0:
        raise ValueError(f"cannot write {path}: the waveform has no frames")
    with AudioWriter(path, sample_rate, waveform.shape[0], subtype) as writer:
        writer.write(waveform)


def list_audio(folder: Path) -> list[Path]:
    """List audio files under ``folder`` recursively, sorted by relative path; hidden files and folders are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AudioError(f"audio folder {folder} not found; pass a folder that contains {', '.join(AUDIO_SUFFIXES)} files")
    files = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file():
            files.append(path)
    return sorted(files, key=lambda path: path.relative_to(folder).as_posix())
