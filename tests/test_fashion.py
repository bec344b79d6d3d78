"""The fashion builder, run on IDX files written by the test (Debian's package is optional)."""

import gzip
import json

import numpy as np
import pytest

from surfsep.data import fashion
from surfsep.data.fashion import FASHION_SPLITS, build_fashion, read_idx
from surfsep.data.images import DataError, ReferenceSet


def write_idx(path, values: np.ndarray) -> None:
    header = (0x0800 + values.ndim).to_bytes(4, "big") + b"".join(size.to_bytes(4, "big") for size in values.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + values.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path):
    """IDX files of the real layout: image i of a file is filled with one value that identifies it."""
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for prefix, count, first_value in (("train", 60000, 0), ("t10k", 10000, 1)):
        values = (np.arange(count) * 7 + first_value) % 256
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", np.broadcast_to(values[:, None, None], (count, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    return folder


def test_fashion_splits_use_disjoint_images(fake_fashion, tmp_path):
    description = build_fashion(tmp_path / "out", scale=0.002, folder=fake_fashion)
    ids = {split: set(info["image_ids"]) for split, info in description["splits"].items()}
    assert ids["train"].isdisjoint(ids["valid"])
    assert ids["train"].isdisjoint(ids["test"])
    assert ids["valid"].isdisjoint(ids["test"])
    assert max(ids["train"]) < 60000 <= min(ids["valid"] | ids["test"])
    assert [info["mixtures"] for info in description["splits"].values()] == [60, 2, 2]

    test = ReferenceSet.open(tmp_path / "out" / "test", 2)
    pairs = description["splits"]["test"]["pairs"]
    first_image = pairs[0][0] - 60000
    expected = ((first_image * 7 + 1) % 256) / 255.0
    assert float(test.references[0, 0].mean()) == pytest.approx(expected, abs=1e-6)
    torch_mix = test.mixtures[0, 0]
    assert float((torch_mix - test.references[0].mean(dim=0)[0]).abs().max()) < 1e-4
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["name"] == "fashion"


def test_full_training_split_uses_every_image_once(fake_fashion, tmp_path, monkeypatch):
    # The real split draws half as many mixtures as images; a smaller split of the same shape is faster.
    monkeypatch.setattr(fashion, "FASHION_SPLITS", (("train", "train", 0, 600, 300), ("valid", "t10k", 0, 20, 5),
                                                    ("test", "t10k", 20, 40, 5)))
    description = build_fashion(tmp_path / "out", scale=1.0, folder=fake_fashion)
    train = description["splits"]["train"]
    assert train["mixtures"] == 300
    assert len(train["image_ids"]) == 600


def test_training_split_pairs_every_image():
    split, prefix, first, last, count = FASHION_SPLITS[0]
    assert (split, prefix, last - first) == ("train", "train", 60000)
    assert 2 * count == last - first


def test_missing_package_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        build_fashion(tmp_path / "out", folder=tmp_path / "absent")


def test_truncated_idx_file_is_named(tmp_path):
    path = tmp_path / "t.gz"
    write_idx(path, np.zeros((4, 28, 28)))
    with gzip.open(path, "rb") as stream:
        data = stream.read()
    with gzip.open(path, "wb") as stream:
        stream.write(data[:-100])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path, 3)
