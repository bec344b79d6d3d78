"""Faster repeated inference: a network run through a TorchScript trace made for each input shape.

Separating a long file calls the network with the same input shapes many times (every chunk batch
and every sampler step). A trace of the network for one shape runs the same kernels without the
Python work of each module call, and gives bit-identical results on the CPU. Tracing costs about
one forward pass, so a shape is traced only once it has been seen ``TRACE_AFTER`` times. The
networks' forward passes have no branch on tensor values, so a trace is exact for every input of
its shape.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Calls of one input shape that run eagerly before that shape is traced.
TRACE_AFTER = 2


class ShapeTraced:
    """Call ``network(x, mixture, t)`` eagerly at first, then through a per-shape trace; for inference only.

    A network that cannot be traced keeps running eagerly. Plain callables (not modules) are
    always called directly.
    """

    def __init__(self, network, trace_after: int = TRACE_AFTER):
        self.network = network
        self.trace_after = trace_after
        self.seen: dict[tuple, int] = {}
        self.traces: dict[tuple, torch.jit.ScriptModule] = {}
        self.failed = not isinstance(network, nn.Module)

    def __call__(self, x: torch.Tensor, mixture: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.failed or torch.is_grad_enabled():
            return self.network(x, mixture, t)
        key = tuple((tuple(item.shape), item.dtype, item.device) for item in (x, mixture, t))
        trace = self.traces.get(key)
        if trace is not None:
            return trace(x, mixture, t)
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.seen[key] <= self.trace_after:
            return self.network(x, mixture, t)
        try:
            with warnings.catch_warnings():
                # The tracer warns that shape arithmetic is fixed in the trace, which is why each shape has its own.
                # NOTE: torch 2.13 deprecates jit.trace and jit.freeze. If a later torch removes them, the
                # except below keeps separation working without a trace.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                trace = torch.jit.freeze(torch.jit.trace(self.network.eval(), (x, mixture, t), check_trace=False))
        except Exception as error:  # an untraceable network still separates, only without the speed-up
            logger.debug("running %s eagerly: tracing failed (%s)", type(self.network).__name__, error)
            self.failed = True
            return self.network(x, mixture, t)
        self.traces[key] = trace
        return trace(x, mixture, t)
