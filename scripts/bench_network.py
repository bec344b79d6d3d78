"""Measure training-step and forward-pass time of SlotUNet settings on this machine.

Usage: python scripts/bench_network.py [--threads N] [--repeats N]
Prints a Markdown table (with the machine, PyTorch version and date) to paste into
docs/benchmarks.md. A training step is forward + backward + Adam on a batch of 64 mixtures
with 2 slots of 28x28, the demo's shape. The forward pass runs the same batch without gradient.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import torch

from surfsep.networks import SlotUNet

SETTINGS = [
    {"channels": (16, 32, 64), "block_convolutions": 1},
    {"channels": (16, 32, 64), "block_convolutions": 2},
    {"channels": (16, 32), "block_convolutions": 1},
    {"channels": (24, 48, 96), "block_convolutions": 1},
    {"channels": (32, 64, 64), "block_convolutions": 1},
]


def time_call(function, repeats: int) -> float:
    for _ in range(2):
        function()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, 1, 28, 28, generator=generator)
    mixture = torch.rand(64, 1, 28, 28, generator=generator)
    t = torch.rand(64, generator=generator)

    print(f"{datetime.date.today()}, {platform.machine()} with {os.cpu_count()} CPUs, "
          f"{args.threads} threads, torch {torch.__version__}")
    print("| channels | convolutions per block | parameters | training step (s) | forward pass (s) |")
    print("|---|---|---|---|---|")
    for setting in SETTINGS:
        network = SlotUNet(**setting)
        optimizer = torch.optim.Adam(network.parameters())

        def train_step() -> None:
            loss = network(x, mixture, t).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        def forward() -> None:
            with torch.no_grad():
                network(x, mixture, t)

        step_seconds = time_call(train_step, args.repeats)
        forward_seconds = time_call(forward, args.repeats)
        parameters = sum(parameter.numel() for parameter in network.parameters())
        print(f"| {'/'.join(map(str, setting['channels']))} | {setting['block_convolutions']} | {parameters:,} | "
              f"{step_seconds:.3f} | {forward_seconds:.3f} |")


if __name__ == "__main__":
    main()
