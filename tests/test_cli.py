import argparse
import csv
import json
import os
import shutil
import stat

import numpy as np
import pytest
from PIL import Image

from conftest import run_surfsep
from surfsep.cli import build_parser
from surfsep.data.images import read_png, write_png


@pytest.fixture(scope="module")
def flow_run(digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "flow"
    run_surfsep("train", "--method", "supervised-flow", "--data", str(digits_dir / "train"), "--out", str(out),
                "--steps", "3", "--channels", "8", "16", "--batch-size", "16", "--sampler-steps", "3")
    return out


def test_version_and_help():
    assert run_surfsep("--version").stdout.startswith("surfsep ")
    assert "separate" in run_surfsep("--help").stdout


def test_every_option_states_its_default():
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        for action in command._actions:
            takes_value = action.option_strings and action.nargs != 0 and not action.required
            if takes_value:
                assert "default" in (action.help or ""), f"surfsep {name} {action.option_strings[0]}: {action.help}"


def test_separate_writes_one_png_per_source(flow_run, digits_dir, tmp_path):
    inputs = digits_dir / "test" / "mix"
    run_surfsep("separate", str(flow_run), str(inputs), "--out", str(tmp_path / "out"))

    names = sorted(path.name for path in inputs.iterdir())
    for folder in ("s1", "s2"):
        assert sorted(path.name for path in (tmp_path / "out" / folder).iterdir()) == names
    mixture = read_png(inputs / names[0])
    first = read_png(tmp_path / "out" / "s1" / names[0])
    second = read_png(tmp_path / "out" / "s2" / names[0])
    assert first.shape == mixture.shape
    # Clipping to [0, 1] can only move the estimates' mean away from the mixture where they left the range.
    inside = (first > 0) & (first < 1) & (second > 0) & (second < 1)
    assert np.abs((first + second)[inside] / 2 - mixture[inside]).max() < 1e-4


def test_separate_refuses_existing_output(flow_run, digits_dir, tmp_path):
    source = digits_dir / "test" / "mix" / "00000.png"
    existing = tmp_path / "out" / "s2" / "00000.png"
    write_png(existing, np.full((4, 4), 0.5))
    before = existing.read_bytes()

    result = run_surfsep("separate", str(flow_run), str(source), "--out", str(tmp_path / "out"), check=False)

    assert result.returncode == 2
    assert "already exists" in result.stderr
    assert "--overwrite" in result.stderr
    assert existing.read_bytes() == before
    assert not (tmp_path / "out" / "s1" / "00000.png").exists()

    run_surfsep("separate", str(flow_run), str(source), "--out", str(tmp_path / "out"), "--overwrite")
    assert read_png(existing).shape == (28, 28)


def test_separate_never_overwrites_an_input(flow_run, digits_dir, tmp_path):
    split = tmp_path / "split"
    shutil.copytree(digits_dir / "valid", split)
    target = split / "s1" / "00000.png"
    before = target.read_bytes()

    result = run_surfsep("separate", str(flow_run), str(target), "--out", str(split), "--overwrite", check=False)

    assert result.returncode == 2
    assert "would overwrite the input" in result.stderr
    assert target.read_bytes() == before


def test_separate_names_missing_input(flow_run, tmp_path):
    result = run_surfsep("separate", str(flow_run), str(tmp_path / "nothing.png"), "--out", str(tmp_path / "o"),
                         check=False)
    assert result.returncode == 2
    assert "nothing.png not found" in result.stderr


def test_separate_rejects_folder_without_model(tmp_path, digits_dir):
    result = run_surfsep("separate", str(tmp_path), str(digits_dir / "test" / "mix"), "--out", str(tmp_path / "o"),
                         check=False)
    assert result.returncode == 2
    assert "no model.json" in result.stderr


def test_evaluate_writes_csv_and_summary(flow_run, digits_dir, tmp_path):
    out = tmp_path / "eval"
    run_surfsep("evaluate", str(flow_run), "--data", str(digits_dir / "test"), "--out", str(out))

    rows = list(csv.DictReader((out / "per_file.csv").open()))
    summary = json.loads((out / "summary.json").read_text())

    assert len(rows) == 10
    assert {"file", "psnr", "ssim", "mixture_psnr", "mixture_ssim", "permutation"} <= set(rows[0])
    assert summary["mixtures"] == 10
    assert summary["sampler"]["steps"] == 3
    assert summary["psnr"]["mean"] == pytest.approx(np.mean([float(row["psnr"]) for row in rows]), abs=1e-3)
    # The mixture scored as the estimate of both sources: about 15 dB on two-digit averages.
    assert 10 < summary["mixture"]["psnr"]["mean"] < 20
    assert summary["psnr"]["ci95"][0] <= summary["psnr"]["mean"] <= summary["psnr"]["ci95"][1]

    again = run_surfsep("evaluate", str(flow_run), "--data", str(digits_dir / "test"), "--out", str(out), check=False)
    assert again.returncode == 2
    assert "--overwrite" in again.stderr


def test_demo_writes_results_and_grid(tmp_path):
    out = tmp_path / "demo"
    result = run_surfsep("demo", "--out", str(out), "--scale", "0.003", "--data-scale", "0.05")

    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"mixture", "mixit", "surf", "surf-teacher", "supervised-flow"}
    for name, row in results["methods"].items():
        assert {"psnr", "ssim", "training_steps", "training_seconds"} <= set(row), name
        assert np.isfinite(row["psnr"]), name
        assert 0 < row["ssim"] <= 1, name
    assert results["methods"]["mixit"]["training_steps"] == 4
    assert (out / "grid.png").is_file()
    assert "supervised-flow" in result.stdout


