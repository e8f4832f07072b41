"""The Piggyback mask: one implementation for training, packing and evaluation.

Every weight matrix of a backbone gets a real-valued mask of the same shape. A weight
matrix is a tensor a layer multiplies its input by: a convolution's kernel, a linear
layer's weight, an attention block's input projections. ``MASKED_PARAMETERS`` names
them per module type; everything that walks the masked set (``add_masks``, ``bake_masks``,
PackNet's owners, the released masks' index maps) asks ``masked_parameters``, and a
backbone holding a tensor shaped like a weight matrix that neither this table nor
``LEFT_ALONE`` knows is refused rather than trained with it silently frozen.

The forward pass uses ``threshold(mask_real) * weight``; the backward pass is
straight-through, so ``d loss / d mask_real = d loss / d effective_weight * weight``.
The mask is attached with ``torch.nn.utils.parametrize`` so any torchvision model
can be wrapped without rewriting it, and ``bake_masks`` turns it into plain weights.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize
from torchvision.models import convnext, maxvit, swin_transformer, vision_transformer

ThresholdKind = Literal["binary", "ternary"]
MaskInit = Literal["1s", "uniform"]


@dataclass(frozen=True)
class MaskRule:
    """How a real-valued mask becomes a discrete one: binary {0, 1} (1 where above the
    threshold) or ternary {-1, 0, 1}. Training thresholds with it, a task's checkpoint
    records it (as a dict) and packing stores the discrete masks it gives. Its values
    come from the method registry, which states the defaults."""

    kind: ThresholdKind
    threshold: float


def _weight(module: nn.Module) -> tuple[str, ...]:
    return ("weight",)


def _attention_projections(module: nn.MultiheadAttention) -> tuple[str, ...]:
    """The packed query/key/value projection, or the three separate ones when the key
    and value widths differ from the query's (then ``in_proj_weight`` is None). The
    output projection is an ``nn.Linear`` child, masked as one."""
    if module._qkv_same_embed_dim:
        return ("in_proj_weight",)
    return ("q_proj_weight", "k_proj_weight", "v_proj_weight")


# Module type -> the names of the weight matrices it multiplies its input by. Subclasses
# count (NonDynamicallyQuantizableLinear is an nn.Linear). A new layer type is one entry.
MASKED_PARAMETERS: dict[type[nn.Module], Callable[[nn.Module], tuple[str, ...]]] = {
    nn.Conv1d: _weight,
    nn.Conv2d: _weight,
    nn.Conv3d: _weight,
    nn.Linear: _weight,
    nn.MultiheadAttention: _attention_projections,
}

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)

# Tensors shaped like a matrix that a layer adds, concatenates or looks up instead of
# multiplying its input by, so they stay frozen as the paper's biases do: (module type,
# parameter name) -> the kind the coverage counts them under.
LEFT_ALONE: dict[tuple[type[nn.Module], str], str] = {
    (vision_transformer.Encoder, "pos_embedding"): "positional embeddings",
    (vision_transformer.VisionTransformer, "class_token"): "class tokens",
    (swin_transformer.ShiftedWindowAttention, "relative_position_bias_table"): (
        "relative-position tables"
    ),
    (maxvit.RelativePositionalMultiHeadAttention, "relative_position_bias_table"): (
        "relative-position tables"
    ),
    (convnext.CNBlock, "layer_scale"): "layer scales",
    (swin_transformer.ShiftedWindowAttentionV2, "logit_scale"): "logit scales",
}


class MaskError(ValueError):
    """A backbone the masks cannot cover as asked; the message names the module."""


def is_weight_matrix_shaped(tensor: torch.Tensor) -> bool:
    """At least two dimensions larger than 1: a (C, 1, 1) layer scale or a per-head
    logit scale is a vector that scales channels, not a matrix."""
    return sum(size > 1 for size in tensor.shape) >= 2


@dataclass(frozen=True)
class MaskedParameter:
    """One weight matrix under a mask: its full parameter name (the mask's key, e.g.
    ``features.0.weight``), the module holding it and the attribute it is held under."""

    name: str
    module: nn.Module
    attribute: str

    @property
    def parameter(self) -> torch.Tensor:
        """The backbone's own tensor (beneath the mask, if one is attached)."""
        if parametrize.is_parametrized(self.module, self.attribute):
            return self.module.parametrizations[self.attribute].original
        return getattr(self.module, self.attribute)

    @property
    def shape(self) -> torch.Size:
        return self.parameter.shape


