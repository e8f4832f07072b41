"""Evaluating one task of a packed file on the plain backbone, masks baked in once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from piggyback.backbones import ArchSpec, TaskModel, backbone_sha256, build_backbone
from piggyback.data import DataError, TransformStyle, load_split, make_loader
from piggyback.fastdata import cached_batches, load_task_cache
from piggyback.masks import bake_masks
from piggyback.packing import PackedTask, PackError, read_task
from piggyback.training import evaluate


def model_from_pack(
    packed: PackedTask,
    manifest: dict[str, Any],
    arch: str,
    spec: ArchSpec,
    weights: str | Path | None = None,
    weights_dir: Path | None = None,
    pack_path: Path | None = None,
) -> TaskModel:
    """The plain backbone with the task's masks (or weights) and head applied.

    Refuses a backbone whose tensors differ from those the task was trained on: the
    masks only mean something on the exact weights they were learned over.
    """
    where = pack_path or "the packed file"
    if manifest["arch"] != arch:
        raise PackError(f"{where} was packed for arch {manifest['arch']!r}, not {arch!r}")
    backbone, features = build_backbone(spec, weights, weights_dir)
    identity = backbone_sha256(backbone)
    if identity != manifest["backbone_sha256"]:
        raise PackError(
            f"{where} was trained on backbone weights with sha256 "
            f"{manifest['backbone_sha256'][:16]}..., but the weights given "
            f"({weights or spec.weights}) have {identity[:16]}...: the masks would be applied "
            "to different numbers; use the weights the masks were trained on"
        )
    if packed.masks is not None:
        bake_masks(backbone, packed.masks)
    elif packed.weights is not None:
        backbone.load_state_dict(packed.weights)
    head = nn.Linear(features, len(packed.classes))
    head.load_state_dict(packed.head)
    return TaskModel(backbone, head, arch, backbone.head_name)


def evaluate_packed(
    pack_path: Path,
    task: str,
    arch: str,
    spec: ArchSpec,
    data_root: Path,
    style: TransformStyle,
    image_size: int,
    batch_size: int = 64,
    weights: str | Path | None = None,
    weights_dir: Path | None = None,
    device: torch.device | None = None,
    workers: int = 0,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Top-1/top-5 error of ``task`` from ``pack_path`` on ``data_root``'s test split,
    read from ``cache`` (its decoded test split: the same tensors) when given."""
    device = device or torch.device("cpu")
    manifest, packed = read_task(pack_path, task)
    model = model_from_pack(packed, manifest, arch, spec, weights, weights_dir, pack_path)
    if cache is None:
        test = load_split(data_root, "test", style, image_size, train=False)
        classes, batches = test.classes, make_loader(test, batch_size, False, 0, workers)
    else:
        cached = load_task_cache(cache, style, image_size, None, device, splits=("test",))
        classes, batches = cached.classes, cached_batches(cached, batch_size, False, 0, device)
    if classes != packed.classes:
        raise DataError(
            f"{cache or f'{data_root}/test'} has classes {classes[:5]}..., but task {task!r} "
            f"in {pack_path} was trained on {packed.classes[:5]}...: wrong dataset folder?"
        )
    model.to(device)
    result = evaluate(model, batches, device)
    return {
        "arch": arch,
        "method": manifest["method"],
        "dataset": task,
        "ordering": manifest["ordering"],
        "position": manifest["ordering"].index(task) + 1,
        "seed": manifest["tasks"][task]["seed"],
        **result,
    }
