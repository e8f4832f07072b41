"""The multi-task model: every task of a packed file served from one backbone in memory.

```python
model = MultiTaskModel.load("run0.safetensors", weights="resnet50.pth")
model.tasks["flowers"].classes            # class names, label i first
x = model.preprocess("flowers", image)    # a PIL image as the task was trained on it
model.set_task("flowers")                 # switch in place
logits = model(x[None])                   # the active task
outputs = model.forward_mixed([x, y], ["flowers", "cubs_cropped"])  # one task a sample
```

Each task is the network evaluation builds from the pack (``stages.evaluation.task_model``),
kept as what it changes over what all tasks share (``shared_weights``): a Piggyback task
costs its bit planes and its head. Works for every method's packs and the authors'
imported masks. A switch rewrites the masked weights from the kept base in one pass, so
a forward pass costs exactly the plain backbone's (docs/performance.md, "Serving tasks").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from piggyback.data.transforms import PreprocessingError, TaskTransform
from piggyback.model.backbones import ArchSpec, TaskModel
from piggyback.packs.packed_file import PackedFile, PackError, read_pack
from piggyback.stages.evaluation import open_pack, task_model
from piggyback.tasks.shared_weights import FlatWeights, TaskWeights, share_weights


@dataclass(frozen=True)
class TaskInfo:
    """What a caller needs to use a task: its class names (label ``i`` is ``classes[i]``)
    and how its images are preprocessed (None where neither the pack nor the caller says)."""

    name: str
    classes: list[str]
    preprocessing: TaskTransform | None

    def required_preprocessing(self) -> TaskTransform:
        if self.preprocessing is None:
            raise PreprocessingError(
                f"the pack does not record how task {self.name!r} preprocesses its images "
                "(packed before it was recorded, or imported): give the image size and "
                "transform style its config says"
            )
        return self.preprocessing


class MultiTaskModel(nn.Module):
    """A packed file's tasks over one backbone; one task is active at a time."""

    def __init__(
        self,
        models: dict[str, TaskModel],
        flat: FlatWeights,
        weights: dict[str, TaskWeights],
        infos: dict[str, TaskInfo],
        source: dict[str, Any],
    ):
        super().__init__()
        first = next(iter(models.values()))
        self.backbone = first.backbone.eval().requires_grad_(False)
        self._models = {task: model.eval().requires_grad_(False) for task, model in models.items()}
        self._flat, self._weights, self._infos = flat, weights, infos
        self._state = self.backbone.state_dict()  # views of the live tensors, by name
        self._transforms: dict[str, Any] = {}
        self.source = source
        self.active_task = next(reversed(models))  # the backbone holds the last task loaded
        self.set_task(next(iter(models)))

    @classmethod
    def load(
        cls,
        pack: Path | str | PackedFile,
        weights: str | Path,
        *,
        tasks: Sequence[str] | None = None,
        arch: str | None = None,
        builder: str | None = None,
        head: str | None = None,
        weights_dir: Path | None = None,
        device: torch.device | None = None,
        preprocessing: TaskTransform | None = None,
        class_names: Mapping[str, list[str]] | None = None,
    ) -> MultiTaskModel:
        """The pack's tasks (or those named) over the backbone ``weights``, which must be the
        ones the tasks were trained on (their sha256 is checked). ``arch`` (default: the
        pack's) is checked against the pack; ``builder`` and ``head`` as in the arch's config
        entry. ``preprocessing`` serves tasks whose pack does not record theirs (packs made
        before it was recorded, imported ones) and must agree with those that do;
        ``class_names`` names the classes of tasks whose pack holds only their count."""
        packed = pack if isinstance(pack, PackedFile) else read_pack(Path(pack))
        manifest = packed.manifest
        selected = list(manifest["ordering"]) if tasks is None else list(dict.fromkeys(tasks))
        if not selected:
            raise PackError(f"no task of {packed.path} was asked for")
        infos = {
            task: task_info(packed, task, preprocessing, (class_names or {}).get(task))
            for task in selected
        }
        arch = arch or manifest["arch"]
        spec = ArchSpec(builder or arch, str(weights), head)
        opened = open_pack(packed, arch, spec, weights, weights_dir, device)
        models = {}

        def load_task(task: str) -> None:
            models[task] = task_model(opened, task)

        flat, task_weights = share_weights(opened.backbone, selected, load_task)
        source = {
            "pack": str(packed.path),
            "arch": arch,
            "method": manifest["method"],
            "backbone_sha256": manifest["backbone_sha256"],
            "content_sha256": manifest["content_sha256"],
        }
        return cls(models, flat, task_weights, infos, source)

    @property
    def tasks(self) -> dict[str, TaskInfo]:
        return dict(self._infos)

    def set_task(self, task: str) -> None:
        """Make ``task`` the active one: its weights written into the backbone in place."""
        self._require(task)
        if task == self.active_task:
            return
        weights = self._weights[task]
        self._flat.write(weights)
        with torch.no_grad():
            for name, tensor in weights.others.items():
                self._state[name].copy_(tensor)
        self.active_task = task

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The active task's logits for a batch of preprocessed images."""
        return self._models[self.active_task](images)

    def forward_mixed(
        self, images: torch.Tensor | Sequence[torch.Tensor], tasks: Sequence[str]
    ) -> list[torch.Tensor]:
        """Each sample through its own task: ``images`` (a batch, or one tensor a sample)
        grouped by task inside, and each sample's logits returned in the input's order.
        The active task runs last, so that it is still active afterwards."""
        if len(images) != len(tasks):
            raise ValueError(f"{len(images)} images but {len(tasks)} task names")
        groups: dict[str, list[int]] = {}
        for index, task in enumerate(tasks):
            groups.setdefault(self._require(task), []).append(index)
        active = self.active_task
        order = sorted(groups, key=lambda task: task == active)
        outputs: list[torch.Tensor | None] = [None] * len(tasks)
        for task in order:
            indices = groups[task]
            if isinstance(images, torch.Tensor):
                batch = images[indices]
            else:
                batch = torch.stack([images[i] for i in indices])
            self.set_task(task)
            for index, logits in zip(indices, self(batch), strict=True):
                outputs[index] = logits
        self.set_task(active)
        return outputs

    def preprocess(self, task: str, image: Image.Image) -> torch.Tensor:
        """An RGB image as the network's input for ``task``, as its test images were."""
        transform = self._transforms.get(task)
        if transform is None:
            preprocessing = self._infos[self._require(task)].required_preprocessing()
            transform = self._transforms[task] = preprocessing.build(train=False)
        return transform(image)

    def memory(self) -> dict[str, Any]:
        """Bytes held: the live backbone, the base the masks apply to, and per task what
        it adds (its planes or weights, and its head)."""
        masked = {name for name, _, _ in self._flat.layers}
        backbone = self._flat.live.numel() * self._flat.live.element_size() + sum(
            t.numel() * t.element_size() for n, t in self._state.items() if n not in masked
        )
        base = self._flat.base
        return {
            "backbone": backbone,
            "base": 0 if base is None else base.numel() * base.element_size(),
            "masked_weights": self._flat.masked_count,
            "tasks": {task: weights.nbytes() for task, weights in self._weights.items()},
            "heads": {
                task: sum(p.numel() * p.element_size() for p in model.head.state_dict().values())
                for task, model in self._models.items()
            },
        }

    def _require(self, task: str) -> str:
        if task not in self._models:
            held = ", ".join(self._models)
            raise PackError(f"{self.source['pack']} has no task {task!r} loaded; known: {held}")
        return task


def task_info(
    packed: PackedFile,
    task: str,
    given: TaskTransform | None,
    names: list[str] | None,
) -> TaskInfo:
    """A task's classes and preprocessing, from the pack, else from the caller."""
    entry = packed.manifest["tasks"][packed.require(task)]
    classes = entry["classes"]
    if isinstance(classes, int):  # the authors' released masks: only the count
        if names is not None and len(names) != classes:
            raise PackError(
                f"task {task!r} of {packed.path} has {classes} classes, but {len(names)} "
                "class names were given"
            )
        classes = list(names) if names is not None else [str(i) for i in range(classes)]
    recorded = entry.get("preprocessing")
    preprocessing = TaskTransform.from_dict(recorded) if recorded else given
    if recorded and given is not None and given != preprocessing:
        raise PreprocessingError(
            f"task {task!r} of {packed.path} was trained with {preprocessing.as_dict()}, "
            f"not the {given.as_dict()} given: leave the preprocessing out, the pack says it"
        )
    return TaskInfo(task, classes, preprocessing)
