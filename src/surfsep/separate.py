"""Separating mixture files (PNG images or audio) into one file per source.

Outputs go to ``OUT/s1/NAME ... OUT/sK/NAME``, the same layout as the data sets, with NAME the
input's path relative to the folder it was found in (or its file name); audio outputs take the
suffix of the output format. Nothing is written until every input and output path has been
checked: an input is never overwritten, and an existing output only with ``overwrite``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from surfsep.audio import AUDIO_SUFFIXES, audio_info, list_audio
from surfsep.data.images import DataError, check_png, list_images, read_png, write_png
from surfsep.models import DEFAULT_CHUNK_SECONDS, DEFAULT_OVERLAP_SECONDS, AudioSeparator, load

logger = logging.getLogger(__name__)


def collect_inputs(inputs: list[Path], audio: bool = False) -> list[tuple[Path, str]]:
    """Expand files and folders into (path, relative name) pairs; names must be unique."""
    collected: list[tuple[Path, str]] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            files = list_audio(item) if audio else list_images(item)
            if not files:
                kind = f"audio files ({', '.join(AUDIO_SUFFIXES)})" if audio else "PNG files"
                raise DataError(f"no {kind} found in {item}")
            collected.extend((path, path.relative_to(item).as_posix()) for path in files)
        elif item.is_file():
            collected.append((item, item.name))
        else:
            raise DataError(f"input {item} not found")

    unique: dict[str, Path] = {}
    for path, name in collected:
        if name in unique and unique[name].resolve() != path.resolve():
            raise DataError(
                f"inputs {unique[name]} and {path} would both be written as {name}; "
                f"separate them in two runs with different --out folders"
            )
        unique[name] = path
    return [(path, name) for name, path in unique.items()]


def output_paths(out: Path, name: str, sources: int) -> list[Path]:
    return [out / f"s{k + 1}" / name for k in range(sources)]


def check_outputs(items: list[tuple[Path, str]], out: Path, sources: int, overwrite: bool) -> None:
    """Raise FileExistsError if an output would replace an input, or an existing file without ``overwrite``."""
    input_paths = {path.resolve() for path, _ in items}
    for _, name in items:
        for target in output_paths(out, name, sources):
            if target.resolve() in input_paths:
                raise FileExistsError(f"output {target} would overwrite the input of that name; choose another --out")
            if target.exists() and not overwrite:
                raise FileExistsError(f"{target} already exists; pass --overwrite to replace it or choose another --out")


def separate_files(model: Path, inputs: list[Path], out: Path, steps: int | None = None, seed: int = 0,
                   overwrite: bool = False, bit_depth: int = 16, batch_size: int = 64, **audio_options) -> list[Path]:
    """Separate every input file with the model at ``model``; returns the paths written.

    ``audio_options`` go to ``separate_audio_files`` and are rejected for image models.
    """
    separator = load(model)
    if isinstance(separator, AudioSeparator):
        return separate_audio_files(separator, inputs, Path(out), steps=steps, seed=seed, overwrite=overwrite,
                                    **audio_options)
    if audio_options:
        raise ValueError(f"{', '.join(sorted(audio_options))} apply to audio models; {model} is an image model")
    items = collect_inputs(inputs)
    out = Path(out)
    check_outputs(items, out, separator.sources, overwrite)

    # Check every input before writing anything, so a bad file late in the list leaves no partial output.
    for path, _ in items:
        check_png(path)

    written = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        images = [read_png(path) for path, _ in chunk]
        shapes = {image.shape for image in images}
        # Images of one size are separated together; other sizes run one by one.
        if len(shapes) == 1:
            estimates = separator.separate(torch.from_numpy(np.stack(images)), steps=steps, seed=seed)
        else:
            estimates = [separator.separate(torch.from_numpy(image), steps=steps, seed=seed)[0] for image in images]
        for (path, name), estimate in zip(chunk, estimates):
            for k in range(separator.sources):
                target = out / f"s{k + 1}" / name
                write_png(target, estimate[k].numpy(), bit_depth=bit_depth)
                written.append(target)
        logger.info("separated %d of %d files", min(start + batch_size, len(items)), len(items))
    return written


def separate_audio_files(separator: AudioSeparator, inputs: list[Path], out: Path, steps: int | None = None,
                         seed: int = 0, overwrite: bool = False, output_format: str = "wav",
                         subtype: str | None = None, channels: str = "mix",
                         chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
                         overlap_seconds: float = DEFAULT_OVERLAP_SECONDS, batch_chunks: int = 8) -> list[Path]:
    """Separate audio files of any length, streaming each through the model in overlapping chunks.

    Outputs have the input's sample rate and length, as ``output_format`` ("wav" or "flac") files.
    """
    from surfsep import longform

    if output_format not in ("wav", "flac"):
        raise ValueError(f"output format must be 'wav' or 'flac', got {output_format!r}")
    items = [(path, str(Path(name).with_suffix("." + output_format))) for path, name in collect_inputs(inputs, audio=True)]
    renamed: dict[str, Path] = {}
    for path, name in items:
        if name in renamed:
            raise DataError(f"inputs {renamed[name]} and {path} would both be written as {name}; "
                            f"separate them in two runs with different --out folders")
        renamed[name] = path
    check_outputs(items, out, separator.sources, overwrite)
    # Check every input before writing anything, so a bad file late in the list leaves no partial output.
    rates = {path: audio_info(path).sample_rate for path, _ in items}

    above = [path for path, rate in rates.items() if rate > separator.sample_rate]
    if above:
        logger.warning("%d input(s), such as %s, have a higher sample rate than the model's %d Hz: their estimates "
                       "hold only the band below %d Hz", len(above), above[0], separator.sample_rate,
                       separator.sample_rate // 2)
    steps, solver = separator.resolve_sampler(steps, None)
    separate_chunks = separator.chunk_separator(steps, seed, solver)
    written = []
    for index, (path, name) in enumerate(items):
        targets = output_paths(out, name, separator.sources)
        longform.separate_file(separate_chunks, path, targets, separator.sample_rate, chunk_seconds, overlap_seconds,
                               batch_chunks, channels=channels, subtype=subtype)
        written.extend(targets)
        logger.info("separated %s (%d of %d)", path, index + 1, len(items))
    return written
