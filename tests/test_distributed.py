"""Training on 2 gloo processes launched by torchrun matches a single process with the same batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_surfsep
from surfsep.distributed import Shard

HELPER = Path(__file__).parent / "helpers" / "ddp_train.py"
STEPS = 4


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Launch 2 processes on this machine with torchrun, one PyTorch thread each."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *args], capture_output=True, text=True, cwd=cwd, env=environment, timeout=600)


def losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [record["loss"] for record in records if "loss" in record]


def command_line(settings: dict) -> list[str]:
    """The ``surfsep train`` flags of TrainConfig settings; None leaves a setting at its default."""
    arguments = []
    for name, value in settings.items():
        if value is not None:
            arguments.append("--" + name.replace("_", "-"))
            arguments.extend(str(item) for item in (value if isinstance(value, list) else [value]))
    return arguments


@pytest.fixture(scope="module")
def mixit_start(digits_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "mixit"
    run_surfsep("train", "--method", "mixit", "--data", str(digits_dir / "train"), "--out", str(out),
                "--steps", "3", "--batch-size", "8", "--channels", "8", "16")
    return out


@pytest.mark.parametrize("method,variant,extra", [
    ("surf", "self-remixing-flow", {}),
    ("surf", "remixit-flow", {}),
    ("surf", "remixit-flow", {"teacher_reuse": 2}),
    ("mixit", None, {}),
    ("supervised-flow", None, {}),
])
def test_two_processes_match_one(method, variant, extra, digits_dir, mixit_start, tmp_path):
    settings = {"method": method, "variant": variant, "data": str(digits_dir / "train"), "steps": STEPS,
                "batch_size": 8, "channels": [8, 16], "warmup_steps": 0, "log_every": 1, **extra}
    if method == "surf":
        settings["init"] = str(mixit_start)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**settings, "out": str(tmp_path / "two")}))
    weights = tmp_path / "weights"
    weights.mkdir()

    launched = torchrun(str(HELPER), str(config), str(weights), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]

    run_surfsep("train", *command_line(settings), "--out", str(tmp_path / "one"))

    rank0, rank1 = load_file(weights / "rank0.safetensors"), load_file(weights / "rank1.safetensors")
    saved = load_file(tmp_path / "two" / "model.safetensors")
    single = load_file(tmp_path / "one" / "model.safetensors")
    # Both processes hold the same weights, bit for bit, and rank 0 saved them.
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    assert all(torch.equal(rank0[name], saved[name]) for name in rank0)
    # Against one process: the same up to float rounding. Adam's first steps move a weight by about
    # the learning rate whatever the size of its gradient. A gradient within rounding of zero may
    # therefore move a weight either way, so only nearly every weight must agree exactly.
    difference = torch.cat([(rank0[name] - single[name]).abs().flatten() for name in rank0])
    assert (difference <= 1e-6).float().mean() >= 0.99
    if method == "surf":
        start = load_file(mixit_start / "model.safetensors")
        assert torch.cat([(rank0[name] - start[name]).abs().flatten() for name in rank0]).median() > 1e-4
    assert difference.max() <= 2 * STEPS * 1e-3
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    metadata = json.loads((tmp_path / "two" / "model.json").read_text())
    assert metadata["training"]["processes"] == 2
    assert metadata["training"]["batch_size"] == 8
    # Only rank 0 wrote the log: one line per step.
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == STEPS


@pytest.mark.parametrize("attempt", range(3))
def test_command_line_under_torchrun_exits_cleanly(attempt, digits_dir, tmp_path):
    # A gloo process that is left to the interpreter's shutdown aborts in about half the runs.
    launched = torchrun("-m", "surfsep", "train", "--method", "supervised-regression", "--data",
                        str(digits_dir / "train"), "--out", str(tmp_path / "run"), "--steps", "3",
                        "--batch-size", "8", "--channels", "8", "16", cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "2 processes, each computing 4 of the 8 mixtures of a step" in log
    assert "finished supervised-regression: 3 steps" in log


def test_batch_that_does_not_split_is_refused(digits_dir, tmp_path):
    launched = torchrun("-m", "surfsep", "train", "--method", "mixit", "--data", str(digits_dir / "train"),
                        "--out", str(tmp_path / "run"), "--steps", "3", "--batch-size", "6", cwd=tmp_path)
    assert launched.returncode != 0
    assert "--batch-size 6 does not split evenly over 2 processes for method mixit; use a multiple of 4" in launched.stderr
    assert not (tmp_path / "run").exists()


def test_shard_rows_cover_the_batch_once():
    shards = [Shard(rank, 4) for rank in range(4)]
    covered = [index for shard in shards for index in range(12)[shard.rows(12)]]
    assert covered == list(range(12))
    with pytest.raises(ValueError, match="cannot be split evenly over 4 processes"):
        Shard(1, 4).rows(10)


def test_stopped_run_resumes_to_the_same_weights(digits_dir, tmp_path):
    """SIGTERM to torchrun stops both processes at one step; the same command then finishes the run."""
    import signal
    import time

    command = ["-m", "surfsep", "train", "--method", "supervised-flow", "--data", str(digits_dir / "train"),
               "--steps", "150", "--batch-size", "8", "--channels", "8", "16", "--checkpoint-every", "10"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    process = subprocess.Popen([*launcher, *command, "--out", str(tmp_path / "stopped")], cwd=tmp_path,
                               env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "stopped" / "state.safetensors"
    deadline = time.monotonic() + 120
    while not state.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    stopped_at = json.loads((tmp_path / "stopped" / "model.json").read_text())["training"]["steps"]
    assert 10 <= stopped_at < 150

    resumed = torchrun(*command, "--out", str(tmp_path / "stopped"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at step {stopped_at}" in (tmp_path / "stopped" / "log.txt").read_text()
    whole = torchrun(*command, "--out", str(tmp_path / "whole"), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]

    first = load_file(tmp_path / "stopped" / "model.safetensors")
    second = load_file(tmp_path / "whole" / "model.safetensors")
    assert all(torch.equal(first[name], second[name]) for name in first)
