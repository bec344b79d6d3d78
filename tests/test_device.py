"""Device and precision settings, the batch reader that reads ahead, and a process's share of a batch."""

import json

import pytest
import torch
from safetensors.torch import load_file

import surfsep
from conftest import run_surfsep
from surfsep.config import TrainConfig
from surfsep.data.audio_sets import AudioCrops, AudioReferenceSet
from surfsep.distributed import Shard
from surfsep.train import BatchSource

CUDA = torch.cuda.is_available()


def test_bf16_autocast_trains_on_cpu(digits_dir, tmp_path):
    common = ["--method", "supervised-flow", "--data", str(digits_dir / "train"), "--steps", "6",
              "--batch-size", "8", "--channels", "8", "16", "--warmup-steps", "0", "--log-every", "1"]
    run_surfsep("train", *common, "--out", str(tmp_path / "bf16"), "--precision", "bf16")
    run_surfsep("train", *common, "--out", str(tmp_path / "fp32"))

    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["precision"] == "bf16"
    assert config["device"] == "cpu"
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["precision"] == "fp32"
    records = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert all(record["skipped"] == 0 and 0 < record["loss"] < 10 for record in records)
    # The weights stay float32; autocast changes only how the network computes.
    bf16, fp32 = load_file(tmp_path / "bf16" / "model.safetensors"), load_file(tmp_path / "fp32" / "model.safetensors")
    assert all(tensor.dtype == torch.float32 for tensor in bf16.values())
    assert any(not torch.equal(bf16[name], fp32[name]) for name in bf16)


def test_precision_may_change_on_resume(digits_dir, tmp_path):
    common = ["--method", "supervised-regression", "--data", str(digits_dir / "train"), "--batch-size", "8",
              "--channels", "8", "16", "--out", str(tmp_path / "run")]
    run_surfsep("train", *common, "--steps", "2")
    run_surfsep("train", *common, "--steps", "4", "--precision", "bf16")
    assert json.loads((tmp_path / "run" / "model.json").read_text())["training"]["steps"] == 4


def test_missing_gpu_is_refused(digits_dir, tmp_path):
    result = run_surfsep("train", "--method", "mixit", "--data", str(digits_dir / "train"),
                         "--out", str(tmp_path / "run"), "--device", "cuda:99", check=False)
    assert result.returncode == 2
    if CUDA:
        assert "--device cuda:99 does not exist: this machine has" in result.stderr
    else:
        assert "--device cuda:99 needs a CUDA GPU, and PyTorch" in result.stderr
        assert "train with --device cpu" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device,message", [
    ("gpu", "--device must be cpu, cuda or cuda:N, got 'gpu'"),
    ("cuda:x", "--device must be cpu, cuda or cuda:N, got 'cuda:x'"),
])
def test_unknown_training_device_is_named(device, message, digits_dir, tmp_path):
    result = run_surfsep("train", "--data", str(digits_dir / "train"), "--out", str(tmp_path / "run"),
                         "--device", device, "--dry-run", check=False)
    assert result.returncode == 2
    assert message in result.stderr


def test_separate_names_an_unknown_device(digits_dir, tmp_path):
    result = run_surfsep("separate", "builtin:digits", str(digits_dir / "test" / "mix"), "--out", str(tmp_path / "out"),
                         "--device", "tpu", check=False)
    assert result.returncode == 2
    assert "device 'tpu' is not supported; use cpu, cuda or cuda:N" in result.stderr
    assert not (tmp_path / "out").exists()


def test_separator_runs_where_it_was_loaded():
    separator = surfsep.load("builtin:digits", device="cpu")
    assert separator.device == torch.device("cpu")
    mixtures = torch.rand(3, 28, 28) * 0.5
    estimates = separator.separate(mixtures, steps=2)
    assert estimates.device == torch.device("cpu")
    assert estimates.shape == (3, 2, 28, 28)
    if CUDA:
        on_gpu = surfsep.load("builtin:digits", device="cuda").separate(mixtures, steps=2)
        torch.testing.assert_close(on_gpu, estimates, atol=1e-3, rtol=0)


def test_reading_ahead_gives_the_same_batches(tones_dir):
    reference_set = AudioReferenceSet.open(tones_dir / "train", 2)
    crops = AudioCrops(reference_set.mixtures, reference_set.references, 8000, 0.25)
    config = TrainConfig(batch_size=4, steps=9, seed=3)
    direct = BatchSource(crops, config, Shard(), torch.device("cpu"))
    ahead = BatchSource(crops, config, Shard(), torch.device("cpu"), ahead=3)
    try:
        # Steps in order, one repeated and one skipped, as a resumed run may ask for them.
        for step in [0, 1, 2, 2, 5, 6, 7, 8]:
            first, second = direct.get(step), ahead.get(step)
            assert torch.equal(first[0], second[0])
            assert torch.equal(first[1], second[1])
    finally:
        ahead.close()


def test_batch_share_matches_whole_batch(tones_dir):
    reference_set = AudioReferenceSet.open(tones_dir / "train", 2)
    crops = AudioCrops(reference_set.mixtures, reference_set.references, 8000, 0.25)
    index = torch.tensor([5, 0, 9, 3])
    whole, whole_references = crops.batch(index, torch.Generator().manual_seed(1))
    part, part_references = crops.batch(index, torch.Generator().manual_seed(1), Shard(1, 2).rows(4))
    assert torch.equal(part, whole[2:])
    assert torch.equal(part_references, whole_references[2:])
