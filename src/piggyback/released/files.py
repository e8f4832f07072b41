"""The authors' released mask files (``vgg16_binary.pt`` and the like) and pickled
backbones, read through :mod:`piggyback.released.legacy`, every structure checked.

Masks are keyed by the module's position in ``enumerate(shared.modules())`` of the
authors' network; ``module_index_map`` rebuilds their ``shared`` container from a
torchvision backbone to turn those positions into parameter names.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from piggyback.model.masks import masked_parameters
from piggyback.released.legacy import LegacyFileError, PickledModule, read_legacy_file

ARCH_KINDS = ("vgg16", "vgg16_bn", "resnet50", "densenet121")


# The authors' networks have these many conv/linear layers once the ImageNet head is gone;
# a backbone with another count is another arch (or still has its head).
_MASKED_LAYER_COUNT = {"vgg16": 15, "vgg16_bn": 15, "resnet50": 53, "densenet121": 120}


_LINEAR_CLASS = "torch.nn.modules.linear.Linear"

# torchvision 0.1.9 named a dense layer's children 'norm.1', 'conv.1', ...; today 'norm1'.
_DOTTED_DENSE_LAYER_CHILD = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


class ReleasedError(ValueError):
    """A released file cannot be used as asked; the one-line message names the file or
    the layer and says what is wrong."""


@dataclass(frozen=True)
class ReleasedTask:
    """One dataset of a released file: masks by module index, as stored, and the head."""

    masks: dict[int, torch.Tensor]
    head: dict[str, torch.Tensor]


@dataclass(frozen=True)
class ReleasedFile:
    path: Path
    tasks: dict[str, ReleasedTask]


def read_released(path: str | Path) -> ReleasedFile:
    """The masks and heads of one of the authors' files, every structure checked."""
    path = Path(path)
    content = _read(path)
    expected = ("dataset2masks", "dataset2classifiers")
    if not isinstance(content, dict) or not all(key in content for key in expected):
        found = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
        raise ReleasedError(
            f"{path} is not one of the authors' mask files: expected a dict with "
            f"'dataset2masks' and 'dataset2classifiers', found {found}"
        )
    masks, heads = content["dataset2masks"], content["dataset2classifiers"]
    for key, value in zip(expected, (masks, heads), strict=True):
        if not isinstance(value, dict):
            raise ReleasedError(f"{path}: {key} is a {type(value).__name__}, not a dict")
    if set(masks) != set(heads):
        raise ReleasedError(
            f"{path}: datasets with masks {sorted(masks)} differ from datasets with "
            f"classifiers {sorted(heads)}"
        )
    tasks = {
        dataset: ReleasedTask(
            _checked_masks(path, dataset, masks[dataset]),
            _linear_head(path, dataset, heads[dataset]),
        )
        for dataset in masks
    }
    return ReleasedFile(path, tasks)


def module_index_map(arch_kind: str, backbone: nn.Module) -> dict[int, str]:
    """Module index in the authors' ``shared`` network -> weight name in ``backbone``,
    for every conv and linear layer (``backbone`` as ``build_backbone`` returns it)."""
    if arch_kind not in ARCH_KINDS:
        raise ReleasedError(f"unknown arch kind {arch_kind!r}: expected one of {ARCH_KINDS}")
    masked = masked_parameters(backbone)
    if len(masked) != _MASKED_LAYER_COUNT[arch_kind]:
        raise ReleasedError(
            f"a {arch_kind} backbone without its head has {_MASKED_LAYER_COUNT[arch_kind]} "
            f"conv/linear layers; this one has {len(masked)}"
        )
    # the authors' networks hold one weight matrix per layer
    names = {id(entry.module): name for name, entry in masked.items()}
    index_map = {
        index: names[id(module)]
        for index, module in enumerate(_authors_shared(arch_kind, backbone).modules())
        if id(module) in names
    }
    weight_names = set(masked)
    if sorted(index_map.values()) != sorted(weight_names):
        left_out = sorted(weight_names - set(index_map.values()))
        raise ReleasedError(f"the authors' {arch_kind} network leaves out {left_out[:3]}")
    return index_map


