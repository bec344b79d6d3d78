"""Speech synthesis worker: drives the libespeak-ng bundled by ``espeakng-loader`` through ctypes.

libespeak-ng is GPL-3+, so surfsep never loads it into its own process. ``surfsep.data.speech``
starts this file as a separate Python process (``python speech_synth.py``, or
``python -m surfsep.data.speech_synth``), and the two speak a line protocol over stdin/stdout:

- The worker first writes one JSON line, ``{"ready": true, "sample_rate": 22050, "version": ...}``,
  or ``{"error": MESSAGE}`` followed by exit status 1.
- Each request is one JSON line ``{"voice": "en-us+f3", "rate": 160, "pitch": 50, "range": 50,
  "seed": 7, "text": ...}``. It names an espeak-ng voice with an optional ``+variant`` and gives
  the rate in words per minute, pitch and pitch range on espeak-ng's 0-100 scale, and the seed of
  the noise generators (espeak-ng's own, which it seeds from the clock, and libc's ``rand``).
- Each reply is one JSON line ``{"frames": N}`` followed by N mono int16 samples (little-endian
  bytes) at the native rate, or ``{"error": MESSAGE}``. End of input ends the worker.

The file imports nothing from surfsep, so it starts without loading the package.
NOTE: libespeak-ng keeps some synthesis state (pitch flutter phase among it) from one utterance to
the next, so an utterance's samples depend on the requests sent before it in the same process. The
same sequence of requests gives the same samples; re-initialising the library does not reset it.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import BinaryIO

import numpy as np

# Constants of espeak-ng's public header, speak_lib.h.
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_DONT_EXIT = 0x8000
PARAMETER_RATE = 1
PARAMETER_PITCH = 3
PARAMETER_RANGE = 4
POSITION_CHARACTER = 1
CHARACTERS_UTF8 = 1
STATUS_OK = 0

SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Espeak:
    """libespeak-ng in synchronous mode, collecting every utterance's samples through the synth callback."""

    def __init__(self, library_path: str, data_path: str):
        self.library = ctypes.CDLL(library_path)
        self.library.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.library.espeak_Initialize.restype = ctypes.c_int
        self.library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.library.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        self.library.espeak_Info.argtypes = [ctypes.c_void_p]
        self.library.espeak_Info.restype = ctypes.c_char_p
        self.library.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.libc = ctypes.CDLL(None)
        self.libc.srand.argtypes = [ctypes.c_uint]

        self.sample_rate = self.library.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), INITIALIZE_DONT_EXIT
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with status {self.sample_rate} (data folder {data_path})")
        self.version = self.library.espeak_Info(None).decode()

        self.chunks: list[np.ndarray] = []
        # The callback object must stay referenced for as long as the library may call it.
        self.callback = SYNTH_CALLBACK(self.collect)
        self.library.espeak_SetSynthCallback(self.callback)

    def collect(self, samples, count, events) -> int:
        if count > 0:
            self.chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    def synthesize(self, voice: str, text: str, rate: int, pitch: int, pitch_range: int, seed: int) -> np.ndarray:
        """Speak ``text`` and return its int16 samples at ``self.sample_rate``."""
        if self.library.espeak_SetVoiceByName(voice.encode()) != STATUS_OK:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        for parameter, value in ((PARAMETER_RATE, rate), (PARAMETER_PITCH, pitch), (PARAMETER_RANGE, pitch_range)):
            if self.library.espeak_SetParameter(parameter, int(value), 0) != STATUS_OK:
                raise ValueError(f"espeak-ng rejected parameter {parameter} = {value}")

        self.library.espeak_ng_SetRandSeed(int(seed))
        self.libc.srand(int(seed) % 2**32)
        self.chunks = []
        encoded = text.encode() + b"\0"
        status = self.library.espeak_Synth(encoded, len(encoded), 0, POSITION_CHARACTER, 0, CHARACTERS_UTF8, None, None)
        if status != STATUS_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status}")
        self.library.espeak_Synchronize()
        if not self.chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self.chunks).astype(np.int16)


def send(channel: BinaryIO, message: dict, payload: bytes = b"") -> None:
    channel.write(json.dumps(message).encode() + b"\n" + payload)
    channel.flush()


def serve(requests: BinaryIO, replies: BinaryIO) -> int:
    try:
        import espeakng_loader
    except ImportError:
        send(replies, {"error": "espeakng-loader is not installed; install it with: pip install surfsep[speech]"})
        return 1
    try:
        espeak = Espeak(espeakng_loader.get_library_path(), espeakng_loader.get_data_path())
    except (OSError, RuntimeError) as error:
        send(replies, {"error": f"cannot start libespeak-ng from espeakng-loader: {error}"})
        return 1
    send(replies, {"ready": True, "sample_rate": espeak.sample_rate, "version": espeak.version})

    for line in requests:
        try:
            request = json.loads(line)
            samples = espeak.synthesize(
                request["voice"], request["text"], request["rate"], request["pitch"], request["range"], request["seed"]
            )
        except (ValueError, KeyError, TypeError, RuntimeError) as error:
            send(replies, {"error": f"{type(error).__name__}: {error}"})
            continue
        send(replies, {"frames": int(len(samples))}, samples.astype("<i2").tobytes())
    return 0


def main() -> int:
    # The protocol gets a private copy of stdout, and file descriptor 1 is pointed at stderr, so
    # anything the C library prints cannot corrupt the reply stream.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    return serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    sys.exit(main())
