"""Check the GPU path end to end: train image and audio models on the GPU, then separate with them.

Usage:
    python scripts/gpu_check.py [--device cuda] [--work DIR] [--steps 300]

Every stage runs the command line in a fresh process, as a user would:
1. builds a small digits set (10% of the built-in counts) and a tone-mixture audio set;
2. trains MixIT, then SURF from it, and a supervised flow on the digits with ``--device`` (bf16
   autocast by default on CUDA), and a supervised flow on the audio set (its crops are read ahead);
3. with more than one GPU, trains SURF on 2 processes with ``torchrun`` (NCCL) and checks that the
   run records 2 processes;
4. separates the digits test mixtures and a 60 s audio file on the device and on the CPU, and
   compares the two;
5. scores the SURF model on the digits test split.

It prints a Markdown summary with training steps per second and separation times, and exits 1 if
any stage fails. ``--device cpu`` runs the same stages on the CPU, to check the script itself.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

from surfsep.data.tones import write_tone_set

RATE = 8000


def surfsep(*args: str, processes: int = 1) -> float:
    """Run ``surfsep ARGS`` (under torchrun for several processes); return its wall time in seconds."""
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                   str(processes), "-m", "surfsep", *args]
    else:
        command = [sys.executable, "-m", "surfsep", *args]
    print("$", " ".join(command[2:] if processes == 1 else command), flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, text=True, capture_output=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-6000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"failed with status {result.returncode} after {seconds:.1f} s")
    return seconds


def steps_per_second(run: Path) -> float:
    training = json.loads((run / "model.json").read_text())["training"]
    return training["steps"] / max(training["seconds"], 1e-9)


def largest_difference(first: Path, second: Path, pattern: str) -> float:
    """Largest absolute sample difference between same-named files of two output folders."""
    from PIL import Image

    largest = 0.0
    for path in sorted(first.rglob(pattern)):
        other = second / path.relative_to(first)
        if pattern.endswith(".png"):
            a = np.asarray(Image.open(path), dtype=np.float64) / 65535
            b = np.asarray(Image.open(other), dtype=np.float64) / 65535
        else:
            a, b = soundfile.read(path)[0], soundfile.read(other)[0]
        largest = max(largest, float(np.abs(a - b).max()))
    return largest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="device to check (default: cuda)")
    parser.add_argument("--work", type=Path, help="folder for data and runs (default: a new temporary folder)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of each run (default: 300)")
    args = parser.parse_args()

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"PyTorch {torch.__version__} finds no CUDA GPU; run with --device cpu to check the script")
    work = args.work or Path(tempfile.mkdtemp(prefix="surfsep-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    name = torch.cuda.get_device_name(0) if gpus else platform.processor() or platform.machine()
    print(f"device {args.device} ({name}), {gpus} GPU(s), torch {torch.__version__}, work folder {work}", flush=True)
    rows = []
    device = ["--device", args.device]
    small = ["--batch-size", "64", "--log-every", "50", "--checkpoint-every", str(args.steps)]

    digits = work / "digits"
    if not (digits / "dataset.json").exists():
        surfsep("data", "digits", "--out", str(digits), "--scale", "0.1")
    runs = work / "runs"
    for method, extra in (("mixit", []), ("surf", ["--init", str(runs / "mixit")]), ("supervised-flow", [])):
        seconds = surfsep("train", "--method", method, "--data", str(digits / "train"), "--out", str(runs / method),
                          "--steps", str(args.steps), *small, *device, *extra)
        rows.append((f"train {method} on digits, {args.steps} steps of 64", seconds,
                     f"{steps_per_second(runs / method):.1f} steps/s"))

    if gpus > 1:
        seconds = surfsep("train", "--method", "surf", "--init", str(runs / "mixit"), "--data", str(digits / "train"),
                          "--out", str(runs / "surf-2gpu"), "--steps", str(args.steps), *small, "--device", "cuda",
                          processes=2)
        processes = json.loads((runs / "surf-2gpu" / "model.json").read_text())["training"]["processes"]
        if processes != 2:
            raise SystemExit(f"the 2-process run records {processes} processes")
        rows.append((f"train surf on 2 GPUs (torchrun, NCCL), {args.steps} steps of 64", seconds,
                     f"{steps_per_second(runs / 'surf-2gpu'):.1f} steps/s"))

    tones = work / "tones"
    if not (tones / "train").exists():
        write_tone_set(tones, {"train": 64, "valid": 8, "test": 8}, seconds=2.0)
    seconds = surfsep("train", "--method", "supervised-flow", "--data", str(tones / "train"),
                      "--out", str(runs / "tones-flow"), "--steps", str(args.steps), "--batch-size", "8",
                      "--segment-seconds", "1", "--sigma", "1", "--log-every", "50", *device)
    rows.append((f"train supervised-flow on 8 kHz tones, {args.steps} steps of 8 x 1 s", seconds,
                 f"{steps_per_second(runs / 'tones-flow'):.1f} steps/s"))

    test_mix = digits / "test" / "mix"
    for where in (args.device, "cpu"):
        seconds = surfsep("separate", str(runs / "surf"), str(test_mix), "--out", str(work / f"separated-{where}"),
                          "--steps", "25", "--device", where, "--overwrite")
        count = len(list(test_mix.glob("*.png")))
        rows.append((f"separate {count} digit mixtures, 25 steps, on {where}", seconds, ""))
    difference = largest_difference(work / f"separated-{args.device}", work / "separated-cpu", "*.png")
    rows.append((f"largest pixel difference, {args.device} against cpu", 0.0, f"{difference:.4f}"))
    if difference > 0.05:
        raise SystemExit(f"separation on {args.device} differs from the CPU by {difference:.4f} in a pixel")

    long_file = work / "long.wav"
    rng = np.random.default_rng(1)
    soundfile.write(long_file, (0.1 * rng.standard_normal(60 * RATE)).astype(np.float32), RATE)
    for where in (args.device, "cpu"):
        seconds = surfsep("separate", str(runs / "tones-flow"), str(long_file), "--out", str(work / f"long-{where}"),
                          "--steps", "5", "--device", where, "--overwrite")
        rows.append((f"separate 60 s of 8 kHz audio, 5 steps, on {where}", seconds, f"real-time factor {seconds / 60:.3f}"))
    difference = largest_difference(work / f"long-{args.device}", work / "long-cpu", "*.wav")
    rows.append((f"largest sample difference, {args.device} against cpu", 0.0, f"{difference:.4f}"))

    seconds = surfsep("evaluate", str(runs / "surf"), "--data", str(digits / "test"), "--out", str(work / "eval"),
                      "--overwrite")
    summary = json.loads((work / "eval" / "summary.json").read_text())
    rows.append(("evaluate the SURF model on the digits test split (CPU)", seconds,
                 f"PSNR {summary['psnr']['mean']:.2f} dB, mixture {summary['mixture']['psnr']['mean']:.2f} dB"))

    print(f"\n{datetime.date.today()}, {name}, device {args.device}, torch {torch.__version__}, "
          f"command: python scripts/gpu_check.py {' '.join(sys.argv[1:])}\n")
    print("| stage | wall time (s) | result |\n|---|---|---|")
    for stage, seconds, result in rows:
        print(f"| {stage} | {seconds:.1f} | {result} |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
