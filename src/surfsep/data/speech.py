"""The built-in ``speech`` data set: synthetic two-speaker English speech, made offline.

Layout (LibriMix): ``OUT/{train,valid,test}/{mix,s1,s2}/NAME.wav`` with the same names in every
folder, mono 16-bit PCM WAV at 8 kHz (or 16 kHz), and ``OUT/dataset.json`` describing the set.
Each mixture is the sum of its two sources, sample for sample: the sources are quantised to
16 bits first and the mixture is their integer sum, so ``mix == s1 + s2`` exactly.

Voices. The 15 voices of ``LOADER_VOICES`` come from the libespeak-ng (1.52) that
``espeakng-loader`` bundles. Each combines an English dialect with its own espeak-ng variant
plus its own pitch, pitch range and rate settings. No two voices share a variant: a formant
variant scales the formant frequencies and sets the pitch range, and a Klatt variant switches
to espeak-ng's Klatt synthesiser with its own ``klatt`` setting. Each voice's ``distinct`` field describes
what sets it apart. Their median F0, measured on an 8 kHz build, ranges from about 95 to 250 Hz.
The 8 female and 7 male (formant or Klatt) voices are spread over the splits as train 4 + 4,
valid 2 + 1 and test 2 + 2. When they are installed, Debian's ``espeak-ng`` (1.51, other
variants), ``flite`` and ``festival`` command-line programs add the voices of ``SYSTEM_VOICES``,
of which flite's and festival's are built from recordings of real speakers. Voices built from
the same speaker share a ``speaker`` id, so they stay in one split and never meet in a mixture.
Speakers of train, valid and test are disjoint. The assignment is fixed by the tables below and
recorded in ``dataset.json``.

Utterances. Sentences come from a small grammar over wonderwords' word lists, drawn with the
seed. Each utterance is synthesised, resampled to the target rate with soxr and trimmed of
leading and trailing silence (frames 40 dB below the loudest 10 ms frame). Both sources of a
mixture start together and are truncated to the shorter one, and to at most ``MAX_SECONDS``,
so both speakers talk throughout. A 10 ms fade at each end avoids clicks at the cuts.

Levels. Source 1 gets an active-speech RMS level drawn uniformly from ``LEVEL_DBFS``; source 2
is ``RELATIVE_LEVEL_DB`` dB above or below it (uniform). When the mixture or a source would peak
above ``PEAK_LIMIT`` of full scale, both sources are scaled down together, which keeps their
relative level, so nothing clips. An item's ``level_dbfs`` in ``dataset.json`` is source 1's
level after that scaling.

Size at scale 1: 3000 train, 200 valid and 300 test mixtures of 2 to 5 s (median about 3.7 s), about
3.6 hours and 0.6 GB at 8 kHz. Building it took 94 s with espeakng-loader alone and 170 s with
every system voice, on 2 shared CPU cores.

Licences: libespeak-ng is GPL-3+, so surfsep never loads it: ``speech_synth.py`` drives it in a
separate process. The set is reproducible bit for bit for one seed, one sample rate and one set
of installed voices on one machine.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile
import soxr

from surfsep.data.images import DataError
from surfsep.progress import Progress

logger = logging.getLogger(__name__)

# (split, mixtures at scale 1)
SPEECH_SPLITS = (("train", 3000), ("valid", 200), ("test", 300))
SAMPLE_RATES = (8000, 16000)
MAX_SECONDS = 5.0
LEVEL_DBFS = (-33.0, -25.0)
RELATIVE_LEVEL_DB = 5.0
PEAK_LIMIT = 0.9
TRIM_DB = 40.0
FRAME_SECONDS = 0.01
FADE_SECONDS = 0.01
# Target words per sentence, drawn uniformly. Sentences of 8 to 16 words last about 3 to 6 s at 150
# to 180 words per minute, and a mixture keeps the shorter of its two, up to MAX_SECONDS.
SENTENCE_WORDS = (8, 13)
# Mixtures synthesised and written per step, which bounds the memory the build needs.
CHUNK_MIXTURES = 100
WORKER_PATH = Path(__file__).with_name("speech_synth.py")
INSTALL_HINT = "pip install surfsep[speech]"


@dataclass(frozen=True)
class Voice:
    """One synthetic voice: its backend's voice name, settings, split and the speaker it is built from."""

    name: str
    speaker: str
    split: str
    backend: str
    voice: str
    distinct: str
    rate: int = 0
    pitch: int = 50
    pitch_range: int = 50


