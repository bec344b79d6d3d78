import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from surfsep.data import images as image_io
from surfsep.data.digits import build_digits
from surfsep.data.images import DataError, MixtureSet, ReferenceSet, read_png, write_png


def pixel_digests(folder):
    return {hashlib.sha256(np.asarray(Image.open(path)).tobytes()).hexdigest() for path in folder.glob("*.png")}


def test_digits_layout(digits_dir):
    description = json.loads((digits_dir / "dataset.json").read_text())
    for split, count in (("train", 160), ("valid", 5), ("test", 10)):
        names = sorted(path.name for path in (digits_dir / split / "mix").iterdir())
        assert len(names) == count
        assert description["splits"][split]["mixtures"] == count
        for folder in ("s1", "s2"):
            assert sorted(path.name for path in (digits_dir / split / folder).iterdir()) == names


def test_digits_mixture_is_average_of_two_different_images(digits_dir):
    reference_set = ReferenceSet.open(digits_dir / "train", 2)
    average = reference_set.references.mean(dim=1)
    assert (reference_set.mixtures - average).abs().max().item() <= 0.5 / 65535 + 1e-7
    differences = (reference_set.references[:, 0] - reference_set.references[:, 1]).abs().flatten(1).max(dim=1).values
    assert (differences > 0).all()


def test_digits_test_images_disjoint_from_train(digits_dir):
    description = json.loads((digits_dir / "dataset.json").read_text())
    train_ids = set(description["splits"]["train"]["image_ids"])
    assert not train_ids & set(description["splits"]["test"]["image_ids"])
    assert not train_ids & set(description["splits"]["valid"]["image_ids"])

    train_pixels = pixel_digests(digits_dir / "train" / "s1") | pixel_digests(digits_dir / "train" / "s2")
    test_pixels = pixel_digests(digits_dir / "test" / "s1") | pixel_digests(digits_dir / "test" / "s2")
    assert not train_pixels & test_pixels


def test_digits_build_is_reproducible(tmp_path):
    first = build_digits(tmp_path / "a", scale=0.005)
    second = build_digits(tmp_path / "b", scale=0.005)
    assert first["splits"]["train"]["pairs"] == second["splits"]["train"]["pairs"]
    for path in sorted((tmp_path / "a").rglob("*.png")):
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        assert path.read_bytes() == twin.read_bytes()


def test_digits_refuses_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("user file")
    with pytest.raises(DataError, match="not empty"):
        build_digits(tmp_path, scale=0.005)
    assert (tmp_path / "keep.txt").read_text() == "user file"


def test_png_round_trip_16_and_8_bit(tmp_path):
    image = np.linspace(0, 1, 64, dtype=np.float64).reshape(8, 8)
    write_png(tmp_path / "deep.png", image, bit_depth=16)
    write_png(tmp_path / "shallow.png", image, bit_depth=8)
    assert np.abs(read_png(tmp_path / "deep.png") - image).max() <= 0.5 / 65535 + 1e-7
    assert np.abs(read_png(tmp_path / "shallow.png") - image).max() <= 0.5 / 255 + 1e-7
    assert not list(tmp_path.glob(".*.tmp"))


def test_read_png_rejects_colour_image(tmp_path):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour\.png.*grayscale"):
        read_png(tmp_path / "colour.png")


def test_read_png_rejects_broken_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        read_png(tmp_path / "broken.png")


def test_mixture_set_rejects_mixed_sizes(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((8, 8)))
    write_png(tmp_path / "b.png", np.zeros((8, 9)))
    with pytest.raises(DataError, match=r"b\.png is 9x8.*same size"):
        MixtureSet.open(tmp_path)


def test_mixture_set_reads_mix_folder_only(digits_dir, monkeypatch):
    opened = []
    original = image_io.read_png
    monkeypatch.setattr(image_io, "read_png", lambda path: opened.append(path) or original(path))

    mixture_set = MixtureSet.open(digits_dir / "train")

    assert len(mixture_set) == 160
    assert opened and all(path.parent.name == "mix" for path in opened)


def test_mixture_set_rejects_reference_folder(digits_dir):
    with pytest.raises(DataError, match="reference folder"):
        MixtureSet.open(digits_dir / "train" / "s1")


def test_mixture_set_rejects_data_set_root(digits_dir):
    with pytest.raises(DataError, match="contains reference folders"):
        MixtureSet.open(digits_dir)


def test_reference_set_names_missing_reference(digits_dir, tmp_path):
    copy = tmp_path / "split"
    shutil.copytree(digits_dir / "valid", copy)
    (copy / "s2" / "00003.png").unlink()
    with pytest.raises(DataError, match=r"s2.*00003\.png"):
        ReferenceSet.open(copy, 2)


def test_reference_set_needs_all_source_folders(digits_dir):
    with pytest.raises(DataError, match="s1, s2, s3"):
        ReferenceSet.open(digits_dir / "valid", 3)


def test_reference_set_tensors(digits_dir):
    reference_set = ReferenceSet.open(digits_dir / "test")
    assert reference_set.mixtures.shape == (10, 1, 28, 28)
    assert reference_set.references.shape == (10, 2, 1, 28, 28)
    assert reference_set.references.dtype == torch.float32
