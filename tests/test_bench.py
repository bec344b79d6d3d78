"""``surfsep bench``: equal budgets, choices made on valid/, outputs, and resuming without redoing work."""

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_surfsep
from surfsep.bench import ARMS, BenchSettings, init_steps, point_steps, run_bench, stages

SMALL = {"channels": [8, 16], "log_every": 5, "batch_size": 16}


def bench_args(data, out, *extra, samples=320, methods=None):
    args = ["bench", "--data", str(data), "--out", str(out), "--samples", str(samples), "--points", "2",
            "--sweep", "1,2", "--valid-limit", "4", "--test-limit", "6", "--config", str(out.parent / "small.yaml")]
    if methods:
        args += ["--methods", ",".join(methods)]
    return args + list(extra)


@pytest.fixture
def small_yaml(tmp_path):
    (tmp_path / "small.yaml").write_text("channels: [8, 16]\nlog_every: 5\nbatch_size: 16\n")
    return tmp_path / "small.yaml"


@pytest.fixture(scope="module")
def full_bench(digits_dir, tmp_path_factory):
    """Every method, one seed, 20 steps of 16 mixtures, scored at 10 and 20 steps."""
    folder = tmp_path_factory.mktemp("bench")
    (folder / "small.yaml").write_text("channels: [8, 16]\nlog_every: 5\nbatch_size: 16\n")
    result = run_surfsep(*bench_args(digits_dir, folder / "b"))
    return folder / "b", result


def records(bench: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((bench / "results").rglob("step*.json"))]


def test_methods_share_budget_and_test_split(full_bench):
    bench, result = full_bench
    finals = [record for record in records(bench) if record["final"]]
    assert sorted(record["arm"] for record in finals) == sorted(ARMS)
    assert {record["samples_seen"] for record in finals} == {320}
    assert {record["test_mixtures"] for record in finals} == {6}
    assert all(record["sampler_steps"] in (1, 2) for record in finals)
    for record in finals:
        one_step = record["arm"] in ("mixit", "remixit", "self-remixing", "supervised-regression")
        assert (record["valid"] == {}) == one_step, record["arm"]
        assert ("sweep_test" in record) != one_step, record["arm"]
        if not one_step:
            # The reported score is the sweep entry of the steps chosen on valid/.
            assert record["test"] == record["sweep_test"][str(record["sampler_steps"])]
            best = max(record["valid"].values())
            assert record["valid"][str(record["sampler_steps"])] == best
    assert "| SURF (remixit-flow) |" in result.stdout
    assert "| the mixture itself |" in result.stdout


def test_teacher_methods_count_their_mixit_start(full_bench):
    bench, _ = full_bench
    surf = [record for record in records(bench) if record["arm"] == "surf"]
    # 20 steps, MixIT start 5 steps (a quarter): SURF itself trains 5 and then 15 steps.
    assert [(record["total_steps"], record["own_steps"]) for record in surf] == [(10, 5), (20, 15)]
    start = json.loads((bench / "runs" / "mixit-start" / "seed0" / "model.json").read_text())
    assert start["training"]["steps"] == 5
    assert surf[-1]["training_seconds"] >= start["training"]["seconds"]
    assert "teacher" in surf[-1]
    surf_model = json.loads((bench / "runs" / "surf" / "seed0" / "model.json").read_text())
    assert surf_model["training"]["init"].endswith("mixit-start/seed0")


