"""Training under faults: batches with a non-finite loss or gradient are skipped, logged and counted.

Too many in a row stop the run with a clear error and a checkpoint to resume from, and the resumed
run may lower the learning rate. The faults are injected into a real training run by wrapping the
method's loss.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_surfsep
from surfsep import train as training
from surfsep.checkpoint import load_state
from surfsep.config import TrainConfig
from surfsep.methods.supervised_flow import SupervisedFlow
from surfsep.train import TrainingError, train

SMALL = dict(channels=[8, 16], batch_size=16, threads=1, log_every=2, checkpoint_every=2)


class NanGradient(torch.autograd.Function):
    """The identity in the forward pass; NaN gradients in the backward pass."""

    @staticmethod
    def forward(context, value):
        return value.clone()

    @staticmethod
    def backward(context, gradient):
        return torch.full_like(gradient, float("nan"))


def inject(monkeypatch, faults: dict[int, str]) -> None:
    """Make call number N of the supervised flow's loss non-finite ("loss") or its gradient NaN ("gradient")."""
    original = SupervisedFlow.loss
    calls = []

    def loss(self, context, mixtures, references):
        value = original(self, context, mixtures, references)
        fault = faults.get(len(calls))
        calls.append(fault)
        if fault == "loss":
            return value * float("inf")
        if fault == "gradient":
            return NanGradient.apply(value)
        return value

    monkeypatch.setattr(SupervisedFlow, "loss", loss)


def config(digits_dir, out, steps, **settings) -> TrainConfig:
    return TrainConfig(method="supervised-flow", data=str(digits_dir / "train"), out=str(out), steps=steps,
                       **{**SMALL, **settings})


def all_finite(folder) -> bool:
    return all(torch.isfinite(value).all() for value in load_file(folder / "model.safetensors").values())


def test_non_finite_loss_and_gradient_skip_the_batch(digits_dir, tmp_path, monkeypatch, caplog):
    inject(monkeypatch, {1: "loss", 4: "gradient"})

    with caplog.at_level(logging.INFO, logger="surfsep"):
        run = train(config(digits_dir, tmp_path / "run", 6))

    assert "skipping step 1: the loss is inf, so the weights were not updated (1 step skipped" in caplog.text
    assert "skipping step 4: the gradient norm is nan, so the weights were not updated (2 steps skipped" in caplog.text
    assert "6 steps (2 skipped for a non-finite loss or gradient)" in caplog.text
    assert all_finite(run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(record["skipped"] for record in records) == 2
    assert load_state(run / "state.safetensors")["skipped"] == 2


def test_skipped_batch_leaves_the_weights_unchanged(digits_dir, tmp_path, monkeypatch):
    clean = train(config(digits_dir, tmp_path / "clean", 2))
    inject(monkeypatch, {2: "gradient"})

    faulty = train(config(digits_dir, tmp_path / "faulty", 3))

    expected = load_file(clean / "model.safetensors")
    for name, value in load_file(faulty / "model.safetensors").items():
        assert torch.equal(value, expected[name]), name


def test_too_many_skips_stop_with_a_checkpoint_and_resume_at_a_lower_rate(digits_dir, tmp_path, monkeypatch, caplog):
    clean = train(config(digits_dir, tmp_path / "clean", 3))
    monkeypatch.setattr(training, "MAX_CONSECUTIVE_SKIPS", 4)
    inject(monkeypatch, {call: "loss" for call in range(3, 20)})
    run = tmp_path / "run"

    with pytest.raises(TrainingError) as raised:
        train(config(digits_dir, run, 20))

    message = str(raised.value)
    assert "steps 3 to 6 all had a non-finite loss or gradient, so training stopped" in message
    assert "checkpoint at step 7 with the weights from before step 3" in message and "--learning-rate" in message
    assert load_state(run / "state.safetensors")["step"] == 7
    expected = load_file(clean / "model.safetensors")
    for name, value in load_file(run / "model.safetensors").items():
        assert torch.equal(value, expected[name]), name

    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="surfsep"):
        train(config(digits_dir, run, 10, learning_rate=1e-4))

    assert "resuming at step 7" in caplog.text and "the learning rate changes from 0.001 to 0.0001 at step 7" in caplog.text
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # The warm-up counts updates, and skipped steps make none: 3 before the failure and 3 after it.
    assert records[-1]["step"] == 10
    assert records[-1]["lr"] == pytest.approx(1e-4 * 7 / TrainConfig().warmup_steps)
    assert all_finite(run)


def signal_run_args(digits_dir) -> list[str]:
    return ["train", "--method", "supervised-flow", "--data", str(digits_dir / "train"), "--steps", "150",
            "--channels", "8", "16", "--batch-size", "16", "--threads", "1", "--checkpoint-every", "1000",
            "--log-every", "5"]


@pytest.fixture(scope="module")
def uninterrupted(digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_surfsep(*signal_run_args(digits_dir), "--out", str(out))
    return out


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_the_run_resumes_exactly(signal_number, digits_dir, uninterrupted, tmp_path):
    args = signal_run_args(digits_dir)
    stopped = tmp_path / "stopped"
    process = subprocess.Popen([sys.executable, "-m", "surfsep", *args, "--out", str(stopped)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    # The first metrics line (step 5) shows that training is under way.
    while not (stopped / "metrics.jsonl").exists() or not (stopped / "metrics.jsonl").read_text():
        assert process.poll() is None and time.monotonic() < deadline, "training did not start in time"
        time.sleep(0.01)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 130, stderr
    stopped_at = int(stderr.split("interrupted at step ")[1].split(";")[0])
    assert 5 <= stopped_at < 150
    assert "saved a checkpoint to resume from" in stderr and "Traceback" not in stderr
    assert load_state(stopped / "state.safetensors")["step"] == stopped_at

    resumed = run_surfsep(*args, "--out", str(stopped))

    assert f"resuming at step {stopped_at}" in resumed.stderr
    expected = load_file(uninterrupted / "model.safetensors")
    for name, value in load_file(stopped / "model.safetensors").items():
        assert torch.equal(value, expected[name]), name


@pytest.mark.parametrize("signal_step, interrupted", [(2, True), (4, False)])
def test_stop_during_last_step_completes_the_run(signal_step, interrupted, digits_dir, tmp_path, monkeypatch):
    original = SupervisedFlow.loss
    calls = []

    def loss_then_signal(self, context, mixtures, references):
        calls.append(None)
        if len(calls) == signal_step + 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, context, mixtures, references)

    monkeypatch.setattr(SupervisedFlow, "loss", loss_then_signal)
    run = tmp_path / "run"

    if interrupted:
        with pytest.raises(KeyboardInterrupt):
            train(config(digits_dir, run, 5))
        assert load_state(run / "state.safetensors")["step"] == signal_step + 1
    else:
        train(config(digits_dir, run, 5))
        assert json.loads((run / "model.json").read_text())["training"]["steps"] == 5
