"""Piggyback: a real-valued mask per backbone weight, thresholded to {0, 1} (or {-1, 0, 1}
for the ternary variant) in the forward pass, learned with straight-through gradients,
and a new head; the backbone itself never changes (BatchNorm in eval mode).

Packed, a task costs one bit plane per masked weight (two for ternary masks), or less
with entropy coding: see docs/pack-format.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from piggyback.methods.base import Method
from piggyback.methods.registry import Hyperparameters, load_method
from piggyback.model.checkpoints import CheckpointError, TaskCheckpoint
from piggyback.model.masks import (
    MaskRule,
    MaskSpec,
    add_masks,
    bake_masks,
    mask_coverage,
    masked_weights,
    threshold_mask,
)
from piggyback.packs.entropy import entropy_bits


class Piggyback(Method):
    def __init__(self, entry, hp):
        super().__init__(entry, hp)
        self.kind = entry.options["mask_kind"]
        self.spec = MaskSpec(MaskRule(self.kind, hp.threshold), hp.mask_init, hp.mask_scale)

    def prepare(self, model, run) -> None:
        super().prepare(model, run)
        self.coverage = mask_coverage(model.backbone)
        add_masks(model.backbone, self.spec)

    def param_groups(self, model, phase) -> list[dict[str, Any]]:
        masks = [mask.mask_real for mask in masked_weights(model.backbone).values()]
        return [{"params": masks, "base_lr": phase.lr}, *super().param_groups(model, phase)]

    def statistics(self, model) -> dict[str, float]:
        """The share of mask entries that keep their weight (non-zero after thresholding)."""
        masks = masked_weights(model.backbone).values()
        kept = sum(int(mask.discrete().count_nonzero()) for mask in masks)
        return {"mask_density": kept / sum(mask.mask_real.numel() for mask in masks)}

    def trained_state(self, model) -> dict[str, Any]:
        masks = {name: m.mask_real for name, m in masked_weights(model.backbone).items()}
        return {**super().trained_state(model), "masks": masks}

    def load_trained_state(self, model, state: dict[str, Any]) -> None:
        super().load_trained_state(model, state)
        masks = masked_weights(model.backbone)
        with torch.no_grad():
            for name, value in state["masks"].items():
                masks[name].mask_real.copy_(value)

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**super().checkpoint_meta(), "mask": dataclasses.asdict(self.spec.rule)}

    def pack(self, checkpoints, contents) -> None:
        contents.agree_on("mask", [checkpoint.own["mask"] for checkpoint in checkpoints])
        contents.manifest["mask"] = dataclasses.asdict(mask_rule(checkpoints[0]))
        super().pack(checkpoints, contents)

    def pack_task(self, checkpoint, contents) -> dict[str, Any]:
        """A keep plane per layer and, for ternary masks, a sign plane (over the kept
        entries only when entropy-coded)."""
        task, layers, kept, total = checkpoint.dataset, {}, 0, 0
        for name, discrete in discrete_masks(checkpoint).items():
            kept, total = kept + int(discrete.count_nonzero()), total + discrete.numel()
            keep = discrete != 0
            stored = contents.put_plane(f"{task}/mask/{name}", keep)
            if self.kind == "ternary":
                stored += contents.put_plane(f"{task}/sign/{name}", discrete < 0, within=keep)
            layers[name] = list(discrete.shape)
            contents.layers.append(self._layer_stats(task, name, discrete, stored))
        return {"layers": layers, "summary": {"mask_density": kept / total}}

    def apply(self, backbone: nn.Module, packed, task: str) -> None:
        bake_masks(backbone, task_masks(packed, task))

    def _layer_stats(
        self, task: str, name: str, discrete: torch.Tensor, stored_bits: int
    ) -> dict[str, Any]:
        count = discrete.numel()
        zeros = int((discrete == 0).sum())
        negative = int((discrete < 0).sum())
        # 0th-order entropy of the values {-1, 0, 1}: keep plane, then sign among the kept
        entropy = entropy_bits(count - zeros, count) + entropy_bits(negative, count - zeros)
        return {
            "task": task,
            "layer": name,
            "weights": count,
            "zero_pct": 100.0 * zeros / count,
            "minus_one_pct": 100.0 * negative / count,
            "bits_per_weight": 2 if self.kind == "ternary" else 1,
            "entropy_bits_per_weight": entropy / count,
            "stored_bits_per_weight": stored_bits / count,
        }


def mask_spec(method: str = "piggyback", **knobs: Any) -> MaskSpec:
    """The masks ``method`` trains with: its kind, and its knobs (the registry's
    defaults, unless ``knobs`` give others); for attaching masks outside training."""
    return load_method(method, Hyperparameters.for_method(method, **knobs)).spec


def mask_rule(checkpoint: TaskCheckpoint) -> MaskRule:
    """The rule a task's checkpoint records for its masks (a plain dict on disk)."""
    recorded = checkpoint.own["mask"]
    if not (isinstance(recorded, dict) and set(recorded) == {"kind", "threshold"}):
        raise CheckpointError(
            f"the {checkpoint.method} checkpoint of {checkpoint.dataset!r} is not a task "
            f"checkpoint: its mask is {recorded!r}"
        )
    return MaskRule(**recorded)


def discrete_masks(checkpoint: TaskCheckpoint) -> dict[str, torch.Tensor]:
    """The thresholded masks of a trained-task checkpoint, as float {-1, 0, 1}."""
    rule, masks = mask_rule(checkpoint), checkpoint.learned["masks"]
    return {name: threshold_mask(real.float(), rule) for name, real in masks.items()}


def task_masks(packed, task: str) -> dict[str, torch.Tensor]:
    """A packed task's masks as float {-1, 0, 1}, keyed by weight name."""
    masks = {}
    for name, shape in packed.manifest["tasks"][task]["layers"].items():
        keep = packed.plane(f"{task}/mask/{name}", shape)
        mask = keep.float()
        sign_key = f"{task}/sign/{name}"
        if packed.has(sign_key):
            mask = mask * (1 - 2 * packed.plane(sign_key, shape, within=keep).float())
        masks[name] = mask
    return masks


METHOD = Piggyback
