import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

import surfsep
from conftest import run_surfsep
from surfsep import audio as audio_io
from surfsep.config import TrainConfig
from surfsep.data.audio_sets import AudioCrops, AudioMixtureSet, scan_audio
from surfsep.train import TrainingError, train

TINY = ["--channels", "8", "8", "16", "--batch-size", "4", "--segment-seconds", "0.25", "--threads", "1",
        "--log-every", "2"]


def audio_args(data, out, method, steps, *extra):
    return ["train", "--method", method, "--data", str(data), "--out", str(out), "--steps", str(steps), *TINY, *extra]


@pytest.fixture(scope="module")
def audio_mixit(tones_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("audio_runs") / "mixit"
    run_surfsep(*audio_args(tones_dir / "train", out, "mixit", 6))
    return out


def tiny_config(tones_dir, out, method, steps=2, **overrides) -> TrainConfig:
    values = dict(method=method, data=str(tones_dir / "train"), out=str(out), steps=steps, batch_size=4,
                  channels=[8, 8, 16], segment_seconds=0.25, threads=1)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("method", ["mixit", "supervised-flow", "supervised-regression", "surf", "remixit",
                                    "self-remixing"])
def test_audio_methods_train_and_load(method, tones_dir, audio_mixit, tmp_path):
    init = None if method in ("mixit", "supervised-flow", "supervised-regression") else str(audio_mixit)
    run = train(tiny_config(tones_dir, tmp_path / method, method, init=init))

    metadata = json.loads((run / "model.json").read_text())
    assert metadata["modality"] == "audio"
    assert metadata["sample_rate"] == 8000
    assert metadata["mixture"] == "sum"
    assert metadata["network"]["name"] == "slot-tasnet"
    separator = surfsep.load(run)
    assert isinstance(separator, surfsep.AudioSeparator)


def test_audio_run_resumes_to_same_weights(tones_dir, audio_mixit, tmp_path):
    whole = train(tiny_config(tones_dir, tmp_path / "whole", "surf", steps=4, init=str(audio_mixit), ema=0.9))
    train(tiny_config(tones_dir, tmp_path / "split", "surf", steps=2, init=str(audio_mixit), ema=0.9))
    resumed = train(tiny_config(tones_dir, tmp_path / "split", "surf", steps=4, init=str(audio_mixit), ema=0.9))

    first, second = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("method", ["mixit", "surf"])
def test_unsupervised_audio_never_opens_references(method, tones_dir, audio_mixit, tmp_path, monkeypatch):
    opened = []
    original_read, original_info = audio_io.read_audio, audio_io.audio_info

    def recording_read(path, *args, **kwargs):
        opened.append(Path(path))
        return original_read(path, *args, **kwargs)

    def recording_info(path):
        opened.append(Path(path))
        return original_info(path)

    monkeypatch.setattr("surfsep.data.audio_sets.read_audio", recording_read)
    monkeypatch.setattr("surfsep.data.audio_sets.audio_info", recording_info)
    train(tiny_config(tones_dir, tmp_path / "run", method, init=None if method == "mixit" else str(audio_mixit)))

    assert opened
    assert {path.parent.name for path in opened} == {"mix"}


def test_audio_crops_are_unit_rms_and_reproducible(tones_dir):
    entries = AudioMixtureSet.open(tones_dir / "train").entries
    crops = AudioCrops(entries, None, 8000, 0.3)
    index = torch.tensor([3, 0, 7])

    first, _ = crops.batch(index, torch.Generator().manual_seed(5))
    again, _ = crops.batch(index, torch.Generator().manual_seed(5))
    other, _ = crops.batch(index, torch.Generator().manual_seed(6))

    assert first.shape == (3, 2400)
    torch.testing.assert_close(first.pow(2).mean(dim=1), torch.ones(3))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_reference_crops_sum_to_mixture(tones_dir):
    from surfsep.data.audio_sets import AudioReferenceSet

    reference_set = AudioReferenceSet.open(tones_dir / "train", 2)
    crops = AudioCrops(reference_set.mixtures, reference_set.references, 8000, 0.25)
    mixtures, references = crops.batch(torch.arange(4), torch.Generator().manual_seed(0))

    assert references.shape == (4, 2, 2000)
    torch.testing.assert_close(references.sum(dim=1), mixtures, atol=1e-5, rtol=0)


def test_short_files_are_zero_padded(tmp_path):
    folder = tmp_path / "short"
    folder.mkdir()
    soundfile.write(folder / "a.wav", np.full(100, 0.5, dtype=np.float32), 8000, subtype="FLOAT")
    soundfile.write(folder / "b.wav", np.full(3000, 0.5, dtype=np.float32), 8000, subtype="FLOAT")
    crops = AudioCrops(AudioMixtureSet.open(folder).entries, None, 8000, 0.25)

    mixtures, _ = crops.batch(torch.tensor([0]), torch.Generator().manual_seed(0))

    assert mixtures.shape == (1, 2000)
    assert torch.count_nonzero(mixtures[0, 100:]) == 0
    assert torch.count_nonzero(mixtures[0, :100]) == 100


def test_index_cache_reads_changed_files_only(tmp_path, caplog):
    folder = tmp_path / "recordings"
    (folder / "nested").mkdir(parents=True)
    for name in ("a.wav", "nested/b.flac"):
        soundfile.write(folder / name, np.zeros(800, dtype=np.float32), 8000)
    caplog.set_level("INFO", logger="surfsep")

    assert len(scan_audio(folder)) == 2
    soundfile.write(folder / "a.wav", np.zeros(1600, dtype=np.float32), 8000)
    entries = scan_audio(folder)

    assert "2 headers read" in caplog.records[0].getMessage()
    assert "1 headers read" in caplog.records[-1].getMessage()
    assert [entry.frames for entry in entries] == [1600, 800]


def test_index_lists_every_bad_file(tmp_path):
    folder = tmp_path / "recordings"
    folder.mkdir()
    soundfile.write(folder / "good.wav", np.zeros(800, dtype=np.float32), 8000)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "noise.wav").write_bytes(np.random.default_rng(0).bytes(2000))

    with pytest.raises(audio_io.AudioError) as error:
        scan_audio(folder)

    message = str(error.value)
    assert "2 of 3 audio files" in message
    assert "empty.wav" in message
    assert "noise.wav" in message


