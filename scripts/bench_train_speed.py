"""Measure training throughput, in mixtures per second, of every method and of SURF's teacher options.

Usage:
    python scripts/bench_train_speed.py [--digits DIR] [--speech DIR] [--modalities image audio]
        [--steps 20] [--warmup 5] [--rounds 3] [--threads 2] [--json FILE]

Each arm is a short ``surfsep train`` run (the ``train`` function, in this process) with the
settings of the benchmarks. Images are the built-in digits at batch 64 with the default slot-unet.
Audio is the built-in speech at batch 8 with 1 s crops and sigma 1 (benchmarks/speech.yaml).
Teacher methods start from random weights (``--teacher-start scratch``), which costs the same per
step as a MixIT start. The first ``--warmup`` steps are left out. The time of the remaining steps
comes from the run's metrics.jsonl and covers the whole step: data, teacher, loss, backward and
optimiser. The rounds run every arm in turn, and each round's cost of an arm over the supervised
flow is a ratio of times measured minutes apart, which cancels slow changes in the machine's load.
It does not cancel contention for the cores: with two benchmark jobs beside it on 2 cores, one
round put the 4-step reuse at 3.8 times the supervised flow's cost against 1.04 on a quiet
machine. Run it with nothing else running.
Without ``--digits`` or ``--speech`` the data sets are built in a temporary folder.

Prints a Markdown table per modality, with the machine and date, for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_long_audio import cpu_model  # noqa: E402

# (arm name, method, variant, extra settings); SURF's default variant is remixit-flow.
ARMS = [
    ("mixit", "mixit", None, {}),
    ("supervised-regression", "supervised-regression", None, {}),
    ("remixit", "remixit", None, {}),
    ("self-remixing", "self-remixing", None, {}),
    ("supervised-flow", "supervised-flow", None, {}),
    ("surf (remixit-flow, default)", "surf", None, {}),
    ("surf (self-remixing-flow)", "surf", "self-remixing-flow", {}),
    ("surf, 2-step teacher", "surf", None, {"teacher_steps": 2}),
    ("surf, 5-step teacher", "surf", None, {"teacher_steps": 5}),
    ("surf, teacher reused for 2 steps", "surf", None, {"teacher_reuse": 2}),
    ("surf, teacher reused for 4 steps", "surf", None, {"teacher_reuse": 4}),
]
MODALITY_SETTINGS = {
    "image": {"batch_size": 64},
    "audio": {"batch_size": 8, "segment_seconds": 1.0, "sigma": 1.0},
}
REFERENCE_ARM = "supervised-flow"


def build_data(kind: str, folder: Path) -> Path:
    out = folder / kind
    subprocess.run([sys.executable, "-m", "surfsep", "data", kind, "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def measured_seconds(run: Path, warmup: int) -> tuple[float, int]:
    """Return the seconds and step count of the logged windows after step ``warmup``."""
    seconds, steps, previous = 0.0, 0, 0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "steps_per_second" not in record:
            continue
        window = record["step"] - previous
        previous = record["step"]
        if record["step"] > warmup:
            seconds += window / record["steps_per_second"]
            steps += window
    return seconds, steps


def time_arm(data: Path, modality: str, arm: tuple, args: argparse.Namespace, out: Path) -> float:
    """Train one arm for ``warmup + steps`` steps; return its mixtures per second after the warm-up."""
    from surfsep.config import TrainConfig
    from surfsep.methods import get_method
    from surfsep.train import train

    _, method, variant, extra = arm
    settings = dict(MODALITY_SETTINGS[modality], **extra)
    if get_method(method, variant).needs_teacher:
        settings["teacher_start"] = "scratch"
    config = TrainConfig(method=method, variant=variant, data=str(data / "train"), out=str(out),
                         steps=args.warmup + args.steps, threads=args.threads, log_every=args.window,
                         checkpoint_every=10**9, **settings)
    run = train(config)
    seconds, steps = measured_seconds(run, args.warmup)
    return steps * config.batch_size / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=Path, help="digits data folder (default: build one)")
    parser.add_argument("--speech", type=Path, help="speech data folder (default: build one)")
    parser.add_argument("--modalities", nargs="+", choices=["image", "audio"], default=["image", "audio"],
                        help="which benchmarks to time (default: image audio)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per arm and round (default: 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default: 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all arms; the table gives medians (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads (default: 2)")
    parser.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    args = parser.parse_args()
    if min(args.steps, args.warmup, args.rounds, args.threads) < 1:
        parser.error("--steps, --warmup, --rounds and --threads must be at least 1")
    # Windows of the logged rate: the warm-up is one window, and the timed steps are whole windows.
    args.window = args.warmup
    args.steps += (-args.steps) % args.window
    logging.getLogger("surfsep").setLevel(logging.WARNING)

    import torch

    machine = f"{cpu_model()}, {os.cpu_count()} CPUs, {args.threads} PyTorch threads"
    date = datetime.date.today().isoformat()
    results = {}
    with tempfile.TemporaryDirectory(prefix="surfsep-train-speed-") as folder:
        folder = Path(folder)
        for modality in args.modalities:
            data_option = args.digits if modality == "image" else args.speech
            data = data_option or build_data("digits" if modality == "image" else "speech", folder)
            rates = {arm[0]: [] for arm in ARMS}
            for round_index in range(args.rounds):
                for arm in ARMS:
                    out = folder / f"{modality}-{round_index}-{ARMS.index(arm)}"
                    rates[arm[0]].append(time_arm(data, modality, arm, args, out))
                print(f"{modality} round {round_index + 1}: " + ", ".join(
                    f"{name} {values[-1]:.1f}/s" for name, values in rates.items()), file=sys.stderr)
            results[modality] = rates

    print(f"{date}, {machine}, Python {platform.python_version()}, torch {torch.__version__}, "
          f"{args.steps} timed steps after {args.warmup}, {args.rounds} rounds")
    for modality, rates in results.items():
        settings = ", ".join(f"{name} {value}" for name, value in MODALITY_SETTINGS[modality].items())
        print(f"\n{modality} ({settings}):\n")
        print("| method or option | mixtures per second (median) | range | cost per mixture over the supervised flow |")
        print("|---|---|---|---|")
        reference = rates[REFERENCE_ARM]
        for name, values in rates.items():
            cost = statistics.median(ref / value for ref, value in zip(reference, values))
            print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} to {max(values):.1f} | "
                  f"{cost:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"date": date, "machine": machine, "steps": args.steps, "warmup": args.warmup,
                                         "settings": MODALITY_SETTINGS, "rates": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
