"""What a method is to the rest of the project: the hooks the training loop calls, what its
checkpoint stores, how its tasks are packed, how a task's evaluation model is built
from the pack and how its start (a sequential method's) is evaluated. The loop, the
packer and the evaluator know no method by name.

A method instance serves one task's training (``prepare`` is called once), or packing,
or evaluation; it keeps whatever state it needs between hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from piggyback.methods.entry import MethodEntry
from piggyback.methods.registry import Hyperparameters
from piggyback.methods.run import Phase, TaskRun, TrainingError
from piggyback.model.backbones import reset_head
from piggyback.model.checkpoints import CheckpointError, TaskCheckpoint, Tensors, backbone_sha256

if TYPE_CHECKING:
    from piggyback.model.backbones import TaskModel
    from piggyback.model.masks import Coverage
    from piggyback.packs.packed_file import PackContents, PackedFile


class Method:
    """The default behaviour: a new head trained on a frozen backbone in eval mode.
    Subclasses override what differs; the names of what its checkpoints and packed files
    hold, and whether the backbone must end unchanged, are facts of the registry entry."""

    coverage: Coverage | None = None  # what the masks cover, for a method that masks

    def __init__(self, entry: MethodEntry, hp: Hyperparameters):
        self.entry = entry
        self.hp = hp
        self._frozen_sha256: str | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    # --- training -------------------------------------------------------------------
    def prepare(self, model: TaskModel, run: TaskRun) -> None:
        """Freeze what the method does not train and attach what it learns; the head
        starts from a fresh initialisation (the caller seeds the generator)."""
        if run.role != "task" or run.previous is not None:
            raise TrainingError(f"{self.name} trains each task on its own: no start, no previous")
        reset_head(model.head)
        for parameter in model.backbone.parameters():
            parameter.requires_grad_(False)
        if self.entry.freezes_backbone:
            self._frozen_sha256 = backbone_sha256(model.backbone)

    def phases(self, run: TaskRun) -> list[Phase]:
        hp = self.hp
        return [Phase("train", hp.epochs, hp.lr, hp.lr_head, hp.lr_decay_every)]

    def begin_phase(self, model: TaskModel, phase: Phase) -> None:
        """Called before a phase's first epoch (not again when resuming inside it)."""

    def param_groups(self, model: TaskModel, phase: Phase) -> list[dict[str, Any]]:
        """The optimiser's groups, backbone side first and the head last, each with the
        phase's ``base_lr``."""
        return [{"params": list(model.head.parameters()), "base_lr": phase.lr_head}]

    def train_mode(self, model: TaskModel) -> None:
        """Train mode, but BatchNorm keeps its statistics (eval mode) unless the method
        trains it."""
        model.train()
        for module in model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()

    def after_backward(self, model: TaskModel) -> None:
        """Between ``backward`` and the optimiser step (PackNet masks gradients here)."""

    def after_step(self, model: TaskModel) -> None:
        """After each optimiser step."""

    def statistics(self, model: TaskModel) -> dict[str, float]:
        """Extra per-epoch metrics columns (the same keys every epoch)."""
        return {}

    def trained_state(self, model: TaskModel) -> dict[str, Any]:
        """What the method learned, as live tensors (the caller copies them): the head,
        and what its entry names ``learned``."""
        return {"head": model.head.state_dict()}

    def load_trained_state(self, model: TaskModel, state: dict[str, Any]) -> None:
        model.head.load_state_dict(state["head"])

    def checkpoint_meta(self) -> dict[str, Any]:
        """Fields of the task checkpoint that packing needs besides the tensors: what its
        entry names ``checkpoint_fields``, and the masks' coverage, which the pack
        records."""
        return {"coverage": self.coverage.as_dict()} if self.coverage is not None else {}

    def check_trained(self, model: TaskModel) -> None:
        """Raise if training changed what the method promises to keep."""
        if self._frozen_sha256 is not None and backbone_sha256(model.backbone) != (
            self._frozen_sha256
        ):
            raise TrainingError("a frozen backbone tensor changed during training")

    # --- packing and evaluation -------------------------------------------------------
    def pack(self, checkpoints: list[TaskCheckpoint], contents: PackContents) -> None:
        """Put every task of ``checkpoints`` (in file order) into ``contents``: its head,
        what ``pack_task`` adds, and its manifest entry; the masks' coverage, if any."""
        if checkpoints[0].coverage is not None:
            contents.agree_on("coverage", [checkpoint.coverage for checkpoint in checkpoints])
            contents.manifest["coverage"] = checkpoints[0].coverage
        for checkpoint in checkpoints:
            task = checkpoint.dataset
            for key, value in checkpoint.head.items():
                contents.put(f"{task}/head/{key}", value)
            contents.add_task(checkpoint, **self.pack_task(checkpoint, contents))

    def pack_task(self, checkpoint: TaskCheckpoint, contents: PackContents) -> dict[str, Any]:
        """Store what the task learned besides its head; returns extra manifest fields."""
        return {}

    def apply(self, backbone: nn.Module, packed: PackedFile, task: str) -> None:
        """Turn the pretrained backbone into ``task``'s, in place (the head is loaded by
        the caller): for classifier-only, nothing changes."""

    # --- using a checkpoint ----------------------------------------------------------
    def trained_backbone(self, checkpoint: TaskCheckpoint) -> Tensors | None:
        """The whole backbone a checkpoint holds, for a method that trains it (what
        ``train.py --export-backbone`` writes); None: the backbone stays the pretrained one."""
        return None

    def load_start(self, model: TaskModel, checkpoint: TaskCheckpoint) -> dict[str, Any]:
        """Put a start of this method (``role: start``) in place of the pretrained model,
        to evaluate the source task as the method's tasks keep it; returns how the start
        was made, which the evaluation records. A method without a start has none to load."""
        raise CheckpointError(f"{self.name} has no start: each of its tasks starts afresh")