def test_mixed_rates_need_sample_rate(tones_dir, tmp_path):
    folder = tmp_path / "rates"
    folder.mkdir()
    soundfile.write(folder / "a.wav", np.zeros(8000, dtype=np.float32), 8000)
    soundfile.write(folder / "b.wav", np.zeros(16000, dtype=np.float32), 16000)

    with pytest.raises(ValueError, match="--sample-rate"):
        train(tiny_config(tones_dir, tmp_path / "run", "mixit", data=str(folder)))


def test_sixteen_khz_files_train_at_eight_khz(tmp_path):
    from surfsep.data.tones import write_tone_set

    data = write_tone_set(tmp_path / "tones16", {"train": 8}, sample_rate=16000, seconds=0.4)
    run = train(TrainConfig(method="mixit", data=str(data / "train"), out=str(tmp_path / "run"), steps=1,
                            batch_size=4, channels=[8, 8, 16], segment_seconds=0.25, sample_rate=8000))
    assert json.loads((run / "model.json").read_text())["sample_rate"] == 8000


def test_audio_settings_rejected_for_images(digits_dir, tmp_path):
    result = run_surfsep("train", "--method", "mixit", "--data", str(digits_dir / "train"), "--out",
                         str(tmp_path / "run"), "--steps", "1", "--sample-rate", "8000", check=False)
    assert result.returncode == 2
    assert "apply to audio data" in result.stderr


def test_init_must_match_sample_rate(tones_dir, audio_mixit, tmp_path):
    from surfsep.data.tones import write_tone_set

    data = write_tone_set(tmp_path / "tones16", {"train": 8}, sample_rate=16000, seconds=0.4)
    with pytest.raises(TrainingError, match="sample rate"):
        train(tiny_config(tones_dir, tmp_path / "run", "surf", data=str(data / "train"), init=str(audio_mixit)))


def test_audio_validation_records_si_sdri(tones_dir, audio_mixit, tmp_path):
    run = train(tiny_config(tones_dir, tmp_path / "run", "surf", steps=2, init=str(audio_mixit),
                            valid=str(tones_dir / "valid"), valid_every=2))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    validation = [record for record in records if "valid_student_si_sdri" in record]
    assert len(validation) == 1
    assert np.isfinite(validation[0]["valid_student_si_sdri"])
    assert np.isfinite(validation[0]["valid_teacher_si_sdri"])


def test_surf_without_init_creates_nothing(tones_dir, tmp_path):
    result = run_surfsep(*audio_args(tones_dir / "train", tmp_path / "run", "surf", 2), check=False)
    assert result.returncode == 2
    assert "--init" in result.stderr
    assert not (tmp_path / "run").exists()


def test_dry_run_prints_audio_defaults(tones_dir, audio_mixit, tmp_path):
    result = run_surfsep("train", "--method", "surf", "--init", str(audio_mixit), "--data", str(tones_dir / "train"),
                         "--out", str(tmp_path / "run"), "--channels", "8", "8", "16", "--dry-run")
    printed = json.loads(result.stdout)
    assert printed["sample_rate"] == 8000
    assert printed["segment_seconds"] == 2.0
    assert printed["mixture"] == "sum"
    assert printed["network"] == "slot-tasnet"
    assert printed["variant"] == "remixit-flow"
    assert printed["sampler_steps"] == 25
    assert not (tmp_path / "run").exists()
