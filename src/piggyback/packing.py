"""Packing every task of one arch into one file at 1 bit per mask weight.

The file is safetensors (a JSON header and raw little-endian tensors), so it loads
without unpickling anything and other programs can decode it; ``docs/pack-format.md``
gives the layout. Binary masks are one bit plane per weight (bit set = keep); ternary
masks add a second plane (bit set = negate), so 2 bits per weight.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from piggyback.atomic import atomic_write
from piggyback.checkpoints import load_checkpoint, tensors_sha256
from piggyback.masks import threshold_mask

PACK_FORMAT = "piggyback-pack"
PACK_VERSION = 1


class PackError(ValueError):
    """A packed file is unusable as asked; the message names the file and the cause."""


def pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """Flattened boolean tensor -> uint8 bytes, 8 entries a byte, first entry in the
    most significant bit (``numpy.packbits`` order); the last byte is zero-padded."""
    return torch.from_numpy(np.packbits(keep.detach().cpu().numpy().reshape(-1)))


def unpack_bits(packed: torch.Tensor, shape: Iterable[int]) -> torch.Tensor:
    shape = tuple(shape)
    count = int(np.prod(shape)) if shape else 1
    bits = np.unpackbits(packed.numpy(), count=count)
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


def discrete_masks(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The thresholded masks of a trained-task checkpoint, as float {-1, 0, 1}."""
    mask = checkpoint["mask"]
    return {
        name: threshold_mask(real.float(), mask["kind"], mask["threshold"])
        for name, real in checkpoint["masks"].items()
    }


def storage_of(checkpoint: dict[str, Any]) -> str:
    if "masks" in checkpoint:
        return "mask"
    if "weights" in checkpoint:
        return "weights"
    return "head"


def pack_tasks(checkpoint_paths: list[Path], out: Path, stats_out: Path | None = None) -> dict:
    """Pack the tasks' checkpoints, in the order given, into ``out``; returns the manifest."""
    checkpoints = [load_checkpoint(p) for p in checkpoint_paths]
    first = checkpoints[0]
    tensors: dict[str, torch.Tensor] = {}
    tasks: dict[str, Any] = {}
    stats_rows: list[dict[str, Any]] = []
    for path, ckpt in zip(checkpoint_paths, checkpoints, strict=True):
        for key in ("arch", "method", "backbone_sha256", "mask"):
            if ckpt.get(key) != first.get(key):
                raise PackError(
                    f"{path} has {key} = {ckpt.get(key)!r}, but {checkpoint_paths[0]} has "
                    f"{first.get(key)!r}: one packed file holds one arch, method and backbone"
                )
        task = ckpt["dataset"]
        if task in tasks:
            raise PackError(f"task {task!r} appears twice ({path})")
        storage = storage_of(ckpt)
        layers = {}
        if storage == "mask":
            for name, discrete in discrete_masks(ckpt).items():
                tensors[f"{task}/mask/{name}"] = pack_bits(discrete != 0)
                if ckpt["mask"]["kind"] == "ternary":
                    tensors[f"{task}/sign/{name}"] = pack_bits(discrete < 0)
                layers[name] = list(discrete.shape)
                stats_rows.append(_layer_stats(task, name, discrete, ckpt["mask"]["kind"]))
        elif storage == "weights":
            for name, value in ckpt["weights"].items():
                tensors[f"{task}/weights/{name}"] = value.contiguous()
        for name, value in ckpt["head"].items():
            tensors[f"{task}/head/{name}"] = value.contiguous()
        tasks[task] = {
            "storage": storage,
            "classes": list(ckpt["classes"]),
            "layers": layers,
            "seed": ckpt["seed"],
            "trained_epoch": ckpt["epoch"],
            "trained_test_top1_error": ckpt["test_top1_error"],
        }
    manifest = {
        "format": PACK_FORMAT,
        "version": PACK_VERSION,
        "arch": first["arch"],
        "method": first["method"],
        "backbone_sha256": first["backbone_sha256"],
        "mask": first["mask"],
        "ordering": list(tasks),
        "bit_order": "msb-first",
        "tasks": tasks,
        "content_sha256": tensors_sha256(tensors),
    }
    metadata = {"piggyback": json.dumps(manifest, sort_keys=True)}
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    if stats_out is not None:
        _write_stats(stats_rows, stats_out)
    return manifest


