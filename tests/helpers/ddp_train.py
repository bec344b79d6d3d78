"""Train through the API in every process that torchrun starts, and save each process's weights.

Usage: ddp_train.py CONFIG.json WEIGHTS_FOLDER. Rank r writes WEIGHTS_FOLDER/rank{r}.safetensors
with its student weights at the end, so a test can compare the processes.
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist
import torch.nn.parallel
from safetensors.torch import save_file

from surfsep.config import TrainConfig
from surfsep.distributed import finish
from surfsep.train import train

wrapped = []


class RecordingDDP(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that remembers the network it wraps."""

    def __init__(self, module, *args, **kwargs):
        super().__init__(module, *args, **kwargs)
        wrapped.append(module)


torch.nn.parallel.DistributedDataParallel = RecordingDDP

config = TrainConfig(**json.loads(Path(sys.argv[1]).read_text()))
train(config)
weights = {name: tensor.detach().contiguous() for name, tensor in wrapped[0].state_dict().items()}
save_file(weights, str(Path(sys.argv[2]) / f"rank{dist.get_rank()}.safetensors"))
finish(0)
