import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from surfsep.data import realspeech
from surfsep.data.images import DataError
from surfsep.data.realspeech import PROMPT_SETS, build_realspeech, realspeech_available

SPLITS = ("train", "valid", "test")
TINY = 0.002  # 4 train, 2 valid and 2 test mixtures
APT_LINE = "apt-get install " + " ".join(prompt_set.package for prompt_set in PROMPT_SETS)


def read_int16(path: Path) -> np.ndarray:
    samples, _ = soundfile.read(str(path), dtype="int16")
    return samples.astype(np.int32)


def artist(path: Path) -> str:
    with soundfile.SoundFile(str(path)) as stream:
        return stream.artist


def test_realspeech_missing_packages_named(tmp_path, monkeypatch):
    monkeypatch.setattr(realspeech, "SOUNDS_FOLDER", tmp_path / "no-sounds")
    assert realspeech_available() is False
    with pytest.raises(DataError) as raised:
        build_realspeech(tmp_path / "set", scale=TINY)
    assert APT_LINE in str(raised.value)
    for prompt_set in PROMPT_SETS:
        assert prompt_set.package in str(raised.value)
    assert not (tmp_path / "set").exists()


def test_realspeech_set_or_clear_error(tmp_path):
    if not realspeech_available():
        # Without the Debian packages the build must stop with the install command.
        with pytest.raises(DataError, match=APT_LINE):
            build_realspeech(tmp_path / "set", scale=TINY)
        return

    description = build_realspeech(tmp_path / "set", scale=TINY, seed=0)
    root = tmp_path / "set"
    assert json.loads((root / "dataset.json").read_text()) == description
    by_files = {}
    for split, count in (("train", 4), ("valid", 2), ("test", 2)):
        names = sorted(path.name for path in (root / split / "mix").iterdir())
        assert len(names) == count == description["splits"][split]["mixtures"]
        for folder in ("s1", "s2"):
            assert sorted(path.name for path in (root / split / folder).iterdir()) == names

        for item in description["splits"][split]["items"]:
            paths = [root / split / folder / item["name"] for folder in ("mix", "s1", "s2")]
            for path in paths:
                info = soundfile.info(str(path))
                assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")
            mixture, first, second = (read_int16(path) for path in paths)
            assert np.array_equal(mixture, first + second)
            assert np.abs(mixture).max() < 32767
            assert 2.5 * 8000 <= len(mixture) <= 5.0 * 8000
            assert item["speakers"][0] != item["speakers"][1]
            assert [artist(paths[1]), artist(paths[2])] == item["speakers"]
        by_files[split] = {artist(path) for folder in ("s1", "s2") for path in (root / split / folder).iterdir()}

    by_json = {split: set(description["splits"][split]["speakers"]) for split in SPLITS}
    for speakers in (by_json, by_files):
        assert not speakers["train"] & speakers["test"]
        assert not speakers["valid"] & speakers["test"]

    # Valid shares train's speakers, so it must share none of train's recordings.
    for folder, valid_prompts in description["splits"]["valid"]["prompts"].items():
        assert not set(valid_prompts) & set(description["splits"]["train"]["prompts"][folder])
    for item in description["splits"]["valid"]["items"]:
        for folder, used in zip(item["prompt_sets"], item["prompts"]):
            assert set(used) <= set(description["splits"]["valid"]["prompts"][folder])


def test_realspeech_build_is_reproducible(tmp_path):
    if not realspeech_available():
        with pytest.raises(DataError, match=APT_LINE):
            build_realspeech(tmp_path / "a", scale=TINY)
        return
    build_realspeech(tmp_path / "a", scale=TINY, seed=3)
    build_realspeech(tmp_path / "b", scale=TINY, seed=3)
    files = sorted(path.relative_to(tmp_path / "a") for path in (tmp_path / "a").rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(tmp_path / "b") for path in (tmp_path / "b").rglob("*") if path.is_file())
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative


def test_realspeech_rejects_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("user file")
    with pytest.raises(DataError, match="not empty"):
        build_realspeech(tmp_path, scale=TINY)
    assert (tmp_path / "keep.txt").read_text() == "user file"
