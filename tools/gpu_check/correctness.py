"""The correctness checks run on the GPU before any speed is trusted: the bf16 path
agrees with fp32, masks are thresholded in fp32 under autocast, and an all-ones mask
leaves the plain model's output. Each is registered in ``CHECKS`` with the one-line
summary the goals table shows."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from bench.throughput import BenchSettings, method_step, synthetic_batch

from gpu_check.plan import SWITCHES
from piggyback.methods.piggyback.method import mask_spec
from piggyback.model.backbones import ArchSpec, build_task_model
from piggyback.model.masks import (
    add_masks,
    masked_parameters,
    masked_weights,
    threshold_mask,
)

# The bf16 path against fp32 on the first step of a random network. bf16 keeps 8
# significant bits; on the CPU the mask gradient's relative L2 error was 0.04 (ResNet-50,
# 224 px) to 0.13 (ResNet-18, 32 px), cosine above 0.99. A broken path (a mask thresholded
# in bf16, a gradient lost) is far outside these bounds.
BF16_TOLERANCE = {"loss_rel": 1e-2, "grad_rel_l2": 0.2, "grad_cosine": 0.98}
# An all-ones mask multiplies every weight by exactly 1; kernels chosen for another memory
# layout may still sum in another order, so relative to the largest output:
ALL_ONES_TOLERANCE = {"off": 1e-5, "on": 1e-2}


def first_step(
    arch: str, switches: str, settings: BenchSettings, device: torch.device
) -> tuple[float, torch.Tensor]:
    """The loss and every mask's gradient of the pipeline's first Piggyback step with the
    switch set ``switches``, on a random network (the same for every switch set)."""
    speed = SWITCHES[switches].resolve(device)
    step = method_step(arch, "piggyback", settings, device, speed)
    images, labels = synthetic_batch(settings.batch_size, settings, device, speed.memory_format)
    loss, _ = step(images, labels)
    masks = masked_weights(step.model.backbone).values()
    return float(loss), torch.cat([mask.mask_real.grad.flatten() for mask in masks])


def deviation(
    reference: tuple[float, torch.Tensor], other: tuple[float, torch.Tensor]
) -> dict[str, float]:
    """How far ``other``'s first step (loss, mask gradients) is from ``reference``'s."""
    (reference_loss, reference_grad), (loss, grad) = reference, other
    return {
        "loss_rel": abs(loss - reference_loss) / abs(reference_loss),
        "grad_rel_l2": ((grad - reference_grad).norm() / reference_grad.norm()).item(),
        "grad_cosine": torch.nn.functional.cosine_similarity(grad, reference_grad, 0).item(),
    }


def bf16_agreement(arch: str, settings: BenchSettings, device: torch.device) -> dict[str, Any]:
    """The pipeline's first Piggyback step with the switches on (bf16 autocast) against
    the same step with them off (fp32): the loss and every mask's gradient."""
    fp32, bf16 = (first_step(arch, switches, settings, device) for switches in ("off", "on"))
    figures = {
        "loss_fp32": fp32[0],
        "loss_bf16": bf16[0],
        **deviation(fp32, bf16),
        "tolerance": BF16_TOLERANCE,
    }
    figures["passed"] = (
        figures["loss_rel"] <= BF16_TOLERANCE["loss_rel"]
        and figures["grad_rel_l2"] <= BF16_TOLERANCE["grad_rel_l2"]
        and figures["grad_cosine"] >= BF16_TOLERANCE["grad_cosine"]
    )
    return figures


