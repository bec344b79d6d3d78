"""Inputs recorded by other tools: every odd or broken file gets a documented result or a clear error.

An error names the file and what to do, and leaves no output behind. In a folder run ``--skip-bad``
separates the good files, lists the bad ones and exits with status 3.
"""

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from conftest import run_surfsep
from surfsep import separate
from surfsep.data.images import DataError, read_png
from surfsep.data.tones import write_tone_set
from surfsep.separate import separate_files

RATE = 8000


@pytest.fixture(scope="module")
def audio_model(tmp_path_factory):
    data = write_tone_set(tmp_path_factory.mktemp("tones"), {"train": 8})
    out = tmp_path_factory.mktemp("audio_model") / "run"
    run_surfsep("train", "--method", "supervised-flow", "--data", str(data / "train"), "--out", str(out),
                "--steps", "2", "--batch-size", "4", "--channels", "8", "8", "16", "--segment-seconds", "0.25",
                "--sampler-steps", "1")
    return out


@pytest.fixture(scope="module")
def image_model(digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("image_model") / "run"
    run_surfsep("train", "--method", "supervised-flow", "--data", str(digits_dir / "train"), "--out", str(out),
                "--steps", "2", "--channels", "8", "16", "--batch-size", "8", "--sampler-steps", "1")
    return out


def tone(frames: int, rate: int = RATE, level: float = 0.3) -> np.ndarray:
    time = np.arange(frames) / rate
    return (level * np.sin(2 * np.pi * 220 * time) * np.sin(2 * np.pi * 3 * time)).astype(np.float32)


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


# Each writer makes one broken audio file and returns its path; the error must contain the message.
def empty_file(folder):
    path = folder / "empty.wav"
    path.write_bytes(b"")
    return path


def no_frames(folder):
    path = folder / "no_frames.wav"
    soundfile.write(path, np.zeros(0, np.float32), RATE)
    return path


def with_value(value):
    def write(folder):
        samples = tone(RATE)
        samples[100] = value
        path = folder / "bad_value.wav"
        soundfile.write(path, samples, RATE, subtype="FLOAT")
        return path
    return write


def random_bytes(folder):
    path = folder / "noise.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return path


def truncated_header(folder):
    soundfile.write(folder / "whole.wav", tone(RATE), RATE)
    path = folder / "truncated.wav"
    path.write_bytes((folder / "whole.wav").read_bytes()[:30])
    (folder / "whole.wav").unlink()
    return path


def folder_named_like_a_file(folder):
    path = folder / "recording.wav"
    path.mkdir()
    return path


def missing(folder):
    return folder / "never_written.wav"


@pytest.mark.parametrize("write, message", [
    (missing, "never_written.wav not found; check the path"),
    (folder_named_like_a_file, "no audio files (.wav, .flac, .ogg, .mp3) found in"),
    (empty_file, "empty.wav is empty (0 bytes); write it again or remove it"),
    (no_frames, "no_frames.wav contains no audio frames"),
    (with_value(np.nan), "bad_value.wav has a non-finite sample (nan) at frame 100, channel 0; fix or remove"),
    (with_value(np.inf), "bad_value.wav has a non-finite sample (inf) at frame 100"),
    (with_value(-np.inf), "bad_value.wav has a non-finite sample (-inf) at frame 100"),
    (random_bytes, "cannot read {folder}/noise.wav as audio"),
    (truncated_header, "cannot read {folder}/truncated.wav as audio"),
])
def test_bad_audio_file_rejected(write, message, audio_model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = write(inputs)

    with pytest.raises(DataError) as raised:
        separate_files(audio_model, [path], tmp_path / "out")

    assert message.format(folder=inputs) in str(raised.value)
    assert files_under(tmp_path / "out") == []


def read_outputs(out: Path, name: str) -> tuple[np.ndarray, int]:
    """Return the two estimates of ``name`` stacked as (2, frames, channels), and their rate."""
    first, rate = soundfile.read(out / "s1" / name, always_2d=True)
    second, second_rate = soundfile.read(out / "s2" / name, always_2d=True)
    assert second_rate == rate
    return np.stack([first, second]), rate


@pytest.mark.parametrize("subtype, tolerance", [("PCM_U8", 2 / 128), ("PCM_16", 3 / 32768), ("PCM_24", 3 / 32768),
                                                ("FLOAT", 3 / 32768)])
def test_every_sample_format_is_read(subtype, tolerance, audio_model, tmp_path):
    path = tmp_path / "in.wav"
    soundfile.write(path, tone(3000), RATE, subtype=subtype)
    mixture, _ = soundfile.read(path)

    separate_files(audio_model, [path], tmp_path / "out")

    estimates, rate = read_outputs(tmp_path / "out", "in.wav")
    assert rate == RATE
    # The estimates add up to the mixture, up to the 16-bit quantisation of the two outputs.
    np.testing.assert_allclose(estimates.sum(axis=0)[:, 0], mixture, atol=tolerance)


@pytest.mark.parametrize("frames", [1, 2])
def test_one_and_two_sample_files_give_that_many_samples(frames, audio_model, tmp_path):
    path = tmp_path / "short.wav"
    soundfile.write(path, np.full(frames, 0.25, np.float32), RATE)

    separate_files(audio_model, [path], tmp_path / "out")

    estimates, _ = read_outputs(tmp_path / "out", "short.wav")
    assert estimates.shape == (2, frames, 1)
    np.testing.assert_allclose(estimates.sum(axis=0)[:, 0], 0.25, atol=3 / 32768)


def test_silent_mixture_gives_silent_sources(audio_model, tmp_path):
    path = tmp_path / "silence.wav"
    soundfile.write(path, np.zeros(RATE, np.float32), RATE)

    separate_files(audio_model, [path], tmp_path / "out")

    estimates, _ = read_outputs(tmp_path / "out", "silence.wav")
    assert estimates.shape == (2, RATE, 1)
    assert np.all(estimates == 0)


def test_clipped_mixture_is_separated_with_a_warning(audio_model, tmp_path, caplog):
    path = tmp_path / "loud.wav"
    clipped = np.clip(tone(RATE, level=5.0), -1.0, 1.0)
    soundfile.write(path, clipped, RATE)

    with caplog.at_level(logging.WARNING):
        separate_files(audio_model, [path], tmp_path / "out")

    assert "loud.wav has" in caplog.text and "probably clipped" in caplog.text
    estimates, _ = read_outputs(tmp_path / "out", "loud.wav")
    assert estimates.shape == (2, RATE, 1)


def test_six_channels_are_downmixed_to_one(audio_model, tmp_path):
    path = tmp_path / "surround.wav"
    channels = np.stack([tone(2000, level=0.05 * (index + 1)) for index in range(6)], axis=1)
    soundfile.write(path, channels, RATE, subtype="FLOAT")

    separate_files(audio_model, [path], tmp_path / "out")

    estimates, _ = read_outputs(tmp_path / "out", "surround.wav")
    assert estimates.shape == (2, 2000, 1)
    np.testing.assert_allclose(estimates.sum(axis=0)[:, 0], channels.mean(axis=1), atol=3 / 32768)


@pytest.mark.parametrize("rate", [16000, 44100, 96000])
def test_other_rates_keep_their_rate_and_length(rate, audio_model, tmp_path, caplog):
    path = tmp_path / f"at_{rate}.wav"
    soundfile.write(path, tone(rate // 2, rate=rate), rate)

    with caplog.at_level(logging.WARNING):
        separate_files(audio_model, [path], tmp_path / "out")

    estimates, written_rate = read_outputs(tmp_path / "out", path.name)
    assert written_rate == rate
    assert estimates.shape == (2, rate // 2, 1)
    assert "only the band below 4000 Hz" in caplog.text


@pytest.mark.parametrize("name", ["ünïcødé-日本語 mix.wav", "L" * 240 + ".wav"])
def test_unusual_file_names_are_kept(name, audio_model, tmp_path):
    path = tmp_path / "in" / name
    path.parent.mkdir()
    soundfile.write(path, tone(1000), RATE)

    separate_files(audio_model, [tmp_path / "in"], tmp_path / "out")

    assert [path.relative_to(tmp_path / "out").as_posix() for path in files_under(tmp_path / "out")] == [
        f"s1/{name}", f"s2/{name}"]


def test_outputs_stay_inside_the_output_folder(audio_model, tmp_path):
    nested = tmp_path / "in" / "day1" / "take.wav"
    nested.parent.mkdir(parents=True)
    soundfile.write(nested, tone(1000), RATE)
    dotted = tmp_path / "in" / "day1" / ".." / "day1" / "take.wav"

    separate_files(audio_model, [tmp_path / "in"], tmp_path / "out")
    separate_files(audio_model, [dotted], tmp_path / "out2")

    assert [path.relative_to(tmp_path / "out").as_posix() for path in files_under(tmp_path / "out")] == [
        "s1/day1/take.wav", "s2/day1/take.wav"]
    assert [path.relative_to(tmp_path / "out2").as_posix() for path in files_under(tmp_path / "out2")] == [
        "s1/take.wav", "s2/take.wav"]


def save_image(path: Path, array: np.ndarray, mode: str | None = None, **options) -> Path:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(path, **options)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def digit_like(height: int = 28, width: int = 28) -> np.ndarray:
    return (np.random.default_rng(0).random((height, width)) * 255).astype(np.uint8)


@pytest.mark.parametrize("write, message", [
    (lambda folder: save_image(folder / "x.png", digit_like(), "RGBA"), "x.png has mode 'RGBA'; surfsep separates "
                                                                         "single-channel images"),
    (lambda folder: save_image(folder / "x.png", digit_like(), "RGB"), "x.png has mode 'RGB'"),
    (lambda folder: save_image(folder / "x.png", digit_like(), "P"), "x.png has mode 'P'"),
    (lambda folder: save_image(folder / "x.png", digit_like(), format="JPEG"), "x.png contains JPEG data, not PNG"),
    (lambda folder: save_image(folder / "x.jpg", digit_like()), "x.jpg is not a .png file"),
    (lambda folder: write_bytes(folder / "x.png", b""), "x.png is empty (0 bytes)"),
    (lambda folder: write_bytes(folder / "x.png", os.urandom(300)), "cannot read image"),
    (lambda folder: folder / "absent.png", "absent.png not found; check the path"),
])
def test_bad_image_rejected(write, message, image_model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = write(inputs)

    with pytest.raises(DataError) as raised:
        separate_files(image_model, [path], tmp_path / "out")

    assert message in str(raised.value)
    assert files_under(tmp_path / "out") == []


def test_16_bit_and_odd_sized_images_keep_their_size(image_model, tmp_path):
    deep = save_image(tmp_path / "deep.png", digit_like().astype(np.uint16) * 257)
    wide = save_image(tmp_path / "wide.png", digit_like(40, 33))

    separate_files(image_model, [deep, wide], tmp_path / "out")

    assert read_png(tmp_path / "out" / "s1" / "deep.png").shape == (28, 28)
    assert read_png(tmp_path / "out" / "s2" / "wide.png").shape == (40, 33)


def write_folder_with_bad_files(folder: Path) -> None:
    folder.mkdir()
    soundfile.write(folder / "good1.wav", tone(1200), RATE)
    soundfile.write(folder / "good2.flac", tone(900), RATE)
    (folder / "broken.wav").write_bytes(b"RIFF....WAVEfmt ")
    samples = tone(800)
    samples[5] = np.nan
    soundfile.write(folder / "nan.wav", samples, RATE, subtype="FLOAT")


def test_folder_run_stops_before_writing_without_skip_bad(audio_model, tmp_path):
    write_folder_with_bad_files(tmp_path / "in")

    result = run_surfsep("separate", str(audio_model), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                         check=False)

    assert result.returncode == 2
    assert "2 input(s) cannot be separated, so nothing was written" in result.stderr
    assert "broken.wav" in result.stderr and "nan.wav" in result.stderr
    assert "pass --skip-bad to separate the other 2" in result.stderr
    assert files_under(tmp_path / "out") == []


def test_only_input_missing_gives_no_skip_hint(audio_model, tmp_path):
    result = run_surfsep("separate", str(audio_model), str(tmp_path / "missing.wav"), "--out", str(tmp_path / "out"),
                         check=False)

    assert result.returncode == 2
    assert "missing.wav" in result.stderr
    assert "fix or remove them" in result.stderr
    assert "--skip-bad" not in result.stderr


def test_folder_run_skips_bad_files_and_exits_3(audio_model, tmp_path):
    write_folder_with_bad_files(tmp_path / "in")

    result = run_surfsep("separate", str(audio_model), str(tmp_path / "in"), str(tmp_path / "missing"),
                         "--out", str(tmp_path / "out"), "--skip-bad", check=False)

    assert result.returncode == 3, result.stderr
    summary = result.stderr[result.stderr.index("skipped 3 input(s) that could not be separated"):]
    assert "broken.wav as audio" in summary
    assert "nan.wav has a non-finite sample (nan) at frame 5" in summary
    assert "missing not found" in summary
    assert [path.relative_to(tmp_path / "out").as_posix() for path in files_under(tmp_path / "out")] == [
        "s1/good1.wav", "s1/good2.wav", "s2/good1.wav", "s2/good2.wav"]


def test_skip_bad_with_nothing_good_is_an_error(image_model, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"")

    result = run_surfsep("separate", str(image_model), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                         "--skip-bad", check=False)

    assert result.returncode == 2
    assert "none of the inputs can be separated" in result.stderr and "a.png is empty" in result.stderr
    assert files_under(tmp_path / "out") == []


def test_failed_second_output_leaves_neither_output(image_model, tmp_path, monkeypatch):
    path = save_image(tmp_path / "digit.png", digit_like())
    original = Image.Image.save
    saved = []

    def failing_save(image, target, *args, **kwargs):
        saved.append(target)
        if len(saved) == 2:
            raise OSError("No space left on device")
        return original(image, target, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        separate_files(image_model, [path], tmp_path / "out")

    # Both outputs went to temporary names; the first was complete but is removed with the second.
    assert len(saved) == 2 and files_under(tmp_path / "out") == []


def test_image_damaged_after_its_check_is_skipped(image_model, tmp_path, monkeypatch):
    first = save_image(tmp_path / "first.png", digit_like())
    second = save_image(tmp_path / "second.png", digit_like())
    reads = []

    def read_then_fail(path):
        reads.append(path)
        if reads.count(second) == 2:
            raise DataError(f"cannot read image {path} (file truncated); check that it is a complete PNG file")
        return read_png(path)

    monkeypatch.setattr(separate, "read_png", read_then_fail)
    result = separate_files(image_model, [first, second], tmp_path / "out", skip_bad=True)

    assert [path for path, _ in result.skipped] == [second]
    assert [path.relative_to(tmp_path / "out").as_posix() for path in files_under(tmp_path / "out")] == [
        "s1/first.png", "s2/first.png"]


@pytest.mark.parametrize("name, message", [
    ("file", "is a file; pass the folder of mixtures that contains it, or a split folder with mix/"),
    ("missing", "not found; pass a folder of mixtures or a split folder such as DATA/train"),
])
def test_training_data_path_is_explained(name, message, digits_dir, tmp_path):
    data = digits_dir / "train" / "mix" / "00000.png" if name == "file" else tmp_path / "absent"
    result = run_surfsep("train", "--method", "mixit", "--data", str(data), "--out", str(tmp_path / "run"),
                         "--steps", "1", check=False)
    assert result.returncode == 2
    assert f"{data} {message}" in result.stderr
