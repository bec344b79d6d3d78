"""Copy a trained run into the package as a built-in model, recording how it was trained.

    python scripts/ship_builtin.py RUN NAME --command "surfsep bench ..." [--bench BENCH_FOLDER]

The model folder ``src/surfsep/builtin/NAME`` gets the run's weights and a model.json whose
``builtin`` entry contains the training command, the run's resolved training config and, with
``--bench``, the benchmark's settings and the model's test score there.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from surfsep.files import atomic_write_json
from surfsep.models import load_model

PACKAGE_BUILTIN = Path(__file__).resolve().parent.parent / "src" / "surfsep" / "builtin"


def final_record(bench: Path, run: Path) -> dict | None:
    """Return the benchmark's full-budget result of ``run`` (a folder BENCH/runs/METHOD/seedN), or None."""
    method, seed = run.parent.name, run.name.removeprefix("seed")
    results = sorted((bench / "results" / method / f"seed{seed}").glob("step*.json"))
    records = [json.loads(path.read_text()) for path in results]
    finals = [record for record in records if record["final"]]
    if not finals:
        return None
    record = finals[-1]
    return {key: record[key] for key in ("arm", "seed", "metric", "test", "sampler_steps", "samples_seen",
                                         "training_seconds", "threads", "test_mixtures")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder written by surfsep train or surfsep bench")
    parser.add_argument("name", help="built-in name: the model becomes builtin:NAME")
    parser.add_argument("--command", required=True, help="the command that trained the run")
    parser.add_argument("--bench", type=Path, help="benchmark folder the run belongs to")
    parser.add_argument("--sampler-steps", type=int, help="default sampler steps of the shipped model")
    args = parser.parse_args()

    _, metadata = load_model(args.run)  # checks that the run is a loadable model
    target = PACKAGE_BUILTIN / args.name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.run / "model.safetensors", target / "model.safetensors")
    metadata["builtin"] = {
        "name": args.name,
        "command": args.command,
        "training_config": json.loads((args.run / "config.json").read_text()),
    }
    if args.bench:
        bench = json.loads((args.bench / "bench.json").read_text())
        metadata["builtin"]["bench_settings"] = bench["settings"]
        metadata["builtin"]["bench_result"] = final_record(args.bench, args.run.resolve())
    chosen = (metadata["builtin"].get("bench_result") or {}).get("sampler_steps")
    if args.sampler_steps or chosen:
        # The benchmark chose the steps on valid/; an explicit --sampler-steps wins.
        metadata["sampler"]["steps"] = args.sampler_steps or chosen
    atomic_write_json(target / "model.json", metadata)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
