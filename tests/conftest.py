import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each worker gets one core: one PyTorch thread here and in the commands the tests start.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

from surfsep.data.digits import build_digits
from surfsep.data.tones import write_tone_set
from surfsep.networks import SlotUNet


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """A small digits set (2% of the full mixture counts) shared by the tests."""
    folder = tmp_path_factory.mktemp("data") / "digits"
    build_digits(folder, scale=0.02)
    return folder


def random_network(channels=(8, 16), seed: int = 0) -> SlotUNet:
    """A network with every weight random (the zero-initialised output layer too), in eval mode."""
    torch.manual_seed(seed)
    network = SlotUNet(channels=channels, embedding_size=16)
    with torch.no_grad():
        for parameter in network.parameters():
            if torch.count_nonzero(parameter) == 0:
                parameter.normal_(0.0, 0.1)
    return network.eval()


def run_surfsep(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run the command line in a new Python process."""
    result = subprocess.run([sys.executable, "-m", "surfsep", *args], capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"surfsep {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def tones_dir(tmp_path_factory) -> Path:
    """A tiny audio set of tone mixtures at 8 kHz: 16 train, 4 valid and 4 test mixtures of 0.5 s."""
    return write_tone_set(tmp_path_factory.mktemp("audio") / "tones", {"train": 16, "valid": 4, "test": 4})


@pytest.fixture(autouse=True)
def audio_index_cache(tmp_path, monkeypatch):
    """Keep the audio index cache of every test in its own temporary folder."""
    monkeypatch.setenv("SURFSEP_CACHE", str(tmp_path / "cache"))