@dataclass
class PackedTask:
    name: str
    storage: str
    classes: list[str]
    head: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor] | None = None
    weights: dict[str, torch.Tensor] | None = None


def read_manifest(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PackError(f"packed file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:
        raise PackError(f"{path} is not a readable packed file: {error}") from error
    try:
        manifest = json.loads(metadata["piggyback"])
    except (KeyError, json.JSONDecodeError) as error:
        raise PackError(f"{path} has no piggyback manifest: not written by pack.py") from error
    if manifest.get("format") != PACK_FORMAT or manifest.get("version") != PACK_VERSION:
        raise PackError(
            f"{path} is format {manifest.get('format')!r} version {manifest.get('version')!r}; "
            f"this code reads {PACK_FORMAT!r} version {PACK_VERSION}"
        )
    return manifest


def read_task(path: Path, task: str) -> tuple[dict[str, Any], PackedTask]:
    """The manifest and one task, masks unpacked to float {-1, 0, 1}; the content
    checksum is verified so a truncated or edited file is refused."""
    manifest = read_manifest(path)
    if task not in manifest["tasks"]:
        raise PackError(
            f"{path} holds no task {task!r}; it holds {', '.join(manifest['ordering'])}"
        )
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    if tensors_sha256(tensors) != manifest["content_sha256"]:
        raise PackError(f"{path} fails its content checksum: it was truncated or edited")
    entry = manifest["tasks"][task]
    prefix = f"{task}/"
    head = {
        k.removeprefix(f"{prefix}head/"): v
        for k, v in tensors.items()
        if k.startswith(f"{prefix}head/")
    }
    packed = PackedTask(task, entry["storage"], entry["classes"], head)
    if entry["storage"] == "mask":
        packed.masks = {}
        for name, shape in entry["layers"].items():
            keep = unpack_bits(tensors[f"{prefix}mask/{name}"], shape).float()
            sign_key = f"{prefix}sign/{name}"
            if sign_key in tensors:
                keep = keep * (1 - 2 * unpack_bits(tensors[sign_key], shape).float())
            packed.masks[name] = keep
    elif entry["storage"] == "weights":
        packed.weights = {
            k.removeprefix(f"{prefix}weights/"): v
            for k, v in tensors.items()
            if k.startswith(f"{prefix}weights/")
        }
    return manifest, packed


def _layer_stats(task: str, name: str, discrete: torch.Tensor, kind: str) -> dict[str, Any]:
    count = discrete.numel()
    return {
        "task": task,
        "layer": name,
        "weights": count,
        "zero_pct": 100.0 * int((discrete == 0).sum()) / count,
        "minus_one_pct": 100.0 * int((discrete < 0).sum()) / count,
        "bits_per_weight": 2 if kind == "ternary" else 1,
    }


def _write_stats(rows: list[dict[str, Any]], out: Path) -> None:
    import pandas as pd

    table = pd.DataFrame(
        rows, columns=["task", "layer", "weights", "zero_pct", "minus_one_pct", "bits_per_weight"]
    )
    totals = []
    for task, group in table.groupby("task", sort=False):
        weights = group["weights"].sum()
        totals.append(
            {
                "task": task,
                "layer": "TOTAL",
                "weights": weights,
                "zero_pct": (group["zero_pct"] * group["weights"]).sum() / weights,
                "minus_one_pct": (group["minus_one_pct"] * group["weights"]).sum() / weights,
                "bits_per_weight": (group["bits_per_weight"] * group["weights"]).sum() / weights,
            }
        )
    table = pd.concat([table, pd.DataFrame(totals, columns=table.columns)], ignore_index=True)
    atomic_write(out, lambda tmp: table.to_csv(tmp, sep="\t", index=False, float_format="%.4f"))
