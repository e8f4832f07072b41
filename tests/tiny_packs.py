"""Packed files of every method in a second or two, for the tests of trained tasks in use:
ShuffleNet-V2-x0.5 (0.3M weights) with random weights, each task one training step of
its method (the pipeline's own step) on random 32-px images, packed as pack.py packs
them. Piggyback's masks start uniform, so that the packs hold zeros (and, ternary,
minus ones)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from piggyback.data.transforms import TaskTransform
from piggyback.methods.checkpoints import task_checkpoint
from piggyback.methods.registry import Hyperparameters, load_method
from piggyback.methods.run import SpeedOptions, TaskRun
from piggyback.model.backbones import ArchSpec, TaskModel, build_backbone, build_task_model
from piggyback.model.checkpoints import TaskCheckpoint, backbone_sha256
from piggyback.model.masks import masked_weights
from piggyback.stages.packing import pack_checkpoints
from piggyback.training.loop import TrainStep, prepare_training

ARCH = "shufflenet_v2_x0_5"
SIZE = 32
CPU = torch.device("cpu")
PREPROCESSING = TaskTransform("cropped", SIZE)
TASKS = {"digits": ["digit_5", "digit_6", "digit_7", "digit_8", "digit_9"], "shapes": ["a", "b"]}
METHODS = ["piggyback", "piggyback_ternary", "packnet", "finetune", "classifier_only"]


def tiny_weights(out: Path, images: torch.Tensor, arch: str = ARCH) -> Path:
    """Backbone weights whose features differ from image to image: torchvision's random
    init with BatchNorm's statistics measured on ``images`` (its initial ones, 0 and 1,
    leave ShuffleNet's features near zero, and every image gets one class)."""
    backbone = build_backbone(ArchSpec(arch), "random")[0]
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # the average over every batch seen
    with torch.no_grad():
        backbone.train()(images)
    save_file(backbone.state_dict(), str(out))
    return out


def make_pack(
    method: str,
    out: Path,
    weights: Path | str = "random",
    tasks: dict[str, list[str]] | None = None,
    preprocessing: TaskTransform | None = PREPROCESSING,
    arch: str = ARCH,
    mask_keep: float | None = None,
) -> Path:
    """One pack of ``method`` holding ``tasks`` (name -> class names), in order, over the
    backbone ``weights``. Piggyback's masks keep about half their entries; ``mask_keep``
    redraws them at random to keep that share instead (a random mask keeping 70% leaves
    ShuffleNet's features near zero; Piggyback's trained masks keep 90 to 99%)."""
    tasks = tasks or TASKS
    pristine = build_task_model(ArchSpec(arch), 2, weights, arch=arch)
    identity = backbone_sha256(pristine.backbone)
    previous = _packnet_start(pristine, weights, identity) if method == "packnet" else None
    checkpoints = []
    for position, (task, classes) in enumerate(tasks.items()):
        last = position == len(tasks) - 1
        checkpoint = _one_task(
            pristine, weights, method, task, classes, identity, previous, last, preprocessing,
            mask_keep,
        )  # fmt: skip
        checkpoints.append(checkpoint)
        previous = checkpoint if method == "packnet" else None
    ordering = "forward" if method == "packnet" else None
    pack_checkpoints(checkpoints, list(tasks), out, ordering=ordering)
    return out


def _one_task(
    pristine, weights, method, task, classes, identity, previous, last, preprocessing, mask_keep
):
    """One step of each of the method's phases, from a copy of the pristine model."""
    model = build_task_model(ArchSpec(pristine.arch), len(classes), weights, arch=pristine.arch)
    knobs = {"mask_init": "uniform"} if method.startswith("piggyback") else {}
    hp = Hyperparameters.for_method(method, batch_size=4, lr=1e-3, **knobs)
    run = TaskRun(pristine.arch, method, task, classes, 0, hp, "task", previous, last)
    speed = SpeedOptions().resolve(CPU)
    trained, forward = prepare_training(model, run, CPU, speed)
    generator = torch.Generator().manual_seed(len(task))
    images = torch.randn(4, 3, SIZE, SIZE, generator=generator)
    labels = torch.arange(4) % len(classes)
    for phase in trained.phases(run):
        trained.begin_phase(model, phase)
        step = TrainStep.for_phase(model, forward, trained, phase, hp, speed, CPU)
        trained.train_mode(model)
        step(images, labels)
    if mask_keep is not None:
        for mask in masked_weights(model.backbone).values():
            kept = torch.rand(mask.mask_real.shape, generator=generator) < mask_keep
            mask.mask_real.data = torch.where(kept, hp.mask_scale, 0.0)
    fields = {"role": "task", "dataset": task, "epoch": 1, "test_top1_error": 0.0}
    if preprocessing is not None:
        fields["preprocessing"] = preprocessing.as_dict()
    if previous is not None:
        fields["last_in_ordering"] = last
    return _checkpoint(model, trained, classes, identity, **fields)


def _packnet_start(pristine: TaskModel, weights, identity: str) -> TaskCheckpoint:
    """PackNet's start: the backbone pruned by magnitude, nothing retrained."""
    model = build_task_model(ArchSpec(pristine.arch), 2, weights, arch=pristine.arch)
    hp = Hyperparameters.for_method("packnet")
    run = TaskRun(pristine.arch, "packnet", None, [], 0, hp, role="start")
    start = load_method("packnet", hp)
    start.prepare(model, run)
    for phase in start.phases(run):
        start.begin_phase(model, phase)
    return _checkpoint(model, start, 2, identity, role="start", dataset=None)


def _checkpoint(model, method, classes, identity, **fields) -> TaskCheckpoint:
    return task_checkpoint(
        {
            "arch": model.arch,
            "method": method.name,
            "classes": classes,
            "seed": 0,
            "hyperparameters": method.hp.as_dict(),
            "backbone_sha256": identity,
            "head_name": model.head_name,
            **fields,
            **method.checkpoint_meta(),
            **{k: _detached(v) for k, v in method.trained_state(model).items()},
        }
    )


def _detached(value):
    if isinstance(value, dict):
        return {k: v.detach().clone() for k, v in value.items()}
    return value


def make_released_pack(folder: Path, kind: str = "binary") -> Path:
    """The authors' released masks of two tasks, written as their pack.py wrote them over
    a random DenseNet-121 (tests/test_released.py's writer), imported as the workflow
    does."""
    from test_released import authors_file, authors_masks, authors_shared

    from piggyback.released.importing import import_released

    spec = ArchSpec("densenet121")
    backbone = build_backbone(spec, "random")[0]
    shared = authors_shared("densenet121", backbone)
    masks = {
        task: authors_masks(shared, ternary=kind == "ternary", seed=seed)
        for seed, task in enumerate(("flowers", "sketches"))
    }
    torch.manual_seed(0)
    heads = {"flowers": nn.Linear(1024, 4), "sketches": nn.Linear(1024, 3)}
    path = folder / f"densenet121_{kind}.pt"
    authors_file(path, masks, heads)
    out = folder / "released.safetensors"
    import_released(path, "densenet121", spec, out, weights="random")
    return out
