"""A synthetic audio set of harmonic tone pairs, for checks that need audio without any download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile


def write_tone_set(folder: Path, mixtures: dict[str, int], sample_rate: int = 8000, seconds: float = 0.5) -> Path:
    """Write a LibriMix-layout set of two-source mixtures of harmonic tones; returns ``folder``.

    ``mixtures`` maps each split name to its number of mixtures. Each source is a tone of three
    harmonics at a random pitch from 100 to 600 Hz under a slow random envelope, and the mixture
    is their sum. The same arguments always write the same files.
    """
    rng = np.random.default_rng(0)
    time = np.arange(int(seconds * sample_rate)) / sample_rate
    for split, count in mixtures.items():
        for index in range(count):
            sources = []
            for _ in range(2):
                pitch = rng.uniform(100, 600)
                tone = sum(np.sin(2 * np.pi * pitch * h * time + rng.uniform(0, 6.3)) / h for h in range(1, 4))
                envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 4) * time + rng.uniform(0, 6.3))
                sources.append(0.2 * tone * envelope)
            name = f"{index:04d}.wav"
            for label, signal in (("s1", sources[0]), ("s2", sources[1]), ("mix", sources[0] + sources[1])):
                (Path(folder) / split / label).mkdir(parents=True, exist_ok=True)
                soundfile.write(Path(folder) / split / label / name, signal.astype(np.float32), sample_rate,
                                subtype="FLOAT")
    return Path(folder)
