"""The ``surfsep`` command line: data, train, separate, evaluate, bench, demo and report."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from surfsep import __version__, interrupt, progress
from surfsep.config import FLOAT_FIELDS, INTEGER_FIELDS, TrainConfig, config_fields, load_yaml_overrides
from surfsep.bench import ARMS as BENCH_ARMS
from surfsep.methods import METHODS, SURF_VARIANTS
from surfsep.networks import NETWORKS

logger = logging.getLogger("surfsep")

# Exit statuses: 0 success, 2 an error that stopped the command, 3 a separation that skipped bad
# inputs (--skip-bad), 130 interrupted.
EXIT_ERROR = 2
EXIT_SKIPPED = 3

TRAIN_HELP = {
    "method": "training method: surf, mixit, remixit, self-remixing, supervised-flow or supervised-regression",
    "variant": "SURF loss: remixit-flow (default) or self-remixing-flow",
    "data": "training data: a folder of mixture PNGs or recordings (WAV, FLAC, OGG, MP3), or a split folder "
            "with mix/ (and s1/ ... sK/ for supervised methods); required, here or in --config (no default)",
    "out": "run folder for the model, checkpoints and logs; an existing run there is resumed; required, here or "
           "in --config (no default)",
    "sources": "number of sources K per mixture",
    "mixture": "how the mixture files relate to their sources: 'mean' or 'sum' "
               "(default: mean for images, as in the built-in image sets; sum for audio)",
    "sample_rate": "audio only: rate in Hz that the model runs at; files at other rates are resampled "
                   "(default: the rate of the training files)",
    "segment_seconds": "audio only: length in seconds of the random crops trained on (default: 2.0)",
    "steps": "number of optimiser steps to train for",
    "batch_size": "mixtures per optimiser step",
    "learning_rate": "AdamW learning rate after warm-up",
    "warmup_steps": "steps of linear learning-rate warm-up",
    "grad_clip": "maximum gradient norm",
    "sigma": "standard deviation of the start-point noise, in units of the source values",
    "t_zero_fraction": "flow methods: fraction of each batch trained at t = 0, where the flow loss is the one-step "
                       "regression loss; the rest draw t uniformly from [0, 1)",
    "ema": "EMA rate a per update: teacher <- a * teacher + (1 - a) * student; methods without a teacher "
           "keep that average of the student's weights every step and save it in RUN/ema",
    "teacher_steps": "Euler steps of the teacher's separation (1 = one-step estimate)",
    "teacher_steps_start": "training step from which the teacher separates in --teacher-steps steps; before it, "
                           "in one step (0 = from the start). A run may continue with other teacher steps from its last "
                           "checkpoint on",
    "teacher_update": "how the teacher follows the student: 'ema' (the --ema rate) or 'replace' (a copy of the student)",
    "teacher_every": "optimiser steps between teacher updates; 0 = once per epoch of the training data (with "
                     "'ema' the --ema rate then applies once per epoch, so choose a much lower rate, such as 0.5)",
    "teacher_reuse": "number of optimiser steps N that one teacher separation serves: the batch and its "
                     "estimates are kept and remixed with a new shuffle at each step, so the teacher runs "
                     "once per N steps (1 = a new batch and separation every step)",
    "teacher_start": "where teacher and student start: 'init' (the --init model) or 'scratch' (random weights)",
    "shuffle": "remix shuffle: 'constrained' (no two rows of one mixture meet again) or 'free'",
    "init": "model or run folder to start from; surf, remixit and self-remixing need one (a mixit run) "
            "unless --teacher-start scratch (default: none, random weights)",
    "network": "network architecture (default: slot-unet for images, slot-tasnet for audio)",
    "channels": "network widths: for slot-unet one per resolution level (default 16 32 64); for slot-tasnet "
                "the filterbank, bottleneck and hidden widths (default 64 64 128)",
    "sampler_steps": "default sampler steps stored with the model (default: 1 for one-step methods, 25 for flows)",
    "seed": "seed of all training randomness",
    "checkpoint_every": "steps between checkpoints (the run resumes from the last one)",
    "log_every": "steps between status lines",
    "valid": "split folder with references to score the model on while training, for monitoring only "
             "(default: none, no validation)",
    "valid_every": "steps between validations (0 = never)",
    "valid_limit": "maximum number of validation mixtures",
    "tensorboard": "folder for TensorBoard event files of the training loss, learning rate, gradient norm and "
                   "validation scores, at every status line; needs pip install tensorboardX "
                   "(default: none, no TensorBoard logging)",
    "threads": "PyTorch CPU threads (default: PyTorch's choice)",
    "device": "where training runs: cpu, cuda or cuda:N; under torchrun, cuda gives each process the GPU of its "
              "local rank",
    "precision": "fp32, or bf16 for autocast to bfloat16 (default: bf16 on cuda, fp32 on cpu)",
}


TRAIN_CHOICES = {
    "method": list(METHODS),
    "variant": list(SURF_VARIANTS),
    "network": sorted(NETWORKS),
    "shuffle": ["constrained", "free"],
    "precision": ["fp32", "bf16"],
    "teacher_update": ["ema", "replace"],
    "teacher_start": ["init", "scratch"],
    "mixture": ["mean", "sum"],
}
DATA_SETS = {
    "digits": "two-digit MNIST image mixtures",
    "fashion": "two-garment Fashion-MNIST image mixtures; needs apt-get install dataset-fashion-mnist",
    "speech": "synthetic two-speaker English speech, 8 kHz (needs pip install surfsep[speech])",
    "realspeech": "real recorded voices from Debian's asterisk-core-sounds-*-wav packages, 8 kHz",
}


def comma_list(kind):
    """Return an argparse type that reads a comma-separated list of ``kind`` values."""

    def parse(text: str) -> list:
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list with no empty entries, got {text!r}")
        try:
            return [kind(item) for item in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__} values, got {text!r}")

    return parse


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per TrainConfig field. Flags default to None so that only given flags override."""
    parser.add_argument("--config", type=Path,
                        help="YAML file of settings; flags given on the command line win (default: none)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved settings as JSON and exit")
    defaults = TrainConfig()
    for name in config_fields():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        help_text = TRAIN_HELP[name] + (f" (default: {default})" if default not in (None, "", []) else "")
        if name == "channels":
            parser.add_argument(flag, type=int, nargs="+", default=None, help=help_text)
        elif name in INTEGER_FIELDS:
            parser.add_argument(flag, type=int, default=None, help=help_text)
        elif name in FLOAT_FIELDS:
            parser.add_argument(flag, type=float, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=str, default=None, choices=TRAIN_CHOICES.get(name), help=help_text)


