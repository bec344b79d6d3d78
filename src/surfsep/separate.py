"""Separating PNG mixture files into one PNG per source.

Outputs go to ``OUT/s1/NAME.png ... OUT/sK/NAME.png``, the same layout as the data sets, with
NAME the input's path relative to the folder it was found in (or its file name). Nothing is
written until every output path has been checked: an input is never overwritten, and an existing
output only with ``overwrite``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from surfsep.data.images import DataError, check_png, list_images, read_png, write_png
from surfsep.models import load

logger = logging.getLogger(__name__)


def collect_inputs(inputs: list[Path]) -> list[tuple[Path, str]]:
    """Expand files and folders into (path, relative name) pairs; names must be unique."""
    collected: list[tuple[Path, str]] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            files = list_images(item)
            if not files:
                raise DataError(f"no PNG files found in {item}")
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


def separate_files(model: Path, inputs: list[Path], out: Path, steps: int | None = None, seed: int = 0,
                   overwrite: bool = False, bit_depth: int = 16, batch_size: int = 64) -> list[Path]:
    """Separate every input PNG with the model at ``model``; returns the paths written."""
    separator = load(model)
    items = collect_inputs(inputs)
    out = Path(out)

    input_paths = {path.resolve() for path, _ in items}
    for _, name in items:
        for k in range(separator.sources):
            target = out / f"s{k + 1}" / name
            if target.resolve() in input_paths:
                raise FileExistsError(f"output {target} would overwrite the input of that name; choose another --out")
            if target.exists() and not overwrite:
                raise FileExistsError(f"{target} already exists; pass --overwrite to replace it or choose another --out")

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