def loader_voice(split: str, language: str, variant: str, pitch: int, pitch_range: int, rate: int,
                 distinct: str) -> Voice:
    name = f"espeak-{language}-{variant.lower()}"
    return Voice(name, name, split, "espeakng-loader", f"{language}+{variant}", distinct, rate, pitch, pitch_range)


# Variant pitch ranges are the ``pitch`` lines of espeak-ng's variant files, in Hz; espeak-ng's
# pitch and range settings (0-100, default 50) move and widen them.
LOADER_VOICES = (
    loader_voice("train", "en-us", "m1", 45, 50, 165,
                 "male variant m1 (75-109 Hz, formants 3% low), US English"),
    loader_voice("train", "en", "f1", 55, 60, 160,
                 "female variant f1 (140-200 Hz, formants 10-20% high), British English"),
    loader_voice("train", "en-gb-scotland", "m3", 50, 40, 170,
                 "male variant m3 (80-122 Hz, shorter stressed syllables), Scottish English"),
    loader_voice("train", "en-029", "f2", 45, 50, 150,
                 "female variant f2 (142-220 Hz, breathy, echo), Caribbean English"),
    loader_voice("train", "en-us", "klatt", 60, 55, 175,
                 "Klatt synthesiser (klatt 1), high pitch setting, US English"),
    loader_voice("train", "en-gb-x-rp", "m7", 35, 45, 155,
                 "male variant m7 (75-125 Hz, damped upper formants), Received Pronunciation"),
    loader_voice("train", "en-us-nyc", "f4", 60, 60, 180,
                 "female variant f4 (142-200 Hz, longer stressed syllables), New York English"),
    loader_voice("train", "en-gb-x-gbclan", "Annie", 50, 50, 160,
                 "female variant Annie (120-280 Hz, formants 20% high, weak voicing), Lancashire English"),
    loader_voice("valid", "en-gb-x-gbcwmd", "m2", 50, 50, 165,
                 "male variant m2 (88-115 Hz, echo), West Midlands English"),
    loader_voice("valid", "en-us", "f5", 50, 45, 170,
                 "female variant f5 (160-228 Hz, breathy, soft voicing), US English"),
    loader_voice("valid", "en", "steph", 40, 50, 160,
                 "female variant steph (166-200 Hz, own frequency response curve), British English"),
    loader_voice("test", "en", "m6", 55, 50, 170,
                 "male variant m6 (82-117 Hz, formant bandwidths 20-40% wider), British English"),
    loader_voice("test", "en-us", "f3", 45, 55, 160,
                 "female variant f3 (140-240 Hz, formants 20-35% high), US English"),
    loader_voice("test", "en-gb-scotland", "klatt4", 65, 45, 165,
                 "Klatt synthesiser (klatt 4), high pitch setting, Scottish English"),
    loader_voice("test", "en-029", "linda", 45, 50, 155,
                 "female variant linda (200-247 Hz, formants 31-35% high), Caribbean English"),
)

