"""The built-in ``realspeech`` data set: mixtures of two real recorded speakers, at 8 kHz.

The recordings are the telephone prompts of Debian's Asterisk sound packages
(``asterisk-core-sounds-{en,es,fr,it,ru}-wav``, upstream release 1.6.1), mono 16-bit WAV at
8 kHz, installed under ``/usr/share/asterisk/sounds``. Their speakers, after the packages'
copyright files and folder names:

======================  ========  ============================================  =====
prompt folder           speaker   credited in /usr/share/doc/.../copyright      split
======================  ========  ============================================  =====
en_US_f_Allison         allison   Allison Smith (files ``*``)                   train
es_MX_f_Allison         allison   Allison Smith (files ``*``)                   train
fr_CA_f_June            june      June Wallack (files ``fr-*``)                 train
it_IT_m_Carlo           carlo     Carlo Flora (files ``it-*``)                  test
ru_RU_f_IvrvoiceRU      ivrvoice  provided by Maxim Topal, ivrvoice.ru          test
======================  ========  ============================================  =====

So the five prompt sets contain four speakers, and the English and Spanish sets share one. The
median F0 of 60 random prompts per set (a YIN estimator with threshold 0.15) is about 205 Hz
(en), 216 Hz (es), 211 Hz (fr), 190 Hz (it) and 235 Hz (ru). Pitch alone does not tell these
speakers apart, so the split follows the credits. Within each set the histogram of per-prompt
median F0 has one cluster, so nothing suggests a second speaker inside a set.
NOTE: the Italian set is credited to Carlo Flora and its folder is tagged male, but its frame F0
(10th to 90th percentile 148 to 235 Hz) is high for a male voice, so the audio could not confirm
the speaker.

Splits: train pairs allison with june, and test pairs carlo with the Russian speaker, so train
and test share no speaker. With four speakers there are none left for valid, so valid pairs
allison with june as train does, on prompts held out of train (``VALID_FRACTION`` of each of
their prompt sets, drawn once with ``HOLDOUT_SEED``). So valid shares train's speakers but no
recording, and shares nothing with test.

Each source is a run of prompts of one prompt set, trimmed of silence and joined with short
pauses until it reaches the mixture's length, drawn uniformly from ``LENGTH_SECONDS``; both
sources are cut to that length, so both speakers talk throughout. Levels, peak limiting and
the exact ``mix == s1 + s2`` sum are those of the ``speech`` set (``surfsep.data.speech``).
Prompts whose package description marks them as tones or sounds (``NON_SPEECH_PROMPTS``) and the
``silence/`` folder are left out.

Size at scale 1: 2000 train, 200 valid and 300 test mixtures (median 3.7 s), about 2.6 hours and
0.43 GB; building it took 34 s on 2 shared CPU cores. Train reuses each prompt several times
(allison's train prompts last about 42 minutes and june's 20, against 2.1 hours per source slot).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from surfsep.data.images import DataError
from surfsep.data.speech import (
    LEVEL_DBFS, MAX_SECONDS, PEAK_LIMIT, RELATIVE_LEVEL_DB, check_build_arguments, mix_pair, publish,
    trim_silence, write_wav,
)

logger = logging.getLogger(__name__)

SOUNDS_FOLDER = Path("/usr/share/asterisk/sounds")
SAMPLE_RATE = 8000
# (split, mixtures at scale 1)
REALSPEECH_SPLITS = (("train", 2000), ("valid", 200), ("test", 300))
LENGTH_SECONDS = (2.5, MAX_SECONDS)
PAUSE_SECONDS = (0.05, 0.25)
# Prompts shorter than this after trimming are clicks or single letters cut short.
MIN_PROMPT_SECONDS = 0.3
VALID_FRACTION = 0.15
HOLDOUT_SEED = 20261
# Beeps, tones and the monkey recording after the packages' core-sounds-*.txt descriptions; en's
# vm-intro is described as ending in a tone.
NON_SPEECH_PROMPTS = (
    "beep", "beeperr", "ascending-2tone", "descending-2tone", "confbridge-join", "confbridge-leave",
    "tt-monkeys", "vm-intro",
)


@dataclass(frozen=True)
class PromptSet:
    """One language's prompt folder, the Debian package that installs it and its speaker."""

    folder: str
    language: str
    package: str
    speaker: str
    credit: str


