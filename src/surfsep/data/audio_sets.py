"""Audio data views: a cached index of a folder of recordings, mixtures only or with references.

``AudioMixtureSet`` lists only the mixture files and is the only view the unsupervised methods
get, so they cannot open the reference folders. ``AudioReferenceSet`` pairs every mixture with
its references ``s1/ ... sK/`` (the LibriMix / WSJ0-2mix layout, ``mix/`` or ``mix_clean/``).

A folder is scanned recursively once into an index of (name, size, modification time, frames,
sample rate, channels), cached as JSON under ``$SURFSEP_CACHE`` (default
``$XDG_CACHE_HOME/surfsep`` or ``~/.cache/surfsep``). A later scan reads the header only of files
whose size or modification time changed, and every bad file is reported in one error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from surfsep.audio import AUDIO_SUFFIXES, AudioError, audio_info, list_audio, read_audio
from surfsep.data.images import (
    IMAGE_SUFFIXES, MIXTURE_FOLDERS, REFERENCE_FOLDER, DataError, find_mixture_folder, reference_numbers,
)
from surfsep.files import atomic_write_json

logger = logging.getLogger(__name__)

INDEX_VERSION = 1
MAX_LISTED_ERRORS = 10


@dataclass(frozen=True)
class AudioEntry:
    """One indexed audio file; ``frames`` counts samples per channel at ``sample_rate``."""

    path: Path
    frames: int
    sample_rate: int
    channels: int


def cache_folder() -> Path:
    if os.environ.get("SURFSEP_CACHE"):
        return Path(os.environ["SURFSEP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "surfsep"


def index_path(folder: Path) -> Path:
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:24]
    return cache_folder() / "index" / f"{key}.json"


def load_cached_index(path: Path, folder: Path) -> dict[str, dict]:
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if document.get("version") != INDEX_VERSION or document.get("folder") != str(folder.resolve()):
        return {}
    return document.get("files", {})


def scan_audio(folder: Path, cache: bool = True) -> list[AudioEntry]:
    """Index every audio file under ``folder``; raise AudioError listing the files that cannot be used."""
    folder = Path(folder)
    files = list_audio(folder)
    cached = load_cached_index(index_path(folder), folder) if cache else {}
    records: dict[str, dict] = {}
    entries, problems = [], []
    read_headers = 0
    for path in files:
        name = path.relative_to(folder).as_posix()
        status = path.stat()
        record = cached.get(name)
        if not record or record["size"] != status.st_size or record["mtime_ns"] != status.st_mtime_ns:
            try:
                info = audio_info(path)
            except AudioError as error:
                problems.append(str(error))
                continue
            read_headers += 1
            record = {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "frames": info.frames,
                      "sample_rate": info.sample_rate, "channels": info.channels}
        records[name] = record
        entries.append(AudioEntry(path, record["frames"], record["sample_rate"], record["channels"]))

    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED_ERRORS])
        more = f"\n  ... and {len(problems) - MAX_LISTED_ERRORS} more" if len(problems) > MAX_LISTED_ERRORS else ""
        raise AudioError(
            f"{len(problems)} of {len(files)} audio files in {folder} cannot be used; "
            f"fix or remove them:\n  {listed}{more}"
        )
    if cache and read_headers:
        try:
            atomic_write_json(index_path(folder), {"version": INDEX_VERSION, "folder": str(folder.resolve()),
                                                   "files": records})
        except OSError as error:
            logger.warning("cannot write the audio index cache %s: %s", index_path(folder), error)
    logger.info("indexed %d audio files in %s (%d headers read, %d from the cache)",
                len(entries), folder, read_headers, len(entries) - read_headers)
    return entries


def detect_modality(root: Path) -> str:
    """Return "image" or "audio" from the files in ``root`` (or its mix/ folder)."""
    folder = find_mixture_folder(Path(root))
    suffixes = {path.suffix.lower() for path in folder.rglob("*") if path.is_file() and not path.name.startswith(".")}
    has_images = bool(suffixes & set(IMAGE_SUFFIXES))
    has_audio = bool(suffixes & set(AUDIO_SUFFIXES))
    if has_images and has_audio:
        raise DataError(f"{folder} contains both PNG images and audio files; keep one kind per data folder")
    if has_images:
        return "image"
    if has_audio:
        return "audio"
    raise DataError(
        f"no PNG images or audio files ({', '.join(AUDIO_SUFFIXES)}) found in {folder}; "
        f"pass a folder of mixtures or a split folder with mix/"
    )


def common_sample_rate(entries: list[AudioEntry], folder: Path) -> int:
    """Return the one sample rate of ``entries``; raise DataError if they differ."""
    rates = sorted({entry.sample_rate for entry in entries})
    if len(rates) > 1:
        raise DataError(
            f"audio files in {folder} have different sample rates ({', '.join(map(str, rates))} Hz); "
            f"pass --sample-rate to resample them all to one rate"
        )
    return rates[0]


def read_crop(entry: AudioEntry, start_seconds: float, segment_frames: int, sample_rate: int) -> np.ndarray:
    """Read ``segment_frames`` mono samples at ``sample_rate`` from ``start_seconds``, zero-padded at the end."""
    start = int(round(start_seconds * entry.sample_rate))
    frames = int(np.ceil(segment_frames * entry.sample_rate / sample_rate))
    samples, _ = read_audio(entry.path, sample_rate=sample_rate, channels="mix", start=start,
                            frames=min(frames, entry.frames - start))
    crop = np.zeros(segment_frames, dtype=np.float32)
    length = min(segment_frames, samples.shape[1])
    crop[:length] = samples[0, :length]
    return crop


def crop_starts(durations: np.ndarray, segment_seconds: float, generator: torch.Generator) -> np.ndarray:
    """Uniform random start times (s) of segments inside files of the given durations (0 for short files)."""
    room = np.maximum(durations - segment_seconds, 0.0)
    fractions = torch.rand(len(durations), generator=generator, dtype=torch.float64).numpy()
    return fractions * room


def reject_reference_folder(folder: Path) -> None:
    if REFERENCE_FOLDER.match(folder.name) and (folder.parent / "mix").is_dir():
        raise DataError(
            f"{folder} is a reference folder; unsupervised training reads mixtures only, "
            f"so pass {folder.parent} (whose mix/ folder is used)"
        )
    nested = sorted({
        path.parent.as_posix() for path in folder.rglob("*")
        if path.is_dir() and REFERENCE_FOLDER.match(path.name)
        and any((path.parent / name).is_dir() for name in MIXTURE_FOLDERS)
    })
    if nested:
        raise DataError(
            f"{folder} contains reference folders (sK/) beside mixture folders; unsupervised training reads "
            f"mixtures only, so pass one split folder, whose mix/ is used: {', '.join(nested)}"
        )


@dataclass
class AudioMixtureSet:
    """Mixture recordings of one folder, indexed; no access to references."""

    folder: Path
    entries: list[AudioEntry]

    @classmethod
    def open(cls, root: Path, cache: bool = True) -> "AudioMixtureSet":
        folder = find_mixture_folder(Path(root))
        reject_reference_folder(folder)
        entries = scan_audio(folder, cache=cache)
        if not entries:
            raise DataError(f"no audio mixtures ({', '.join(AUDIO_SUFFIXES)}) found in {folder}")
        return cls(folder=folder, entries=entries)

    @property
    def names(self) -> list[str]:
        return [entry.path.relative_to(self.folder).as_posix() for entry in self.entries]

    def __len__(self) -> int:
        return len(self.entries)


@dataclass
class AudioReferenceSet:
    """Mixture recordings with their references ``s1/ ... sK/`` of the same names and lengths."""

    folder: Path
    mixtures: list[AudioEntry]
    references: list[list[AudioEntry]]  # references[i][k] belongs to mixtures[i]

    @classmethod
    def open(cls, root: Path, sources: int | None = None, cache: bool = True) -> "AudioReferenceSet":
        root = Path(root)
        mixture_folder = find_mixture_folder(root)
        if mixture_folder == root:
            raise DataError(
                f"{root} has no mix/ folder; data with references needs mix/ (or mix_clean/) and s1/ ... sK/ "
                f"folders holding files of the same names"
            )
        expected = reference_numbers(root, sources)
        mixtures = scan_audio(mixture_folder, cache=cache)
        if not mixtures:
            raise DataError(f"no audio mixtures found in {mixture_folder}")
        by_folder = [{entry.path.relative_to(root / f"s{k}").as_posix(): entry
                      for entry in scan_audio(root / f"s{k}", cache=cache)} for k in expected]
        references = []
        for mixture in mixtures:
            name = mixture.path.relative_to(mixture_folder).as_posix()
            row = []
            for k, entries in zip(expected, by_folder):
                reference = entries.get(name)
                if reference is None:
                    raise DataError(
                        f"mixture {mixture.path} has no reference {root / f's{k}' / name}; "
                        f"every mixture needs a file of the same name in each sK/"
                    )
                if reference.frames != mixture.frames or reference.sample_rate != mixture.sample_rate:
                    raise DataError(
                        f"reference {reference.path} has {reference.frames} frames at {reference.sample_rate} Hz "
                        f"but its mixture {mixture.path} has {mixture.frames} at {mixture.sample_rate} Hz; "
                        f"references must match their mixture sample for sample"
                    )
                row.append(reference)
            references.append(row)
        return cls(folder=root, mixtures=mixtures, references=references)

    @property
    def mixture_folder(self) -> Path:
        return find_mixture_folder(self.folder)

    @property
    def names(self) -> list[str]:
        return [entry.path.relative_to(self.mixture_folder).as_posix() for entry in self.mixtures]

    @property
    def sources(self) -> int:
        return len(self.references[0])

    def read(self, index: int, sample_rate: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Whole mixture (L,) and references (K, L), mono float32, at ``sample_rate`` (default: the file's)."""
        mixture, _ = read_audio(self.mixtures[index].path, sample_rate=sample_rate)
        references = [read_audio(entry.path, sample_rate=sample_rate)[0][0] for entry in self.references[index]]
        return mixture[0], np.stack(references)

    def first(self, count: int) -> "AudioReferenceSet":
        return AudioReferenceSet(self.folder, self.mixtures[:count], self.references[:count])

    def __len__(self) -> int:
        return len(self.mixtures)