def resolve_train_config(args: argparse.Namespace) -> TrainConfig:
    """Build the config from the defaults, then the YAML file, then the flags given on the command line."""
    values = {}
    if args.config:
        values.update(load_yaml_overrides(args.config))
    for name in config_fields():
        flag_value = getattr(args, name, None)
        if flag_value is not None:
            values[name] = flag_value
    return TrainConfig(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surfsep", description="Learn to separate sources from mixtures alone with a flow-matching separator."
    )
    parser.add_argument("--version", action="version", version=f"surfsep {__version__}")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    # Also accepted after the sub-command; SUPPRESS keeps a --quiet given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="log warnings and errors only")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_command(name: str, **kwargs) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], **kwargs)

    data = add_command("data", help="write a built-in data set in the mix/ s1/ s2/ layout")
    data.add_argument("name", choices=list(DATA_SETS),
                      help="data set: " + "; ".join(f"{name} ({text})" for name, text in DATA_SETS.items()))
    data.add_argument("--out", type=Path, required=True, help="new folder to write train/, valid/ and test/ into")
    data.add_argument("--scale", type=float, default=1.0,
                      help="multiply every split's mixture count (default: 1.0; smaller for quick trials)")
    data.add_argument("--sample-rate", type=int, default=8000, help="speech only: sample rate in Hz, 8000 or 16000 "
                      "(default: 8000)")
    data.add_argument("--seed", type=int, default=0, help="speech and realspeech: seed of the draw (default: 0)")
    data.add_argument("--no-system-voices", action="store_true",
                      help="speech only: use the bundled espeak-ng voices alone, even where Debian's espeak-ng, flite "
                           "and festival voices are installed, so the set is the same on every machine")

    train = add_command("train", help="train a separator")
    add_train_arguments(train)

    separate = add_command("separate", help="separate mixture files (PNG or audio) into one file per source")
    separate.add_argument("model", type=Path,
                          help="run or model folder written by `surfsep train`, or a built-in model: builtin:digits")
    separate.add_argument("inputs", type=Path, nargs="+",
                          help="mixture files (PNG for image models; WAV, FLAC, OGG or MP3 for audio models) or folders")
    separate.add_argument("--out", type=Path, required=True, help="folder for s1/ ... sK/ outputs")
    separate.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    separate.add_argument("--seed", type=int, default=0, help="seed of the sampler noise (default: 0)")
    separate.add_argument("--device", default="cpu",
                          help="where the network runs: cpu, cuda or cuda:N (default: cpu)")
    separate.add_argument("--bit-depth", type=int, choices=[8, 16], default=16,
                          help="images: bits per pixel of the output PNGs (default: 16)")
    separate.add_argument("--format", choices=["wav", "flac"], help="audio: output file format (default: wav)")
    separate.add_argument("--subtype", choices=["PCM_16", "PCM_24", "FLOAT"],
                          help="audio: sample format of the outputs; FLOAT is WAV only (default: PCM_16)")
    separate.add_argument("--split-channels", action="store_true",
                          help="audio: separate every channel on its own (default: downmix to mono first)")
    separate.add_argument("--chunk-seconds", type=float,
                          help="audio: length of the chunks separated at once, in seconds (default: 4.0)")
    separate.add_argument("--overlap-seconds", type=float,
                          help="audio: overlap between neighbouring chunks, in seconds (default: 1.0)")
    separate.add_argument("--batch-chunks", type=int, help="audio: chunks per network call (default: 8)")
    separate.add_argument("--overwrite", action="store_true", help="replace existing output files")
    separate.add_argument("--skip-bad", action="store_true",
                          help="report and skip inputs that cannot be separated, separate the rest, and exit with "
                               f"status {EXIT_SKIPPED} if any was skipped (default: stop before writing anything)")

    evaluate = add_command("evaluate", help="score a model against references (images: PSNR, SSIM; audio: SI-SDR, "
                                            "SI-SDRi, SDR, SIR, SAR)")
    evaluate.add_argument("model", type=Path,
                          help="run or model folder written by `surfsep train`, or a built-in model: builtin:digits")
    evaluate.add_argument("--data", type=Path, required=True, help="split folder with mix/ and s1/ ... sK/")
    evaluate.add_argument("--out", type=Path, required=True, help="folder for per_file.csv and summary.json")
    evaluate.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the sampler noise (default: 0)")
    evaluate.add_argument("--limit", type=int, help="score only the first N mixtures (default: all)")
    evaluate.add_argument("--perceptual", action="store_true",
                          help="audio: add PESQ and STOI (needs pip install surfsep[quality])")
    evaluate.add_argument("--overwrite", action="store_true", help="replace existing results")

    bench = add_command("bench", help="train chosen methods on one data set with one budget and compare them")
    bench.add_argument("--data", type=Path, required=True,
                       help="data set folder with train/, valid/ and test/ splits, each with mix/ and s1/ ... sK/")
    bench.add_argument("--out", type=Path, required=True,
                       help="benchmark folder; a benchmark already there is continued without redoing finished stages")
    bench.add_argument("--samples", type=int, required=True,
                       help="training budget of every method, in mixtures seen (steps x batch size)")
    bench.add_argument("--methods", type=comma_list(str), default=None,
                       help="comma-separated methods (default: all of " + ", ".join(BENCH_ARMS) + ")")
    bench.add_argument("--seeds", type=comma_list(int), default=[0], help="comma-separated training seeds (default: 0)")
    bench.add_argument("--points", type=int, default=4,
                       help="evenly spaced budgets at which each run is scored on test/ for the curve (default: 4)")
    bench.add_argument("--init-fraction", type=float, default=0.25,
                       help="share of the budget, above 0 and below 1, that the teacher methods spend as the MixIT "
                            "run they start from (default: 0.25)")
    bench.add_argument("--teacher-start", choices=["mixit", "scratch"], default="mixit",
                       help="start of remixit, self-remixing and SURF: a MixIT model or random weights "
                            "(default: mixit)")
    bench.add_argument("--sweep", type=comma_list(int), default=[1, 2, 5, 10, 25],
                       help="sampler steps tried on valid/ for the flows and reported on test/ (default: 1,2,5,10,25)")
    bench.add_argument("--valid-limit", type=int, default=250,
                       help="valid/ mixtures used to choose the sampler steps (default: 250)")
    bench.add_argument("--test-limit", type=int, help="score only the first N test mixtures (default: all)")
    bench.add_argument("--jobs", type=int, default=1,
                       help="training runs at once, each in its own process (default: 1)")
    bench.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads per run (default: 1)")
    bench.add_argument("--batch-size", type=int,
                       help="mixtures per optimiser step (default: 64, or the --config value)")
    bench.add_argument("--config", type=Path,
                       help="YAML file of training settings shared by every run, as for train; the benchmark sets "
                            "method, variant, seed, steps, data, out, init, valid, teacher_start and threads itself "
                            "(default: none)")
    bench.add_argument("--variants", type=Path,
                       help="YAML file of method variants, NAME: {from: METHOD, SETTING: VALUE}, such as a SURF with "
                            "another EMA rate; they run as extra methods under NAME (default: none)")
    bench.add_argument("--dry-run", action="store_true", help="print the plan of runs as JSON and exit")

    demo = add_command("demo", help="build a built-in data set, train MixIT, SURF and a supervised flow, compare them")
    demo.add_argument("name", nargs="?", choices=["digits", "speech"], default="digits",
                      help="data set of the demo (default: digits)")
    demo.add_argument("--out", type=Path,
                      help="demo folder, resumed when it exists (default: runs/demo, or runs/demo-speech for speech)")
    demo.add_argument("--scale", type=float, default=1.0,
                      help="factor on every training budget, 0.1 for a quick look (default: 1.0)")
    demo.add_argument("--data-scale", type=float, default=1.0,
                      help="multiply the data set's mixture counts when it is first written (default: 1.0; for quick trials)")
    demo.add_argument("--threads", type=int, help="PyTorch CPU threads (default: PyTorch's choice)")

    report = add_command("report", help="write one self-contained HTML page of a run, benchmark or demo: scores, "
                                        "curves, separated examples to view or play, configuration")
    report.add_argument("folder", type=Path, help="run folder (surfsep train), benchmark folder (surfsep bench) or "
                                                  "demo folder (surfsep demo)")
    report.add_argument("--out", type=Path, help="HTML file to write (default: FOLDER/report.html); an existing "
                                                 "file is replaced only if it is a surfsep report")
    report.add_argument("--examples", type=int,
                        help="number of test mixtures to show separated (default: 8 images or 4 recordings)")
    report.add_argument("--mixtures", type=comma_list(str),
                        help="comma-separated names of the mixtures to show, paths under the mixture folder such as "
                             "00003.wav,00017.wav (default: the first --examples)")
    report.add_argument("--data", type=Path, help="runs only: where to take the examples from, a split folder with "
                                                  "mix/ and s1/ ... sK/ (scored) or a folder of mixtures (not scored) "
                                                  "(default: the run's validation split)")
    report.add_argument("--steps", type=int, help="runs only: sampler steps of the flows (default: the model's)")
    report.add_argument("--seed", type=int, default=0, help="seed of the sampler noise (default: 0)")
    return parser


