"""Reading and writing single-channel PNG images, and the two data set views.

Pixel values are floats in [0, 1]. 8-bit and 16-bit grayscale PNGs are read; multi-channel
files are rejected because the separators here are single-channel.

``MixtureSet`` lists only the mixture files and is the only view the unsupervised methods get,
so they cannot open the reference folders. ``ReferenceSet`` pairs every mixture with its
references ``s1/ ... sK/`` (the LibriMix / WSJ0-2mix convention) for supervised training and
evaluation.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from surfsep.files import atomic_path

IMAGE_SUFFIXES = (".png",)
MIXTURE_FOLDERS = ("mix", "mix_clean")
REFERENCE_FOLDER = re.compile(r"^s(\d+)$")


class DataError(ValueError):
    """A data folder or file that cannot be used; the message names it and gives the fix."""


GRAYSCALE_MODES = ("L", "I;16", "I;16B", "I;16L", "I", "1")


def read_png(path: Path) -> np.ndarray:
    """Read a grayscale PNG as float32 (H, W) in [0, 1]; raise DataError naming the file and the fix otherwise."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"{path} is not a .png file; surfsep reads grayscale PNG images, so convert it first")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"image {path} is empty (0 bytes); write it again or remove it")
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise DataError(f"{path} contains {image.format} data, not PNG; convert it to a grayscale PNG")
            if image.mode not in GRAYSCALE_MODES:
                raise DataError(
                    f"image {path} has mode {image.mode!r}; surfsep separates single-channel images, "
                    f"so convert it to 8- or 16-bit grayscale first"
                )
            image.load()
            mode = image.mode
            array = np.array(image)
    except Image.DecompressionBombError as error:
        raise DataError(f"image {path} is too large to read safely ({error})") from error
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"cannot read image {path} ({error}); check that it is a complete PNG file") from error

    if mode == "L":
        return array.astype(np.float32) / 255.0
    if mode == "1":
        return array.astype(np.float32)
    if array.min() < 0 or array.max() > 65535:
        raise DataError(f"image {path} has values outside the 16-bit range; save it as 8- or 16-bit grayscale")
    return array.astype(np.float32) / 65535.0


