"""Separating mixture files (PNG images or audio) into one file per source.

Outputs go to ``OUT/s1/NAME ... OUT/sK/NAME``, the same layout as the data sets, with NAME the
input's path relative to the folder it was found in (or its file name); audio outputs take the
suffix of the output format. Nothing is written until every input and output path has been
checked: an input is never overwritten, and an existing output only with ``overwrite``.

Every input is read in full before anything is separated. A bad input (missing, unreadable, with
NaN samples, of the wrong kind) stops the run before anything is written. With ``skip_bad`` it is
reported instead, the others are separated, and the result lists what was skipped and why. The K outputs of
one input are renamed into place together, after all of them are complete.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from surfsep import interrupt
from surfsep.audio import AUDIO_SUFFIXES, AudioError, list_audio, scan_audio
from surfsep.data.images import DataError, list_images, read_png, write_png
from surfsep.models import DEFAULT_CHUNK_SECONDS, DEFAULT_OVERLAP_SECONDS, AudioSeparator, load
from surfsep.progress import Progress

logger = logging.getLogger(__name__)

# Warn about an input whose samples are at full scale this often: it was probably clipped.
CLIPPED_SHARE = 0.001
# Bad inputs named one by one in an error; the rest are counted.
LISTED_PROBLEMS = 10


@dataclass
class SeparationResult:
    """The files written, and the inputs skipped as (path, message naming it and the problem)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def describe_problems(problems: list[tuple[Path, str]]) -> str:
    lines = [f"  {reason}" for _, reason in problems[:LISTED_PROBLEMS]]
    if len(problems) > LISTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - LISTED_PROBLEMS} more")
    return "\n".join(lines)


def collect_inputs(inputs: list[Path], audio: bool = False) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """Expand files and folders into (path, relative name) pairs; names must be unique.

    Returns the pairs and the problems: inputs that do not exist and folders without a file to
    separate, as (path, message naming it).
    """
    collected: list[tuple[Path, str]] = []
    problems: list[tuple[Path, str]] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            files = list_audio(item) if audio else list_images(item)
            if not files:
                kind = f"audio files ({', '.join(AUDIO_SUFFIXES)})" if audio else "PNG files"
                problems.append((item, f"no {kind} found in {item}"))
            collected.extend((path, path.relative_to(item).as_posix()) for path in files)
        elif item.is_file():
            collected.append((item, item.name))
        else:
            problems.append((item, f"input {item} not found; check the path"))

    unique: dict[str, Path] = {}
    for path, name in collected:
        if name in unique and unique[name].resolve() != path.resolve():
            raise DataError(
                f"inputs {unique[name]} and {path} would both be written as {name}; "
                f"separate them in two runs with different --out folders"
            )
        unique[name] = path
    return [(path, name) for name, path in unique.items()], problems


def stop_or_skip(problems: list[tuple[Path, str]], good: int, skip_bad: bool) -> None:
    """Raise DataError naming the bad inputs, unless ``skip_bad``; then log each one."""
    if not problems:
        return
    if not skip_bad:
        advice = "fix or remove them" + (f", or pass --skip-bad to separate the other {good}" if good else "")
        raise DataError(
            f"{len(problems)} input(s) cannot be separated, so nothing was written:\n{describe_problems(problems)}\n"
            f"{advice}"
        )
    for _, reason in problems:
        logger.warning("skipping: %s", reason)


def skip_or_raise(error: DataError, path: Path, result: SeparationResult, skip_bad: bool) -> None:
    """Re-raise ``error`` for an input that failed during separation, or with ``skip_bad`` record it as skipped."""
    if not skip_bad:
        raise error
    logger.warning("skipping: %s", error)
    result.skipped.append((path, str(error)))


def output_paths(out: Path, name: str, sources: int) -> list[Path]:
    return [out / f"s{k + 1}" / name for k in range(sources)]


def check_outputs(items: list[tuple[Path, str]], out: Path, sources: int, overwrite: bool) -> None:
    """Raise FileExistsError if an output would replace an input, or an existing file without ``overwrite``."""
    input_paths = {path.resolve() for path, _ in items}
    existing = []
    for _, name in items:
        for target in output_paths(out, name, sources):
            if target.resolve() in input_paths:
                raise FileExistsError(f"output {target} would overwrite the input of that name; choose another --out")
            if target.exists() and not overwrite:
                existing.append(target)
    if existing:
        more = f" and {len(existing) - 1} more of the outputs" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]}{more} already exist{'' if more else 's'}; pass --overwrite to replace "
                              f"{'them' if more else 'it'} or choose another --out")