def test_separate_checks_all_inputs_first(flow_run, digits_dir, tmp_path):
    inputs = tmp_path / "inputs"
    shutil.copytree(digits_dir / "train" / "mix", inputs)
    Image.new("RGB", (28, 28)).save(inputs / "zzz-colour.png")

    result = run_surfsep("separate", str(flow_run), str(inputs), "--out", str(tmp_path / "out"), check=False)

    assert result.returncode == 2
    assert "zzz-colour.png" in result.stderr
    assert not (tmp_path / "out").exists()


def test_separate_rejects_non_png_file(flow_run, tmp_path):
    Image.new("L", (28, 28)).save(tmp_path / "digit.jpg")
    result = run_surfsep("separate", str(flow_run), str(tmp_path / "digit.jpg"), "--out", str(tmp_path / "out"),
                         check=False)
    assert result.returncode == 2
    assert "not a .png file" in result.stderr


def test_separate_handles_tiny_and_odd_sizes(flow_run, tmp_path):
    for height, width in ((2, 2), (31, 45), (1, 1)):
        write_png(tmp_path / "in" / f"{height}x{width}.png", np.full((height, width), 0.3))
    run_surfsep("separate", str(flow_run), str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert read_png(tmp_path / "out" / "s2" / "31x45.png").shape == (31, 45)
    assert read_png(tmp_path / "out" / "s1" / "2x2.png").shape == (2, 2)


def test_outputs_get_usual_file_mode(flow_run, digits_dir, tmp_path):
    run_surfsep("separate", str(flow_run), str(digits_dir / "test" / "mix" / "00000.png"), "--out", str(tmp_path / "o"))
    mask = os.umask(0)
    os.umask(mask)
    for path in (tmp_path / "o" / "s1" / "00000.png", flow_run / "model.json", flow_run / "model.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


def test_quiet_accepted_after_subcommand(tmp_path):
    result = run_surfsep("data", "digits", "--out", str(tmp_path / "d"), "--scale", "0.005", "--quiet")
    assert result.stderr == ""
    assert (tmp_path / "d" / "dataset.json").is_file()


def test_data_rejects_bad_scale_and_file(tmp_path):
    result = run_surfsep("data", "digits", "--out", str(tmp_path / "d"), "--scale", "-1", check=False)
    assert result.returncode == 2
    assert "--scale must be positive" in result.stderr
    (tmp_path / "file").write_text("x")
    result = run_surfsep("data", "digits", "--out", str(tmp_path / "file"), check=False)
    assert result.returncode == 2
    assert "is a file" in result.stderr