# Voices of Debian's command-line synthesisers, used when installed. flite's and festival's voices
# are built from recordings: kal, ked (diphone databases) and the CMU ARCTIC speakers awb
# (Scottish male), rms (US male) and slt (US female).
SYSTEM_VOICES = (
    Voice("espeak-cli-en-us-m5", "espeak-cli-en-us-m5", "train", "espeak-ng", "en-us+m5",
          "Debian espeak-ng, male variant m5 (F1 and F2 lowered to 90% and 80%, intonation 2), US English",
          rate=165, pitch=45),
    Voice("espeak-cli-en-alicia", "espeak-cli-en-alicia", "train", "espeak-ng", "en+Alicia",
          "Debian espeak-ng, female variant Alicia (180-275 Hz, formants 30-50% high, breathy), British English",
          rate=160, pitch=50),
    Voice("espeak-cli-en-us-nyc-grandma", "espeak-cli-en-us-nyc-grandma", "valid", "espeak-ng", "en-us-nyc+grandma",
          "Debian espeak-ng, female variant grandma (120-230 Hz, strong flutter), New York English",
          rate=150, pitch=50),
    Voice("espeak-cli-en-029-klatt5", "espeak-cli-en-029-klatt5", "test", "espeak-ng", "en-029+klatt5",
          "Debian espeak-ng, Klatt synthesiser (klatt 5), Caribbean English",
          rate=165, pitch=55),
    Voice("flite-kal16", "kal", "train", "flite", "kal16", "flite diphone voice of speaker kal (US male)"),
    Voice("festival-kal", "kal", "train", "festival", "kal_diphone", "festival diphone voice of speaker kal (US male)"),
    Voice("flite-awb", "awb", "train", "flite", "awb", "flite voice of CMU ARCTIC speaker awb (Scottish male)"),
    Voice("flite-rms", "rms", "valid", "flite", "rms", "flite voice of CMU ARCTIC speaker rms (US male)"),
    Voice("flite-slt", "slt", "test", "flite", "slt", "flite voice of CMU ARCTIC speaker slt (US female)"),
    Voice("festival-slt-hts", "slt", "test", "festival", "cmu_us_slt_arctic_hts",
          "festival HTS voice of CMU ARCTIC speaker slt (US female)"),
    Voice("festival-ked", "ked", "test", "festival", "ked_diphone", "festival diphone voice of speaker ked (US male)"),
)

FESTIVAL_VOICE_FOLDERS = Path("/usr/share/festival/voices")


class SynthesisError(RuntimeError):
    """Failure of a speech synthesiser; the message names the program, the voice and its error output."""


# ---------------------------------------------------------------- sentences

DETERMINERS = ("the", "a", "every", "some", "this", "that", "my", "your", "our", "their", "one")
MODALS = ("can", "will", "should", "might", "must", "could", "would", "may")
PREPOSITIONS = ("near", "behind", "under", "beside", "after", "before", "with", "without", "above", "across")
CONJUNCTIONS = ("and", "but", "because", "while", "so", "although")


def load_words() -> dict[str, list[str]]:
    """Return wonderwords' nouns, verbs and adjectives: lower-case letters only, profanity removed."""
    assets = resources.files("wonderwords").joinpath("assets")
    profane = set(assets.joinpath("profanitylist.txt").read_text().split())
    words = {}
    for kind in ("noun", "verb", "adjective"):
        listed = assets.joinpath(f"{kind}list.txt").read_text().split()
        words[kind] = sorted({word for word in listed if re.fullmatch(r"[a-z]{3,12}", word) and word not in profane})
    return words


def noun_phrase(words: dict[str, list[str]], rng: np.random.Generator) -> list[str]:
    phrase = [str(rng.choice(DETERMINERS))]
    if rng.random() < 0.6:
        phrase.append(str(rng.choice(words["adjective"])))
    phrase.append(str(rng.choice(words["noun"])))
    if phrase[0] == "a" and phrase[1][0] in "aeiou":
        phrase[0] = "an"
    return phrase


def clause(words: dict[str, list[str]], rng: np.random.Generator) -> list[str]:
    verb_phrase = [str(rng.choice(MODALS))]
    if rng.random() < 0.15:
        verb_phrase.append("not")
    verb_phrase.append(str(rng.choice(words["verb"])))
    return noun_phrase(words, rng) + verb_phrase + noun_phrase(words, rng)


def make_sentence(words: dict[str, list[str]], rng: np.random.Generator) -> str:
    """Draw a sentence of ``SENTENCE_WORDS`` words or up to 3 more: "The calm owl can borrow a lamp near my dock."."""
    target = int(rng.integers(SENTENCE_WORDS[0], SENTENCE_WORDS[1] + 1))
    sentence = clause(words, rng)
    while len(sentence) < target:
        # A clause adds 6 to 9 words and a prepositional phrase 3 or 4, so near the target only
        # phrases are added.
        if target - len(sentence) <= 5 or rng.random() < 0.5:
            sentence += [str(rng.choice(PREPOSITIONS))] + noun_phrase(words, rng)
        else:
            sentence[-1] += ","
            sentence += [str(rng.choice(CONJUNCTIONS))] + clause(words, rng)
    text = " ".join(sentence) + "."
    return text[0].upper() + text[1:]


# ---------------------------------------------------------------- synthesisers