@dataclass(frozen=True)
class Coverage:
    """How much of a backbone the masks cover: parameters masked, and those left alone
    by kind (norms, biases, positional embeddings...)."""

    masked: int
    left_alone: dict[str, int] = field(default_factory=dict)
    left_alone_matrix_shaped: int = 0  # of left_alone: those with two dimensions > 1

    @property
    def total(self) -> int:
        return self.masked + sum(self.left_alone.values())

    @property
    def masked_share(self) -> float:
        return self.masked / self.total if self.total else 0.0

    @property
    def matrix_share(self) -> float:
        """Masked share of the tensors shaped like weight matrices (the test's >= 99%)."""
        shaped = self.masked + self.left_alone_matrix_shaped
        return self.masked / shaped if shaped else 0.0

    def summary(self) -> str:
        alone = ", ".join(f"{kind} {_count(n)}" for kind, n in sorted(self.left_alone.items()))
        return (
            f"masks cover {_count(self.masked)} of the backbone's {_count(self.total)} "
            f"parameters ({100 * self.masked_share:.2f}%); left alone: {alone or 'none'}"
        )

    def as_dict(self) -> dict:
        return {
            "masked": self.masked,
            "total": self.total,
            "masked_share": round(self.masked_share, 6),
            "matrix_share": round(self.matrix_share, 6),
            "left_alone": dict(sorted(self.left_alone.items())),
        }


def masked_parameters(backbone: nn.Module) -> dict[str, MaskedParameter]:
    """Every weight matrix of ``MASKED_PARAMETERS``, by full parameter name, in
    ``named_modules`` order; raises ``MaskError`` on one the tables do not know."""
    return {
        entry.name: entry
        for entry, kind in _classified(backbone)
        if isinstance(entry, MaskedParameter)
    }


def mask_coverage(backbone: nn.Module) -> Coverage:
    """What the masks cover and what they leave alone (raises as ``masked_parameters``)."""
    masked, left_alone, shaped = 0, Counter(), 0
    for entry, kind in _classified(backbone):
        if isinstance(entry, MaskedParameter):
            masked += entry.parameter.numel()
        else:
            left_alone[kind] += entry.numel()
            shaped += entry.numel() if is_weight_matrix_shaped(entry) else 0
    return Coverage(masked, dict(left_alone), shaped)


def _classified(backbone: nn.Module) -> Iterator[tuple[MaskedParameter | torch.Tensor, str]]:
    """Each backbone parameter once: a ``MaskedParameter`` (kind "masked"), or the tensor
    and the kind it is left alone as."""
    for module_name, module in backbone.named_modules():
        if "parametrizations" in module_name.split("."):
            continue  # a mask's own modules, beneath the parameter it masks
        prefix = f"{module_name}." if module_name else ""
        masked = _masked_attributes(module)
        for attribute, tensor in _own_parameters(module):
            if attribute in masked:
                yield MaskedParameter(prefix + attribute, module, attribute), "masked"
            else:
                yield tensor, _left_alone_kind(module, module_name, attribute, tensor)


def _masked_attributes(module: nn.Module) -> tuple[str, ...]:
    for module_type, attributes in MASKED_PARAMETERS.items():
        if isinstance(module, module_type):
            return attributes(module)
    return ()


