"""Teacher options: EMA per step or per epoch, replacement by the student, a random start."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_surfsep
from surfsep.checkpoint import load_state
from surfsep.config import TrainConfig
from surfsep import train as train_module
from surfsep.train import train

SMALL = dict(channels=[8, 16], batch_size=16, threads=1, log_every=5)


@pytest.fixture(scope="module")
def mixit_init(digits_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "mixit"
    train(TrainConfig(method="mixit", data=str(digits_dir / "train"), out=str(out), steps=3, **SMALL))
    return out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def surf_run(digits_dir, init, out, steps, **settings) -> Path:
    config = TrainConfig(method="surf", data=str(digits_dir / "train"), out=str(out), steps=steps,
                         init=str(init) if init else None, **SMALL, **settings)
    return train(config)


def test_replaced_teacher_equals_last_student(digits_dir, mixit_init, tmp_path):
    run = surf_run(digits_dir, mixit_init, tmp_path / "seven", 7, teacher_update="replace", teacher_every=3)
    reference = surf_run(digits_dir, mixit_init, tmp_path / "six", 6, teacher_update="replace", teacher_every=3)

    teacher = weights(run / "teacher")
    student_at_six = weights(reference)
    assert teacher.keys() == student_at_six.keys()
    for name in teacher:
        assert torch.equal(teacher[name], student_at_six[name]), name
    # At step 6 the teacher of the 6-step run was replaced by its student.
    for name, value in weights(reference / "teacher").items():
        assert torch.equal(value, student_at_six[name]), name


def test_epoch_teacher_moves_once_per_epoch(digits_dir, mixit_init, tmp_path):
    # 160 training mixtures in batches of 16: an epoch is 10 steps.
    start = weights(mixit_init)
    before = surf_run(digits_dir, mixit_init, tmp_path / "nine", 9, teacher_every=0, ema=0.5)
    for name, value in weights(before / "teacher").items():
        assert torch.equal(value, start[name]), f"{name} moved before the end of the epoch"

    after = surf_run(digits_dir, mixit_init, tmp_path / "ten", 10, teacher_every=0, ema=0.5)
    student, teacher = weights(after), weights(after / "teacher")
    moved = 0
    for name, value in teacher.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.5 * start[name] + 0.5 * student[name], rtol=1e-6, atol=1e-7)
            moved += int(not torch.equal(value, start[name]))
    assert moved > 0
    assert "EMA every 10 steps" in (after / "log.txt").read_text()


def test_scratch_start_trains_without_init(digits_dir, tmp_path):
    run = surf_run(digits_dir, None, tmp_path / "scratch", 3, teacher_start="scratch")
    metadata = json.loads((run / "model.json").read_text())
    assert metadata["training"]["steps"] == 3
    assert "started from random weights" in (run / "log.txt").read_text()


def test_scratch_start_refuses_init(digits_dir, mixit_init, tmp_path):
    result = run_surfsep("train", "--method", "surf", "--data", str(digits_dir / "train"), "--out",
                         str(tmp_path / "run"), "--init", str(mixit_init), "--teacher-start", "scratch", check=False)
    assert result.returncode == 2
    assert "cannot take --init" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags,message", [
    (["--teacher-update", "copy"], "invalid choice: 'copy'"),
    (["--teacher-every", "-1"], "--teacher-every must be 0 (once per epoch) or more, got -1"),
    (["--teacher-reuse", "0"], "--teacher-reuse must be at least 1, got 0"),
])
def test_bad_teacher_settings_are_named(flags, message, digits_dir, mixit_init, tmp_path):
    result = run_surfsep("train", "--method", "surf", "--data", str(digits_dir / "train"), "--out",
                         str(tmp_path / "run"), "--init", str(mixit_init), *flags, check=False)
    assert result.returncode == 2
    assert message in result.stderr


def test_run_saved_before_teacher_options_resumes(digits_dir, mixit_init, tmp_path):
    run = surf_run(digits_dir, mixit_init, tmp_path / "run", 2)
    saved = json.loads((run / "config.json").read_text())
    for name in ("teacher_update", "teacher_every", "teacher_start"):
        del saved[name]
    (run / "config.json").write_text(json.dumps(saved))
    surf_run(digits_dir, mixit_init, run, 3)
    assert json.loads((run / "model.json").read_text())["training"]["steps"] == 3


def test_teacher_settings_without_teacher_warn(digits_dir, tmp_path):
    result = run_surfsep("train", "--method", "mixit", "--data", str(digits_dir / "train"), "--out", str(tmp_path / "run"),
                         "--steps", "1", "--channels", "8", "16", "--batch-size", "16", "--teacher-update", "replace",
                         "--teacher-reuse", "4")
    assert "method mixit has no teacher, so --teacher-update, --teacher-reuse have no effect" in result.stderr


def test_negative_seed_is_rejected_before_writing(digits_dir, tmp_path):
    result = run_surfsep("train", "--method", "mixit", "--data", str(digits_dir / "train"), "--out", str(tmp_path / "run"),
                         "--seed", "-1", check=False)
    assert result.returncode == 2
    assert "--seed must be 0 or more, got -1" in result.stderr
    assert not (tmp_path / "run").exists()


def test_slow_ema_teacher_warns(digits_dir, mixit_init, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="surfsep"):
        surf_run(digits_dir, mixit_init, tmp_path / "slow", 3)
    assert "the teacher gets 3 EMA updates at rate 0.999 in 3 steps, so 100% of it is still its starting weights" \
        in caplog.text

    caplog.clear()
    with caplog.at_level("WARNING", logger="surfsep"):
        surf_run(digits_dir, mixit_init, tmp_path / "fast", 3, ema=0.5)
    assert "EMA updates" not in caplog.text


def test_short_weight_average_warns(digits_dir, tmp_path, caplog):
    config = dict(method="supervised-flow", data=str(digits_dir / "train"), steps=3, **SMALL)
    with caplog.at_level("WARNING", logger="surfsep"):
        train(TrainConfig(out=str(tmp_path / "slow"), **config))
    slow = tmp_path / "slow"
    assert f"after 3 steps 100% of it is still the initial weights; separate with {slow} itself" in caplog.text

    caplog.clear()
    with caplog.at_level("WARNING", logger="surfsep"):
        train(TrainConfig(out=str(tmp_path / "fast"), ema=0.5, **config))
    assert "initial weights" not in caplog.text


def flow_run(digits_dir, out, steps, **settings) -> Path:
    return train(TrainConfig(method="supervised-flow", data=str(digits_dir / "train"), out=str(out), steps=steps,
                             ema=0.5, **SMALL, **settings))


def test_teacherless_run_saves_weight_average(digits_dir, tmp_path):
    three = flow_run(digits_dir, tmp_path / "three", 3)
    four = flow_run(digits_dir, tmp_path / "four", 4)
    previous, student, average = weights(three / "ema"), weights(four), weights(four / "ema")
    assert average.keys() == student.keys()
    for name, value in average.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.5 * previous[name] + 0.5 * student[name], rtol=1e-6, atol=1e-7)
    assert json.loads((four / "ema" / "model.json").read_text())["role"] == "EMA of the student weights (rate 0.5 per step)"
    assert not (four / "teacher").exists()


def test_weight_average_survives_resume(digits_dir, tmp_path):
    whole = flow_run(digits_dir, tmp_path / "whole", 4)
    resumed = tmp_path / "resumed"
    flow_run(digits_dir, resumed, 2)
    flow_run(digits_dir, resumed, 4)
    for name, value in weights(whole / "ema").items():
        assert torch.equal(value, weights(resumed / "ema")[name]), name


def test_checkpoint_without_average_resumes(digits_dir, tmp_path, caplog):
    run = flow_run(digits_dir, tmp_path / "old", 2)
    # A checkpoint of surfsep 0.1.0 before weight averages: state.pt, without "average".
    state = load_state(run / "state.safetensors")
    del state["average"]
    torch.save(state, run / "state.pt")
    (run / "state.safetensors").unlink()
    with caplog.at_level("INFO", logger="surfsep"):
        flow_run(digits_dir, run, 3)
    assert "the checkpoint contains no weight average, so the average starts at step 2" in caplog.text
    assert json.loads((run / "ema" / "model.json").read_text())["training"]["steps"] == 3


def test_teacher_steps_change_for_later_steps(digits_dir, mixit_init, tmp_path):
    scheduled = surf_run(digits_dir, mixit_init, tmp_path / "scheduled", 6, teacher_steps=2, teacher_steps_start=3)
    one_step = surf_run(digits_dir, mixit_init, tmp_path / "one-step", 6)
    continued = surf_run(digits_dir, mixit_init, tmp_path / "continued", 3)
    surf_run(digits_dir, mixit_init, continued, 6, teacher_steps=2, teacher_steps_start=3)

    expected, resumed, plain = weights(scheduled), weights(continued), weights(one_step)
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    assert any(not torch.equal(expected[name], plain[name]) for name in expected)


def test_trained_teacher_steps_cannot_change(digits_dir, mixit_init, tmp_path):
    run = surf_run(digits_dir, mixit_init, tmp_path / "run", 4)
    result = run_surfsep("train", "--method", "surf", "--data", str(digits_dir / "train"), "--out", str(run),
                         "--init", str(mixit_init), "--steps", "6", "--channels", "8", "16", "--batch-size", "16",
                         "--threads", "1", "--teacher-steps", "2", "--teacher-steps-start", "2", check=False)
    assert result.returncode == 2
    assert ("teacher sampler steps at step 2 (1 in the run, 2 now; --teacher-steps-start 4 or later keeps the "
            "steps already trained)") in result.stderr


@pytest.mark.parametrize("method", ["surf", "remixit"])
def test_reused_estimates_separate_once_per_block(method, digits_dir, mixit_init, tmp_path, monkeypatch):
    read_steps, separated = [], []
    original_read, original_estimates = train_module.BatchSource.read, train_module.teacher_estimates

    def spy_read(self, step):
        read_steps.append(step)
        return original_read(self, step)

    def spy_estimates(context, mixtures):
        estimates = original_estimates(context, mixtures)
        separated.append(estimates)
        return estimates

    monkeypatch.setattr(train_module.BatchSource, "read", spy_read)
    monkeypatch.setattr(train_module, "teacher_estimates", spy_estimates)
    run = train(TrainConfig(method=method, data=str(digits_dir / "train"), out=str(tmp_path / "run"), steps=7,
                            init=str(mixit_init), teacher_reuse=3, **SMALL))

    # Steps 0-2, 3-5 and 6 form three blocks: one batch read and one separation each.
    assert read_steps == [0, 3, 6]
    assert len(separated) == 3
    assert all(estimates.shape == (16, 2, 1, 28, 28) for estimates in separated)
    assert "each teacher separation serves 3 steps" in (run / "log.txt").read_text()


def test_reused_estimates_resume_within_a_block(digits_dir, mixit_init, tmp_path):
    whole = surf_run(digits_dir, mixit_init, tmp_path / "whole", 7, teacher_reuse=3)
    # Stopped at step 5, inside the block of steps 3 to 5: the checkpoint keeps that block's estimates.
    resumed = surf_run(digits_dir, mixit_init, tmp_path / "resumed", 5, teacher_reuse=3)
    assert load_state(resumed / "state.safetensors")["reused"]["start"] == 3
    surf_run(digits_dir, mixit_init, resumed, 7, teacher_reuse=3)
    every_step = surf_run(digits_dir, mixit_init, tmp_path / "every-step", 7)

    for folder in (Path("."), Path("teacher")):
        expected, continued = weights(whole / folder), weights(resumed / folder)
        for name in expected:
            assert torch.equal(expected[name], continued[name]), f"{folder / name}"
    plain = weights(every_step)
    assert any(not torch.equal(weights(whole)[name], plain[name]) for name in plain)
