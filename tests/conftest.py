import subprocess
import sys
from pathlib import Path

import pytest
import torch

from surfsep.data.digits import build_digits
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
