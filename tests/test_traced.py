"""Per-shape traces of the network for separation: same results as eager calls, traced only when repeated."""

import torch
from torch import nn

from surfsep.models import AudioSeparator
from surfsep.traced import ShapeTraced
from test_networks import random_tasnet as small_network

METADATA = {"sources": 2, "sigma": 0.5, "sample_rate": 8000, "modality": "audio", "one_step": False,
            "sampler": {"solver": "euler", "steps": 3}}


def inputs(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 2, length, generator=generator), torch.randn(batch, length, generator=generator),
            torch.rand(batch, generator=generator))


def test_shape_is_traced_on_its_third_call():
    network = small_network()
    traced = ShapeTraced(network, trace_after=2)
    with torch.inference_mode():
        for seed in range(5):
            x, mixture, t = inputs(4, 3000, seed)
            assert torch.equal(traced(x, mixture, t), network(x, mixture, t)), f"call {seed + 1} differs"
            assert len(traced.traces) == (1 if seed >= 2 else 0)

        # A new shape starts eagerly again, and its trace is exact too.
        for seed in range(3):
            x, mixture, t = inputs(3, 2500, 10 + seed)
            assert torch.equal(traced(x, mixture, t), network(x, mixture, t))
    assert len(traced.traces) == 2


def test_training_calls_stay_eager():
    network = small_network()
    traced = ShapeTraced(network, trace_after=0)
    x, mixture, t = inputs(2, 1000, 0)
    output = traced(x, mixture, t)
    assert output.requires_grad
    assert traced.traces == {}


class DictOutput(nn.Module):
    def forward(self, x, mixture, t):
        return {"velocity": x}


def test_untraceable_network_runs_eagerly():
    traced = ShapeTraced(DictOutput(), trace_after=0)
    x, mixture, t = inputs(2, 100, 0)
    with torch.no_grad():
        first = traced(x, mixture, t)
        second = traced(x, mixture, t)
    assert traced.failed
    assert torch.equal(first["velocity"], x)
    assert torch.equal(second["velocity"], x)


def test_plain_callable_is_called_directly():
    calls = []

    def split(x, mixture, t):
        calls.append(x.shape)
        return x

    traced = ShapeTraced(split, trace_after=0)
    x, mixture, t = inputs(2, 100, 0)
    with torch.no_grad():
        traced(x, mixture, t)
        traced(x, mixture, t)
    assert calls == [x.shape, x.shape]
    assert traced.traces == {}


def test_separation_with_traces_equals_eager_separation():
    waveform = 0.1 * torch.randn(8000 * 30, generator=torch.Generator().manual_seed(3))
    eager = AudioSeparator(small_network(), METADATA)
    eager.traced = ShapeTraced(eager.network, trace_after=10**9)
    fast = AudioSeparator(small_network(), METADATA)

    # 30 s in 4 s chunks with a 3 s hop are 10 chunks: batches of 4, 4 and 2, each for 3 sampler steps.
    # Both batch shapes reach their third call, so each gets a trace.
    expected = eager.separate(waveform, 8000, batch_size=4)
    result = fast.separate(waveform, 8000, batch_size=4)

    assert eager.traced.traces == {}
    assert len(fast.traced.traces) == 2
    assert torch.equal(result, expected)
    # A second file of 6 chunks (batches of 4 and 2) reuses both traces.
    fast.separate(waveform[:8000 * 19], 8000, batch_size=4)
    assert len(fast.traced.traces) == 2


def test_moving_the_separator_drops_its_traces():
    separator = AudioSeparator(small_network(), METADATA)
    separator.separate(0.1 * torch.randn(8000 * 20), 8000, batch_size=4)
    assert separator.traced.traces
    separator.to("cpu")
    assert separator.traced is None
