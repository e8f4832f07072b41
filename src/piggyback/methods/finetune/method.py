"""Individual networks: the whole backbone fine-tuned per task, BatchNorm trained.

The paper's upper reference: the best a network of this size does on the task, at the
price of a whole network per task (32 bits per weight)."""

from __future__ import annotations

from typing import Any

from torch import nn

from piggyback.methods.base import Method
from piggyback.model.checkpoints import backbone_state, load_backbone_state


class Finetune(Method):
    def prepare(self, model, run) -> None:
        super().prepare(model, run)
        for parameter in model.backbone.parameters():
            parameter.requires_grad_(True)

    def param_groups(self, model, phase) -> list[dict[str, Any]]:
        backbone = {"params": list(model.backbone.parameters()), "base_lr": phase.lr}
        return [backbone, *super().param_groups(model, phase)]

    def train_mode(self, model) -> None:
        model.train()

    def trained_state(self, model) -> dict[str, Any]:
        return {**super().trained_state(model), "weights": backbone_state(model.backbone)}

    def load_trained_state(self, model, state: dict[str, Any]) -> None:
        super().load_trained_state(model, state)
        load_backbone_state(model.backbone, state["weights"])

    def pack_task(self, checkpoint, contents) -> dict[str, Any]:
        task = checkpoint.dataset
        for name, value in checkpoint.learned["weights"].items():
            contents.put(f"{task}/weights/{name}", value)
        return {}

    def apply(self, backbone: nn.Module, packed, task: str) -> None:
        load_backbone_state(backbone, packed.tensors_under(f"{task}/weights/"))

    def trained_backbone(self, checkpoint) -> dict[str, Any]:
        return checkpoint.learned["weights"]


METHOD = Finetune
