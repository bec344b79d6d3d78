"""Measure the real-time factor of separating 8 kHz speech on the CPU, beside asteroid's Conv-TasNet.

Usage:
    python scripts/bench_separation_speed.py [--model RUN] [--steps 1 5 25] [--seconds 60] [--rounds 3]
        [--threads 2] [--input WAV] [--asteroid-env DIR | --no-asteroid] [--json FILE]

The script separates an 8 kHz mixture in rounds: ``--input``, or a test signal that it writes, a
gliding tone plus noise bursts. The work per second of audio does not depend on the content. Each round times
``AudioSeparator.separate`` once per sampler-step count (4 s chunks, 1 s overlap, 8 chunks per
network call), then a Conv-TasNet from asteroid once. The Conv-TasNet runs in a separate virtual
environment that the script creates on first use (``--asteroid-env``). It has pinned packages and
this project's torch, and it separates the whole waveform in one forward pass under inference mode, as
asteroid's ``separate`` does. Both sides use ``--threads`` PyTorch threads, and both time the
network and the chunking only, with the model already loaded. The two sides alternate within each
round, so slow changes in the machine's load reach both. Contention for the cores does not cancel:
in a 10 s trial beside the test suite and two benchmark jobs on 2 cores, 5 steps took 4.45 times
the Conv-TasNet's time, against 2.57 on a quiet machine. Run it with nothing else running. Without ``--model`` the surfsep side is
an untrained slot-tasnet with the speech defaults: speed does not depend on the weights.

Prints a Markdown table, with the machine and date, for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_long_audio import cpu_model, save_random_model, write_test_mixture  # noqa: E402

RATE = 8000
# The asteroid environment: this project's torch plus what importing asteroid.models needs. asteroid
# itself goes in without its declared dependencies (torchaudio, pytorch-lightning and torchmetrics),
# which building and running a Conv-TasNet does not use.
ASTEROID_PACKAGES = ["torch==2.13.0", "numpy==2.4.6", "scipy==1.17.1", "packaging==26.4", "requests==2.34.2",
                     "huggingface_hub==2.4.0", "PyYAML==6.0.4", "soundfile==0.14.0"]
ASTEROID_NO_DEPS = ["asteroid==0.7.0", "asteroid-filterbanks==0.4.0"]
# A Conv-TasNet with the slot-tasnet's filterbank (64 filters of 16 samples, stride 8) and a TCN
# widened to about the slot-tasnet's parameter count.
CONV_TASNET = {"n_src": 2, "sample_rate": RATE, "n_filters": 64, "kernel_size": 16, "stride": 8, "n_blocks": 8,
               "n_repeats": 2, "bn_chan": 96, "hid_chan": 224, "skip_chan": 96}

WORKER = r"""
import json, sys, time
import numpy as np
import torch
from asteroid.models import ConvTasNet

settings = json.loads(sys.argv[1])
torch.set_num_threads(settings["threads"])
torch.manual_seed(0)
model = ConvTasNet(**settings["model"]).eval()
waveform = torch.from_numpy(np.load(settings["waveform"])).unsqueeze(0)
print(json.dumps({"parameters": sum(p.numel() for p in model.parameters())}), flush=True)
for line in sys.stdin:
    if line.strip() != "run":
        break
    started = time.perf_counter()
    with torch.inference_mode():
        estimates = model(waveform)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "shape": list(estimates.shape)}), flush=True)
"""


def asteroid_python(env: Path) -> Path:
    """Return the asteroid environment's python, creating or updating the environment as needed."""
    python = env / "bin" / "python"
    stamp = env / "surfsep-packages.json"
    expected = ASTEROID_PACKAGES + ASTEROID_NO_DEPS
    if python.exists() and stamp.exists() and json.loads(stamp.read_text()) == expected:
        return python
    print(f"creating the asteroid environment in {env} (about a minute)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    try:
        subprocess.run(pip + ASTEROID_PACKAGES, check=True)
        subprocess.run(pip + ["--no-deps"] + ASTEROID_NO_DEPS, check=True)
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"installing asteroid into {env} failed ({error}); check that PyPI is reachable, "
                         f"or pass --no-asteroid to time surfsep alone") from None
    stamp.write_text(json.dumps(expected))
    return python


