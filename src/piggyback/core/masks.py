"""The Piggyback mask: one implementation for training, packing and evaluation.

Every conv and linear weight of a backbone gets a real-valued mask of the same shape.
The forward pass uses ``threshold(mask_real) * weight``; the backward pass is
straight-through, so ``d loss / d mask_real = d loss / d effective_weight * weight``.
The mask is attached with ``torch.nn.utils.parametrize`` so any torchvision model
can be wrapped without rewriting it, and ``bake_masks`` turns it into plain weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

ThresholdKind = Literal["binary", "ternary"]
MaskInit = Literal["1s", "uniform"]

DEFAULT_THRESHOLD = 5e-3
DEFAULT_MASK_SCALE = 1e-2
MASKED_LAYER_TYPES = (nn.Conv2d, nn.Linear)


def threshold_mask(mask_real: torch.Tensor, kind: ThresholdKind, threshold: float) -> torch.Tensor:
    """The discrete mask: binary {0, 1} (1 where > threshold) or ternary {-1, 0, 1}."""
    above = mask_real > threshold
    if kind == "binary":
        return above.to(mask_real.dtype)
    if kind == "ternary":
        return above.to(mask_real.dtype) - (mask_real < 0).to(mask_real.dtype)
    raise ValueError(f"unknown threshold kind {kind!r}: expected 'binary' or 'ternary'")


class _MaskedWeight(torch.autograd.Function):
    """``threshold(mask_real) * weight`` with the straight-through gradient, fused.

    One function instead of threshold-then-multiply keeps the autograd graph to a
    single node per layer: the mask adds one element-wise product to the step.
    """

    @staticmethod
    def forward(ctx, mask_real, weight, kind, threshold):
        discrete = threshold_mask(mask_real, kind, threshold)
        ctx.save_for_backward(weight, discrete)
        return discrete * weight

    @staticmethod
    def backward(ctx, grad_effective):
        weight, discrete = ctx.saved_tensors
        grad_mask = grad_effective * weight if ctx.needs_input_grad[0] else None
        grad_weight = grad_effective * discrete if ctx.needs_input_grad[1] else None
        return grad_mask, grad_weight, None, None


class WeightMask(nn.Module):
    """Parametrization holding one layer's real-valued mask (a trainable parameter)."""

    def __init__(
        self,
        shape: torch.Size,
        kind: ThresholdKind = "binary",
        threshold: float = DEFAULT_THRESHOLD,
        init: MaskInit = "1s",
        scale: float = DEFAULT_MASK_SCALE,
        device: torch.device | None = None,
    ):
        super().__init__()
        if init == "1s":
            mask_real = torch.full(shape, scale, device=device)
        elif init == "uniform":
            mask_real = torch.empty(shape, device=device).uniform_(-scale, scale)
        else:
            raise ValueError(f"unknown mask init {init!r}: expected '1s' or 'uniform'")
        self.mask_real = nn.Parameter(mask_real)
        self.kind = kind
        self.threshold = threshold

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        mask_real = self.mask_real
        if mask_real.dtype != torch.float32:
            mask_real = mask_real.float()
        return _MaskedWeight.apply(mask_real, weight, self.kind, self.threshold)

    def discrete(self) -> torch.Tensor:
        return threshold_mask(self.mask_real.detach(), self.kind, self.threshold)


@dataclass(frozen=True)
class MaskSpec:
    """How masks are thresholded and initialised (the paper's defaults)."""

    kind: ThresholdKind = "binary"
    threshold: float = DEFAULT_THRESHOLD
    init: MaskInit = "1s"
    scale: float = DEFAULT_MASK_SCALE


def maskable_layers(backbone: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every conv and linear layer, by module name, in ``named_modules`` order."""
    for name, module in backbone.named_modules():
        if isinstance(module, MASKED_LAYER_TYPES):
            yield name, module


def add_masks(backbone: nn.Module, spec: MaskSpec) -> dict[str, WeightMask]:
    """Attach a mask to every conv/linear weight; returns them keyed by weight name."""
    masks: dict[str, WeightMask] = {}
    for name, module in list(maskable_layers(backbone)):
        mask = WeightMask(
            module.weight.shape,
            spec.kind,
            spec.threshold,
            spec.init,
            spec.scale,
            device=module.weight.device,
        )
        parametrize.register_parametrization(module, "weight", mask, unsafe=True)
        masks[_weight_name(name)] = mask
    if not masks:
        raise ValueError("the backbone has no conv or linear layer to mask")
    return masks


def masked_weights(backbone: nn.Module) -> dict[str, WeightMask]:
    """The masks attached to a backbone by ``add_masks``, keyed by weight name."""
    found = {}
    for name, module in backbone.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, WeightMask):
                    found[_weight_name(name)] = p
    return found


def remove_masks(backbone: nn.Module) -> None:
    """Detach the masks, leaving the original (unmasked) weights in place."""
    for module in backbone.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


def bake_masks(backbone: nn.Module, discrete_masks: dict[str, torch.Tensor]) -> None:
    """Multiply each weight by its discrete mask in place, once, so evaluation costs
    exactly what the plain backbone costs."""
    modules = dict(backbone.named_modules())
    expected = {_weight_name(n) for n, _ in maskable_layers(backbone)}
    missing = sorted(expected - discrete_masks.keys())
    unknown = sorted(discrete_masks.keys() - expected)
    if missing or unknown:
        raise ValueError(
            "the masks do not match this backbone's layers: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unknown {unknown[:5]}{'...' if len(unknown) > 5 else ''}"
        )
    with torch.no_grad():
        for weight_name, discrete in discrete_masks.items():
            module = modules[weight_name.removesuffix(".weight")]
            if discrete.shape != module.weight.shape:
                raise ValueError(
                    f"mask for {weight_name} has shape {tuple(discrete.shape)}, "
                    f"the backbone's weight has {tuple(module.weight.shape)}"
                )
            module.weight.mul_(discrete.to(module.weight))


def _weight_name(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"
