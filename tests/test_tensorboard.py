import json
import struct
from pathlib import Path

import pytest

from surfsep.config import TrainConfig
from surfsep.train import TrainingError, train


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Read every scalar of the TensorBoard event files in ``folder``: tag -> [(step, value)], in file order.

    An event file is a sequence of records: an 8-byte length, its 4-byte CRC, the Event protobuf
    and the protobuf's 4-byte CRC.
    """
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def config(digits_dir, tmp_path, **changes) -> TrainConfig:
    values = dict(method="mixit", data=str(digits_dir / "train"), out=str(tmp_path / "run"), steps=6, batch_size=8,
                  channels=[8, 16], log_every=2, checkpoint_every=2, valid=str(digits_dir / "valid"), valid_every=3,
                  valid_limit=4, tensorboard=str(tmp_path / "tb"))
    return TrainConfig(**{**values, **changes})


def test_tensorboard_gets_every_status_line(digits_dir, tmp_path):
    train(config(digits_dir, tmp_path))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scalars = read_scalars(tmp_path / "tb")

    losses = [(record["step"], record["loss"]) for record in records if "loss" in record]
    assert [step for step, _ in scalars["train/loss"]] == [2, 4, 6]
    assert [value for _, value in scalars["train/loss"]] == pytest.approx([value for _, value in losses], rel=1e-6)
    assert [step for step, _ in scalars["train/lr"]] == [2, 4, 6]
    scores = [(record["step"], record["valid_student_psnr"]) for record in records if "valid_mixtures" in record]
    assert [step for step, _ in scalars["valid/student_psnr"]] == [3, 6]
    assert [value for _, value in scalars["valid/student_psnr"]] == pytest.approx([v for _, v in scores], rel=1e-6)


def test_extended_run_adds_its_steps(digits_dir, tmp_path):
    train(config(digits_dir, tmp_path))
    train(config(digits_dir, tmp_path, steps=8))
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 2
    assert [step for step, _ in read_scalars(tmp_path / "tb")["train/loss"]] == [2, 4, 6, 8]


def test_missing_tensorboardx_is_named(digits_dir, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "tensorboardX"
                        else real(name, *args))
    with pytest.raises(TrainingError, match="needs the tensorboardX package: pip install tensorboardX"):
        train(config(digits_dir, tmp_path))
    assert not (tmp_path / "run").exists()