def configure_logging(quiet: bool, prefix: str = "") -> None:
    """Send the package's log to stderr; ``prefix`` marks the lines of one benchmark worker.

    Progress bars are drawn when stderr is a terminal, unless ``quiet`` or in a benchmark worker,
    whose lines would mix with the other workers'.
    """
    progress.bars_enabled = not quiet and not prefix and sys.stderr.isatty()
    handler = progress.BarAwareHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(message)s", "%H:%M:%S"))
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def build_data_set(args: argparse.Namespace) -> dict:
    if args.name == "digits":
        from surfsep.data.digits import build_digits

        return build_digits(args.out, scale=args.scale)
    if args.name == "fashion":
        from surfsep.data.fashion import build_fashion

        return build_fashion(args.out, scale=args.scale)
    if args.name == "speech":
        from surfsep.data.speech import build_speech

        return build_speech(args.out, sample_rate=args.sample_rate, scale=args.scale, seed=args.seed,
                            system_voices=not args.no_system_voices)
    from surfsep.data.realspeech import build_realspeech

    return build_realspeech(args.out, scale=args.scale, seed=args.seed)


def run_command(args: argparse.Namespace) -> int:
    if args.command == "data":
        if args.scale <= 0:
            raise ValueError(f"--scale must be positive, got {args.scale}")
        description = build_data_set(args)
        counts = ", ".join(f"{split} {info['mixtures']}" for split, info in description["splits"].items())
        logger.info("wrote %s to %s: %s mixtures", args.name, args.out, counts)
    elif args.command == "train":
        from surfsep.config import validate_config
        from surfsep.train import resolve_defaults, train

        config = resolve_train_config(args)
        if args.dry_run:
            validate_config(config)
            print(json.dumps(resolve_defaults(config).to_dict(), indent=1))
            return 0
        train(config)
    elif args.command == "separate":
        from surfsep.separate import separate_files

        audio_options = {
            "output_format": args.format, "subtype": args.subtype, "chunk_seconds": args.chunk_seconds,
            "overlap_seconds": args.overlap_seconds, "batch_chunks": args.batch_chunks,
            "channels": "split" if args.split_channels else None,
        }
        audio_options = {name: value for name, value in audio_options.items() if value is not None}
        result = separate_files(args.model, args.inputs, args.out, steps=args.steps, seed=args.seed,
                                overwrite=args.overwrite, bit_depth=args.bit_depth, skip_bad=args.skip_bad,
                                device=args.device, **audio_options)
        logger.info("wrote %d files to %s", len(result.written), args.out)
        if result.skipped:
            logger.error("skipped %d input(s) that could not be separated:\n%s", len(result.skipped),
                         "\n".join(f"  {reason}" for _, reason in result.skipped))
            return EXIT_SKIPPED
    elif args.command == "evaluate":
        from surfsep.evaluate import evaluate_model

        evaluate_model(args.model, args.data, args.out, steps=args.steps, seed=args.seed, overwrite=args.overwrite,
                       perceptual=args.perceptual, limit=args.limit)
    elif args.command == "bench":
        from surfsep.bench import (
            BenchSettings, check_existing_files, check_saved_settings, check_settings, plan, read_train_overrides,
            read_variants, run_bench, with_saved_variants,
        )

        variants = read_variants(args.variants)
        settings = BenchSettings(
            data=str(args.data), out=str(args.out), samples=args.samples,
            methods=args.methods or [*BENCH_ARMS, *variants], variants=variants,
            seeds=args.seeds, points=args.points, init_fraction=args.init_fraction, teacher_start=args.teacher_start,
            sweep=args.sweep, valid_limit=args.valid_limit, test_limit=args.test_limit, jobs=args.jobs,
            threads=args.threads, train=read_train_overrides(args.config, {"batch_size": args.batch_size}),
        )
        settings = with_saved_variants(settings)
        if args.dry_run:
            check_settings(settings)
            check_saved_settings(settings)
            check_existing_files(settings)
            print(json.dumps(plan(settings), indent=1))
            return 0
        results = run_bench(settings, command="surfsep " + " ".join(sys.argv[1:]), quiet=args.quiet)
        print(results["table"])
    elif args.command == "demo":
        if args.name == "speech":
            from surfsep.demo_speech import run_speech_demo

            out = args.out or Path("runs/demo-speech")
            results = run_speech_demo(out, scale=args.scale, threads=args.threads, data_scale=args.data_scale)
            print(results["table"])
            print("(SURF's training seconds include the MixIT run it starts from.)")
            print(f"results: {out / 'results.json'}, separated examples: {results['examples']}")
            return 0
        from surfsep.demo import run_demo

        out = args.out or Path("runs/demo")
        results = run_demo(out, scale=args.scale, threads=args.threads, data_scale=args.data_scale)
        print(results["table"])
        print("(SURF's training seconds include the MixIT run it starts from.)")
        print(f"results: {out / 'results.json'}, pictures: {results['grid']}")
    elif args.command == "report":
        from surfsep.report import write_report

        print(write_report(args.folder, out=args.out, data=args.data, examples=args.examples, steps=args.steps,
                           seed=args.seed, mixtures=args.mixtures))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.quiet)
    # SIGTERM stops a command the way Ctrl-C does, so temporary output files are removed.
    signal.signal(signal.SIGTERM, interrupt.on_sigterm)
    from surfsep.data.images import DataError
    from surfsep.data.speech import SynthesisError
    from surfsep.distributed import finish, launched_world
    from surfsep.models import ModelError
    from surfsep.train import TrainingError

    try:
        status = run_command(args)
    except (DataError, ModelError, TrainingError, SynthesisError, FileExistsError, ValueError) as error:
        logger.error("error: %s", error)
        status = EXIT_ERROR
    except KeyboardInterrupt:
        logger.error("interrupted")
        status = 130
    except Exception:
        if args.command == "train" and launched_world() > 1:
            logger.exception("training failed")
            finish(1)
        raise
    if args.command == "train" and launched_world() > 1:
        finish(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
