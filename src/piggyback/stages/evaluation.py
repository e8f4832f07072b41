"""Evaluation: the pass over a test split that the training loop makes after each epoch
(``evaluate``), every task of a packed file (``evaluate_pack``), and the backbone's
source task with its own head (``evaluate_source``: the table's ImageNet row). For a
packed file the backbone is built and the file read once; each task is the plain
backbone with the method's change applied (masks baked in, owners' weights, or a whole
network) and the task's head, so evaluation costs exactly what the plain backbone
costs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from piggyback.data.feed import open_task_feed
from piggyback.data.images import DataError
from piggyback.data.transforms import TaskTransform
from piggyback.methods.checkpoints import load_task_checkpoint
from piggyback.methods.registry import load_method
from piggyback.methods.run import SpeedOptions
from piggyback.model.backbones import (
    ArchSpec,
    TaskModel,
    build_backbone,
    build_source_model,
    head_classes,
    new_head,
)
from piggyback.model.checkpoints import CheckpointError, TaskCheckpoint, backbone_sha256
from piggyback.packs.packed_file import PackedFile, PackError, read_pack
from piggyback.stages.per_image import TaskImages


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    speed: SpeedOptions | None = None,
    per_image: bool = False,
) -> dict[str, Any]:
    """Top-1 and top-5 error (%) and the image count; with ``per_image``, also every
    image's label and top-5 classes in loader order (``labels``, ``top5``), kept from the
    same pass. Parametrized weights (masks) are computed once for the whole pass, not
    once per batch: they do not change in it."""
    speed = (speed or SpeedOptions()).resolve(device)
    model.eval()
    with parametrize.cached():
        return _evaluate(model, loader, device, speed, per_image)


def _evaluate(model: nn.Module, loader, device, speed: SpeedOptions, per_image: bool) -> dict:
    top1 = top5 = total = 0
    labels_seen, ranks = [], []
    for images, labels in loader:
        images = images.to(device, non_blocking=True, memory_format=speed.memory_format)
        labels = labels.to(device, non_blocking=True)
        with speed.autocast(device):
            logits = model(images).float()
        k = min(5, logits.shape[1])
        ranked = logits.topk(k, dim=1).indices
        hits = ranked.eq(labels[:, None])
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(dim=1).sum().item()
        total += labels.numel()
        if per_image:
            labels_seen.append(labels.cpu())
            ranks.append(ranked.cpu())
    if total == 0:
        raise ValueError("cannot evaluate on an empty split")
    result: dict[str, Any] = {
        "top1_error": 100.0 * (1 - top1 / total),
        "top5_error": 100.0 * (1 - top5 / total),
        "images": total,
    }
    if per_image:
        result["labels"] = torch.cat(labels_seen).tolist()
        result["top5"] = torch.cat(ranks).tolist()
    return result


@dataclass(frozen=True)
class TaskData:
    """Where a task's test images are (its prepared folder, or its decoded cache) and
    how they are transformed."""

    data: Path
    transform: TaskTransform
    cache: Path | None = None


def evaluate_pack(
    pack_path: Path,
    tasks: dict[str, TaskData],
    arch: str,
    spec: ArchSpec,
    batch_size: int,
    weights: str | Path | None = None,
    weights_dir: Path | None = None,
    device: torch.device | None = None,
    workers: int = 0,
    per_image: bool = False,
) -> dict[str, Any]:
    """Top-1/top-5 error of every task in ``pack_path`` on its test split, in the file's
    order; with ``per_image``, also each task's images (``per_image``: a list of
    :class:`TaskImages`, which the caller writes beside the JSON). Refuses what
    :func:`open_pack` refuses."""
    device = device or torch.device("cpu")
    packed = read_pack(pack_path)
    manifest = packed.manifest
    missing = [task for task in manifest["ordering"] if task not in tasks]
    if missing:
        raise PackError(f"{pack_path} holds {', '.join(missing)}, but no test data was given")
    opened = open_pack(packed, arch, spec, weights, weights_dir, device)
    results, images = [], []
    for position, task in enumerate(manifest["ordering"], start=1):
        entry = manifest["tasks"][task]
        test = _test_batches(tasks[task], batch_size, device, workers)
        _check_classes(test.classes, entry["classes"], task, tasks[task], pack_path)
        model = task_model(opened, task)
        totals = evaluate(model, test.batches, device, per_image=per_image)
        if per_image:
            images.append(_task_images(task, test.paths, totals))
        results.append(
            {
                "dataset": task,
                "position": position,
                "seed": entry["seed"],
                **totals,
                "trained_test_top1_error": entry["trained_test_top1_error"],
                **entry.get("summary", {}),
            }
        )
    return {
        "arch": arch,
        "method": manifest["method"],
        "ordering": manifest.get("ordering_name"),
        "tasks": results,
        **({"start": manifest["start"]} if "start" in manifest else {}),
        **({"per_image": images} if per_image else {}),
    }


@dataclass
class OpenedPack:
    """A packed file, checked, over the backbone its tasks were trained on (built once),
    with the backbone's pristine state, restored before each task."""

    packed: PackedFile
    arch: str
    backbone: nn.Module
    pristine: dict[str, torch.Tensor]
    device: torch.device


