import json

import numpy as np
import pytest
import soundfile
import torch

import surfsep
from conftest import run_surfsep
from surfsep.models import AudioSeparator
from surfsep.networks import SlotTasNet


@pytest.fixture(scope="module")
def separator() -> AudioSeparator:
    torch.manual_seed(0)
    network = SlotTasNet(filters=8, bottleneck=8, hidden=16, blocks=3, repeats=1, kernel=16, embedding_size=16)
    with torch.no_grad():
        for parameter in network.parameters():
            if torch.count_nonzero(parameter) == 0:
                parameter.normal_(0.0, 0.1)
    metadata = {"sources": 2, "sigma": 0.5, "sample_rate": 8000, "modality": "audio", "one_step": False,
                "sampler": {"solver": "euler", "steps": 2}}
    return AudioSeparator(network.eval(), metadata)


@pytest.mark.parametrize("length", [1, 500, 32000, 32001, 45123])
def test_estimates_sum_to_mixture_at_any_length(separator, length):
    waveform = 0.1 * torch.randn(length, generator=torch.Generator().manual_seed(length))

    estimates = separator.separate(waveform, 8000, chunk_seconds=4.0, overlap_seconds=1.0)

    assert estimates.shape == (2, length)
    torch.testing.assert_close(estimates.sum(dim=0), waveform, atol=1e-5, rtol=0)


def test_silent_input_gives_silent_estimates(separator):
    estimates = separator.separate(torch.zeros(9000), 8000)
    assert torch.count_nonzero(estimates) == 0


@pytest.mark.parametrize("level", [1e-3, 1.0, 30.0])
def test_network_sees_unit_rms_chunks(separator, level):
    seen = []
    network = separator.network

    def recording_network(x, mixture, t):
        seen.append(mixture.pow(2).mean(dim=-1).sqrt())
        return network(x, mixture, t)

    recording = AudioSeparator(recording_network, separator.metadata)
    waveform = level * torch.randn(12000, generator=torch.Generator().manual_seed(1))
    estimates = recording.separate(waveform, 8000, chunk_seconds=1.0, overlap_seconds=0.25)

    torch.testing.assert_close(torch.cat(seen), torch.ones(len(torch.cat(seen))), atol=1e-4, rtol=0)
    torch.testing.assert_close(estimates.sum(dim=0), waveform, atol=1e-5 * level, rtol=0)


def test_stereo_downmix_and_split(separator):
    stereo = 0.1 * torch.randn(2, 10000, generator=torch.Generator().manual_seed(2))

    mixed = separator.separate(stereo, 8000)
    split = separator.separate(stereo, 8000, channels="split")

    assert mixed.shape == (2, 10000)
    torch.testing.assert_close(mixed.sum(dim=0), stereo.mean(dim=0), atol=1e-5, rtol=0)
    assert split.shape == (2, 2, 10000)
    torch.testing.assert_close(split.sum(dim=1), stereo, atol=1e-5, rtol=0)


def test_other_rate_returns_input_rate_and_length(separator):
    time = torch.arange(16001) / 16000
    tone = 0.3 * torch.sin(2 * torch.pi * 440 * time)

    estimates = separator.separate(tone, 16000)

    assert estimates.shape == (2, 16001)
    # A 440 Hz tone lies below the model's Nyquist frequency, so the estimates still add up to it.
    torch.testing.assert_close(estimates.sum(dim=0)[200:-200], tone[200:-200], atol=2e-3, rtol=0)


@pytest.mark.parametrize("value,sample_rate,message", [
    (torch.zeros(0), 8000, "empty"),
    (torch.zeros(3, 2, 10), 8000, "shape"),
    (torch.tensor([0.0, float("nan")]), 8000, "NaN"),
    (torch.zeros(10, dtype=torch.int16), 8000, "floating point"),
    (torch.zeros(10), None, "sample_rate"),
    (torch.zeros(10), 0, "sample_rate"),
])
def test_separate_rejects_bad_input(separator, value, sample_rate, message):
    with pytest.raises(ValueError, match=message):
        separator.separate(value, sample_rate)


def test_numpy_input_is_accepted(separator):
    waveform = (0.1 * np.random.default_rng(0).standard_normal(5000)).astype(np.float32)
    estimates = separator.separate(waveform, 8000)
    assert estimates.shape == (2, 5000)


