import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import surfsep
from conftest import run_surfsep
from surfsep.config import TrainConfig
from surfsep.data import images as image_io
from surfsep.train import TrainingError, train

SMALL = ["--channels", "8", "16", "--batch-size", "16", "--threads", "1", "--log-every", "5"]


def train_args(data, out, method, steps, *extra):
    return ["train", "--method", method, "--data", str(data), "--out", str(out), "--steps", str(steps), *SMALL, *extra]


@pytest.fixture(scope="module")
def mixit_run(digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mixit"
    run_surfsep(*train_args(digits_dir / "train", out, "mixit", 20, "--checkpoint-every", "10"))
    return out


def saved_steps(run: Path) -> int:
    try:
        return json.loads((run / "model.json").read_text())["training"]["steps"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def kill_after_checkpoint(args, run: Path, min_step: int, timeout: float = 120.0) -> None:
    """Start training in a new process and SIGKILL it once a checkpoint at or after ``min_step`` exists."""
    process = subprocess.Popen([sys.executable, "-m", "surfsep", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while saved_steps(run) < min_step:
        assert process.poll() is None, "training ended before it could be interrupted"
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def assert_same_weights(first: Path, second: Path) -> None:
    a, b = load_file(first), load_file(second)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs between {first} and {second}"


@pytest.mark.parametrize("method", ["mixit", "surf", "supervised-flow"])
def test_killed_run_resumes_to_same_weights(method, digits_dir, mixit_run, tmp_path):
    steps = 60
    extra = ["--checkpoint-every", "5"]
    if method == "surf":
        extra += ["--init", str(mixit_run), "--ema", "0.9"]
    data = digits_dir / "train"

    run_surfsep(*train_args(data, tmp_path / "whole", method, steps, *extra))
    interrupted = train_args(data, tmp_path / "killed", method, steps, *extra)
    kill_after_checkpoint(interrupted, tmp_path / "killed", min_step=10)
    assert saved_steps(tmp_path / "killed") < steps
    reached = max(json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines())
    resumed = run_surfsep(*interrupted)

    # At most one checkpoint interval (5 steps) of the work done before the kill is lost.
    resumed_at = int(resumed.stderr.split("resuming at step ")[1].split()[0])
    assert resumed_at >= max(reached - 5, 10)
    assert_same_weights(tmp_path / "whole" / "model.safetensors", tmp_path / "killed" / "model.safetensors")
    if method == "surf":
        assert_same_weights(tmp_path / "whole" / "teacher" / "model.safetensors",
                            tmp_path / "killed" / "teacher" / "model.safetensors")
    steps_logged = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == sorted(set(steps_logged))
    assert steps_logged[-1] == steps


def test_resume_rejects_changed_settings(digits_dir, mixit_run, tmp_path):
    out = tmp_path / "run"
    run_surfsep(*train_args(digits_dir / "train", out, "mixit", 2))
    result = run_surfsep(*train_args(digits_dir / "train", out, "mixit", 4, "--sigma", "0.3"), check=False)
    assert result.returncode == 2
    assert "sigma" in result.stderr


def test_finished_run_can_be_extended(digits_dir, tmp_path):
    out = tmp_path / "run"
    run_surfsep(*train_args(digits_dir / "train", out, "mixit", 2))
    run_surfsep(*train_args(digits_dir / "train", out, "mixit", 4))
    assert saved_steps(out) == 4


def test_surf_requires_initial_teacher(digits_dir, tmp_path):
    result = run_surfsep(*train_args(digits_dir / "train", tmp_path / "surf", "surf", 2), check=False)
    assert result.returncode == 2
    assert "--init" in result.stderr
    assert "mixit" in result.stderr


def test_train_refuses_unrelated_folder(digits_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    result = run_surfsep(*train_args(digits_dir / "train", tmp_path, "mixit", 2), check=False)
    assert result.returncode == 2
    assert "contains no training state" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("method", ["mixit", "remixit", "self-remixing", "surf"])
def test_unsupervised_training_never_opens_references(method, digits_dir, mixit_run, tmp_path, monkeypatch):
    opened = []
    original = image_io.read_png
    monkeypatch.setattr(image_io, "read_png", lambda path: opened.append(Path(path)) or original(path))
    config = TrainConfig(method=method, data=str(digits_dir / "train"), out=str(tmp_path / "run"), steps=2,
                         batch_size=16, channels=[8, 16], init=None if method == "mixit" else str(mixit_run))

    train(config)

    assert opened
    assert {path.parent.name for path in opened} == {"mix"}


def test_supervised_training_needs_reference_folders(tmp_path, digits_dir):
    mixtures_only = tmp_path / "mixtures"
    mixtures_only.mkdir()
    for path in list((digits_dir / "valid" / "mix").iterdir()):
        (mixtures_only / path.name).write_bytes(path.read_bytes())
    config = TrainConfig(method="supervised-flow", data=str(mixtures_only), out=str(tmp_path / "run"), steps=1,
                         batch_size=2, channels=[8])
    with pytest.raises(ValueError, match="no mix/ folder"):
        train(config)


@pytest.mark.parametrize("variant", ["remixit-flow", "self-remixing-flow"])
def test_surf_variants_train_and_load(variant, digits_dir, mixit_run, tmp_path):
    out = tmp_path / variant
    run_surfsep(*train_args(digits_dir / "train", out, "surf", 3, "--variant", variant, "--init", str(mixit_run)))

    separator = surfsep.load(out)
    mixture = torch.rand(3, 28, 28) * 0.5
    estimates = separator.separate(mixture, steps=4)

    assert separator.metadata["variant"] == variant
    assert estimates.shape == (3, 2, 28, 28)
    torch.testing.assert_close(estimates.mean(dim=1), mixture, atol=1e-5, rtol=0)
    assert (out / "teacher" / "model.json").is_file()


def test_dry_run_prints_resolved_config(digits_dir, tmp_path):
    config_file = tmp_path / "settings.yaml"
    config_file.write_text("method: mixit\nsteps: 7\nsigma: 0.25\n")
    result = run_surfsep("train", "--config", str(config_file), "--data", str(digits_dir / "train"),
                         "--out", str(tmp_path / "run"), "--steps", "9", "--dry-run")
    printed = json.loads(result.stdout)
    assert printed["method"] == "mixit"
    assert printed["steps"] == 9
    assert printed["sigma"] == 0.25
    assert not (tmp_path / "run").exists()


def test_config_file_rejects_unknown_setting(digits_dir, tmp_path):
    config_file = tmp_path / "settings.yaml"
    config_file.write_text("learning_rat: 0.1\n")
    result = run_surfsep("train", "--config", str(config_file), "--data", str(digits_dir / "train"),
                         "--out", str(tmp_path / "run"), "--dry-run", check=False)
    assert result.returncode == 2
    assert "learning_rat" in result.stderr


def test_invalid_setting_is_named(digits_dir, tmp_path):
    result = run_surfsep(*train_args(digits_dir / "train", tmp_path / "run", "mixit", 2, "--sigma", "0"), check=False)
    assert result.returncode == 2
    assert "--sigma must be positive" in result.stderr


def test_training_error_type_for_small_data(tmp_path, digits_dir):
    config = TrainConfig(method="mixit", data=str(digits_dir / "valid"), out=str(tmp_path / "run"), steps=1,
                         batch_size=64, channels=[8])
    with pytest.raises(TrainingError, match="fewer than --batch-size 64"):
        train(config)


def test_quiet_run_still_writes_log_file(digits_dir, tmp_path):
    out = tmp_path / "run"
    result = run_surfsep("--quiet", *train_args(digits_dir / "train", out, "mixit", 2))
    log = (out / "log.txt").read_text()
    assert "step 2/2" not in result.stderr
    assert "training mixit on 160 mixtures" in log
    assert "finished mixit: 2 steps" in log


def test_failed_start_can_be_rerun(digits_dir, tmp_path):
    out = tmp_path / "run"
    failed = run_surfsep(*train_args(tmp_path / "missing", out, "mixit", 2), check=False)
    assert failed.returncode == 2
    assert "not found" in failed.stderr

    run_surfsep(*train_args(digits_dir / "train", out, "mixit", 2))
    assert saved_steps(out) == 2


def test_resume_ignores_cut_metrics_line(digits_dir, tmp_path):
    out = tmp_path / "run"
    run_surfsep(*train_args(digits_dir / "train", out, "mixit", 10, "--checkpoint-every", "5"))
    with (out / "metrics.jsonl").open("a") as stream:
        stream.write('{"step": 11, "lo')
    run_surfsep(*train_args(digits_dir / "train", out, "mixit", 15))
    steps_logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == [5, 10, 15]


def test_config_file_values_are_typed(digits_dir, tmp_path):
    config_file = tmp_path / "settings.yaml"
    config_file.write_text("learning_rate: 1e-3\nsteps: '12'\nchannels: 16\nvariant: self-remixing-flow\n")
    result = run_surfsep("train", "--config", str(config_file), "--data", str(digits_dir / "train"),
                         "--out", str(tmp_path / "run"), "--init", str(tmp_path / "mixit"), "--dry-run")
    printed = json.loads(result.stdout)
    assert printed["learning_rate"] == 0.001
    assert printed["steps"] == 12
    assert printed["channels"] == [16]


@pytest.mark.parametrize("text,message", [
    ("method: magic\n", "unknown method 'magic'"),
    ("network: transformer\n", "unknown network 'transformer'"),
    ("variant: fast\n", "unknown SURF variant 'fast'"),
    ("steps: many\n", "steps must be an integer"),
    ("sigma: [1, 2]\n", "sigma must be a number"),
    ("method: 3\n", "method must be a string"),
])
def test_config_file_rejects_wrong_types(text, message, digits_dir, tmp_path):
    config_file = tmp_path / "settings.yaml"
    config_file.write_text(text)
    result = run_surfsep("train", "--config", str(config_file), "--data", str(digits_dir / "train"),
                         "--out", str(tmp_path / "run"), "--dry-run", check=False)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize("flags,message", [
    (["--method", "magic"], "invalid choice: 'magic'"),
    (["--method", "mixit", "--variant", "self-remixing-flow"], "has no variants"),
    (["--method", "surf", "--variant", "fast"], "invalid choice: 'fast'"),
    (["--network", "transformer"], "invalid choice: 'transformer'"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--t-zero-fraction", "1"], "--t-zero-fraction must be in [0, 1), got 1.0"),
])
def test_dry_run_rejects_what_training_rejects(flags, message, digits_dir, tmp_path):
    result = run_surfsep("train", "--data", str(digits_dir / "train"), "--out", str(tmp_path / "run"), *flags,
                         "--dry-run", check=False)
    assert result.returncode == 2
    assert message in result.stderr


def test_validation_records_student_and_teacher(digits_dir, mixit_run, tmp_path):
    out = tmp_path / "run"
    run_surfsep(*train_args(digits_dir / "train", out, "surf", 4, "--init", str(mixit_run), "--valid",
                            str(digits_dir / "valid"), "--valid-every", "2", "--sampler-steps", "2"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    validations = [record for record in records if "valid_student_psnr" in record]
    assert [record["step"] for record in validations] == [2, 4]
    assert all(record["valid_mixtures"] == 5 for record in validations)
    assert all("valid_teacher_psnr" in record for record in validations)
    assert "validation" in (out / "log.txt").read_text()


def test_resume_accepts_equivalent_paths(digits_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_surfsep(*train_args(digits_dir / "train", "run", "mixit", 2))
    run_surfsep(*train_args(str(digits_dir / "train") + "/", "./run", "mixit", 3))
    assert saved_steps(tmp_path / "run") == 3


def test_moved_run_resumes_exactly(digits_dir, mixit_run, tmp_path):
    straight, first = tmp_path / "straight", tmp_path / "first"
    run_surfsep(*train_args(digits_dir / "train", straight, "surf", 4, "--init", str(mixit_run)))
    run_surfsep(*train_args(digits_dir / "train", first, "surf", 2, "--init", str(mixit_run)))
    start_copy, moved = tmp_path / "start-copy", tmp_path / "moved"
    shutil.copytree(mixit_run, start_copy)
    first.rename(moved)
    run_surfsep(*train_args(digits_dir / "train", moved, "surf", 4, "--init", str(start_copy)))
    expected, resumed = load_file(straight / "model.safetensors"), load_file(moved / "model.safetensors")
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)
    assert json.loads((moved / "config.json").read_text())["init"] == str(start_copy)

    result = run_surfsep(*train_args(digits_dir / "train", moved, "surf", 6, "--init", str(straight)), check=False)
    assert result.returncode == 2
    assert "contains a run with other settings: init" in result.stderr


def test_run_being_trained_by_another_process_is_refused(digits_dir, tmp_path):
    import fcntl

    out = tmp_path / "run"
    run_surfsep(*train_args(digits_dir / "train", out, "mixit", 2))
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    # This test process plays the other trainer: it holds the run's lock.
    with open(out / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_surfsep(*train_args(digits_dir / "train", out, "mixit", 4), check=False)
    assert result.returncode == 2
    assert f"another process is training {out}; wait for it to finish or stop it" in result.stderr
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before
    # Once the lock is released, the same command continues the run.
    run_surfsep(*train_args(digits_dir / "train", out, "mixit", 4))
    assert json.loads((out / "model.json").read_text())["training"]["steps"] == 4


def test_resume_rejects_fewer_steps(digits_dir, tmp_path):
    out = tmp_path / "run"
    run_surfsep(*train_args(digits_dir / "train", out, "mixit", 4))
    result = run_surfsep(*train_args(digits_dir / "train", out, "mixit", 2), check=False)
    assert result.returncode == 2
    assert "already trained 4 steps" in result.stderr


def test_teacher_model_keeps_teacher_sampler(digits_dir, mixit_run, tmp_path):
    out = tmp_path / "run"
    run_surfsep(*train_args(digits_dir / "train", out, "surf", 2, "--init", str(mixit_run)))
    teacher = json.loads((out / "teacher" / "model.json").read_text())
    student = json.loads((out / "model.json").read_text())
    assert teacher["sampler"]["steps"] == 1
    assert student["sampler"]["steps"] == 25


def test_separation_independent_of_batch(mixit_run):
    separator = surfsep.load(mixit_run)
    generator = torch.Generator().manual_seed(0)
    mixtures = torch.rand(5, 28, 28, generator=generator) * 0.5

    together = separator.separate(mixtures, steps=3, seed=7, batch_size=2)
    alone = separator.separate(mixtures[3], steps=3, seed=7)
    other_seed = separator.separate(mixtures[3], steps=3, seed=8)

    torch.testing.assert_close(together[3], alone[0], atol=1e-5, rtol=0)
    assert not torch.equal(alone, other_seed)


@pytest.mark.parametrize("value,message", [
    (torch.zeros(2, 28, 28, dtype=torch.uint8), "floating point"),
    (torch.zeros(0, 28, 28), "no mixtures"),
    (torch.full((28, 28), float("nan")), "NaN"),
    (torch.zeros(2, 2, 28, 28), "expected mixtures of shape"),
])
def test_separate_api_rejects_bad_input(value, message, mixit_run):
    with pytest.raises(ValueError, match=message):
        surfsep.load(mixit_run).separate(value)


def test_failed_run_writes_error_to_log(tones_dir, tmp_path):
    data = tmp_path / "recordings"
    shutil.copytree(tones_dir / "train" / "mix", data)
    (data / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    out = tmp_path / "run"
    # With the rate given, the folder is indexed after the run folder is set up.
    failed = run_surfsep("train", "--method", "mixit", "--data", str(data), "--out", str(out), "--steps", "2",
                         "--batch-size", "4", "--sample-rate", "8000", check=False)
    assert failed.returncode == 2
    assert failed.stderr.count(" error: ") == 1  # stderr gets the error once, from the command line
    log = (out / "log.txt").read_text()
    assert "training stopped: " in log
    assert "broken.wav" in log