def open_pack(
    pack: Path | PackedFile,
    arch: str,
    spec: ArchSpec,
    weights: str | Path | None = None,
    weights_dir: Path | None = None,
    device: torch.device | None = None,
) -> OpenedPack:
    """``pack`` (a path, or a file already read) and its backbone on ``device``. Refuses a
    pack for another arch, and backbone weights other than those the tasks were trained
    from: the masks only mean something on the exact weights they were learned over."""
    device = device or torch.device("cpu")
    packed = pack if isinstance(pack, PackedFile) else read_pack(pack)
    backbone = _backbone(packed, arch, spec, weights, weights_dir)
    backbone.to(device)
    pristine = {k: v.clone() for k, v in backbone.state_dict().items()}
    return OpenedPack(packed, arch, backbone, pristine, device)


def task_model(opened: OpenedPack, task: str) -> TaskModel:
    """A task of a packed file, as evaluation evaluates it: the shared backbone restored
    to its pristine state with the method's change applied in place (masks baked in,
    PackNet's owners, a fine-tuned network), and the task's head. Evaluation, the
    multi-task model and export all build a task's model here."""
    packed = opened.packed
    classes = packed.manifest["tasks"][packed.require(task)]["classes"]
    opened.backbone.load_state_dict(opened.pristine)
    load_method(packed.manifest["method"]).apply(opened.backbone, packed, task)
    head = new_head(opened.backbone, classes if isinstance(classes, int) else len(classes))
    head.load_state_dict(packed.head(task))
    backbone = opened.backbone
    return TaskModel(backbone, head.to(opened.device), opened.arch, backbone.head_name)


def evaluate_source(
    dataset: str,
    data: TaskData,
    arch: str,
    spec: ArchSpec,
    batch_size: int,
    weights: str | Path | None = None,
    weights_dir: Path | None = None,
    device: torch.device | None = None,
    workers: int = 0,
    start: Path | None = None,
) -> dict[str, Any]:
    """The source task (ImageNet; the demo's pretraining set) on its test split, with the
    head the weights were trained with, and its per-image results (``per_image``).
    Without ``start``: the backbone as the methods that keep it hold it. With a
    sequential method's start checkpoint: the network its method loads from it
    (PackNet's: the pruned backbone, and its head if the start retrained the source
    task); what that method's source task stays after any number of later tasks, which
    never change the weights it owns."""
    device = device or torch.device("cpu")
    model = build_source_model(spec, weights, weights_dir, arch)
    network = {"method": None, "network": "backbone", "seed": None}
    if start is not None:
        checkpoint = load_task_checkpoint(start)
        made = _load_start(model, checkpoint, start, weights or spec.weights)
        network = {
            "method": checkpoint.method,
            "network": "start",
            "seed": checkpoint.seed,
            "start": made,
        }
    model.to(device)
    test = _test_batches(data, batch_size, device, workers)
    named = start or weights or spec.weights
    _check_classes(test.classes, head_classes(model.head), dataset, data, named)
    totals = evaluate(model, test.batches, device, per_image=True)
    images = _task_images(dataset, test.paths, totals)
    return {
        "arch": arch,
        "ordering": None,
        "source_task": dataset,
        **network,
        "tasks": [{"dataset": dataset, "position": 0, "seed": network["seed"], **totals}],
        "per_image": [images],
    }


