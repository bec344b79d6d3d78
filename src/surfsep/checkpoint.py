"""Training checkpoints as one safetensors file: the tensors, plus the rest of the state as JSON in its header.

A checkpoint contains nested dicts and lists of tensors and plain values (the student, teacher and
averaged weights, the optimiser and scheduler states, the step). Every tensor is stored under a
dotted name, and the structure goes into the header's metadata as JSON, with each tensor replaced
by its name. Reading one back never unpickles anything, so a run folder from elsewhere cannot run
code when it is resumed. Dict keys keep their type (the optimiser's state is keyed by integers).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from surfsep.files import atomic_path

logger = logging.getLogger(__name__)

STATE_KEY = "surfsep_state"
STATE_FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names it and what to do."""


def flatten(value: Any, tensors: dict[str, torch.Tensor], name: str) -> Any:
    """Return the JSON form of ``value``, moving its tensors into ``tensors`` under dotted names."""
    if torch.is_tensor(value):
        # A copy, so that no two stored tensors share memory (safetensors rejects that).
        tensors[name] = value.detach().to("cpu", copy=True).contiguous()
        return {"tensor": name}
    if isinstance(value, dict):
        return {"dict": [[key, flatten(item, tensors, f"{name}.{key}")] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"list": [flatten(item, tensors, f"{name}.{index}") for index, item in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"cannot store a {type(value).__name__} at {name} in a checkpoint")


def unflatten(form: Any, tensors: dict[str, torch.Tensor]) -> Any:
    (kind, content), = form.items()
    if kind == "tensor":
        return tensors[content]
    if kind == "dict":
        return {key: unflatten(item, tensors) for key, item in content}
    if kind == "list":
        return [unflatten(item, tensors) for item in content]
    if kind == "value":
        return content
    raise ValueError(f"unknown entry {kind!r}")


def save_state(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically."""
    tensors: dict[str, torch.Tensor] = {}
    structure = flatten(state, tensors, "state")
    header = json.dumps({"version": STATE_FORMAT_VERSION, "state": structure})
    with atomic_path(path) as temporary:
        save_file(tensors, temporary, metadata={STATE_KEY: header})


def load_state(path: Path) -> dict:
    """Read a checkpoint written by ``save_state``; raise CheckpointError if it is not one or is damaged."""
    advice = "restore the file, or remove it to train the run again from step 0"
    try:
        with safe_open(path, framework="pt") as stored:
            header = (stored.metadata() or {}).get(STATE_KEY)
        if header is None:
            raise CheckpointError(f"{path} is not a surfsep checkpoint; {advice}")
        document = json.loads(header)
        if document.get("version", 0) > STATE_FORMAT_VERSION:
            raise CheckpointError(f"{path} was written by a newer surfsep (checkpoint version "
                                  f"{document['version']}); upgrade surfsep to resume it")
        return unflatten(document["state"], load_file(path))
    except CheckpointError:
        raise
    except Exception as error:  # safetensors, JSON and structure errors all mean a damaged file
        raise CheckpointError(f"checkpoint {path} cannot be read ({error}); {advice}") from error