def _own_parameters(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The module's direct parameters, a parametrized one as its original tensor."""
    for attribute, tensor in module._parameters.items():
        if tensor is not None:
            yield attribute, tensor
    if parametrize.is_parametrized(module):
        for attribute, parametrization in module.parametrizations.items():
            yield attribute, parametrization.original


def _left_alone_kind(module: nn.Module, module_name: str, attribute: str, tensor) -> str:
    if isinstance(module, NORM_TYPES):
        return "norms"
    for (module_type, name), kind in LEFT_ALONE.items():
        if isinstance(module, module_type) and attribute == name:
            return kind
    if attribute.endswith("bias") or attribute.startswith("bias_"):
        return "biases"
    if not is_weight_matrix_shaped(tensor):
        return "other vectors and scales"
    kind = f"{type(module).__module__}.{type(module).__qualname__}"
    raise MaskError(
        f"backbone module {module_name or '(root)'!r} ({kind}) holds {attribute!r} of shape "
        f"{tuple(tensor.shape)}, a weight matrix the masks do not know: add its type and "
        "the names of the matrices it multiplies by to MASKED_PARAMETERS in "
        "src/piggyback/model/masks.py (or, if it adds or looks the tensor up instead, to "
        'LEFT_ALONE there); README, "Adding a layer type"'
    )


def _count(n: int) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def threshold_mask(mask_real: torch.Tensor, rule: MaskRule) -> torch.Tensor:
    """The discrete mask: binary {0, 1} (1 where > threshold) or ternary {-1, 0, 1}."""
    return discrete_factor(mask_real, rule).to(mask_real.dtype)


def discrete_factor(mask_real: torch.Tensor, rule: MaskRule) -> torch.Tensor:
    """The discrete mask in the narrowest type a weight multiplies by exactly: bool for
    binary, int8 for ternary. ``weight * factor`` equals ``weight * threshold_mask(...)``
    to the bit (signed zeros included); where the backward keeps it (a weight that
    trains), it takes a quarter of a float mask's memory."""
    above = mask_real > rule.threshold
    if rule.kind == "binary":
        return above
    if rule.kind == "ternary":
        return above.to(torch.int8) - (mask_real < 0).to(torch.int8)
    raise ValueError(f"unknown threshold kind {rule.kind!r}: expected 'binary' or 'ternary'")


def masked_product(mask_real: torch.Tensor, weight: torch.Tensor, rule: MaskRule) -> torch.Tensor:
    """``weight * threshold_mask(mask_real, ...)`` to the bit (signed zeros included). A
    binary mask is thresholded straight into the output, as 0.0 and 1.0, and multiplied
    by the weight there in place: a product of a float and a bool tensor takes PyTorch's
    unvectorised mixed-type loop on the CPU (2.5x slower on VGG-16's fc6). A ternary one
    multiplies by its int8 factor."""
    if rule.kind == "binary":
        product = torch.gt(mask_real, rule.threshold, out=torch.empty_like(weight))
        return product.mul_(weight)
    return weight * discrete_factor(mask_real, rule)


class _MaskedWeight(torch.autograd.Function):
    """``threshold(mask_real) * weight`` with the straight-through gradient, fused.

    One node per layer, and the backward keeps only what it reads: the weight for the
    mask's gradient; the discrete mask only for a weight that trains too (a frozen
    backbone never needs it).
    """

    @staticmethod
    def forward(ctx, mask_real, weight, rule):
        train_mask, train_weight = ctx.needs_input_grad[:2]
        factor = discrete_factor(mask_real, rule) if train_weight else None
        ctx.save_for_backward(weight if train_mask else None, factor)
        return masked_product(mask_real, weight, rule)

    @staticmethod
    def backward(ctx, grad_effective):
        weight, factor = ctx.saved_tensors
        grad_mask = grad_effective * weight if weight is not None else None
        grad_weight = grad_effective * factor if factor is not None else None
        return grad_mask, grad_weight, None


class WeightMask(nn.Module):
    """Parametrization holding one weight matrix's real-valued mask (a trainable
    parameter)."""

    def __init__(
        self,
        shape: torch.Size,
        rule: MaskRule,
        init: MaskInit,
        scale: float,
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
        self.rule = rule

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        mask_real = self.mask_real
        if mask_real.dtype != torch.float32:
            mask_real = mask_real.float()
        if not torch.is_grad_enabled():  # evaluation, and parametrize.cached's one pass
            return masked_product(mask_real, weight, self.rule)
        return _MaskedWeight.apply(mask_real, weight, self.rule)

    def discrete(self) -> torch.Tensor:
        return threshold_mask(self.mask_real.detach(), self.rule)


@dataclass(frozen=True)
class MaskSpec:
    """How masks are thresholded and initialised: the values of a masking method's knobs
    (the registry states their defaults)."""

    rule: MaskRule
    init: MaskInit
    scale: float


def add_masks(backbone: nn.Module, spec: MaskSpec) -> dict[str, WeightMask]:
    """Attach a mask to every weight matrix; returns them keyed by parameter name."""
    masks: dict[str, WeightMask] = {}
    for name, entry in masked_parameters(backbone).items():
        weight = entry.parameter
        mask = WeightMask(weight.shape, spec.rule, spec.init, spec.scale, device=weight.device)
        parametrize.register_parametrization(entry.module, entry.attribute, mask, unsafe=True)
        masks[name] = mask
    if not masks:
        raise MaskError("the backbone has no weight matrix to mask (no conv, linear or attention)")
    return masks


def masked_weights(backbone: nn.Module) -> dict[str, WeightMask]:
    """The masks attached to a backbone by ``add_masks``, keyed by parameter name."""
    found = {}
    for module_name, module in backbone.named_modules():
        if parametrize.is_parametrized(module):
            prefix = f"{module_name}." if module_name else ""
            for attribute, parametrizations in module.parametrizations.items():
                for p in parametrizations:
                    if isinstance(p, WeightMask):
                        found[prefix + attribute] = p
    return found


def bake_masks(backbone: nn.Module, discrete_masks: dict[str, torch.Tensor]) -> None:
    """Multiply each weight by its discrete mask in place, once, so evaluation costs
    exactly what the plain backbone costs."""
    entries = masked_parameters(backbone)
    missing = sorted(entries.keys() - discrete_masks.keys())
    unknown = sorted(discrete_masks.keys() - entries.keys())
    if missing or unknown:
        raise MaskError(
            "the masks do not match this backbone's weight matrices: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unknown {unknown[:5]}{'...' if len(unknown) > 5 else ''}"
        )
    with torch.no_grad():
        for name, discrete in discrete_masks.items():
            weight = entries[name].parameter
            if discrete.shape != weight.shape:
                raise MaskError(
                    f"mask for {name} has shape {tuple(discrete.shape)}, "
                    f"the backbone's weight has {tuple(weight.shape)}"
                )
            weight.mul_(discrete.to(weight))