def _load_start(model: TaskModel, checkpoint: TaskCheckpoint, path: Path, weights) -> dict:
    """A start's network in place of the backbone's, as its method loads it: refused
    unless it is a start made from these very backbone weights. Returns how the start
    was made (its method says)."""
    if checkpoint.role != "start":
        raise CheckpointError(
            f"{path} is not the start of a sequential method "
            f"(role {checkpoint.role!r}, method {checkpoint.method!r})"
        )
    identity = backbone_sha256(model.backbone)
    if checkpoint.backbone_sha256 != identity:
        raise CheckpointError(
            f"{path} started from backbone weights with sha256 "
            f"{checkpoint.backbone_sha256[:16]}..., not from {weights} ({identity[:16]}...)"
        )
    return load_method(checkpoint.method).load_start(model, checkpoint)


def _task_images(task: str, paths: list[str], totals: dict[str, Any]) -> TaskImages:
    """The per-image part of ``evaluate``'s result, taken out of it, with the paths."""
    labels, top5 = totals.pop("labels"), totals.pop("top5")
    if len(paths) != len(labels):
        raise DataError(f"task {task!r}: {len(paths)} test images listed, {len(labels)} evaluated")
    return TaskImages(task, paths, labels, top5)


def _backbone(packed: PackedFile, arch, spec, weights, weights_dir) -> nn.Module:
    manifest = packed.manifest
    if manifest["arch"] != arch:
        raise PackError(f"{packed.path} was packed for arch {manifest['arch']!r}, not {arch!r}")
    backbone, _ = build_backbone(spec, weights, weights_dir)
    identity = backbone_sha256(backbone)
    if identity != manifest["backbone_sha256"]:
        raise PackError(
            f"{packed.path} was trained on backbone weights with sha256 "
            f"{manifest['backbone_sha256'][:16]}..., but the weights given "
            f"({weights or spec.weights}) have {identity[:16]}...: the masks would be applied "
            "to different numbers; use the weights the masks were trained on"
        )
    return backbone


@dataclass(frozen=True)
class EvaluationSplit:
    """A task's test batches, in order, with the class names and each image's path
    relative to the split folder (the same through the DataLoader and the cache)."""

    classes: list[str]
    batches: Any
    paths: list[str]


def _test_batches(source: TaskData, batch_size, device, workers) -> EvaluationSplit:
    feed = open_task_feed(
        source.data, source.transform, source.cache, device, workers, splits=("test",)
    )
    return EvaluationSplit(feed.classes, feed.batches("test", batch_size, 0), feed.paths("test"))


def _check_classes(found: list[str], trained: list[str] | int, task, source, pack_path) -> None:
    """The test folder's classes are the task's; a pack that knows only the class count
    (the authors' released masks) takes the folder's names in their sorted order."""
    where = source.cache or f"{source.data}/test"
    if isinstance(trained, int):
        if len(found) != trained:
            raise DataError(
                f"{where} has {len(found)} classes, but task {task!r} in {pack_path} has "
                f"a head for {trained}: wrong dataset folder?"
            )
    elif found != trained:
        raise DataError(
            f"{where} has classes {found[:5]}..., but task {task!r} in {pack_path} was "
            f"trained on {trained[:5]}...: wrong dataset folder?"
        )
