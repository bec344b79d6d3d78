"""Measure the wall time and peak memory of separating long audio files, each in a fresh process.

Usage:
    python scripts/bench_long_audio.py --model RUN [--via cli|function] [--steps N] [--minutes 1 10]
    python scripts/bench_long_audio.py --random-network [--steps N]
    python scripts/bench_long_audio.py --fixed-split --via function

The script writes 8 kHz mono test WAVs of the given lengths to a temporary folder and separates
each one in a new Python process: ``--via cli`` runs ``surfsep separate MODEL INPUT --out DIR``, and
``--via function`` calls ``surfsep.longform.separate_file`` directly. The peak resident set size
of that process comes from ``wait4``'s resource usage. ``--random-network`` saves an untrained
slot-tasnet as a model folder first. ``--fixed-split`` replaces the model by a callable that splits
each chunk into fixed fractions, so it measures reading, chunking and writing alone. Prints a
Markdown table, with the machine and date, for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RATE = 8000
CHUNK_SECONDS = 4.0
OVERLAP_SECONDS = 1.0
BATCH_CHUNKS = 8
FIXED_FRACTIONS = (0.25, 0.75)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_test_mixture(path: Path, minutes: float, rate: int = RATE) -> None:
    """Write a two-source test mixture (a gliding tone plus noise bursts) in blocks of ten seconds."""
    from surfsep.audio import AudioWriter

    frames = round(minutes * 60 * rate)
    block = 10 * rate
    generator = np.random.default_rng(0)
    with AudioWriter(path, rate, 1) as writer:
        for start in range(0, frames, block):
            t = np.arange(start, min(start + block, frames)) / rate
            glide = 0.3 * np.sin(2 * np.pi * (300 * t + 20 * np.sin(0.5 * t)))
            bursts = 0.1 * generator.standard_normal(t.shape[0]) * (np.sin(2 * np.pi * 0.7 * t) > 0)
            writer.write((glide + bursts).astype(np.float32))


def save_random_model(folder: Path, steps: int) -> Path:
    """Save an untrained slot-tasnet as an audio model folder at 8 kHz with 2 sources."""
    from surfsep import networks
    from surfsep.models import save_model

    if "slot-tasnet" not in networks.NETWORKS:
        raise SystemExit(
            f"--random-network needs the network 'slot-tasnet', but this surfsep has only "
            f"{', '.join(sorted(networks.NETWORKS))}; pass --model with a trained audio model instead"
        )
    network = networks.build_network("slot-tasnet", {})
    metadata = {
        "network": {"name": "slot-tasnet"},
        "modality": "audio",
        "sources": 2,
        "mixture": "sum",
        "method": "untrained",
        "one_step": False,
        "sigma": 0.5,
        "sampler": {"solver": "euler", "steps": steps},
        "sample_rate": RATE,
        "normalisation": "unit-rms",
    }
    save_model(folder, network, metadata)
    return folder


def fixed_split(chunks):
    import torch

    return torch.stack([fraction * chunks for fraction in FIXED_FRACTIONS], dim=1)


def run_child(args: argparse.Namespace) -> None:
    """Separate one file in this process with ``longform.separate_file`` (the ``--via function`` path)."""
    from surfsep import longform

    if args.fixed_split:
        separate_chunks, rate, sources = fixed_split, RATE, len(FIXED_FRACTIONS)
    else:
        from surfsep.models import load

        separator = load(args.model)
        steps, solver = separator.resolve_sampler(args.steps, None)
        separate_chunks = separator.chunk_separator(steps, 0, solver)
        rate, sources = separator.sample_rate, separator.sources
    outputs = [args.out / f"s{k + 1}.wav" for k in range(sources)]
    longform.separate_file(separate_chunks, args.input, outputs, rate, CHUNK_SECONDS, OVERLAP_SECONDS, BATCH_CHUNKS)


def measure(command: list[str], log_path: Path) -> tuple[float, float, int]:
    """Run ``command`` in a new process; return wall seconds, peak RSS in MiB and the exit status."""
    with open(log_path, "wb") as log:
        actions = [(os.POSIX_SPAWN_DUP2, log.fileno(), 1), (os.POSIX_SPAWN_DUP2, log.fileno(), 2)]
        started = time.perf_counter()
        pid = os.posix_spawn(command[0], command, os.environ, file_actions=actions)
        _, status, usage = os.wait4(pid, 0)
        seconds = time.perf_counter() - started
    # Linux reports ru_maxrss in KiB.
    return seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="audio model or run folder written by `surfsep train`")
    source.add_argument("--random-network", action="store_true", help="use an untrained slot-tasnet")
    source.add_argument("--fixed-split", action="store_true",
                        help="split each chunk into fixed fractions instead of running a model (needs --via function)")
    parser.add_argument("--via", choices=["cli", "function"], default="cli",
                        help="run `surfsep separate` (cli) or call longform.separate_file (function); default: cli")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the model's; 25 for --random-network)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0],
                        help="lengths of the test files in minutes (default: 1 10)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        run_child(args)
        return
    if args.fixed_split and args.via == "cli":
        parser.error("--fixed-split has no model for `surfsep separate`; add --via function")

    with tempfile.TemporaryDirectory(prefix="surfsep-bench-") as folder:
        folder = Path(folder)
        model = args.model
        if args.random_network:
            model = save_random_model(folder / "model", args.steps or 25)
        machine = f"{cpu_model()}, {os.cpu_count()} CPUs"
        date = datetime.date.today().isoformat()

        print(f"{date}, {machine}, Python {platform.python_version()}")
        print("| command | audio | wall time (s) | peak RSS (MiB) | real-time factor | machine | date |")
        print("|---|---|---|---|---|---|---|")
        for minutes in args.minutes:
            input_path = folder / f"mixture-{minutes:g}min.wav"
            write_test_mixture(input_path, minutes)
            out = folder / f"out-{minutes:g}min"
            if args.via == "cli":
                command = [sys.executable, "-m", "surfsep", "separate", str(model), str(input_path), "--out", str(out)]
                description = f"surfsep separate MODEL {input_path.name} --out DIR"
            else:
                command = [sys.executable, str(Path(__file__).resolve()), "--child", "--input", str(input_path),
                           "--out", str(out)]
                command += ["--fixed-split"] if args.fixed_split else ["--model", str(model)]
                description = "longform.separate_file, " + ("fixed split" if args.fixed_split else "model")
            if args.steps is not None and not args.fixed_split:
                command += ["--steps", str(args.steps)]
                description += f" --steps {args.steps}"

            log_path = folder / f"log-{minutes:g}min.txt"
            seconds, peak_mib, status = measure(command, log_path)
            if status != 0:
                sys.stderr.write(log_path.read_text(errors="replace"))
                raise SystemExit(f"`{' '.join(command)}` failed with exit status {status}")
            print(f"| {description} | {minutes:g} min at {RATE} Hz | {seconds:.1f} | {peak_mib:.0f} | "
                  f"{seconds / (minutes * 60):.3f} | {machine} | {date} |")


if __name__ == "__main__":
    main()
