"""Models shipped in the package, loaded as builtin:NAME."""

import json
import shutil

import pytest

import surfsep
from conftest import run_surfsep
from surfsep import models
from surfsep.evaluate import evaluate_model
from surfsep.models import ModelError, resolve_model_folder


@pytest.fixture
def builtin_folder(tmp_path, monkeypatch, digits_dir):
    """A built-in folder holding one small trained model named 'tiny'."""
    run = tmp_path / "run"
    run_surfsep("train", "--method", "mixit", "--data", str(digits_dir / "train"), "--out", str(run), "--steps", "2",
                "--channels", "8", "16", "--batch-size", "16", "--threads", "1")
    root = tmp_path / "builtin"
    (root / "tiny").mkdir(parents=True)
    for name in ("model.json", "model.safetensors"):
        shutil.copyfile(run / name, root / "tiny" / name)
    (root / "empty").mkdir()
    monkeypatch.setattr(models, "builtin_root", lambda: root)
    return root


def test_builtin_name_resolves_to_package_folder(builtin_folder):
    assert resolve_model_folder("builtin:tiny") == builtin_folder / "tiny"
    separator = surfsep.load("builtin:tiny")
    assert separator.sources == 2


def test_unknown_builtin_lists_available(builtin_folder):
    with pytest.raises(ModelError, match=r"no built-in model 'digitz'; available: builtin:tiny$"):
        resolve_model_folder("builtin:digitz")


def test_existing_folder_named_like_builtin_wins(builtin_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(builtin_folder / "tiny", tmp_path / "builtin:tiny")
    assert resolve_model_folder("builtin:tiny").resolve() == tmp_path / "builtin:tiny"


def test_shipped_digits_model_separates_files(digits_dir, tmp_path):
    metadata = json.loads((models.builtin_root() / "digits" / "model.json").read_text())
    assert metadata["builtin"]["command"].startswith("surfsep data digits")
    assert metadata["method"] == "surf"

    inputs = sorted((digits_dir / "test" / "mix").glob("*.png"))[:2]
    run_surfsep("separate", "builtin:digits", *map(str, inputs), "--out", str(tmp_path / "out"))
    for source in ("s1", "s2"):
        assert sorted(path.name for path in (tmp_path / "out" / source).iterdir()) == [path.name for path in inputs]


def test_shipped_digits_model_beats_the_mixture(digits_dir, tmp_path):
    summary = evaluate_model("builtin:digits", digits_dir / "test", tmp_path / "eval")
    assert summary["psnr"]["mean"] > summary["mixture"]["psnr"]["mean"] + 3.0


@pytest.fixture(scope="module")
def speech_test_split(tmp_path_factory):
    """Build a small speech set from the voices that need no Debian voice package, and return its test split."""
    from surfsep.data.speech import build_speech

    folder = tmp_path_factory.mktemp("speech") / "set"
    build_speech(folder, scale=0.05, seed=0, system_voices=False)
    return folder / "test"


def test_builtin_speech_separates_file(speech_test_split, tmp_path):
    import soundfile

    metadata = json.loads((models.builtin_root() / "speech" / "model.json").read_text())
    assert metadata["builtin"]["command"].startswith("surfsep data speech")
    assert metadata["modality"] == "audio"
    assert metadata["sample_rate"] == 8000

    mixture = sorted((speech_test_split / "mix").glob("*.wav"))[0]
    run_surfsep("separate", "builtin:speech", str(mixture), "--out", str(tmp_path / "out"))
    info = soundfile.info(str(mixture))
    for source in ("s1", "s2"):
        written = soundfile.info(str(tmp_path / "out" / source / mixture.name))
        assert written.samplerate == info.samplerate
        assert written.frames == info.frames


def test_builtin_speech_beats_mixture(speech_test_split, tmp_path):
    summary = evaluate_model("builtin:speech", speech_test_split, tmp_path / "eval", limit=8)
    assert summary["si_sdri"]["mean"] > 1.0
