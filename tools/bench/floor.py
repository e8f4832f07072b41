"""The least a mask can add to a training step, measured on an arch's real weight
shapes: the mask's forward (read mask and weight, write the effective weight), its
gradient (read the effective weight's gradient and the weight, write the mask's), and
the optimiser over the mask entries in place of fine-tuning's over the weights. The
forward and backward of the network itself are fine-tuning's (both need the gradient of
the effective weights), so fine-tuning's step plus this is the floor of a masked step."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch import nn

from bench.throughput import BenchSettings, timed_rates
from piggyback.methods.registry import Hyperparameters
from piggyback.methods.run import SpeedOptions
from piggyback.model.backbones import ArchSpec, build_task_model
from piggyback.model.masks import masked_parameters
from piggyback.training.loop import make_optimizer


def floor_seconds(
    arch: str, settings: BenchSettings, device: torch.device, speed: SpeedOptions
) -> dict[str, float]:
    """Seconds per step of each element-wise part, and ``added_s``, what they add to
    fine-tuning's step: mask passes + Adam over the masks - SGD over the weights."""
    model = build_task_model(ArchSpec(arch), settings.classes, weights="random")
    shapes = [entry.shape for entry in masked_parameters(model.backbone).values()]
    del model
    weights = [torch.full(shape, 0.5, device=device) for shape in shapes]
    incoming = [torch.full(shape, 1e-3, device=device) for shape in shapes]
    effective = [torch.empty_like(weight) for weight in weights]
    scale = Hyperparameters.for_method("piggyback").mask_scale
    masks = [nn.Parameter(torch.full_like(w, scale)) for w in weights]
    for mask in masks:
        mask.grad = torch.empty_like(mask)
    trained = [nn.Parameter(weight) for weight in weights]  # fine-tuning's, in place
    for weight, grad in zip(trained, incoming, strict=True):
        weight.grad = grad

    @torch.no_grad()
    def mask_passes():
        for mask, weight, out in zip(masks, weights, effective, strict=True):
            torch.mul(mask, weight, out=out)
        for mask, weight, grad in zip(masks, weights, incoming, strict=True):
            torch.mul(grad, weight, out=mask.grad)

    mask_optimizer = _optimizer("piggyback", masks, speed)
    weight_optimizer = _optimizer("finetune", trained, speed)
    parts = {
        "mask_passes_s": _seconds(mask_passes, settings, device),
        "mask_optimizer_s": _seconds(mask_optimizer.step, settings, device),
        "weight_optimizer_s": _seconds(weight_optimizer.step, settings, device),
    }
    added = parts["mask_passes_s"] + parts["mask_optimizer_s"] - parts["weight_optimizer_s"]
    return {**parts, "added_s": added}


def floor_images_per_second(finetune_img_s: float, added_s: float, batch_size: int) -> float:
    """The masked step's ceiling: fine-tuning's step time plus the floor's."""
    return batch_size / (batch_size / finetune_img_s + added_s)


def _optimizer(method: str, parameters: list[nn.Parameter], speed: SpeedOptions):
    hp = Hyperparameters.for_method(method)
    return make_optimizer([{"params": parameters, "base_lr": hp.lr}], hp, speed.fused_optimizer)


def _seconds(step: Callable[[], object], settings: BenchSettings, device: torch.device) -> float:
    return 1 / statistics.median(timed_rates(step, 1, settings, device))