def separate_files(model: Path, inputs: list[Path], out: Path, steps: int | None = None, seed: int = 0,
                   overwrite: bool = False, bit_depth: int = 16, batch_size: int = 64, skip_bad: bool = False,
                   device: str = "cpu", **audio_options) -> SeparationResult:
    """Separate every input file with the model at ``model``; returns the files written and the inputs skipped.

    The network runs on ``device`` (cpu, cuda or cuda:N). ``audio_options`` go to
    ``separate_audio_files`` and are rejected for image models.
    """
    separator = load(model, device)
    if isinstance(separator, AudioSeparator):
        return separate_audio_files(separator, inputs, Path(out), steps=steps, seed=seed, overwrite=overwrite,
                                    skip_bad=skip_bad, **audio_options)
    if audio_options:
        raise ValueError(f"{', '.join(sorted(audio_options))} apply to audio models; {model} is an image model")
    items, problems = collect_inputs(inputs)
    out = Path(out)
    check_outputs(items, out, separator.sources, overwrite)

    # Decode every input before writing anything, so a bad file late in the list leaves no partial output.
    for path, _ in items:
        try:
            read_png(path)
        except DataError as error:
            problems.append((path, str(error)))
    bad = {path for path, _ in problems}
    good = [(path, name) for path, name in items if path not in bad]
    stop_or_skip(problems, len(good), skip_bad)
    if not good:
        raise DataError(f"none of the inputs can be separated:\n{describe_problems(problems)}")

    result = SeparationResult(skipped=problems)
    with Progress(len(good), "separating", unit="files") as progress:
        for start in range(0, len(good), batch_size):
            interrupt.raise_if_requested()
            chunk, images = [], []
            for path, name in good[start : start + batch_size]:
                try:
                    images.append(read_png(path))
                except DataError as error:
                    # The file changed after its check.
                    skip_or_raise(error, path, result, skip_bad)
                    continue
                chunk.append((path, name))
            if not chunk:
                continue
            # Images of one size are separated together; other sizes run one by one.
            if len({image.shape for image in images}) == 1:
                estimates = separator.separate(torch.from_numpy(np.stack(images)), steps=steps, seed=seed)
            else:
                estimates = [separator.separate(torch.from_numpy(image), steps=steps, seed=seed)[0] for image in images]
            for (path, name), estimate in zip(chunk, estimates):
                targets = output_paths(out, name, separator.sources)
                with contextlib.ExitStack() as stack:
                    # Each output is renamed into place when the stack closes, after all of them are written.
                    for k, target in enumerate(targets):
                        write_png(target, estimate[k].numpy(), bit_depth=bit_depth, stack=stack)
                result.written.extend(targets)
            progress.update(len(chunk))
    return result


def separate_audio_files(separator: AudioSeparator, inputs: list[Path], out: Path, steps: int | None = None,
                         seed: int = 0, overwrite: bool = False, output_format: str = "wav",
                         subtype: str | None = None, channels: str = "mix",
                         chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
                         overlap_seconds: float = DEFAULT_OVERLAP_SECONDS, batch_chunks: int = 8,
                         skip_bad: bool = False) -> SeparationResult:
    """Separate audio files of any length, streaming each through the model in overlapping chunks.

    Outputs have the input's sample rate and length, as ``output_format`` ("wav" or "flac") files.
    Every input is decoded once before separation starts (``scan_audio``), which finds unreadable
    files and NaN samples before anything is written.
    """
    from surfsep import longform

    if output_format not in ("wav", "flac"):
        raise ValueError(f"output format must be 'wav' or 'flac', got {output_format!r}")
    collected, problems = collect_inputs(inputs, audio=True)
    items = [(path, str(Path(name).with_suffix("." + output_format))) for path, name in collected]
    renamed: dict[str, Path] = {}
    for path, name in items:
        if name in renamed:
            raise DataError(f"inputs {renamed[name]} and {path} would both be written as {name}; "
                            f"separate them in two runs with different --out folders")
        renamed[name] = path
    check_outputs(items, out, separator.sources, overwrite)

    rates, durations = {}, {}
    for path, _ in items:
        try:
            info, full_scale = scan_audio(path)
        except DataError as error:
            problems.append((path, str(error)))
            continue
        rates[path] = info.sample_rate
        durations[path] = info.duration
        samples = info.frames * info.channels
        if full_scale > CLIPPED_SHARE * samples:
            logger.warning("%s has %d of %d samples at full scale and was probably clipped; its estimates will "
                           "carry the clipping distortion", path, full_scale, samples)
    good = [(path, name) for path, name in items if path in rates]
    stop_or_skip(problems, len(good), skip_bad)
    if not good:
        raise DataError(f"none of the inputs can be separated:\n{describe_problems(problems)}")

    above = [path for path, rate in rates.items() if rate > separator.sample_rate]
    if above:
        logger.warning("%d input(s), such as %s, have a higher sample rate than the model's %d Hz: their estimates "
                       "hold only the band below %d Hz", len(above), above[0], separator.sample_rate,
                       separator.sample_rate // 2)
    steps, solver = separator.resolve_sampler(steps, None)
    separate_chunks = separator.chunk_separator(steps, seed, solver)
    result = SeparationResult(skipped=problems)
    with Progress(sum(durations[path] for path, _ in good), "separating", unit="s of audio") as progress:
        for index, (path, name) in enumerate(good):
            targets = output_paths(out, name, separator.sources)
            try:
                longform.separate_file(separate_chunks, path, targets, separator.sample_rate, chunk_seconds,
                                       overlap_seconds, batch_chunks, channels=channels, subtype=subtype,
                                       progress=progress)
            except AudioError as error:
                # The file changed or failed to decode after its check, so its outputs were never renamed into place.
                skip_or_raise(error, path, result, skip_bad)
                continue
            result.written.extend(targets)
            logger.info("separated %s (%d of %d)", path, index + 1, len(good))
    return result