PROMPT_SETS = (
    PromptSet("en_US_f_Allison", "en", "asterisk-core-sounds-en-wav", "allison", "Allison Smith"),
    PromptSet("es_MX_f_Allison", "es", "asterisk-core-sounds-es-wav", "allison", "Allison Smith"),
    PromptSet("fr_CA_f_June", "fr", "asterisk-core-sounds-fr-wav", "june", "June Wallack"),
    PromptSet("it_IT_m_Carlo", "it", "asterisk-core-sounds-it-wav", "carlo", "Carlo Flora"),
    PromptSet("ru_RU_f_IvrvoiceRU", "ru", "asterisk-core-sounds-ru-wav", "ivrvoice",
              "provided by Maxim Topal, ivrvoice.ru; the speaker is not named"),
)
SPEAKER_SPLITS = {"allison": "train", "june": "train", "carlo": "test", "ivrvoice": "test"}
# The speakers whose prompts each split uses; valid uses prompts held out of train.
SPLIT_SPEAKERS = {"train": ("allison", "june"), "valid": ("allison", "june"), "test": ("carlo", "ivrvoice")}


def prompt_files(prompt_set: PromptSet) -> list[Path]:
    """List a prompt set's speech prompts (relative paths, sorted), without tones and silence."""
    root = SOUNDS_FOLDER / prompt_set.folder
    files = []
    for path in sorted(root.rglob("*.wav")):
        relative = path.relative_to(root)
        if relative.parts[0] == "silence" or relative.stem in NON_SPEECH_PROMPTS:
            continue
        files.append(relative)
    return files


def realspeech_available() -> bool:
    """Check whether every prompt folder of ``PROMPT_SETS`` is installed and contains WAV files."""
    return all(any((SOUNDS_FOLDER / prompt_set.folder).glob("*.wav")) for prompt_set in PROMPT_SETS)


def check_installed() -> None:
    missing = [s.package for s in PROMPT_SETS if not any((SOUNDS_FOLDER / s.folder).glob("*.wav"))]
    if missing:
        raise DataError(
            f"the realspeech data set needs Debian's Asterisk prompt packages, and {SOUNDS_FOLDER} lacks "
            f"the prompts of {', '.join(missing)}; install them with: "
            f"apt-get install {' '.join(s.package for s in PROMPT_SETS)}"
        )


def split_prompts() -> dict[str, dict[PromptSet, list[Path]]]:
    """Return the prompts of each split by prompt set; valid holds out ``VALID_FRACTION`` of train's."""
    rng = np.random.default_rng(HOLDOUT_SEED)
    splits: dict[str, dict[PromptSet, list[Path]]] = {"train": {}, "valid": {}, "test": {}}
    for prompt_set in PROMPT_SETS:
        files = prompt_files(prompt_set)
        if SPEAKER_SPLITS[prompt_set.speaker] == "test":
            splits["test"][prompt_set] = files
            continue
        held_out = set(rng.choice(len(files), size=int(round(VALID_FRACTION * len(files))), replace=False).tolist())
        splits["valid"][prompt_set] = [path for index, path in enumerate(files) if index in held_out]
        splits["train"][prompt_set] = [path for index, path in enumerate(files) if index not in held_out]
    return splits


class PromptReader:
    """Cache of trimmed prompts, each read from disk once per build."""

    def __init__(self) -> None:
        self.trimmed: dict[tuple[str, Path], np.ndarray] = {}

    def read(self, prompt_set: PromptSet, relative: Path) -> np.ndarray:
        key = (prompt_set.folder, relative)
        if key not in self.trimmed:
            path = SOUNDS_FOLDER / prompt_set.folder / relative
            try:
                samples, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
            except (RuntimeError, OSError) as error:
                raise DataError(f"cannot read prompt {path} ({error}); reinstall {prompt_set.package}") from error
            if rate != SAMPLE_RATE:
                raise DataError(f"prompt {path} is sampled at {rate} Hz, not {SAMPLE_RATE}; reinstall {prompt_set.package}")
            # float32 holds 16-bit samples exactly and halves the memory of the cache.
            self.trimmed[key] = trim_silence(samples.mean(axis=1), SAMPLE_RATE).astype(np.float32)
        return self.trimmed[key]


def draw_source(prompt_sets: dict[PromptSet, list[Path]], speaker: str, length: int, reader: PromptReader,
                rng: np.random.Generator) -> tuple[np.ndarray, PromptSet, list[str]]:
    """Join random prompts of one of ``speaker``'s prompt sets, with pauses, to ``length`` samples."""
    own = [prompt_set for prompt_set in prompt_sets if prompt_set.speaker == speaker]
    sizes = np.array([len(prompt_sets[prompt_set]) for prompt_set in own], dtype=np.float64)
    prompt_set = own[int(rng.choice(len(own), p=sizes / sizes.sum()))]
    files = prompt_sets[prompt_set]

    pieces, used, total = [], [], 0
    for index in rng.permutation(len(files)):
        prompt = reader.read(prompt_set, files[index])
        if len(prompt) < MIN_PROMPT_SECONDS * SAMPLE_RATE:
            continue
        if pieces:
            pause = np.zeros(int(rng.uniform(*PAUSE_SECONDS) * SAMPLE_RATE))
            pieces.append(pause)
            total += len(pause)
        pieces.append(prompt)
        used.append(files[index].as_posix())
        total += len(prompt)
        if total >= length:
            return np.concatenate(pieces)[:length].astype(np.float64), prompt_set, used
    raise DataError(f"the prompts of {prompt_set.folder} add up to less than {length / SAMPLE_RATE:.1f} s")