class EspeakWorker:
    """The libespeak-ng worker process (``speech_synth.py``); a context manager that starts and stops it."""

    def __enter__(self) -> "EspeakWorker":
        self.error_output = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER_PATH)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.error_output,
        )
        hello = self.read_reply()
        if "error" in hello:
            self.close()
            raise SynthesisError(f"the espeak-ng worker failed to start: {hello['error']}")
        self.native_rate = int(hello["sample_rate"])
        self.version = str(hello["version"])
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close()

    def close(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.error_output.close()

    def worker_output(self) -> str:
        self.error_output.seek(0)
        return self.error_output.read().decode(errors="replace").strip()

    def read_reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            status = self.process.wait()
            raise SynthesisError(
                f"the espeak-ng worker {WORKER_PATH} exited with status {status}; its output:\n{self.worker_output()}"
            )
        return json.loads(line)

    def synthesize(self, voice: Voice, text: str, seed: int) -> np.ndarray:
        """Return ``text`` spoken by ``voice`` as float64 samples at ``self.native_rate``."""
        request = {
            "voice": voice.voice, "rate": voice.rate, "pitch": voice.pitch, "range": voice.pitch_range,
            "seed": seed, "text": text,
        }
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()
        reply = self.read_reply()
        if "error" in reply:
            raise SynthesisError(f"espeak-ng voice {voice.voice} failed on {text!r}: {reply['error']}")
        payload = self.process.stdout.read(2 * reply["frames"])
        if len(payload) != 2 * reply["frames"]:
            raise SynthesisError(
                f"the espeak-ng worker sent {len(payload)} of {2 * reply['frames']} bytes and stopped; "
                f"its output:\n{self.worker_output()}"
            )
        return np.frombuffer(payload, dtype="<i2").astype(np.float64) / 32768.0


def run_synthesiser(command: list[str], voice: Voice, timeout: float = 600) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise SynthesisError(f"{command[0]} timed out after {timeout:.0f} s for voice {voice.name}") from error
    if result.returncode != 0:
        raise SynthesisError(
            f"{command[0]} failed for voice {voice.name} (status {result.returncode}): {result.stderr.strip()}"
        )


def read_wav(path: Path, voice: Voice) -> tuple[np.ndarray, int]:
    try:
        samples, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    except (RuntimeError, OSError) as error:
        raise SynthesisError(f"{voice.backend} wrote no readable audio for voice {voice.name}: {error}") from error
    return samples.mean(axis=1), int(rate)


def synthesize_command_line(voice: Voice, texts: list[str], folder: Path) -> list[tuple[np.ndarray, int]]:
    """Speak ``texts`` with a Debian command-line voice; returns (samples, rate) per text."""
    paths = [folder / f"{voice.name}-{index}.wav" for index in range(len(texts))]
    if voice.backend == "festival":
        # One festival process speaks the whole list, because loading a voice takes most of a call.
        script = [f"(voice_{voice.voice})"]
        for text, path in zip(texts, paths):
            quoted = text.replace("\\", "\\\\").replace('"', '\\"')
            script.append(f'(utt.save.wave (utt.synth (Utterance Text "{quoted}")) "{path}" \'riff)')
        script_path = folder / f"{voice.name}.scm"
        script_path.write_text("\n".join(script) + "\n")
        run_synthesiser(["festival", "-b", str(script_path)], voice)
    else:
        for text, path in zip(texts, paths):
            if voice.backend == "flite":
                run_synthesiser(["flite", "-voice", voice.voice, "-t", text, "-o", str(path)], voice)
            else:
                run_synthesiser(
                    ["espeak-ng", "-v", voice.voice, "-s", str(voice.rate), "-p", str(voice.pitch), "-w", str(path), text],
                    voice,
                )
    return [read_wav(path, voice) for path in paths]


def flite_voices() -> set[str]:
    if shutil.which("flite") is None:
        return set()
    result = subprocess.run(["flite", "-lv"], capture_output=True, text=True, timeout=60)
    return set(result.stdout.split(":", 1)[-1].split()) if result.returncode == 0 else set()


def system_voice_installed(voice: Voice, flite_listed: set[str]) -> bool:
    if voice.backend == "espeak-ng":
        return shutil.which("espeak-ng") is not None
    if voice.backend == "flite":
        return voice.voice in flite_listed
    return shutil.which("festival") is not None and any(FESTIVAL_VOICE_FOLDERS.glob(f"*/{voice.voice}"))


def available_voices(system_voices: bool = True) -> tuple[list[Voice], list[Voice]]:
    """Return (available, missing) voices: all of ``LOADER_VOICES`` plus the installed ``SYSTEM_VOICES``."""
    if not system_voices:
        return list(LOADER_VOICES), []
    flite_listed = flite_voices()
    available, missing = list(LOADER_VOICES), []
    for voice in SYSTEM_VOICES:
        if system_voice_installed(voice, flite_listed):
            available.append(voice)
        else:
            missing.append(voice)
    return available, missing


def system_versions(voices: list[Voice]) -> dict[str, str]:
    """Return the version line of each Debian synthesiser that ``voices`` use, for ``dataset.json``."""
    versions = {}
    for backend in sorted({voice.backend for voice in voices} - {"espeakng-loader"}):
        result = subprocess.run([backend, "--version"], capture_output=True, text=True, timeout=60)
        lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if re.search(r"\d+\.\d+", line)]
        versions[backend] = lines[0] if lines else "unknown"
    return versions


