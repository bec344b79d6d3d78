"""Copy a trained run into the package as a built-in model, recording how it was trained.

    python scripts/ship_builtin.py RUN NAME --command "surfsep bench ..." [--bench BENCH_FOLDER] [--weights average]

The model folder ``src/surfsep/builtin/NAME`` gets the run's weights and a model.json whose
``builtin`` entry contains the training command, the run's resolved training config and, with
``--bench``, the benchmark's settings and the model's test score there. ``--weights average``
ships the EMA of the run's weights that the benchmark scored (its EMA teacher, or ``RUN/ema``)
instead of the student, at the sampler steps the benchmark chose for it on valid/.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from surfsep.files import atomic_write_json
from surfsep.models import load_model

PACKAGE_BUILTIN = Path(__file__).resolve().parent.parent / "src" / "surfsep" / "builtin"


def final_record(bench: Path, run: Path) -> dict:
    """Return the benchmark's result of ``run`` (a folder BENCH/runs/METHOD/seedN) at its largest budget."""
    method, seed = run.parent.name, run.name.removeprefix("seed")
    results = sorted((bench / "results" / method / f"seed{seed}").glob("step*.json"))
    if not results:
        raise SystemExit(f"{bench} has no results for {run}; run the benchmark first")
    return json.loads(results[-1].read_text())


def summary(record: dict, weights: str) -> dict:
    """Return the fields of a result record that model.json keeps, for the student or the EMA weights."""
    names = ("arm", "seed", "metric", "total_steps", "samples_seen", "training_seconds", "threads", "test_mixtures")
    run_fields = {key: record[key] for key in names}
    scored = record if weights == "student" else record["average"]
    return {**run_fields, "weights": weights, "test": scored["test"], "sampler_steps": scored["sampler_steps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder written by surfsep train or surfsep bench")
    parser.add_argument("name", help="built-in name: the model becomes builtin:NAME")
    parser.add_argument("--command", required=True, help="the command that trained the run")
    parser.add_argument("--bench", type=Path, help="benchmark folder the run belongs to")
    parser.add_argument("--sampler-steps", type=int, help="default sampler steps of the shipped model")
    parser.add_argument("--weights", choices=("student", "average"), default="student",
                        help="ship the student (default), or the EMA of its weights that --bench scored")
    parser.add_argument("--root", type=Path, default=PACKAGE_BUILTIN,
                        help="folder of the built-in models (default: the package's, src/surfsep/builtin)")
    args = parser.parse_args()
    if args.weights == "average" and not args.bench:
        parser.error("--weights average needs --bench, whose result names the EMA weights and their sampler steps")

    record = final_record(args.bench, args.run.resolve()) if args.bench else None
    source = args.run
    if args.weights == "average":
        if "average" not in record:
            raise SystemExit(f"the result of {args.run} at step {record['total_steps']} has no EMA-weights score")
        source = args.run / record["average"]["model"]  # "teacher" or "ema", the folder of those weights
    _, metadata = load_model(source)  # checks that the weights are a loadable model
    target = args.root / args.name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "model.safetensors", target / "model.safetensors")
    metadata["builtin"] = {
        "name": args.name,
        "command": args.command,
        "training_config": json.loads((args.run / "config.json").read_text()),
    }
    if record is not None:
        bench = json.loads((args.bench / "bench.json").read_text())
        metadata["builtin"]["bench_settings"] = bench["settings"]
        metadata["builtin"]["bench_result"] = summary(record, args.weights)
        # The benchmark chose the steps on valid/; an explicit --sampler-steps wins.
        metadata["sampler"]["steps"] = metadata["builtin"]["bench_result"]["sampler_steps"]
    if args.sampler_steps:
        metadata["sampler"]["steps"] = args.sampler_steps
    atomic_write_json(target / "model.json", metadata)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
