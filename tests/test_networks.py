import pytest
import torch

from conftest import random_network
from surfsep.networks import SlotTasNet, SlotUNet, build_network


@pytest.mark.parametrize("slots", [2, 3, 4])
def test_permuting_slots_permutes_output(slots):
    network = random_network(channels=(8, 16, 16))
    generator = torch.Generator().manual_seed(slots)
    x = torch.randn(3, slots, 1, 12, 12, generator=generator)
    mixture = torch.rand(3, 1, 12, 12, generator=generator)
    t = torch.rand(3, generator=generator)
    perm = torch.randperm(slots, generator=generator)
    while slots > 1 and torch.equal(perm, torch.arange(slots)):
        perm = torch.randperm(slots, generator=generator)

    with torch.no_grad():
        output = network(x, mixture, t)
        permuted_output = network(x[:, perm], mixture, t)

    torch.testing.assert_close(permuted_output, output[:, perm], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(permuted_output, output, atol=1e-3)


def test_slots_exchange_information():
    network = random_network()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 1, 8, 8, generator=generator)
    mixture = torch.rand(1, 1, 8, 8, generator=generator)
    t = torch.zeros(1)
    changed = x.clone()
    changed[:, 1] += 1.0

    with torch.no_grad():
        before = network(x, mixture, t)[:, 0]
        after = network(changed, mixture, t)[:, 0]

    assert (before - after).abs().max() > 1e-4


@pytest.mark.parametrize("height,width", [(28, 28), (27, 30), (9, 13), (2, 2), (2, 100), (1, 1), (3, 2)])
def test_network_keeps_odd_image_sizes(height, width):
    network = random_network(channels=(8, 16, 16))
    x = torch.randn(2, 3, 1, height, width)
    output = network(x, torch.rand(2, 1, height, width), torch.rand(2))
    assert output.shape == x.shape


def test_build_network_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown network"):
        build_network("transformer", {})


def test_build_network_round_trips_config():
    network = SlotUNet(channels=(8, 16), embedding_size=16)
    rebuilt = build_network("slot-unet", network.config)
    assert rebuilt.config == network.config
    assert rebuilt.load_state_dict(network.state_dict())


def random_tasnet(seed: int = 0) -> SlotTasNet:
    torch.manual_seed(seed)
    network = SlotTasNet(filters=8, bottleneck=8, hidden=16, blocks=3, repeats=1, kernel=16, embedding_size=16)
    with torch.no_grad():
        for parameter in network.parameters():
            if torch.count_nonzero(parameter) == 0:
                parameter.normal_(0.0, 0.1)
    return network.eval()


@pytest.mark.parametrize("slots", [2, 3, 4])
def test_tasnet_permuting_slots_permutes_output(slots):
    network = random_tasnet()
    generator = torch.Generator().manual_seed(slots)
    x = torch.randn(3, slots, 400, generator=generator)
    mixture = torch.randn(3, 400, generator=generator)
    t = torch.rand(3, generator=generator)
    perm = torch.roll(torch.arange(slots), 1)

    with torch.no_grad():
        output = network(x, mixture, t)
        permuted_output = network(x[:, perm], mixture, t)

    torch.testing.assert_close(permuted_output, output[:, perm], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(permuted_output, output, atol=1e-3)


def test_tasnet_slots_exchange_information():
    network = random_tasnet()
    x = torch.randn(1, 2, 300)
    mixture = torch.randn(1, 300)
    changed = x.clone()
    changed[:, 1] += 1.0
    with torch.no_grad():
        before = network(x, mixture, torch.zeros(1))[:, 0]
        after = network(changed, mixture, torch.zeros(1))[:, 0]
    assert (before - after).abs().max() > 1e-4


@pytest.mark.parametrize("length", [1, 7, 8, 9, 16, 1001])
def test_tasnet_keeps_any_length(length):
    network = random_tasnet()
    x = torch.randn(2, 3, length)
    assert network(x, torch.randn(2, length), torch.rand(2)).shape == x.shape


def test_tasnet_rejects_odd_kernel():
    with pytest.raises(ValueError, match="even number"):
        SlotTasNet(kernel=15)