class AudioCrops:
    """Training batches of random fixed-length crops, at one sample rate, as (B, L) and (B, K, L).

    Crops of a batch are drawn with the step's generator, so a resumed run reads the same crops.
    Each mixture crop is scaled to unit RMS (its references by the same factor) because the flow's
    noise scale sigma is set relative to unit-RMS mixtures. A silent crop stays unscaled.
    """

    def __init__(self, mixtures: list[AudioEntry], references: list[list[AudioEntry]] | None, sample_rate: int,
                 segment_seconds: float):
        self.mixtures = mixtures
        self.references = references
        self.sample_rate = sample_rate
        self.segment_seconds = segment_seconds
        self.segment_frames = int(round(segment_seconds * sample_rate))
        self.durations = np.array([entry.frames / entry.sample_rate for entry in mixtures])

    def __len__(self) -> int:
        return len(self.mixtures)

    def batch(
        self, index: torch.Tensor, generator: torch.Generator, rows: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Crops of the mixtures ``index`` (and their references), of which only ``rows`` are read.

        The crop positions are drawn for the whole of ``index``, so that a process reading its share
        of a batch gets the crops that a single process would.
        """
        chosen = index.tolist()
        starts = crop_starts(self.durations[chosen], self.segment_seconds, generator)
        chosen, starts = chosen[rows], starts[rows]
        mixtures = np.stack([read_crop(self.mixtures[i], start, self.segment_frames, self.sample_rate)
                             for i, start in zip(chosen, starts)])
        references = None
        if self.references is not None:
            references = np.stack([
                np.stack([read_crop(entry, start, self.segment_frames, self.sample_rate) for entry in self.references[i]])
                for i, start in zip(chosen, starts)
            ])
        return unit_rms(torch.from_numpy(mixtures), None if references is None else torch.from_numpy(references))


# RMS at or below which a crop or chunk counts as silent: it is left at its scale, not normalised.
SILENT_RMS = 1e-5


def unit_rms(mixtures: torch.Tensor, references: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale every mixture (B, L) to unit RMS and its references (B, K, L) by the same factor."""
    rms = mixtures.pow(2).mean(dim=-1).sqrt()
    factor = torch.where(rms > SILENT_RMS, 1.0 / rms.clamp_min(SILENT_RMS), torch.ones_like(rms))
    scaled_references = None if references is None else references * factor[:, None, None]
    return mixtures * factor[:, None], scaled_references
