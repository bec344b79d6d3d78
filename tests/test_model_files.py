"""Model folders and checkpoints from anywhere: damaged files get a clear error, and no file can run code."""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import random_network, run_surfsep
from surfsep.checkpoint import CheckpointError, load_state, save_state
from surfsep.models import ModelError, load, save_model


class RunsCode:
    """Unpickling this object creates the file ``marker``: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def model_folder(tmp_path) -> Path:
    folder = tmp_path / "model"
    save_model(folder, random_network(), {"network": {"name": "slot-unet"}, "modality": "image", "sources": 2,
                                          "mixture": "mean", "sigma": 0.5, "sampler": {"solver": "euler", "steps": 2}})
    return folder


def edit_description(folder: Path, edit) -> None:
    description = json.loads((folder / "model.json").read_text())
    edit(description)
    (folder / "model.json").write_text(json.dumps(description))


def test_intact_model_loads(model_folder):
    separator = load(model_folder)
    assert separator.sources == 2
    assert separator.separate(torch.full((1, 28, 28), 0.5), seed=0).shape == (1, 2, 28, 28)


def test_pickle_weights_rejected_without_running_code(model_folder, tmp_path):
    marker = tmp_path / "code-ran"
    (model_folder / "model.safetensors").write_bytes(pickle.dumps(RunsCode(marker)))

    with pytest.raises(ModelError, match="model.safetensors is a pickle .* surfsep never loads pickles"):
        load(model_folder)

    assert not marker.exists()
    # The payload does run code when unpickled: the guard above is what stopped it.
    pickle.loads((model_folder / "model.safetensors").read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("network"), "model.json lacks the network entry"),
    (lambda d: d["network"].update(name="resnet-1000"), r"cannot build \(unknown network 'resnet-1000'"),
    (lambda d: d["network"]["kwargs"].update(depth=3), "cannot build .*unexpected keyword argument 'depth'"),
    (lambda d: d.update(format_version=7), "format version 7; this surfsep reads up to 1, so upgrade surfsep"),
    (lambda d: d.update(format="onnx"), "is not a surfsep model"),
    (lambda d: d.pop("sources"), "has sources None, not a positive whole number"),
    (lambda d: d.update(sigma=-1), "has sigma -1, not a positive number"),
    (lambda d: d.update(sampler={"steps": 0}), "lacks the sampler entry"),
    (lambda d: d.update(modality="video"), "has modality 'video'"),
    (lambda d: d.update(modality="audio"), "has sample_rate None"),
    (lambda d: d.update(mixture="product"), "has mixture 'product'"),
])
def test_damaged_description_is_named(edit, message, model_folder):
    edit_description(model_folder, edit)
    with pytest.raises(ModelError, match=message):
        load(model_folder)


def test_description_that_is_not_an_object_or_not_json(model_folder):
    (model_folder / "model.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="holds a JSON list, not an object"):
        load(model_folder)
    (model_folder / "model.json").write_text("{\"format\": ")
    with pytest.raises(ModelError, match="model.json is not valid JSON"):
        load(model_folder)


def test_missing_and_misshapen_weights_are_listed(model_folder):
    weights = load_file(model_folder / "model.safetensors")
    first, second = sorted(weights)[:2]
    del weights[first]
    weights[second] = torch.zeros(3, 3)
    weights["extra.weight"] = torch.zeros(1)
    save_file(weights, model_folder / "model.safetensors")

    with pytest.raises(ModelError) as raised:
        load(model_folder)

    message = str(raised.value)
    assert f"missing {first}" in message
    assert f"{second} has shape [3, 3]" in message
    assert "unexpected extra.weight" in message


def test_huge_network_rejected_before_allocating(model_folder):
    # 10^6 channels would need terabytes; the shapes are compared on PyTorch's meta device first.
    edit_description(model_folder, lambda d: d["network"]["kwargs"].update(channels=[1_000_000, 1_000_000]))
    with pytest.raises(ModelError, match="do not fit the network in model.json"):
        load(model_folder)


@pytest.mark.parametrize("data, message", [
    (b"", "not a readable safetensors file"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}       ", "not a readable safetensors file"),
])
def test_unreadable_weights_are_named(data, message, model_folder):
    (model_folder / "model.safetensors").write_bytes(data)
    with pytest.raises(ModelError, match=message):
        load(model_folder)


def test_truncated_weights_are_named(model_folder):
    data = (model_folder / "model.safetensors").read_bytes()
    (model_folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="model.safetensors is not a readable safetensors file"):
        load(model_folder)


def test_separate_command_reports_a_damaged_model(model_folder, tmp_path):
    (model_folder / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    result = run_surfsep("separate", str(model_folder), str(tmp_path), "--out", str(tmp_path / "out"), check=False)
    assert result.returncode == 2
    assert "is a pickle" in result.stderr and "Traceback" not in result.stderr


def test_checkpoint_round_trip_keeps_types_and_values(tmp_path):
    network = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    network(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {"student": network.state_dict(), "teacher": {}, "optimizer": optimizer.state_dict(), "step": 7,
             "seconds": 2.5, "note": None, "flags": [True, "x"]}

    save_state(tmp_path / "state.safetensors", state)
    back = load_state(tmp_path / "state.safetensors")

    assert back["step"] == 7 and back["seconds"] == 2.5 and back["note"] is None and back["flags"] == [True, "x"]
    assert back["teacher"] == {}
    assert list(back["optimizer"]["state"]) == [0, 1]
    for name, value in network.state_dict().items():
        assert torch.equal(back["student"][name], value)
    restored = torch.optim.AdamW(network.parameters(), lr=1e-3)
    restored.load_state_dict(back["optimizer"])
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_damaged_checkpoint_is_named(tmp_path):
    (tmp_path / "state.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="state.safetensors cannot be read .* remove it to train the run again"):
        load_state(tmp_path / "state.safetensors")
    save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="other.safetensors is not a surfsep checkpoint"):
        load_state(tmp_path / "other.safetensors")


def train_two_steps(digits_dir: Path, out: Path, steps: int = 2, check: bool = True):
    return run_surfsep("train", "--method", "supervised-flow", "--data", str(digits_dir / "train"), "--out", str(out),
                       "--steps", str(steps), "--channels", "8", "16", "--batch-size", "8", "--checkpoint-every", "1",
                       check=check)


def test_run_folder_with_a_pickle_payload_is_not_resumed(digits_dir, tmp_path):
    run = tmp_path / "run"
    train_two_steps(digits_dir, run)
    marker = tmp_path / "code-ran"
    (run / "state.safetensors").unlink()
    (run / "state.pt").write_bytes(pickle.dumps(RunsCode(marker)))

    result = train_two_steps(digits_dir, run, steps=3, check=False)

    assert result.returncode == 2
    assert "checkpoint" in result.stderr and "state.pt cannot be read" in result.stderr
    assert not marker.exists()


def test_older_state_pt_checkpoint_resumes_and_is_replaced(digits_dir, tmp_path):
    whole = tmp_path / "whole"
    train_two_steps(digits_dir, whole, steps=3)
    old = tmp_path / "old"
    train_two_steps(digits_dir, old)
    torch.save(load_state(old / "state.safetensors"), old / "state.pt")
    (old / "state.safetensors").unlink()

    train_two_steps(digits_dir, old, steps=3)

    assert not (old / "state.pt").exists() and (old / "state.safetensors").exists()
    expected = load_file(whole / "model.safetensors")
    for name, value in load_file(old / "model.safetensors").items():
        assert torch.equal(value, expected[name]), name
    shutil.rmtree(whole)