@torch.no_grad()
def threshold_in_fp32(arch: str, settings: BenchSettings, device: torch.device) -> dict:
    """Under bf16 autocast, a mask's entries at the threshold and at the next fp32 value
    above it must give 0 and 1 (in bf16 both round to one value, so would give one)."""
    speed = SWITCHES["on"].resolve(device)
    model = build_task_model(ArchSpec(arch), settings.classes, weights="random")
    name, mask = next(iter(add_masks(model.backbone, mask_spec()).items()))
    model.to(device, memory_format=speed.memory_format).eval()
    at = torch.tensor(mask.rule.threshold, dtype=torch.float32)
    above = torch.nextafter(at, torch.tensor(1.0))
    alternate = torch.arange(mask.mask_real.numel()).reshape(mask.mask_real.shape) % 2 == 0
    mask.mask_real.copy_(torch.where(alternate, above, at))
    seen = []
    hook = mask.register_forward_hook(lambda module, args, output: seen.append(output))
    images, _ = synthetic_batch(settings.batch_size, settings, device, speed.memory_format)
    with speed.autocast(device):
        model(images)
    hook.remove()
    weight = masked_parameters(model.backbone)[name].parameter
    discrete = threshold_mask(mask.mask_real, mask.rule)
    in_bf16 = threshold_mask(mask.mask_real.bfloat16(), mask.rule)
    figures = {
        "layer": name,
        "masked_weight_dtype": str(seen[0].dtype),
        "equals_fp32_threshold": torch.equal(seen[0], discrete * weight),
        "bf16_would_differ": not torch.equal(in_bf16.float(), discrete),
    }
    figures["passed"] = (
        figures["masked_weight_dtype"] == "torch.float32"
        and figures["equals_fp32_threshold"]
        and figures["bf16_would_differ"]
    )
    return figures


@torch.no_grad()
def all_ones_mask_is_plain(arch: str, settings: BenchSettings, device: torch.device) -> dict:
    """A masked model whose masks are all ones against the plain model, per switch set."""
    figures = {}
    for switches, tolerance in ALL_ONES_TOLERANCE.items():
        speed = SWITCHES[switches].resolve(device)
        speed.set_float32_precision()
        plain = build_task_model(ArchSpec(arch), settings.classes, weights="random")
        masked = copy.deepcopy(plain)
        add_masks(masked.backbone, mask_spec())  # every entry 1e-2, above 5e-3: all ones
        images, _ = synthetic_batch(settings.batch_size, settings, device, speed.memory_format)
        outputs = []
        for model in (plain, masked):
            model.to(device, memory_format=speed.memory_format).eval()
            with speed.autocast(device):
                outputs.append(model(images).float())
        difference = (outputs[1] - outputs[0]).abs().max().item()
        scale = outputs[0].abs().max().item()
        figures[switches] = {
            "max_abs_diff": difference,
            "output_scale": scale,
            "bit_identical": torch.equal(*outputs),
            "tolerance_rel": tolerance,
        }
    figures["passed"] = all(
        f["max_abs_diff"] <= f["tolerance_rel"] * f["output_scale"] for f in figures.values()
    )
    return figures


def _agreement_summary(record: dict) -> str:
    return (
        f"loss {record['loss_rel']:.1e}, mask grad L2 {record['grad_rel_l2']:.3f}, "
        f"cosine {record['grad_cosine']:.4f}"
    )


def _threshold_summary(record: dict) -> str:
    return f"{record['masked_weight_dtype']}, equal: {record['equals_fp32_threshold']}"


def _all_ones_summary(record: dict) -> str:
    return ", ".join(f"{s} diff {record[s]['max_abs_diff']:.1e}" for s in ALL_ONES_TOLERANCE)


@dataclass(frozen=True)
class Check:
    """A correctness check: its figures (with ``passed``) for an arch, batch settings and
    device, and the summary of a record of them."""

    measure: Callable[[str, BenchSettings, torch.device], dict[str, Any]]
    summary: Callable[[dict], str]


# In running order; a new check is one entry here.
CHECKS = {
    "bf16_agreement": Check(bf16_agreement, _agreement_summary),
    "threshold_in_fp32": Check(threshold_in_fp32, _threshold_summary),
    "all_ones_mask": Check(all_ones_mask_is_plain, _all_ones_summary),
}