class AsteroidWorker:
    """A Conv-TasNet in the asteroid environment that separates the test waveform on request."""

    def __init__(self, python: Path, waveform_path: Path, threads: int):
        settings = {"threads": threads, "model": CONV_TASNET, "waveform": str(waveform_path)}
        self.process = subprocess.Popen([str(python), "-c", WORKER, json.dumps(settings)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        self.parameters = self.read()["parameters"]

    def read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the asteroid worker exited with status {self.process.wait()}; its error is above")
        return json.loads(line)

    def time(self) -> float:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return self.read()["seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="8 kHz audio model or run folder (default: an untrained slot-tasnet)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 25], help="sampler steps (default: 1 5 25)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the test mixture in seconds (default: 60)")
    parser.add_argument("--input", type=Path, help="mono 8 kHz WAV to separate instead of the test mixture "
                        "(its first --seconds are used)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; the table gives medians (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads on each side (default: 2)")
    parser.add_argument("--asteroid-env", type=Path, default=Path.home() / ".cache" / "surfsep" / "asteroid-env",
                        help="virtual environment for asteroid (default: ~/.cache/surfsep/asteroid-env)")
    parser.add_argument("--no-asteroid", action="store_true", help="time surfsep alone")
    parser.add_argument("--json", type=Path, help="also write every timing to this JSON file")
    args = parser.parse_args()
    if args.rounds < 1 or args.threads < 1 or args.seconds <= 0 or min(args.steps) < 1:
        parser.error("--rounds, --threads and --steps must be at least 1, and --seconds positive")

    import soundfile
    import torch

    import surfsep

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="surfsep-rtf-") as folder:
        folder = Path(folder)
        model_path = args.model or save_random_model(folder / "model", 5)
        separator = surfsep.load(model_path)
        if separator.metadata.get("modality") != "audio":
            raise SystemExit(f"{model_path} is an image model; pass an audio model")
        mixture_path = args.input or folder / "mixture.wav"
        if args.input is None:
            write_test_mixture(mixture_path, args.seconds / 60)
        try:
            waveform, rate = soundfile.read(mixture_path, dtype="float32")
        except (OSError, RuntimeError) as error:
            raise SystemExit(f"cannot read {mixture_path}: {error}") from None
        if waveform.ndim != 1 or rate != RATE:
            raise SystemExit(f"{mixture_path} must be mono at {RATE} Hz; it has {waveform.shape[-1] if waveform.ndim > 1 else 1} "
                             f"channel(s) at {rate} Hz")
        waveform = waveform[:round(args.seconds * rate)]
        waveform_path = folder / "mixture.npy"
        np.save(waveform_path, waveform)

        worker = None if args.no_asteroid else AsteroidWorker(asteroid_python(args.asteroid_env), waveform_path,
                                                              args.threads)
        separator.separate(waveform[:rate * 5], sample_rate=rate, steps=1)  # warm-up
        if worker is not None:
            worker.time()
        rounds = []
        for index in range(args.rounds):
            timings = {}
            for steps in args.steps:
                started = time.perf_counter()
                separator.separate(waveform, sample_rate=rate, steps=steps)
                timings[f"surfsep-{steps}"] = time.perf_counter() - started
            if worker is not None:
                timings["conv-tasnet"] = worker.time()
            rounds.append(timings)
            print(f"round {index + 1}: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items()),
                  file=sys.stderr)
        if worker is not None:
            worker.close()

    audio_seconds = len(waveform) / rate
    machine = f"{cpu_model()}, {os.cpu_count()} CPUs, {args.threads} PyTorch threads"
    date = datetime.date.today().isoformat()
    ours = sum(p.numel() for p in separator.network.parameters())
    print(f"{date}, {machine}, Python {platform.python_version()}, torch {torch.__version__}, "
          f"{audio_seconds:g} s of {rate} Hz audio, {args.rounds} rounds")
    print("| separator | sampler steps | parameters | real-time factor (median) | range | time over Conv-TasNet |")
    print("|---|---|---|---|---|---|")
    for steps in args.steps:
        factors = [timings[f"surfsep-{steps}"] / audio_seconds for timings in rounds]
        ratio = "" if worker is None else \
            f"{statistics.median(t[f'surfsep-{steps}'] / t['conv-tasnet'] for t in rounds):.2f}"
        print(f"| surfsep slot-tasnet | {steps} | {ours:,} | {statistics.median(factors):.3f} | "
              f"{min(factors):.3f} to {max(factors):.3f} | {ratio} |")
    if worker is not None:
        factors = [timings["conv-tasnet"] / audio_seconds for timings in rounds]
        print(f"| asteroid Conv-TasNet | | {worker.parameters:,} | {statistics.median(factors):.3f} | "
              f"{min(factors):.3f} to {max(factors):.3f} | 1 |")
    if args.json:
        args.json.write_text(json.dumps({"date": date, "machine": machine, "audio_seconds": audio_seconds,
                                         "conv_tasnet": CONV_TASNET, "rounds": rounds}, indent=1) + "\n")


if __name__ == "__main__":
    main()