@pytest.fixture(scope="module")
def audio_model(tones_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("audio_model") / "run"
    run_surfsep("train", "--method", "supervised-flow", "--data", str(tones_dir / "train"), "--out", str(out),
                "--steps", "2", "--batch-size", "4", "--channels", "8", "8", "16", "--segment-seconds", "0.25",
                "--sampler-steps", "2")
    return out


def test_separate_command_writes_every_source(audio_model, tones_dir, tmp_path):
    result = run_surfsep("separate", str(audio_model), str(tones_dir / "test" / "mix"), "--out", str(tmp_path / "out"),
                         "--format", "flac")

    assert "wrote 8 files" in result.stderr
    for name in ("0000", "0003"):
        mixture, rate = soundfile.read(tones_dir / "test" / "mix" / f"{name}.wav")
        first, first_rate = soundfile.read(tmp_path / "out" / "s1" / f"{name}.flac")
        second, _ = soundfile.read(tmp_path / "out" / "s2" / f"{name}.flac")
        assert first_rate == rate
        assert len(first) == len(mixture)
        np.testing.assert_allclose(first + second, mixture, atol=3 / 32768)


def test_separate_command_keeps_existing_outputs(audio_model, tones_dir, tmp_path):
    mixture = tones_dir / "test" / "mix" / "0001.wav"
    run_surfsep("separate", str(audio_model), str(mixture), "--out", str(tmp_path / "out"))
    before = (tmp_path / "out" / "s1" / "0001.wav").read_bytes()

    again = run_surfsep("separate", str(audio_model), str(mixture), "--out", str(tmp_path / "out"), "--steps", "1",
                        check=False)

    assert again.returncode == 2
    assert "--overwrite" in again.stderr
    assert (tmp_path / "out" / "s1" / "0001.wav").read_bytes() == before

    # Every existing output is counted in the one message.
    again = run_surfsep("separate", str(audio_model), str(tones_dir / "test" / "mix"), "--out", str(tmp_path / "out"),
                        check=False)
    assert f"{tmp_path / 'out' / 's1' / '0001.wav'} and 1 more of the outputs already exist" in again.stderr


def test_separate_command_checks_inputs_first(audio_model, tones_dir, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    good = tones_dir / "test" / "mix" / "0002.wav"

    result = run_surfsep("separate", str(audio_model), str(good), str(bad), "--out", str(tmp_path / "out"), check=False)

    assert result.returncode == 2
    assert "bad.wav" in result.stderr
    assert not (tmp_path / "out").exists()


def test_evaluate_command_writes_audio_metrics(audio_model, tones_dir, tmp_path):
    run_surfsep("evaluate", str(audio_model), "--data", str(tones_dir / "test"), "--out", str(tmp_path / "eval"))

    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    header = (tmp_path / "eval" / "per_file.csv").read_text().splitlines()[0].split(",")
    assert summary["mixtures"] == 4
    assert "means removed first" in summary["metrics"]["si_sdr"]
    assert summary["sampler"]["steps"] == 2
    assert np.isfinite(summary["si_sdri"]["mean"])
    assert header[:5] == ["file", "si_sdr", "si_sdri", "si_sdr_s1", "si_sdr_s2"]
    assert {"sdr", "sir", "sar"} <= set(header)


def test_python_api_loads_audio_model(audio_model, tones_dir):
    mixture, rate = soundfile.read(tones_dir / "test" / "mix" / "0000.wav", dtype="float32")
    separator = surfsep.load(audio_model)

    estimates = separator.separate(torch.from_numpy(mixture), rate)

    assert separator.sample_rate == 8000
    assert estimates.shape == (2, len(mixture))


def test_frames_by_channels_is_rejected(separator):
    with pytest.raises(ValueError, match="transposed"):
        separator.separate(torch.zeros(5000, 2), 8000)


def test_higher_rate_input_is_warned_once(separator, caplog):
    caplog.set_level("WARNING", logger="surfsep")
    separator.warned_rates.clear()
    separator.separate(torch.zeros(4410), 44100)
    separator.separate(torch.zeros(4410), 44100)
    assert caplog.text.count("only the band below 4000 Hz") == 1
    separator.separate(torch.zeros(1600), 16000)
    assert caplog.text.count("only the band below 4000 Hz") == 2


def test_sigterm_leaves_no_temporary_files(audio_model, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    long_input = tmp_path / "long.wav"
    soundfile.write(long_input, 0.1 * np.random.default_rng(0).standard_normal(8000 * 240).astype(np.float32), 8000)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "surfsep", "separate", str(audio_model), str(long_input),
                                "--out", str(out), "--steps", "1"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(out.rglob(".*.tmp")):
        assert process.poll() is None, f"separation ended before it could be stopped: {process.stderr.read()}"
        assert time.monotonic() < deadline, "no temporary output appeared"
        time.sleep(0.05)

    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=60)

    assert process.returncode == 130, errors
    assert list(out.rglob("*.tmp")) == []
    assert list(out.rglob("*.wav")) == []