def check_speech_packages() -> None:
    """Raise DataError unless espeakng-loader and wonderwords are installed; imports neither's library."""
    for package in ("espeakng_loader", "wonderwords"):
        if importlib.util.find_spec(package) is None:
            raise DataError(
                f"the speech data set needs the Python package {package.replace('_', '-')}, "
                f"which is not installed; install it with: {INSTALL_HINT}"
            )


# ---------------------------------------------------------------- mixing

def frame_rms(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS of consecutive ``FRAME_SECONDS`` frames (the last partial frame included)."""
    frame = max(1, int(round(FRAME_SECONDS * sample_rate)))
    count = math.ceil(len(samples) / frame)
    padded = np.zeros(count * frame)
    padded[: len(samples)] = samples
    return np.sqrt(np.mean(padded.reshape(count, frame) ** 2, axis=1))


def trim_silence(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cut leading and trailing frames more than ``TRIM_DB`` below the loudest frame."""
    rms = frame_rms(samples, sample_rate)
    if len(rms) == 0 or rms.max() == 0:
        return samples[:0]
    active = np.flatnonzero(rms >= rms.max() * 10 ** (-TRIM_DB / 20))
    frame = max(1, int(round(FRAME_SECONDS * sample_rate)))
    return samples[active[0] * frame : min(len(samples), (active[-1] + 1) * frame)]


def active_rms(samples: np.ndarray, sample_rate: int) -> float:
    """RMS over the frames within ``TRIM_DB`` of the loudest one, the level of the speech itself."""
    rms = frame_rms(samples, sample_rate)
    active = rms[rms >= rms.max() * 10 ** (-TRIM_DB / 20)]
    return float(np.sqrt(np.mean(active**2)))


def fade(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Apply a raised-cosine fade of ``FADE_SECONDS`` at both ends."""
    length = min(int(round(FADE_SECONDS * sample_rate)), len(samples) // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(length) + 0.5) / length)
    faded = samples.copy()
    faded[:length] *= ramp
    faded[len(faded) - length :] *= ramp[::-1]
    return faded


def mix_pair(first: np.ndarray, second: np.ndarray, sample_rate: int, level_dbfs: float,
             relative_db: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Return int16 (s1, s2, mix) with mix == s1 + s2 exactly, and the limiter gain in dB (<= 0).

    The float sources are truncated to the shorter one and to ``MAX_SECONDS``, and faded. They are
    set to active RMS levels ``level_dbfs`` and ``level_dbfs + relative_db`` (dB re full scale 1.0).
    Both are then scaled down together when any of the three signals would peak above ``PEAK_LIMIT``.
    """
    length = min(len(first), len(second), int(MAX_SECONDS * sample_rate))
    sources = [fade(first[:length], sample_rate), fade(second[:length], sample_rate)]
    for index, level in enumerate((level_dbfs, level_dbfs + relative_db)):
        sources[index] = sources[index] * (10 ** (level / 20) / active_rms(sources[index], sample_rate))

    peak = max(np.abs(sources[0]).max(), np.abs(sources[1]).max(), np.abs(sources[0] + sources[1]).max())
    limiter_gain = min(1.0, PEAK_LIMIT / peak)
    sources = [source * limiter_gain for source in sources]

    # Rounding moves each source by at most half a step, so the integer sum stays within one step
    # of PEAK_LIMIT * 32768 and inside the int16 range.
    quantised = [np.round(source * 32768.0).astype(np.int32) for source in sources]
    mixture = quantised[0] + quantised[1]
    limiter_db = 20 * math.log10(limiter_gain)
    return quantised[0].astype(np.int16), quantised[1].astype(np.int16), mixture.astype(np.int16), limiter_db


def write_wav(path: Path, samples: np.ndarray, sample_rate: int, metadata: dict[str, str]) -> None:
    """Write int16 ``samples`` as 16-bit PCM WAV with WAV text tags (``title``, ``artist``, ``comment``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with soundfile.SoundFile(str(path), "w", samplerate=sample_rate, channels=1, format="WAV", subtype="PCM_16") as stream:
        for key, value in metadata.items():
            setattr(stream, key, value)
        stream.write(samples)


def check_build_arguments(out: Path, sample_rate: int | None, scale: float, seed: int) -> None:
    """Raise DataError for an unusable output folder, rate, scale or seed."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; choose a new folder for the data set")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} already exists and is not empty; choose a new folder or remove it first")
    if sample_rate is not None and sample_rate not in SAMPLE_RATES:
        raise DataError(f"sample rate {sample_rate!r} Hz is not supported; use 8000 or 16000")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise DataError(f"scale must be a positive number (1.0 for the full set), got {scale!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a whole number >= 0, got {seed!r}")


