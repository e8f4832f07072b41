"""The pipeline's fused mask against the straightforward port (tools/bench/peer.py):
the same effective weights and gradients to the bit, for less kept for the backward."""

import copy

import pytest
import torch
from bench.peer import PeerMask, use_peer_masks
from torchvision.models import resnet18

from piggyback.methods.piggyback.method import mask_spec
from piggyback.methods.registry import Hyperparameters
from piggyback.model.masks import MaskRule, WeightMask, add_masks

PAPER = Hyperparameters.for_method("piggyback")  # the registry's threshold and mask scale


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal as bit patterns: -0.0 and 0.0 differ, as a NaN from its payload."""
    return a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32))


def mask_and_weight(kind: str, shape=(64, 32, 3, 3)) -> tuple[WeightMask, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    rule = MaskRule(kind, PAPER.threshold)
    mask = WeightMask(torch.Size(shape), rule, "uniform", PAPER.mask_scale)
    with torch.no_grad():
        mask.mask_real.copy_(torch.randn(shape, generator=generator) * 1e-2)
        flat = mask.mask_real.view(-1)
        flat[:5] = torch.tensor([PAPER.threshold, 0.0, -0.0, -PAPER.threshold, 1.0])
    weight = torch.randn(shape, generator=generator)  # half negative: signed zeros
    return mask, weight


def effective_and_grads(parametrization, mask: WeightMask, weight, train_weight: bool):
    mask.mask_real.grad = None
    weight = weight.detach().clone().requires_grad_(train_weight)
    effective = parametrization(weight)
    upstream = torch.randn(weight.shape, generator=torch.Generator().manual_seed(1))
    effective.backward(upstream)
    return effective.detach(), mask.mask_real.grad.clone(), weight.grad


@pytest.mark.parametrize("kind", ["binary", "ternary"])
@pytest.mark.parametrize("train_weight", [False, True])
def test_values_and_gradients_equal_the_straightforward_ports_to_the_bit(kind, train_weight):
    mask, weight = mask_and_weight(kind)
    ours = effective_and_grads(mask, mask, weight, train_weight)
    peer = effective_and_grads(PeerMask(mask), mask, weight, train_weight)
    assert same_bits(ours[0], peer[0])
    assert (ours[0] == 0).any() and ours[0].signbit().any()
    assert same_bits(ours[1], peer[1])
    if train_weight:
        assert same_bits(ours[2], peer[2])
    else:
        assert ours[2] is None and peer[2] is None


@pytest.mark.parametrize("kind", ["binary", "ternary"])
def test_evaluation_computes_the_same_weights(kind):
    mask, weight = mask_and_weight(kind)
    with torch.no_grad():
        assert same_bits(mask(weight), PeerMask(mask)(weight))


def saved_for_backward(parametrization, weight: torch.Tensor) -> list[torch.Tensor]:
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        parametrization(weight)
    return saved


def test_a_frozen_weights_backward_keeps_only_the_weight():
    mask, weight = mask_and_weight("binary")
    (kept,) = saved_for_backward(mask, weight)
    assert kept is weight  # autograd's product keeps as little: the port's cost is its passes


@pytest.mark.parametrize("kind", ["binary", "ternary"])
def test_a_trained_weight_keeps_its_discrete_mask_in_one_byte(kind):
    mask, weight = mask_and_weight(kind)
    kept = saved_for_backward(mask, weight.requires_grad_())
    assert sorted(t.element_size() for t in kept) == [1, 4]
    peer_kept = saved_for_backward(PeerMask(mask), weight)
    assert sorted(t.element_size() for t in peer_kept) == [4, 4]  # a float mask


def test_a_masked_backbones_gradients_equal_the_ports_to_the_bit():
    torch.manual_seed(0)
    ours = resnet18(num_classes=10).eval()
    ours.requires_grad_(False)
    masks = add_masks(ours, mask_spec(mask_init="uniform"))
    peer = copy.deepcopy(ours)
    assert use_peer_masks(peer) == len(masks)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for model in (ours, peer):
        model(images).square().sum().backward()
    peer_masks = dict(peer.named_parameters())
    for name, parameter in ours.named_parameters():
        if parameter.requires_grad:
            assert same_bits(parameter.grad, peer_masks[name].grad), name