def released_task_masks(
    file_masks: dict[int, torch.Tensor], index_map: dict[int, str], backbone: nn.Module
) -> dict[str, torch.Tensor]:
    """A file's byte masks as {weight name: float mask in {-1, 0, 1}} for ``bake_masks``.

    The authors' ternary packing stored -1 as the byte 255 (a cast to ByteTensor), so 255
    decodes to -1; any byte other than 0, 1 or 255 is refused.
    """
    strays = sorted(set(file_masks) - set(index_map))
    if strays:
        raise ReleasedError(
            f"mask for module index {strays[0]} does not fall on a conv or linear layer of "
            f"this backbone (its layers are at indices {min(index_map)}..{max(index_map)}): "
            "is the file for another arch?"
        )
    missing = sorted(set(index_map) - set(file_masks))
    if missing:
        listed = ", ".join(f"{index} ({index_map[index]})" for index in missing[:3])
        raise ReleasedError(f"the file has no mask for {len(missing)} layers: {listed}")
    masked = masked_parameters(backbone)
    decoded = {}
    for index, mask in sorted(file_masks.items()):
        name = index_map[index]
        weight_shape = tuple(masked[name].shape)
        if tuple(mask.shape) != weight_shape:
            raise ReleasedError(
                f"mask at module index {index} has shape {tuple(mask.shape)}, "
                f"but {name} has shape {weight_shape}"
            )
        # Read as signed bytes, 255 is -1: the byte the authors' cast made of -1.
        signed = mask.view(torch.int8)
        low, high = torch.aminmax(signed)
        if low < -1 or high > 1:
            stray = int(mask[(signed < -1) | (signed > 1)][0])
            raise ReleasedError(
                f"mask at module index {index} ({name}) holds the byte {stray}; "
                "the authors' masks hold 0, 1 or 255 (= -1)"
            )
        decoded[name] = signed.to(torch.float32)
    return decoded


def load_backbone_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict, with today's torchvision names, of a pickled whole model (the
    authors' ``pytorch_backbone`` files), read without running code from it."""
    path = Path(path)
    model = _read(path)
    if not isinstance(model, PickledModule):
        raise ReleasedError(f"{path} holds a {type(model).__name__}, not a pickled model")
    state: dict[str, torch.Tensor] = {}
    _flatten(path, model, "", state)
    return {_DOTTED_DENSE_LAYER_CHILD.sub(r"\1\2.", key): value for key, value in state.items()}


def _read(path: Path) -> Any:
    try:
        return read_legacy_file(path)
    except LegacyFileError as error:
        raise ReleasedError(str(error)) from None


def _authors_shared(arch_kind: str, backbone: nn.Module) -> nn.Module:
    """The container the authors' ``networks.py`` called ``shared``, built from the
    backbone's own modules, so that ``modules()`` walks it in their order."""
    try:
        if arch_kind in ("vgg16", "vgg16_bn"):
            has_bn = any(isinstance(m, nn.BatchNorm2d) for m in backbone.features)
            if has_bn != (arch_kind == "vgg16_bn"):
                raise ReleasedError(
                    f"the backbone {'has' if has_bn else 'lacks'} BatchNorm: not a {arch_kind}"
                )
            fc6, fc7 = [m for m in backbone.classifier.children() if isinstance(m, nn.Linear)]
            # Their View(-1, 25088) sits between the features and fc6; Flatten takes its place.
            return nn.Sequential(
                *backbone.features.children(),
                nn.Flatten(),
                fc6,
                nn.ReLU(inplace=True),
                nn.Dropout(),
                fc7,
                nn.ReLU(inplace=True),
                nn.Dropout(),
            )
        if arch_kind == "resnet50":
            return nn.Sequential(
                OrderedDict((n, m) for n, m in backbone.named_children() if n != "fc")
            )
        return backbone.features
    except (AttributeError, TypeError, ValueError) as error:
        raise ReleasedError(f"the backbone is not a torchvision {arch_kind}: {error}") from None


def _checked_masks(path: Path, dataset: str, masks: Any) -> dict[int, torch.Tensor]:
    if not isinstance(masks, dict):
        raise ReleasedError(f"{path}: masks of {dataset} are a {type(masks).__name__}, not a dict")
    for index, mask in masks.items():
        if not isinstance(index, int) or isinstance(index, bool):
            raise ReleasedError(f"{path}: {dataset} has a mask keyed {index!r}, not a module index")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.uint8:
            kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ReleasedError(
                f"{path}: {dataset}'s mask at module index {index} is {kind}, not a ByteTensor"
            )
    return dict(masks)


def _linear_head(path: Path, dataset: str, head: Any) -> dict[str, torch.Tensor]:
    if not isinstance(head, PickledModule) or head.class_path != _LINEAR_CLASS:
        kind = head.class_path if isinstance(head, PickledModule) else type(head).__name__
        raise ReleasedError(f"{path}: the classifier of {dataset} is a {kind}, not nn.Linear")
    weight, bias = (head.section("_parameters").get(name) for name in ("weight", "bias"))
    if not (
        isinstance(weight, torch.Tensor)
        and isinstance(bias, torch.Tensor)
        and weight.dim() == 2
        and tuple(bias.shape) == weight.shape[:1]
    ):
        raise ReleasedError(
            f"{path}: the classifier of {dataset} lacks a 2-D weight and a matching bias"
        )
    return {"weight": weight, "bias": bias}


def _flatten(path: Path, module: PickledModule, prefix: str, state: dict) -> None:
    for section in ("_parameters", "_buffers"):
        for name, value in module.section(section).items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise ReleasedError(f"{path}: {prefix}{name} is a {type(value).__name__}")
            state[prefix + name] = value
    for name, child in module.section("_modules").items():
        if child is None:
            continue
        if not isinstance(child, PickledModule):
            raise ReleasedError(f"{path}: submodule {prefix}{name} is a {type(child).__name__}")
        _flatten(path, child, f"{prefix}{name}.", state)