def publish(partial: Path, out: Path, description: dict) -> None:
    """Write ``dataset.json`` into the finished ``partial`` folder and rename it to ``out``."""
    (partial / "dataset.json").write_text(json.dumps(description, indent=1) + "\n")
    if out.exists():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(out)


# ---------------------------------------------------------------- the set

@dataclass(frozen=True)
class MixturePlan:
    """Everything drawn for one mixture before synthesis."""

    name: str
    voices: tuple[Voice, Voice]
    texts: tuple[str, str]
    seeds: tuple[int, int]
    level_dbfs: float
    relative_db: float


def plan_split(split_voices: list[Voice], count: int, words: dict[str, list[str]],
               rng: np.random.Generator) -> list[MixturePlan]:
    """Draw ``count`` mixtures, each of two voices of different speakers."""
    plans = []
    for index in range(count):
        first = split_voices[int(rng.integers(len(split_voices)))]
        partners = [voice for voice in split_voices if voice.speaker != first.speaker]
        second = partners[int(rng.integers(len(partners)))]
        texts = (make_sentence(words, rng), make_sentence(words, rng))
        seeds = (int(rng.integers(2**31)), int(rng.integers(2**31)))
        level = float(rng.uniform(*LEVEL_DBFS))
        relative = float(rng.uniform(-RELATIVE_LEVEL_DB, RELATIVE_LEVEL_DB))
        plans.append(MixturePlan(f"{index:05d}.wav", (first, second), texts, seeds, level, relative))
    return plans


def synthesize_chunk(plans: list[MixturePlan], worker: EspeakWorker, sample_rate: int) -> list[list[np.ndarray]]:
    """Return the trimmed sources at ``sample_rate`` of every mixture of ``plans``, in plan order."""
    sources: list[list[np.ndarray | None]] = [[None, None] for _ in plans]
    by_voice: dict[Voice, list[tuple[int, int, str]]] = {}
    for plan_index, plan in enumerate(plans):
        for slot in range(2):
            voice, text = plan.voices[slot], plan.texts[slot]
            if voice.backend == "espeakng-loader":
                # Requests go in plan order: the worker's output depends on the requests before it.
                samples = worker.synthesize(voice, text, plan.seeds[slot])
                sources[plan_index][slot] = soxr.resample(samples, worker.native_rate, sample_rate, quality="HQ")
            else:
                by_voice.setdefault(voice, []).append((plan_index, slot, text))

    with tempfile.TemporaryDirectory(prefix="surfsep-speech-") as folder:
        for voice, requests in by_voice.items():
            spoken = synthesize_command_line(voice, [text for _, _, text in requests], Path(folder))
            for (plan_index, slot, _), (samples, rate) in zip(requests, spoken):
                sources[plan_index][slot] = soxr.resample(samples, rate, sample_rate, quality="HQ")

    trimmed = []
    for plan, pair in zip(plans, sources):
        pair = [trim_silence(samples, sample_rate) for samples in pair]
        for voice, text, samples in zip(plan.voices, plan.texts, pair):
            if len(samples) < sample_rate // 2:
                raise SynthesisError(
                    f"voice {voice.name} ({voice.backend}) produced only {len(samples) / sample_rate:.2f} s of "
                    f"speech for {text!r}; check that the synthesiser works on its own"
                )
        trimmed.append(pair)
    return trimmed