def test_outputs_hold_every_stage(full_bench):
    bench, _ = full_bench
    with open(bench / "results.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    teacher_rows = [row for row in rows if row["model"] == "teacher"]
    average_rows = [row for row in rows if row["model"] == "average"]
    # Two stages per method, and the final stage adds its teacher and its EMA weights.
    assert len(average_rows) == len(ARMS)
    assert len(rows) == 2 * len(ARMS) + len(teacher_rows) + len(average_rows)
    assert sorted(row["method"] for row in teacher_rows) == sorted(("remixit", "self-remixing", "surf",
                                                                    "surf-self-remixing-flow"))
    results = json.loads((bench / "results.json").read_text())
    assert results["metric"] == "psnr"
    assert set(results["summary"]) >= set(ARMS)
    assert results["summary"]["surf"]["interval_over"] == "test mixtures"
    assert (bench / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (bench / "results.md").read_text()
    assert "| 1 step | 2 steps |" in table
    assert "95% interval over test mixtures (normal approximation)" in table
    assert "network slot-unet [8, 16]" in table
    assert results["curves"]["mixit"][-1]["samples_seen"] == 320
    bench_file = json.loads((bench / "bench.json").read_text())
    assert bench_file["commands"][0].startswith("surfsep bench --data")


def test_paired_differences_match_per_file_scores(full_bench):
    bench, _ = full_bench
    results = json.loads((bench / "results.json").read_text())
    finals = {record["arm"]: record for record in records(bench) if record["final"]}
    for reference in ("supervised-flow", "mixit"):
        rows = results["paired_differences"][reference]
        others = [arm for arm in ARMS if arm != reference]
        assert sorted(rows) == sorted(others + [f"{arm}:average" for arm in others])
        for arm in others:
            row = rows[arm]
            differences = [value - other for value, other in zip(finals[arm]["per_file"], finals[reference]["per_file"])]
            mean = sum(differences) / len(differences)
            assert row["mean"] == pytest.approx(mean, abs=1e-9), (reference, arm)
            # The mean difference equals the difference of the two reported means.
            assert row["mean"] == pytest.approx(finals[arm]["test"]["psnr"] - finals[reference]["test"]["psnr"],
                                                abs=1e-3), (reference, arm)
            assert row["ci95"][0] < row["mean"] < row["ci95"][1]
            assert row["interval_over"] == "test mixtures"
    table = (bench / "results.md").read_text()
    assert "Each method minus supervised flow (clean sources)" in table
    assert "Each method minus MixIT" in table
    mixit_minus_flow = results["paired_differences"]["supervised-flow"]["mixit"]["mean"]
    assert f"| MixIT | {mixit_minus_flow:+.2f} |" in table
    averages = [value - other for value, other in zip(finals["surf"]["average"]["per_file"],
                                                      finals["supervised-flow"]["average"]["per_file"])]
    assert results["paired_differences"]["supervised-flow"]["surf:average"]["mean"] == pytest.approx(
        sum(averages) / len(averages), abs=1e-9)


def test_every_run_scores_its_weight_average(full_bench):
    bench, _ = full_bench
    finals = {record["arm"]: record for record in records(bench) if record["final"]}
    for arm, record in finals.items():
        average = record["average"]
        # Methods without a teacher save RUN/ema; an EMA teacher is the average of the others.
        assert average["model"] == ("teacher" if "teacher" in record else "ema"), arm
        if average["valid"]:
            assert average["valid"][str(average["sampler_steps"])] == max(average["valid"].values()), arm
        else:
            assert average["sampler_steps"] == 1, arm
        assert len(average["per_file"]) == 6
    table = (bench / "results.md").read_text()
    assert "| supervised flow (clean sources), EMA of its weights |" in table
    # In the main table, a row for EMA weights that are the teacher at the teacher's steps would repeat
    # the teacher row. The paired differences still list them.
    main_table = table.split("of the flows at the full budget by sampler steps")[0]
    for arm in ("remixit", "surf"):
        record = finals[arm]
        repeats = record["average"]["sampler_steps"] == record["teacher"]["sampler_steps"]
        label = {"remixit": "RemixIT", "surf": "SURF (remixit-flow)"}[arm]
        assert (f"| {label}, EMA of its weights |" in main_table) != repeats, arm


@pytest.mark.parametrize("weights", ["student", "average"])
def test_ship_script_records_weights(weights, full_bench, tmp_path):
    bench, _ = full_bench
    run = bench / "runs" / "surf-self-remixing-flow" / "seed0"
    script = Path(__file__).resolve().parent.parent / "scripts" / "ship_builtin.py"
    subprocess.run([sys.executable, str(script), str(run), "tiny", "--command", "surfsep bench ...", "--bench",
                    str(bench), "--weights", weights, "--root", str(tmp_path)], check=True, capture_output=True)
    results = sorted((bench / "results" / "surf-self-remixing-flow" / "seed0").glob("step*.json"))
    record = json.loads(results[-1].read_text())
    scored = record if weights == "student" else record["average"]
    source = run if weights == "student" else run / scored["model"]
    shipped = json.loads((tmp_path / "tiny" / "model.json").read_text())
    assert (tmp_path / "tiny" / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert shipped["builtin"]["bench_result"]["weights"] == weights
    assert shipped["builtin"]["bench_result"]["test"] == scored["test"]
    assert shipped["sampler"]["steps"] == scored["sampler_steps"]
    assert shipped["builtin"]["command"] == "surfsep bench ..."


def test_finished_benchmark_trains_nothing_again(full_bench, digits_dir):
    bench, _ = full_bench
    before = {path: path.stat().st_mtime_ns for path in (bench / "results").rglob("*.json")}
    # Without the run folders, as in a fresh clone holding only the results.
    moved = bench.parent / "runs-aside"
    shutil.move(bench / "runs", moved)
    try:
        result = run_surfsep(*bench_args(digits_dir, bench))
        assert "0 of 7 runs have stages left to train" in result.stderr
        assert not (bench / "runs").exists()
        assert {path: path.stat().st_mtime_ns for path in before} == before
    finally:
        shutil.move(moved, bench / "runs")


def test_killed_benchmark_resumes_to_the_same_scores(digits_dir, tmp_path, small_yaml):
    methods = ["mixit", "surf"]
    reference = tmp_path / "reference"
    run_surfsep(*bench_args(digits_dir, reference, methods=methods))

    bench = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "surfsep", *bench_args(digits_dir, bench, methods=methods)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((bench / "results").rglob("step*.json")) if (bench / "results").exists() else True:
        assert process.poll() is None, "the benchmark ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list((bench / "results").rglob("step*.json")))
    assert finished < 4

    result = run_surfsep(*bench_args(digits_dir, bench, methods=methods))
    assert "have stages left to train" in result.stderr
    for first, second in zip(records(reference), records(bench)):
        assert (first["arm"], first["total_steps"]) == (second["arm"], second["total_steps"])
        assert first["test"] == second["test"]


def test_parallel_jobs_give_the_same_scores(digits_dir, tmp_path):
    settings = dict(data=str(digits_dir), samples=160, methods=["supervised-flow", "mixit", "surf"], points=1,
                    sweep=[1], valid_limit=2, test_limit=4, threads=1, train=SMALL)
    serial = run_bench(BenchSettings(out=str(tmp_path / "serial"), **settings))
    parallel = run_bench(BenchSettings(out=str(tmp_path / "parallel"), jobs=2, **settings))
    for first, second in zip(serial["records"], parallel["records"]):
        assert first["test"] == second["test"]


def test_copied_runs_reach_larger_budget(digits_dir, tmp_path):
    """A benchmark seeded with the runs and stage results of a smaller budget scores as if run at once."""
    shared = dict(data=str(digits_dir), methods=["surf"], sweep=[1], valid_limit=2, test_limit=4, threads=1,
                  train=SMALL)
    # Both budgets start SURF from 5 steps of MixIT, and every stage of the smaller one is a stage of the larger.
    larger = dict(samples=640, points=4, init_fraction=0.125, **shared)
    direct = run_bench(BenchSettings(out=str(tmp_path / "direct"), **larger))
    run_bench(BenchSettings(out=str(tmp_path / "smaller"), samples=320, points=2, **shared))
    extended = tmp_path / "extended"
    for part in ("runs/mixit-start", "runs/surf", "results/surf"):
        shutil.copytree(tmp_path / "smaller" / part, extended / part)
    copied = {path.name: path.stat().st_mtime_ns for path in (extended / "results" / "surf" / "seed0").iterdir()}
    result = run_bench(BenchSettings(out=str(extended), **larger))

    assert [record["total_steps"] for record in result["records"]] == [10, 20, 30, 40]
    assert [record["final"] for record in result["records"]] == [False, False, False, True]
    for first, second in zip(direct["records"], result["records"]):
        assert first["test"] == second["test"]
    assert {name: (extended / "results" / "surf" / "seed0" / name).stat().st_mtime_ns for name in copied} == copied

    # Copied files that do not fit the settings are rejected before anything trains.
    (tmp_path / "small.yaml").write_text("channels: [8, 16]\nlog_every: 5\nbatch_size: 16\n")
    other_start = tmp_path / "other-start"
    shutil.copytree(extended / "runs" / "mixit-start", other_start / "runs" / "mixit-start")
    result = run_surfsep(*bench_args(digits_dir, other_start, "--points", "4", "--dry-run", samples=640,
                                     methods=["surf"]), check=False)
    assert result.returncode == 2
    assert "mixit-start/seed0 is a MixIT start of 5 steps, but this benchmark starts from 10 steps" in result.stderr
    odd = tmp_path / "odd"
    shutil.copytree(extended / "results", odd / "results")
    result = run_surfsep(*bench_args(digits_dir, odd, "--points", "3", samples=640, methods=["surf"]), check=False)
    assert result.returncode == 2
    assert "step0000010.json scores a step that is not a curve point of this benchmark (13, 27, 40)" in result.stderr
    assert not (odd / "bench.json").exists()


def test_methods_and_seeds_can_be_added(digits_dir, tmp_path, small_yaml):
    bench = tmp_path / "b"
    run_surfsep(*bench_args(digits_dir, bench, "--points", "1", samples=160, methods=["mixit"]))
    result = run_surfsep(*bench_args(digits_dir, bench, "--points", "1", "--seeds", "1", samples=160,
                                     methods=["supervised-regression"]))
    settings = json.loads((bench / "bench.json").read_text())["settings"]
    assert settings["methods"] == ["mixit", "supervised-regression"]
    assert settings["seeds"] == [0, 1]
    # Each method has run one of the two seeds, so neither has a full-budget row yet.
    assert "Not finished yet: supervised-regression, mixit" in result.stdout or \
        "Not finished yet: mixit, supervised-regression" in result.stdout


def test_bench_rejects_locked_folder(digits_dir, tmp_path, small_yaml):
    import fcntl

    bench = tmp_path / "b"
    run_surfsep(*bench_args(digits_dir, bench, "--points", "1", samples=160, methods=["mixit"]))
    before = {path: path.read_bytes() for path in bench.rglob("*") if path.is_file()}
    more = bench_args(digits_dir, bench, "--points", "1", samples=160, methods=["supervised-regression"])
    # This test process stands in for the other benchmark by locking the folder.
    with open(bench / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_surfsep(*more, check=False)
    assert result.returncode == 2
    assert f"another surfsep bench is running in {bench}; wait for it to finish" in result.stderr
    assert {path: path.read_bytes() for path in bench.rglob("*") if path.is_file()} == before
    # Once the lock is released, the same command adds the method.
    run_surfsep(*more)
    assert json.loads((bench / "bench.json").read_text())["settings"]["methods"] == ["mixit", "supervised-regression"]


def test_changed_budget_is_refused(digits_dir, tmp_path, small_yaml):
    bench = tmp_path / "b"
    run_surfsep(*bench_args(digits_dir, bench, "--points", "1", samples=160, methods=["mixit"]))
    result = run_surfsep(*bench_args(digits_dir, bench, "--points", "1", samples=320, methods=["mixit"]),
                         check=False)
    assert result.returncode == 2
    assert "samples (160 there, 320 now)" in result.stderr


@pytest.mark.parametrize("extra,message", [
    (["--methods", "mixit,pit"], "unknown method pit"),
    (["--samples", "16"], "gives 1 steps of batch 16, fewer than --points 2"),
    (["--init-fraction", "1.5"], "--init-fraction must be above 0 and below 1"),
    (["--seeds", "-1"], "--seeds must be 0 or more, got [-1]"),
    (["--methods", ""], "expected a comma-separated list with no empty entries"),
    (["--seeds", "0,0"], "--seeds must name distinct seeds"),
    (["--seeds", "a"], "expected a comma-separated list of int values"),
])
def test_bad_settings_are_named(extra, message, digits_dir, tmp_path, small_yaml):
    result = run_surfsep(*bench_args(digits_dir, tmp_path / "b"), *extra, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("text,message", [
    ("steps: 100\nseed: 3\n", "the benchmark sets seed, steps for every run itself"),
    ("threads: 2\n", "the benchmark sets threads for every run itself"),
])
def test_config_rejects_benchmark_settings(text, message, digits_dir, tmp_path, small_yaml):
    small_yaml.write_text(text)
    result = run_surfsep(*bench_args(digits_dir, tmp_path / "b"), check=False)
    assert result.returncode == 2
    assert message in result.stderr


def test_data_without_splits_is_refused(digits_dir, tmp_path, small_yaml):
    result = run_surfsep(*bench_args(digits_dir / "train", tmp_path / "b"), check=False)
    assert result.returncode == 2
    assert "train/mix, valid/mix, test/mix" in result.stderr
    missing = run_surfsep(*bench_args(tmp_path / "nothere", tmp_path / "b"), check=False)
    assert "data folder" in missing.stderr
    assert "not found" in missing.stderr


def test_dry_run_checks_existing_benchmark(digits_dir, tmp_path, small_yaml):
    bench = tmp_path / "b"
    run_surfsep(*bench_args(digits_dir, bench, "--points", "1", samples=160, methods=["mixit"]))
    result = run_surfsep(*bench_args(digits_dir, bench, "--points", "1", "--dry-run", samples=320,
                                     methods=["mixit"]), check=False)
    assert result.returncode == 2
    assert "samples (160 there, 320 now)" in result.stderr


def test_dry_run_prints_the_plan(digits_dir, tmp_path, small_yaml):
    result = run_surfsep(*bench_args(digits_dir, tmp_path / "b", "--dry-run", samples=640))
    plan = json.loads(result.stdout)
    assert plan["budget_steps"] == 40
    assert plan["mixit_start_steps"] == 10
    assert plan["runs"]["surf"]["stages_total_steps"] == [20, 40]
    assert plan["runs"]["surf"]["own_steps"] == [10, 30]
    assert plan["runs"]["surf"]["config"]["channels"] == [8, 16]
    assert plan["runs"]["surf"]["config"]["steps"] == 30
    # Settings left to a default appear as the values training will use.
    assert plan["runs"]["surf"]["config"]["variant"] == "remixit-flow"
    assert plan["runs"]["surf"]["config"]["network"] == "slot-unet"
    assert plan["runs"]["surf"]["config"]["mixture"] == "mean"
    assert plan["runs"]["surf"]["config"]["sampler_steps"] == 25
    assert plan["runs"]["mixit"]["config"]["sampler_steps"] == 1
    assert not (tmp_path / "b").exists()


def test_scratch_start_trains_the_whole_budget(tmp_path):
    settings = BenchSettings(data="-", out=str(tmp_path), samples=640, points=4, teacher_start="scratch",
                             train={"batch_size": 16})
    assert point_steps(settings) == [10, 20, 30, 40]
    assert stages(settings, "surf") == [(10, 10), (20, 20), (30, 30), (40, 40)]
    # From a MixIT start of 10 steps the first point is the start itself, so it is left out.
    from_mixit = dataclasses.replace(settings, teacher_start="mixit")
    assert init_steps(from_mixit) == 10
    assert stages(from_mixit, "surf") == [(20, 10), (30, 20), (40, 30)]
    assert stages(from_mixit, "mixit") == stages(settings, "mixit") == [(10, 10), (20, 20), (30, 30), (40, 40)]


def test_audio_benchmark_scores_si_sdri(tones_dir, tmp_path):
    (tmp_path / "tiny.yaml").write_text("channels: [8, 8, 16]\nbatch_size: 4\nsegment_seconds: 0.25\nlog_every: 2\n")
    result = run_surfsep("bench", "--data", str(tones_dir), "--out", str(tmp_path / "b"), "--samples", "16",
                         "--points", "1", "--sweep", "1,2", "--methods", "mixit,supervised-flow,surf",
                         "--config", str(tmp_path / "tiny.yaml"))
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["metric"] == "si_sdri"
    assert results["mixture"]["si_sdri"] == 0.0
    assert set(results["summary"]["surf"]["all_metrics"]) == {"si_sdri", "si_sdr"}
    assert "| method | SI-SDRi dB |" in result.stdout


def test_variant_runs_as_extra_method(digits_dir, tmp_path, small_yaml):
    variants = tmp_path / "variants.yaml"
    variants.write_text("surf-fast-teacher:\n  from: surf\n  ema: 0.99\n  teacher_steps: 2\n")
    bench = tmp_path / "b"
    result = run_surfsep(*bench_args(digits_dir, bench, "--points", "1", "--variants", str(variants), samples=160,
                                     methods=["surf", "surf-fast-teacher"]))
    config = json.loads((bench / "runs" / "surf-fast-teacher" / "seed0" / "config.json").read_text())
    assert config["method"] == "surf"
    assert config["ema"] == 0.99
    assert config["teacher_steps"] == 2
    assert config["init"].endswith("mixit-start/seed0")
    assert "| surf-fast-teacher: SURF (remixit-flow) with ema 0.99, teacher_steps 2 |" in result.stdout

    # A later invocation names the variant without the file; a changed definition is refused.
    again = run_surfsep(*bench_args(digits_dir, bench, "--points", "1", samples=160, methods=["surf-fast-teacher"]))
    assert "0 of 1 runs have stages left to train" in again.stderr
    variants.write_text("surf-fast-teacher:\n  from: surf\n  ema: 0.9\n")
    changed = run_surfsep(*bench_args(digits_dir, bench, "--points", "1", "--variants", str(variants), samples=160,
                                      methods=["surf-fast-teacher"]), check=False)
    assert changed.returncode == 2
    assert "variant surf-fast-teacher" in changed.stderr


def test_variant_replaces_missing_paired_reference(digits_dir, tmp_path, small_yaml):
    variants = tmp_path / "variants.yaml"
    variants.write_text("mixit-lr: {from: mixit, learning_rate: 0.002}\n")
    result = run_surfsep(*bench_args(digits_dir, tmp_path / "b", "--points", "1", "--variants", str(variants),
                                     samples=160, methods=["mixit-lr", "supervised-regression"]))
    differences = json.loads((tmp_path / "b" / "results.json").read_text())["paired_differences"]
    assert list(differences) == ["mixit-lr"]
    assert list(differences["mixit-lr"]) == ["supervised-regression", "supervised-regression:average"]
    assert "Each method minus mixit-lr: MixIT with learning_rate 0.002:" in result.stdout


@pytest.mark.parametrize("text,message", [
    ("v:\n  from: surf\n  batch_size: 8\n", "variant v sets batch_size, which every method of a benchmark shares"),
    ("v:\n  from: pit\n  ema: 0.9\n", "variant v must name the method it changes with from:"),
    ("surf:\n  from: surf\n", "variant surf has the name of a built-in method"),
    ("v:\n  from: surf\n  emma: 0.9\n", "variant v sets unknown settings: emma"),
    ("v:\n  from: surf\n  ema: fast\n", "ema must be a number, got 'fast'"),
])
def test_bad_variants_are_named(text, message, digits_dir, tmp_path, small_yaml):
    (tmp_path / "variants.yaml").write_text(text)
    result = run_surfsep(*bench_args(digits_dir, tmp_path / "b", "--variants", str(tmp_path / "variants.yaml")),
                         check=False)
    assert result.returncode == 2
    assert message in result.stderr


def test_each_run_logs_to_own_tensorboard_folder(digits_dir, tmp_path, small_yaml):
    small_yaml.write_text(small_yaml.read_text() + f"tensorboard: {tmp_path / 'tb'}\n")
    result = run_surfsep(*bench_args(digits_dir, tmp_path / "b", "--dry-run", samples=640))
    plan = json.loads(result.stdout)
    assert plan["runs"]["surf"]["config"]["tensorboard"] == str(tmp_path / "tb" / "surf-seed0")
    assert plan["runs"]["mixit"]["config"]["tensorboard"] == str(tmp_path / "tb" / "mixit-seed0")


def test_sigterm_stops_parallel_workers(digits_dir, tmp_path, small_yaml):
    """SIGTERM to the bench process alone stops its workers too, each with a checkpoint."""
    bench = tmp_path / "b"
    methods = ["supervised-flow", "supervised-regression"]
    process = subprocess.Popen([sys.executable, "-m", "surfsep",
                                *bench_args(digits_dir, bench, "--jobs", "2", "--threads", "1",
                                            samples=160000, methods=methods)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    logs = [bench / "runs" / method / "seed0" / "log.txt" for method in methods]
    try:
        deadline = time.monotonic() + 120
        while not all(log.exists() and " step " in log.read_text() for log in logs):
            assert process.poll() is None, "the benchmark ended before it could be stopped"
            assert time.monotonic() < deadline
            time.sleep(0.1)

        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            # The workers share the benchmark's new session, so this also ends any that outlived it.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    assert process.returncode != 0
    for method in methods:
        assert (bench / "runs" / method / "seed0" / "state.safetensors").exists(), method
        assert "interrupted at step" in (bench / "runs" / method / "seed0" / "log.txt").read_text(), method