def write_png(path: Path, image: np.ndarray, bit_depth: int = 16, stack: contextlib.ExitStack | None = None) -> None:
    """Write (H, W) values in [0, 1] (clipped) as a grayscale PNG, atomically (temporary file, then rename).

    With ``stack``, the rename waits until the stack closes, so several files can appear together.
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"bit depth must be 8 or 16, got {bit_depth}")
    clipped = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    if bit_depth == 8:
        pil_image = Image.fromarray(np.round(clipped * 255.0).astype(np.uint8))
    else:
        pil_image = Image.fromarray(np.round(clipped * 65535.0).astype(np.uint16))

    if stack is not None:
        pil_image.save(stack.enter_context(atomic_path(path)), format="PNG")
        return
    with atomic_path(path) as temporary:
        pil_image.save(temporary, format="PNG")


def list_images(folder: Path) -> list[Path]:
    """List the PNG files under ``folder``, recursively, sorted by relative path; hidden files are skipped."""
    files = [
        path
        for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    ]
    return sorted(files, key=lambda path: path.relative_to(folder).as_posix())


def find_mixture_folder(root: Path) -> Path:
    """Return ``root/mix`` (or ``root/mix_clean``) when present, else ``root`` itself."""
    root = Path(root)
    if root.is_file():
        raise DataError(f"{root} is a file; pass the folder of mixtures that contains it, or a split folder with mix/")
    if not root.is_dir():
        raise DataError(f"data folder {root} not found; pass a folder of mixtures or a split folder such as DATA/train")
    for name in MIXTURE_FOLDERS:
        if (root / name).is_dir():
            return root / name
    return root


def load_stack(files: list[Path], description: str) -> torch.Tensor:
    """Read equally sized images into one (N, 1, H, W) float32 tensor."""
    images = []
    shape = None
    for path in files:
        image = read_png(path)
        if shape is None:
            shape = image.shape
        elif image.shape != shape:
            raise DataError(
                f"{description}: image {path} is {image.shape[1]}x{image.shape[0]} but {files[0]} is "
                f"{shape[1]}x{shape[0]}; all images in one data set must have the same size"
            )
        images.append(image)
    return torch.from_numpy(np.stack(images)).unsqueeze(1)


def reference_numbers(root: Path, sources: int | None) -> list[int]:
    """Return [1, ..., K] after checking that ``root`` has folders s1/ ... sK/; K defaults to the count found."""
    found = sorted(
        int(match.group(1))
        for path in root.iterdir()
        if path.is_dir() and (match := REFERENCE_FOLDER.match(path.name))
    )
    if sources is None:
        sources = len(found)
    expected = list(range(1, sources + 1))
    if sources < 1 or found[:sources] != expected:
        raise DataError(
            f"{root} must hold reference folders {', '.join(f's{k}' for k in expected) or 's1'}; "
            f"found {', '.join(f's{k}' for k in found) or 'none'}"
        )
    return expected


@dataclass
class MixtureSet:
    """Mixture images of one folder, held in memory as (N, 1, H, W); no access to references."""

    folder: Path
    names: list[str]
    mixtures: torch.Tensor

    @classmethod
    def open(cls, root: Path) -> "MixtureSet":
        folder = find_mixture_folder(Path(root))
        if REFERENCE_FOLDER.match(folder.name) and (folder.parent / "mix").is_dir():
            raise DataError(
                f"{folder} is a reference folder; unsupervised training reads mixtures only, "
                f"so pass {folder.parent} (whose mix/ folder is used)"
            )
        files = list_images(folder)
        if not files:
            raise DataError(f"no PNG mixtures found in {folder}")
        splits = sorted({
            path.parent.parent.as_posix()
            for path in files
            if REFERENCE_FOLDER.match(path.parent.name)
            and any((path.parent.parent / name).is_dir() for name in MIXTURE_FOLDERS)
        })
        if splits:
            raise DataError(
                f"{folder} contains reference folders (sK/) beside mixture folders; unsupervised training reads "
                f"mixtures only, so pass one split folder, whose mix/ is used: {', '.join(splits)}"
            )
        names = [path.relative_to(folder).as_posix() for path in files]
        return cls(folder=folder, names=names, mixtures=load_stack(files, f"mixtures in {folder}"))

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class ReferenceSet:
    """Mixtures (N, 1, H, W) with their references (N, K, 1, H, W) from ``mix/`` and ``s1/ ... sK/``."""

    folder: Path
    names: list[str]
    mixtures: torch.Tensor
    references: torch.Tensor

    @classmethod
    def open(cls, root: Path, sources: int | None = None) -> "ReferenceSet":
        root = Path(root)
        mixture_folder = find_mixture_folder(root)
        if mixture_folder == root:
            raise DataError(
                f"{root} has no mix/ folder; data with references needs mix/ and s1/ ... sK/ "
                f"folders holding files of the same names"
            )
        expected = reference_numbers(root, sources)

        files = list_images(mixture_folder)
        if not files:
            raise DataError(f"no PNG mixtures found in {mixture_folder}")
        names = [path.relative_to(mixture_folder).as_posix() for path in files]
        for k in expected:
            missing = [name for name in names if not (root / f"s{k}" / name).is_file()]
            if missing:
                raise DataError(
                    f"{len(missing)} mixtures have no reference in {root / f's{k}'}, "
                    f"for example {missing[0]}; every mixture needs a file of the same name in each sK/"
                )
        mixtures = load_stack(files, f"mixtures in {mixture_folder}")
        references = torch.stack(
            [load_stack([root / f"s{k}" / name for name in names], f"references in {root / f's{k}'}") for k in expected],
            dim=1,
        )
        if references.shape[-2:] != mixtures.shape[-2:]:
            raise DataError(
                f"references in {root} are {references.shape[-1]}x{references.shape[-2]} but mixtures are "
                f"{mixtures.shape[-1]}x{mixtures.shape[-2]}"
            )
        return cls(folder=root, names=names, mixtures=mixtures, references=references)

    def first(self, count: int) -> "ReferenceSet":
        """Return a view of the first ``count`` mixtures and their references."""
        return ReferenceSet(folder=self.folder, names=self.names[:count], mixtures=self.mixtures[:count],
                            references=self.references[:count])

    def __len__(self) -> int:
        return len(self.names)
