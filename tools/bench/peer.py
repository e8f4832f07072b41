"""The straightforward port of the mask, the way the authors' layers compute it: the
real mask thresholded to a float tensor by a straight-through function, then multiplied
by the weight with ordinary autograd, which keeps both factors for the product's
gradient. The benchmark times it against the pipeline's fused mask; the tests pin the
pipeline's values and gradients to it."""

from __future__ import annotations

import statistics

import torch
from torch import nn
from torch.nn.utils import parametrize

from bench.throughput import BenchSettings, method_step, synthetic_batch, timed_rates
from piggyback.methods.run import SpeedOptions
from piggyback.model.masks import WeightMask


class _StraightThroughThreshold(torch.autograd.Function):
    """Forward: the float mask (1 above the threshold; ternary: -1 below zero, else 0).
    Backward: the incoming gradient passed to the real mask unchanged."""

    @staticmethod
    def forward(ctx, mask_real, kind, threshold):
        discrete = (mask_real > threshold).float()
        if kind == "ternary":
            discrete = discrete - (mask_real < 0).float()
        return discrete

    @staticmethod
    def backward(ctx, grad_discrete):
        return grad_discrete, None, None


class PeerMask(nn.Module):
    """A parametrization over the same real mask as a ``WeightMask`` (the optimiser's
    parameter), computed the straightforward way."""

    def __init__(self, mask: WeightMask):
        super().__init__()
        self.mask_real = mask.mask_real
        self.kind, self.threshold = mask.rule.kind, mask.rule.threshold

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        discrete = _StraightThroughThreshold.apply(self.mask_real, self.kind, self.threshold)
        return discrete * weight


def use_peer_masks(backbone: nn.Module) -> int:
    """Swap every ``WeightMask`` of ``backbone`` for a ``PeerMask`` over the same real
    mask, in place; returns how many were swapped."""
    swapped = 0
    for module in backbone.modules():
        if not parametrize.is_parametrized(module):
            continue
        for parametrizations in module.parametrizations.values():
            for index, mask in enumerate(parametrizations):
                if isinstance(mask, WeightMask):
                    parametrizations[index] = PeerMask(mask)
                    swapped += 1
    return swapped


def peer_images_per_second(
    arch: str, settings: BenchSettings, device: torch.device, speed: SpeedOptions
) -> float:
    """Piggyback's training step with the port's masks: the same backbone, batch,
    optimiser (over the same real masks) and switches as the pipeline's."""
    step = method_step(arch, "piggyback", settings, device, speed)
    use_peer_masks(step.model.backbone)
    images, labels = synthetic_batch(settings.batch_size, settings, device, speed.memory_format)
    rates = timed_rates(lambda: step(images, labels), settings.batch_size, settings, device)
    return statistics.median(rates)