def build_speech(out: Path, sample_rate: int = 8000, scale: float = 1.0, seed: int = 0, *,
                 system_voices: bool = True) -> dict:
    """Write the speech data set to ``out`` (which must not exist or be empty); returns its description.

    ``scale`` multiplies every split's mixture count (at least 2 per split), for quick tests.
    ``system_voices=False`` leaves out the Debian command-line voices even where installed.
    """
    out = Path(out)
    check_build_arguments(out, sample_rate, scale, seed)
    check_speech_packages()
    words = load_words()
    voices, missing = available_voices(system_voices)

    partial = out.parent / f".{out.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    description = {
        "name": "speech",
        "modality": "audio",
        "sources": 2,
        "mixture": "sum",
        "sample_rate": sample_rate,
        "subtype": "PCM_16",
        "seed": seed,
        "scale": scale,
        "max_seconds": MAX_SECONDS,
        "level_dbfs": list(LEVEL_DBFS),
        "relative_level_db": [-RELATIVE_LEVEL_DB, RELATIVE_LEVEL_DB],
        "peak_limit": PEAK_LIMIT,
        "voices": [asdict(voice) for voice in voices],
        "voices_not_installed": [voice.name for voice in missing],
        "system_synthesisers": system_versions(voices),
        "splits": {},
    }

    with EspeakWorker() as worker:
        description["synthesiser"] = f"libespeak-ng {worker.version} from espeakng-loader, in a separate process"
        for split_index, (split, mixture_count) in enumerate(SPEECH_SPLITS):
            split_voices = [voice for voice in voices if voice.split == split]
            count = max(2, int(round(mixture_count * scale)))
            rng = np.random.default_rng([seed, split_index])
            plans = plan_split(split_voices, count, words, rng)

            items = []
            with Progress(count, f"speech: {split}", unit="mixtures") as progress:
                for start in range(0, count, CHUNK_MIXTURES):
                    chunk = plans[start : start + CHUNK_MIXTURES]
                    for plan, pair in zip(chunk, synthesize_chunk(chunk, worker, sample_rate)):
                        items.append(write_mixture(partial / split, plan, pair, sample_rate))
                    progress.update(len(chunk))

            description["splits"][split] = {
                "mixtures": count,
                "speakers": sorted({voice.speaker for voice in split_voices}),
                "voices": [voice.name for voice in split_voices],
                "seconds": round(sum(item["frames"] for item in items) / sample_rate, 2),
                "items": items,
            }

    publish(partial, out, description)
    return description


def write_mixture(folder: Path, plan: MixturePlan, pair: list[np.ndarray], sample_rate: int) -> dict:
    """Mix and write one mixture's three files; returns its ``dataset.json`` entry."""
    source_1, source_2, mixture, limiter_db = mix_pair(pair[0], pair[1], sample_rate, plan.level_dbfs, plan.relative_db)
    for slot, (voice, text, samples) in enumerate(zip(plan.voices, plan.texts, (source_1, source_2)), start=1):
        tags = {"title": text, "artist": voice.speaker, "comment": f"voice {voice.name}"}
        write_wav(folder / f"s{slot}" / plan.name, samples, sample_rate, tags)
    speakers = " + ".join(voice.speaker for voice in plan.voices)
    write_wav(folder / "mix" / plan.name, mixture, sample_rate, {"artist": speakers, "comment": "mix = s1 + s2"})
    return {
        "name": plan.name,
        "voices": [voice.name for voice in plan.voices],
        "speakers": [voice.speaker for voice in plan.voices],
        "texts": list(plan.texts),
        "level_dbfs": round(plan.level_dbfs + limiter_db, 3),
        "relative_level_db": round(plan.relative_db, 3),
        "frames": int(len(mixture)),
    }