def build_realspeech(out: Path, scale: float = 1.0, seed: int = 0) -> dict:
    """Write the realspeech data set to ``out`` (which must not exist or be empty); returns its description.

    ``scale`` multiplies every split's mixture count (at least 2 per split), for quick tests.
    """
    out = Path(out)
    check_build_arguments(out, None, scale, seed)
    check_installed()
    prompts = split_prompts()
    reader = PromptReader()

    partial = out.parent / f".{out.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    description = {
        "name": "realspeech",
        "modality": "audio",
        "sources": 2,
        "mixture": "sum",
        "sample_rate": SAMPLE_RATE,
        "subtype": "PCM_16",
        "seed": seed,
        "scale": scale,
        "length_seconds": list(LENGTH_SECONDS),
        "level_dbfs": list(LEVEL_DBFS),
        "relative_level_db": [-RELATIVE_LEVEL_DB, RELATIVE_LEVEL_DB],
        "peak_limit": PEAK_LIMIT,
        "source": "Debian asterisk-core-sounds-{en,es,fr,it,ru}-wav, CC-BY-SA-3.0 (en, es, fr) and CC-BY-3.0 (it, ru)",
        "prompt_sets": [
            {"folder": s.folder, "language": s.language, "package": s.package, "speaker": s.speaker,
             "credit": s.credit, "split": SPEAKER_SPLITS[s.speaker]}
            for s in PROMPT_SETS
        ],
        "speaker_splits": SPEAKER_SPLITS,
        "splits": {},
    }

    for split_index, (split, mixture_count) in enumerate(REALSPEECH_SPLITS):
        count = max(2, int(round(mixture_count * scale)))
        rng = np.random.default_rng([seed, split_index])
        items = []
        for index in range(count):
            items.append(write_real_mixture(partial / split, f"{index:05d}.wav", prompts[split],
                                            SPLIT_SPEAKERS[split], reader, rng))
            if (index + 1) % 200 == 0 or index + 1 == count:
                logger.info("realspeech: wrote %d of %d %s mixtures", index + 1, count, split)
        description["splits"][split] = {
            "mixtures": count,
            "speakers": list(SPLIT_SPEAKERS[split]),
            "prompts": {s.folder: [path.as_posix() for path in paths] for s, paths in prompts[split].items()},
            "seconds": round(sum(item["frames"] for item in items) / SAMPLE_RATE, 2),
            "items": items,
        }

    publish(partial, out, description)
    return description


def write_real_mixture(folder: Path, name: str, prompt_sets: dict[PromptSet, list[Path]], speakers: tuple[str, str],
                       reader: PromptReader, rng: np.random.Generator) -> dict:
    """Draw, mix and write one mixture of ``speakers`` in random order; returns its ``dataset.json`` entry."""
    length = int(rng.uniform(*LENGTH_SECONDS) * SAMPLE_RATE)
    order = rng.permutation(2)
    sources = [draw_source(prompt_sets, speakers[slot], length, reader, rng) for slot in order]
    level = float(rng.uniform(*LEVEL_DBFS))
    relative = float(rng.uniform(-RELATIVE_LEVEL_DB, RELATIVE_LEVEL_DB))
    source_1, source_2, mixture, limiter_db = mix_pair(sources[0][0], sources[1][0], SAMPLE_RATE, level, relative)

    for slot, ((_, prompt_set, used), samples) in enumerate(zip(sources, (source_1, source_2)), start=1):
        tags = {"title": " ".join(used), "artist": prompt_set.speaker, "comment": f"prompt set {prompt_set.folder}"}
        write_wav(folder / f"s{slot}" / name, samples, SAMPLE_RATE, tags)
    pair = " + ".join(source[1].speaker for source in sources)
    write_wav(folder / "mix" / name, mixture, SAMPLE_RATE, {"artist": pair, "comment": "mix = s1 + s2"})
    return {
        "name": name,
        "speakers": [source[1].speaker for source in sources],
        "prompt_sets": [source[1].folder for source in sources],
        "prompts": [source[2] for source in sources],
        "level_dbfs": round(level + limiter_db, 3),
        "relative_level_db": round(relative, 3),
        "frames": int(len(mixture)),
    }
