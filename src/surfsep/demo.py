"""The demo: build ``digits``, train MixIT, SURF from the MixIT teacher and a supervised flow,
score them, SURF's EMA teacher and the mixture on the test split, and draw a grid of estimates.

A killed demo resumes where it stopped: finished training runs are kept, unfinished ones resume
from their last checkpoint, and evaluation runs again.
"""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from surfsep.config import TrainConfig
from surfsep.data.digits import build_digits
from surfsep.data.images import ReferenceSet
from surfsep.evaluate import evaluate_model, evaluate_separator
from surfsep.files import atomic_write_bytes, atomic_write_json
from surfsep.models import load
from surfsep.train import train

logger = logging.getLogger(__name__)

# Step budgets at scale 1: the whole demo took about 14 minutes on 2 CPU cores (docs/benchmarks.md).
DEMO_STEPS = {"mixit": 1200, "surf": 900, "supervised-flow": 1100}
GRID_MIXTURES = 8
GRID_ZOOM = 3


def demo_configs(out: Path, scale: float, threads: int | None, batch_size: int = 64) -> dict[str, TrainConfig]:
    data = out / "data"
    base = TrainConfig(data=str(data / "train"), sources=2, mixture="mean", batch_size=batch_size, threads=threads,
                       checkpoint_every=100, log_every=100)

    def steps(name: str) -> int:
        return max(2, int(round(DEMO_STEPS[name] * scale)))

    return {
        "mixit": replace(base, method="mixit", out=str(out / "mixit"), steps=steps("mixit")),
        "surf": replace(base, method="surf", variant="remixit-flow", init=str(out / "mixit"),
                        out=str(out / "surf"), steps=steps("surf")),
        "supervised-flow": replace(base, method="supervised-flow", out=str(out / "supervised-flow"),
                                   steps=steps("supervised-flow")),
    }


def ensure_digits(data: Path, data_scale: float) -> None:
    if (data / "dataset.json").is_file():
        logger.info("using the digits data set in %s", data)
        return
    logger.info("writing the digits data set to %s", data)
    build_digits(data, scale=data_scale)


def draw_grid(out: Path, models: dict[str, Path], test: Path) -> Path:
    """Draw mixture, references and each method's estimates (best order) for the first test mixtures."""
    reference_set = ReferenceSet.open(test, 2).first(GRID_MIXTURES)
    rows = len(reference_set)

    columns = [("mixture", reference_set.mixtures[:, 0]), ("reference", reference_set.references[:, :, 0])]
    for name, folder in models.items():
        scores = evaluate_separator(load(folder), reference_set)
        columns.append((name, scores["aligned"]))

    tile = 28 * GRID_ZOOM
    gap = 6
    header = 18
    widths = [tile if images.dim() == 3 else 2 * tile for _, images in columns]
    canvas = Image.new("L", (sum(widths) + gap * (len(columns) + 1), header + rows * (tile + gap) + gap), 255)
    draw = ImageDraw.Draw(canvas)
    x = gap
    for (label, images), width in zip(columns, widths):
        draw.text((x, 3), label, fill=0)
        for row in range(rows):
            stack = images[row] if images.dim() == 4 else images[row].unsqueeze(0)
            tiles = [np.clip(image.double().numpy(), 0, 1) for image in stack]
            pixels = (np.concatenate(tiles, axis=1) * 255).round().astype(np.uint8)
            picture = Image.fromarray(pixels).resize((width, tile), Image.NEAREST)
            canvas.paste(picture, (x, header + gap + row * (tile + gap)))
        x += width + gap

    path = out / "grid.png"
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def format_table(results: dict) -> str:
    """Format the results as a text table; SURF's seconds include the MixIT run it starts from."""
    lines = [f"{'estimate':<16}{'PSNR dB':>9}{'SSIM':>8}{'sampler steps':>15}{'train steps':>13}{'train s':>9}"]
    for name, row in results["methods"].items():
        seconds = row.get("training_seconds_with_init", row["training_seconds"])
        sampler = str(row.get("sampler_steps", "-"))
        lines.append(f"{name:<16}{row['psnr']:>9.2f}{row['ssim']:>8.3f}{sampler:>15}"
                     f"{row['training_steps']:>13d}{seconds:>9.0f}")
    return "\n".join(lines)


def run_demo(out: Path, scale: float = 1.0, threads: int | None = None, data_scale: float = 1.0) -> dict:
    """Run the whole demo into ``out``; returns the results also written to ``out/results.json``."""
    if scale <= 0:
        raise ValueError(f"--scale must be positive, got {scale}")
    out = Path(out)
    if threads:
        torch.set_num_threads(threads)
    ensure_digits(out / "data", data_scale)

    train_size = len(list((out / "data" / "train" / "mix").glob("*.png")))
    configs = demo_configs(out, scale, threads, batch_size=min(64, train_size))
    for name, config in configs.items():
        logger.info("demo: training %s for %d steps", name, config.steps)
        train(config)

    test = out / "data" / "test"
    results = {"data": str(test), "scale": scale, "methods": {}}
    evaluated = {name: Path(config.out) for name, config in configs.items()}
    # The EMA teacher is a separator of its own and sometimes the better one.
    evaluated["surf-teacher"] = Path(configs["surf"].out) / "teacher"
    for name, folder in evaluated.items():
        summary = evaluate_model(folder, test, folder / "eval", overwrite=True)
        if "mixture" not in results["methods"]:
            results["methods"]["mixture"] = {
                "psnr": summary["mixture"]["psnr"]["mean"], "ssim": summary["mixture"]["ssim"]["mean"],
                "training_steps": 0, "training_seconds": 0.0,
            }
        results["methods"][name] = {
            "psnr": summary["psnr"]["mean"],
            "ssim": summary["ssim"]["mean"],
            "psnr_ci95": summary["psnr"]["ci95"],
            "sampler_steps": summary["sampler"]["steps"],
            "training_steps": summary["training"]["steps"],
            "training_seconds": summary["training"]["seconds"],
        }
    # SURF's compute includes the MixIT run it starts from.
    for name in ("surf", "surf-teacher"):
        row = results["methods"][name]
        row["training_seconds_with_init"] = row["training_seconds"] + results["methods"]["mixit"]["training_seconds"]
    results["mixtures"] = summary["mixtures"]

    results["grid"] = str(draw_grid(out, {name: Path(config.out) for name, config in configs.items()}, test))
    atomic_write_json(out / "results.json", results)
    results["table"] = format_table(results)
    return results
