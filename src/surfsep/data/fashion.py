"""The ``fashion`` data set: two-garment mixtures of Fashion-MNIST, read from Debian's package.

``apt-get install dataset-fashion-mnist`` puts the 60,000 training and 10,000 test images under
``/usr/share/datasets/fashion-mnist/`` (MIT licence, Zalando Research). Every training image is used
once: its 60,000 images give 30,000 training mixtures. The 10,000 test images are split by a fixed
seed into a 2,000-image pool for valid (500 mixtures) and an 8,000-image pool for test (1,000
mixtures), so no test garment appears in training or validation.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from surfsep.data.digits import write_image_pairs
from surfsep.data.images import DataError

FASHION_FOLDER = Path("/usr/share/datasets/fashion-mnist")
FASHION_SEED = 20261
# (split, file prefix, first and last image of the shuffled file, mixtures drawn)
FASHION_SPLITS = (("train", "train", 0, 60000, 30000), ("valid", "t10k", 0, 2000, 500),
                  ("test", "t10k", 2000, 10000, 1000))


def read_idx(path: Path, dimensions: int) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes with ``dimensions`` axes."""
    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read {path}: {error}; reinstall dataset-fashion-mnist") from error
    magic = int.from_bytes(data[:4], "big")
    if magic != 0x0800 + dimensions:
        raise DataError(f"{path} is not an IDX file of {dimensions}-axis unsigned bytes (magic number {magic:#x})")
    shape = tuple(int.from_bytes(data[4 + 4 * axis : 8 + 4 * axis], "big") for axis in range(dimensions))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dimensions)
    if values.size != int(np.prod(shape)):
        raise DataError(f"{path} contains {values.size} values, but its header gives the shape {shape}: the file is "
                        f"truncated; reinstall dataset-fashion-mnist")
    return values.reshape(shape)


def load_fashion(folder: Path = FASHION_FOLDER) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return {"train": (images, labels), "t10k": (images, labels)} with images (N, 28, 28) uint8."""
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist: install Fashion-MNIST with "
                        f"`sudo apt-get install dataset-fashion-mnist`")
    return {prefix: (read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", 3),
                     read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 1))
            for prefix in ("train", "t10k")}


def build_fashion(out: Path, scale: float = 1.0, folder: Path = FASHION_FOLDER) -> dict:
    """Write the fashion data set to ``out`` (which must not exist or be empty); returns its description.

    ``scale`` multiplies every split's mixture count, for quick trials.
    """
    files = load_fashion(folder)
    rng = np.random.default_rng(FASHION_SEED)
    orders = {prefix: rng.permutation(len(images)) for prefix, (images, _) in files.items()}
    # One array of all 70,000 images; test-file indices follow the training file's.
    images = np.concatenate([files["train"][0], files["t10k"][0]])
    labels = np.concatenate([files["train"][1], files["t10k"][1]])
    offset = {"train": 0, "t10k": len(files["train"][0])}
    pools = [(split, orders[prefix][first:last] + offset[prefix], count)
             for split, prefix, first, last, count in FASHION_SPLITS]
    description = {
        "name": "fashion",
        "seed": FASHION_SEED,
        "source": f"Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, MIT licence) from {folder}",
        "image_indices": "0 to 59999 are the training file, 60000 to 69999 the t10k file",
    }
    return write_image_pairs(out, images, labels, pools, description, rng, scale)
