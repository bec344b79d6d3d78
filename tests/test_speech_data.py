import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from surfsep.data import speech
from surfsep.data.images import DataError
from surfsep.data.speech import LOADER_VOICES, PEAK_LIMIT, SYSTEM_VOICES, build_speech

SPLITS = ("train", "valid", "test")
TINY = 0.005  # 15 train, 2 valid and 2 test mixtures


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("speech") / "set"
    build_speech(folder, scale=TINY, seed=0, system_voices=False)
    return folder


def read_int16(path: Path) -> np.ndarray:
    samples, _ = soundfile.read(str(path), dtype="int16")
    return samples.astype(np.int32)


def artist(path: Path) -> str:
    with soundfile.SoundFile(str(path)) as stream:
        return stream.artist


def test_speech_layout(speech_dir):
    description = json.loads((speech_dir / "dataset.json").read_text())
    assert sorted(path.name for path in speech_dir.iterdir()) == ["dataset.json", "test", "train", "valid"]
    for split, count in (("train", 15), ("valid", 2), ("test", 2)):
        names = sorted(path.name for path in (speech_dir / split / "mix").iterdir())
        assert len(names) == count
        assert description["splits"][split]["mixtures"] == count
        assert [item["name"] for item in description["splits"][split]["items"]] == names
        for folder in ("s1", "s2"):
            assert sorted(path.name for path in (speech_dir / split / folder).iterdir()) == names
    assert not list(speech_dir.parent.glob(".*partial"))


def test_speech_files_8khz_mono_16bit(speech_dir):
    for path in speech_dir.rglob("*.wav"):
        info = soundfile.info(str(path))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (8000, 1, "WAV", "PCM_16"), path


def test_speech_mixture_is_sum_without_clipping(speech_dir):
    limit = int(PEAK_LIMIT * 32768) + 1
    for split in SPLITS:
        for mixture_path in (speech_dir / split / "mix").iterdir():
            mixture = read_int16(mixture_path)
            first = read_int16(speech_dir / split / "s1" / mixture_path.name)
            second = read_int16(speech_dir / split / "s2" / mixture_path.name)
            assert len(mixture) == len(first) == len(second)
            assert np.array_equal(mixture, first + second), mixture_path
            for samples in (mixture, first, second):
                assert np.abs(samples).max() <= limit


def test_speech_lengths_and_levels(speech_dir):
    description = json.loads((speech_dir / "dataset.json").read_text())
    for split in SPLITS:
        for item in description["splits"][split]["items"]:
            first = read_int16(speech_dir / split / "s1" / item["name"]) / 32768
            second = read_int16(speech_dir / split / "s2" / item["name"]) / 32768
            assert 1.0 * 8000 <= item["frames"] <= speech.MAX_SECONDS * 8000
            assert len(first) == item["frames"]
            measured = 20 * np.log10(speech.active_rms(second, 8000) / speech.active_rms(first, 8000))
            assert abs(measured - item["relative_level_db"]) < 0.05
            assert abs(item["relative_level_db"]) <= speech.RELATIVE_LEVEL_DB


def test_speech_mixtures_have_two_speakers(speech_dir):
    description = json.loads((speech_dir / "dataset.json").read_text())
    for split in SPLITS:
        for item in description["splits"][split]["items"]:
            assert item["speakers"][0] != item["speakers"][1]
            assert item["texts"][0] != item["texts"][1]
            tags = [artist(speech_dir / split / folder / item["name"]) for folder in ("s1", "s2")]
            assert tags == item["speakers"]


def test_speech_speakers_disjoint_across_splits(speech_dir):
    description = json.loads((speech_dir / "dataset.json").read_text())
    voice_split = {voice["name"]: voice["split"] for voice in description["voices"]}
    assert len(voice_split) == len(LOADER_VOICES) >= 8
    by_json = {split: set(description["splits"][split]["speakers"]) for split in SPLITS}
    by_files = {
        split: {artist(path) for folder in ("s1", "s2") for path in (speech_dir / split / folder).iterdir()}
        for split in SPLITS
    }
    for speakers in (by_json, by_files):
        assert not speakers["train"] & speakers["test"]
        assert not speakers["valid"] & speakers["test"]
    for split in SPLITS:
        assert by_files[split] <= by_json[split]
        for item in description["splits"][split]["items"]:
            assert {voice_split[name] for name in item["voices"]} == {split}


