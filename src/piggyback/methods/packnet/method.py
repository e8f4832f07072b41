"""PackNet (Mallya & Lazebnik, CVPR 2018), as its authors' code (arunmallya/packnet) does it.

Every weight matrix that Piggyback masks (``piggyback.model.masks.masked_parameters``) has
an owner: 0 = free, 1 = the source task (ImageNet), k >= 2 = the (k-1)-th task of the
ordering. Tasks are sequential:

- The start prunes the pretrained backbone per layer by weight magnitude
  (``start_prune_fraction``) and, given the source data, retrains the survivors with
  biases and BatchNorm (the only step that trains them).
- Task k takes every free weight, trains them and a new head (gradients of weights owned
  by earlier tasks, biases and BatchNorm fixed, BN in eval mode), keeps the best epoch,
  then frees ``prune_fraction`` of its weights per layer, smallest magnitude first, and
  retrains the survivors, keeping the best epoch with the pruned network as the one to
  beat. The last task of an ordering is not pruned, nor one whose fraction is 0 or less
  (the config may give one fraction per position of the ordering).
- Task k is evaluated with every weight that is free or owned by a later task zeroed,
  which is exactly the network as it was at the end of task k's training.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from piggyback.methods.base import Method
from piggyback.methods.registry import MethodError
from piggyback.methods.run import Phase, TrainingError
from piggyback.model.backbones import reset_head
from piggyback.model.checkpoints import TaskCheckpoint, backbone_state, load_backbone_state
from piggyback.model.masks import mask_coverage, masked_parameters
from piggyback.packs.packed_file import OWNERS_VERSION

FREE, SOURCE = 0, 1
MAX_OWNER = 255  # owners are uint8


class PackNet(Method):
    def __init__(self, entry, hp):
        super().__init__(entry, hp)
        if hp.weight_decay != 0:
            raise MethodError(
                "packnet.weight_decay must be 0: decay would move the weights earlier tasks own"
            )
        self.owners: dict[str, torch.Tensor] = {}
        self.previous: TaskCheckpoint | None = None

    # --- training -------------------------------------------------------------------
    def prepare(self, model, run) -> None:
        self.role, self.last = run.role, run.last_in_ordering
        self.retrains_source = run.role == "start" and run.dataset is not None
        backbone = model.backbone
        self.coverage = mask_coverage(backbone)
        self.layers = masked_parameters(backbone)
        for parameter in backbone.parameters():
            parameter.requires_grad_(self.retrains_source)
        if run.role == "start":
            if run.previous is not None:
                raise TrainingError("the packnet start begins from the backbone, not a task")
            self.task_id, self.chain = SOURCE, []
            self.owners = {
                name: torch.full(layer.shape, SOURCE, dtype=torch.uint8)
                for name, layer in self.layers.items()
            }
            self.start = {"prune_fraction": self.hp.start_prune_fraction, "source": run.dataset}
            # the head is the source task's own, loaded by the caller
        else:
            self._take_over(model, run)
        for layer in self.layers.values():
            layer.parameter.requires_grad_(True)

    def _take_over(self, model, run) -> None:
        """Continue from the previous task: its network and owners; every free weight is
        handed to this task."""
        previous = run.previous
        if previous is None:
            raise TrainingError("a packnet task starts from the previous task's result")
        if previous.method != self.name:
            raise TrainingError(f"the previous result is {previous.method!r}, not packnet")
        if previous.learned["owners"].keys() != self.layers.keys():
            raise TrainingError("the previous result's owner maps do not fit this backbone")
        self.task_id = previous.own["task_id"] + 1
        if self.task_id > MAX_OWNER:
            raise TrainingError(f"packnet holds at most {MAX_OWNER - 1} tasks")
        reset_head(model.head)
        load_backbone_state(model.backbone, previous.learned["weights"])
        self.owners = {name: owner.clone() for name, owner in previous.learned["owners"].items()}
        for owner in self.owners.values():
            owner[owner == FREE] = self.task_id
        self.chain = [*previous.own["chain"], run.dataset]
        self.start = previous.own["start"]
        self.previous = previous

    def phases(self, run) -> list[Phase]:
        hp = self.hp
        if self.role == "start":
            epochs = hp.start_epochs if self.retrains_source else 0
            lr = hp.start_lr
            return [Phase("prune", epochs, lr, lr, hp.start_lr_decay_every, self.retrains_source)]
        phases = [Phase("finetune", hp.epochs, hp.lr, hp.lr_head, hp.lr_decay_every)]
        if freed_fraction(hp.prune_fraction, self.last) > 0:
            lr = hp.prune_lr
            phases.append(Phase("prune", hp.prune_epochs, lr, lr, hp.prune_lr_decay_every, True))
        return phases

    def begin_phase(self, model, phase) -> None:
        if phase.name == "prune":
            hp = self.hp
            self.prune(hp.start_prune_fraction if self.role == "start" else hp.prune_fraction)

    @torch.no_grad()
    def prune(self, fraction: float) -> None:
        """Free, per layer, ``fraction`` of this task's weights: those at or below the
        magnitude of the ``round(fraction * n)``-th smallest, as the authors' code does
        (ties at the cutoff go too); freed weights are set to zero."""
        self._place_owners()
        for name, layer in self.layers.items():
            owner, weight = self.owners[name], layer.parameter
            mine = owner == self.task_id
            rank = round(fraction * int(mine.sum()))
            if rank == 0:
                continue
            cutoff = weight[mine].abs().kthvalue(rank).values
            freed = mine & (weight.abs() <= cutoff)
            owner[freed] = FREE
            weight[freed] = 0

    def param_groups(self, model, phase) -> list[dict[str, Any]]:
        self._place_owners()
        self.weights = [layer.parameter for layer in self.layers.values()]
        self.trainable = [
            (self.owners[name] == self.task_id).to(weight.dtype)
            for name, weight in zip(self.layers, self.weights, strict=True)
        ]
        has_free = any(bool((owner == FREE).any()) for owner in self.owners.values())
        self.kept = (
            [
                (self.owners[name] != FREE).to(weight.dtype)
                for name, weight in zip(self.layers, self.weights, strict=True)
            ]
            if has_free
            else None
        )
        backbone = self.weights
        if self.retrains_source:  # biases and BatchNorm, in the start only
            in_layers = {id(w) for w in self.weights}
            rest = [p for p in model.backbone.parameters() if id(p) not in in_layers]
            backbone = [*backbone, *rest]
        return [{"params": backbone, "base_lr": phase.lr}, *super().param_groups(model, phase)]

    def train_mode(self, model) -> None:
        if self.retrains_source:
            model.train()
        else:
            super().train_mode(model)

    def after_backward(self, model) -> None:
        """Only this task's weights learn: the others' gradients are zeroed."""
        torch._foreach_mul_([weight.grad for weight in self.weights], self.trainable)

    @torch.no_grad()
    def after_step(self, model) -> None:
        """Free weights stay zero (their authors' code resets them after every step)."""
        if self.kept is not None:
            torch._foreach_mul_(self.weights, self.kept)

    def statistics(self, model) -> dict[str, float]:
        total = sum(owner.numel() for owner in self.owners.values())
        owned = sum(int((o == self.task_id).sum()) for o in self.owners.values())
        free = sum(int((o == FREE).sum()) for o in self.owners.values())
        return {"owned_share": owned / total, "free_share": free / total}

    def trained_state(self, model) -> dict[str, Any]:
        state = {"weights": backbone_state(model.backbone), "owners": self.owners}
        return {**super().trained_state(model), **state}

    def load_trained_state(self, model, state: dict[str, Any]) -> None:
        super().load_trained_state(model, state)
        load_backbone_state(model.backbone, state["weights"])
        for name, owner in state["owners"].items():
            self.owners[name].copy_(owner)

    def checkpoint_meta(self) -> dict[str, Any]:
        chain = {"task_id": self.task_id, "chain": self.chain, "start": self.start}
        return {**super().checkpoint_meta(), **chain}

    def check_trained(self, model) -> None:
        """Weights owned by earlier tasks (and the source), biases and BatchNorm are
        bit-identical to the previous task's: earlier tasks cannot change."""
        if self.previous is None:
            return
        before, before_owners = self.previous.learned["weights"], self.previous.learned["owners"]
        for name, value in backbone_state(model.backbone).items():
            value = value.detach().cpu()
            if name in before_owners:
                earlier = before_owners[name] != FREE
                changed = (value != before[name]) | (self.owners[name].cpu() != before_owners[name])
                if (changed & earlier).any():
                    raise TrainingError(f"a weight of {name} owned by an earlier task changed")
            elif not torch.equal(value, before[name]):
                raise TrainingError(f"{name} (fixed after the start) changed during training")

    def _place_owners(self) -> None:
        for name, layer in self.layers.items():
            self.owners[name] = self.owners[name].to(layer.parameter.device)

    # --- packing and evaluation -------------------------------------------------------
    def pack(self, checkpoints, contents) -> None:
        """The network after the last task, every weight's owner at ceil(log2(T + 2))
        bits (free, source and T tasks), and each task's head, in a file of the format
        version that knows owners."""
        _check_chain(checkpoints, contents)
        last = checkpoints[-1]
        bits = max(1, math.ceil(math.log2(len(checkpoints) + 2)))
        for name, value in last.learned["weights"].items():
            contents.put(f"network/{name}", value)
        owners = last.learned["owners"]
        for name, owner in owners.items():
            for bit in range(bits):
                contents.put_plane(f"owners/{bit}/{name}", (owner >> bit) & 1 == 1)
        contents.layers += _ownership_stats(checkpoints, bits)
        contents.manifest.update(
            owner_bits=bits,
            layers={name: list(owner.shape) for name, owner in owners.items()},
            start=last.own["start"],
        )
        contents.minimum_version = OWNERS_VERSION
        super().pack(checkpoints, contents)

    def pack_task(self, checkpoint, contents) -> dict[str, Any]:
        """The task's owner id; its summary, the share of the backbone it owns and the
        share of its weights it freed for later tasks (0: not pruned)."""
        owners, task_id = checkpoint.learned["owners"].values(), checkpoint.own["task_id"]
        owned = sum(int((owner == task_id).sum()) for owner in owners)
        share = owned / sum(owner.numel() for owner in owners)
        freed = freed_fraction(
            checkpoint.hyperparameters["prune_fraction"], bool(checkpoint.last_in_ordering)
        )
        summary = {"owned_share": share, "prune_fraction": freed}
        return {"owner": task_id, "summary": summary}

    def apply(self, backbone: nn.Module, packed, task: str) -> None:
        manifest = packed.manifest
        load_backbone_state(backbone, packed.tensors_under("network/"))
        task_id = manifest["tasks"][task]["owner"]
        layers = masked_parameters(backbone)
        with torch.no_grad():
            for name, shape in manifest["layers"].items():
                owner = torch.zeros(shape, dtype=torch.int16)
                for bit in range(manifest["owner_bits"]):
                    owner |= packed.plane(f"owners/{bit}/{name}", shape).to(torch.int16) << bit
                weight = layers[name].parameter
                weight.mul_(((owner != FREE) & (owner <= task_id)).to(weight))

    # --- using a checkpoint ----------------------------------------------------------
    def trained_backbone(self, checkpoint) -> dict[str, torch.Tensor]:
        return checkpoint.learned["weights"]

    def load_start(self, model, checkpoint) -> dict[str, Any]:
        """The pruned network, and the source task's head if the start retrained it
        (else the pretrained one stays); returns the start's pruning and source."""
        model.backbone.load_state_dict(checkpoint.learned["weights"])
        start = checkpoint.own["start"]
        if start.get("source") is not None:
            model.head.load_state_dict(checkpoint.head)
        return start


def freed_fraction(prune_fraction: float, last_in_ordering: bool) -> float:
    """The share of a task's weights per layer that pruning frees; 0 where the task is
    not pruned: the last of its ordering, or a fraction of 0 or less (the authors'
    scripts give -1)."""
    return 0.0 if last_in_ordering or prune_fraction <= 0 else prune_fraction


def _check_chain(checkpoints: list[TaskCheckpoint], contents) -> None:
    """The checkpoints are one ordering's tasks, in order, each continuing the one before,
    and no task changed what an earlier one owns."""
    last = checkpoints[-1]
    for position, checkpoint in enumerate(checkpoints):
        expected = [c.dataset for c in checkpoints[: position + 1]]
        chain, weights = checkpoint.own["chain"], checkpoint.learned["weights"]
        if chain != expected or checkpoint.own["task_id"] != position + 2:
            contents.fail(
                f"task {checkpoint.dataset!r} continues the chain {chain}, "
                f"not {expected}: give the ordering's checkpoints in order"
            )
        for name, owner in checkpoint.learned["owners"].items():
            kept = owner != FREE
            if not torch.equal(last.learned["weights"][name][kept], weights[name][kept]):
                task = checkpoint.dataset
                contents.fail(f"a weight of {name} that {task!r} owns changed in a later task")


def _ownership_stats(checkpoints: list[TaskCheckpoint], bits: int) -> list[dict[str, Any]]:
    """Per layer, the share of weights each owner holds (free, source, every task)."""
    owners_by_id = {FREE: "free", SOURCE: "source"}
    owners_by_id.update({c.own["task_id"]: c.dataset for c in checkpoints})
    rows = []
    for name, owner in checkpoints[-1].learned["owners"].items():
        counts = torch.bincount(owner.flatten().long(), minlength=len(owners_by_id))
        for task_id, task in owners_by_id.items():
            rows.append(
                {
                    "task": task,
                    "layer": name,
                    "weights": owner.numel(),
                    "owned_pct": 100.0 * int(counts[task_id]) / owner.numel(),
                    "bits_per_weight": bits,
                }
            )
    return rows


METHOD = PackNet
