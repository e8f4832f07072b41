"""Evaluation: the pass over a test split that the training loop makes after each epoch
(``evaluate``), and every task of a packed file (``evaluate_pack``). For a packed file the
backbone is built and the file read once; each task is the plain backbone with the
method's change applied (masks baked in, owners' weights, or a whole network) and the
task's head, so evaluation costs exactly what the plain backbone costs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from piggyback.core.backbones import ArchSpec, TaskModel, build_backbone
from piggyback.core.checkpoints import backbone_sha256
from piggyback.core.packed_file import PackedFile, PackError, read_pack
from piggyback.core.registry import load_method
from piggyback.core.run import SpeedOptions
from piggyback.data.datasets import DataError
from piggyback.data.feed import open_task_feed
from piggyback.data.transforms import PAPER_PREPROCESSING, Preprocessing, TransformStyle


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, device: torch.device, speed: SpeedOptions | None = None
) -> dict[str, float]:
    """Top-1 and top-5 error (%) and the image count. Parametrized weights (masks) are
    computed once for the whole pass, not once per batch: they do not change in it."""
    speed = (speed or SpeedOptions()).resolve(device)
    model.eval()
    with parametrize.cached():
        return _evaluate(model, loader, device, speed)


def _evaluate(model: nn.Module, loader, device: torch.device, speed: SpeedOptions) -> dict:
    top1 = top5 = total = 0
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
    if total == 0:
        raise ValueError("cannot evaluate on an empty split")
    return {
        "top1_error": 100.0 * (1 - top1 / total),
        "top5_error": 100.0 * (1 - top5 / total),
        "images": total,
    }


@dataclass(frozen=True)
class TaskData:
    """Where a task's test images are (its prepared folder, or its decoded cache) and
    how they are transformed."""

    data: Path
    transform: TransformStyle
    cache: Path | None = None
    preprocessing: Preprocessing = PAPER_PREPROCESSING


def evaluate_pack(
    pack_path: Path,
    tasks: dict[str, TaskData],
    arch: str,
    spec: ArchSpec,
    image_size: int,
    batch_size: int,
    weights: str | Path | None = None,
    weights_dir: Path | None = None,
    device: torch.device | None = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Top-1/top-5 error of every task in ``pack_path`` on its test split, in the file's
    order. Refuses another arch, and backbone weights other than those the tasks were
    trained from: the masks only mean something on the exact weights they were learned
    over."""
    device = device or torch.device("cpu")
    packed = read_pack(pack_path)
    manifest = packed.manifest
    missing = [task for task in manifest["ordering"] if task not in tasks]
    if missing:
        raise PackError(f"{pack_path} holds {', '.join(missing)}, but no test data was given")
    backbone, features = _backbone(packed, arch, spec, weights, weights_dir)
    backbone.to(device)
    pristine = {k: v.clone() for k, v in backbone.state_dict().items()}
    method = load_method(manifest["method"])
    results = []
    for position, task in enumerate(manifest["ordering"], start=1):
        backbone.load_state_dict(pristine)
        method.apply(backbone, packed, task)
        entry = manifest["tasks"][task]
        classes, batches = _test_batches(tasks[task], image_size, batch_size, device, workers)
        _check_classes(classes, entry["classes"], task, tasks[task], pack_path)
        head = nn.Linear(features, len(classes))
        head.load_state_dict(packed.head(task))
        model = TaskModel(backbone, head.to(device), arch, backbone.head_name)
        results.append(
            {
                "dataset": task,
                "position": position,
                "seed": entry["seed"],
                **evaluate(model, batches, device),
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
    }


def _backbone(packed: PackedFile, arch, spec, weights, weights_dir) -> tuple[nn.Module, int]:
    manifest = packed.manifest
    if manifest["arch"] != arch:
        raise PackError(f"{packed.path} was packed for arch {manifest['arch']!r}, not {arch!r}")
    backbone, features = build_backbone(spec, weights, weights_dir)
    identity = backbone_sha256(backbone)
    if identity != manifest["backbone_sha256"]:
        raise PackError(
            f"{packed.path} was trained on backbone weights with sha256 "
            f"{manifest['backbone_sha256'][:16]}..., but the weights given "
            f"({weights or spec.weights}) have {identity[:16]}...: the masks would be applied "
            "to different numbers; use the weights the masks were trained on"
        )
    return backbone, features


def _test_batches(source: TaskData, image_size, batch_size, device, workers):
    feed = open_task_feed(
        source.data,
        source.transform,
        image_size,
        source.cache,
        device,
        workers,
        splits=("test",),
        preprocessing=source.preprocessing,
    )
    return feed.classes, feed.batches("test", batch_size, 0)


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