def test_speech_synthesis_in_child_process(speech_dir):
    description = json.loads((speech_dir / "dataset.json").read_text())
    assert description["synthesiser"].startswith("libespeak-ng 1.")
    maps = Path("/proc/self/maps").read_text()
    assert "libespeak-ng" not in maps
    assert "espeakng_loader" not in sys.modules


def test_speech_build_is_reproducible(speech_dir, tmp_path):
    build_speech(tmp_path / "again", scale=TINY, seed=0, system_voices=False)
    first = sorted(path.relative_to(speech_dir) for path in speech_dir.rglob("*") if path.is_file())
    second = sorted(path.relative_to(tmp_path / "again") for path in (tmp_path / "again").rglob("*") if path.is_file())
    assert first == second
    for relative in first:
        assert (speech_dir / relative).read_bytes() == (tmp_path / "again" / relative).read_bytes(), relative


def test_speech_16khz_other_seed(speech_dir, tmp_path):
    description = build_speech(tmp_path / "wide", sample_rate=16000, scale=TINY, seed=1, system_voices=False)
    for path in (tmp_path / "wide").rglob("*.wav"):
        assert soundfile.info(str(path)).samplerate == 16000
    mixture = read_int16(tmp_path / "wide" / "test" / "mix" / "00000.wav")
    first = read_int16(tmp_path / "wide" / "test" / "s1" / "00000.wav")
    second = read_int16(tmp_path / "wide" / "test" / "s2" / "00000.wav")
    assert np.array_equal(mixture, first + second)
    seed_0 = json.loads((speech_dir / "dataset.json").read_text())
    assert description["splits"]["train"]["items"][0]["texts"] != seed_0["splits"]["train"]["items"][0]["texts"]


def test_speech_system_voices_follow_splits(tmp_path):
    description = build_speech(tmp_path / "all", scale=TINY, seed=0)
    listed = {voice["name"] for voice in description["voices"]}
    missing = set(description["voices_not_installed"])
    assert listed | missing == {voice.name for voice in LOADER_VOICES + SYSTEM_VOICES}
    assert not listed & missing

    # Installed voices, found here without surfsep's own check.
    flite_output = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout if shutil.which("flite") else ""
    flite_voices = set(flite_output.split(":")[-1].split())
    for voice in SYSTEM_VOICES:
        if voice.backend == "espeak-ng":
            installed = shutil.which("espeak-ng") is not None
        elif voice.backend == "flite":
            installed = voice.voice in flite_voices
        else:
            installed = shutil.which("festival") is not None and bool(list(Path("/usr/share/festival/voices").glob(f"*/{voice.voice}")))
        assert (voice.name in listed) == installed, voice.name

    voice_split = {voice["name"]: voice["split"] for voice in description["voices"]}
    for split in SPLITS:
        for item in description["splits"][split]["items"]:
            assert {voice_split[name] for name in item["voices"]} == {split}
            assert item["speakers"][0] != item["speakers"][1]


def test_speech_rejects_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("user file")
    with pytest.raises(DataError, match="not empty"):
        build_speech(tmp_path, scale=TINY)
    assert (tmp_path / "keep.txt").read_text() == "user file"


def test_speech_rejects_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="8000 or 16000"):
        build_speech(tmp_path / "a", sample_rate=44100, scale=TINY)
    with pytest.raises(DataError, match="scale"):
        build_speech(tmp_path / "b", scale=0)
    with pytest.raises(DataError, match="seed"):
        build_speech(tmp_path / "c", scale=TINY, seed=-1)
    assert not list(tmp_path.iterdir())


def test_speech_names_install_command_when_package_missing(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "espeakng_loader" else real_find_spec(name, *args)
    )
    with pytest.raises(DataError, match=r"espeakng-loader.*pip install surfsep\[speech\]"):
        build_speech(tmp_path / "set", scale=TINY)
    assert not (tmp_path / "set").exists()


def test_speech_worker_reports_missing_package():
    # The worker started with espeakng_loader blocked, as on a machine without it.
    script = (
        "import sys, runpy; sys.modules['espeakng_loader'] = None; "
        f"runpy.run_path({str(speech.WORKER_PATH)!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, input="")
    assert result.returncode == 1
    assert "pip install surfsep[speech]" in json.loads(result.stdout.splitlines()[0])["error"]
