"""Packing every task of one arch into one file at 1 bit per mask weight, or less.

The file is safetensors (a JSON header and raw little-endian tensors), so it loads
without unpickling anything and other programs can decode it; ``docs/pack-format.md``
gives the layout. Binary masks are one bit plane per weight (bit set = keep); ternary
masks add a second plane (bit set = negate), so 2 bits per weight: the ``bits`` encoding
(format version 1). The ``entropy`` encoding (version 2) entropy-codes each plane
(:mod:`piggyback.entropy`), the sign plane over the non-zero entries only, so a layer
costs close to its empirical entropy: far below 1 bit per weight when most weights are
kept.
"""

from __future__ import annotations

import hashlib
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
from piggyback.entropy import PlaneError, decode_plane, encode_plane, entropy_bits
from piggyback.masks import threshold_mask

PACK_FORMAT = "piggyback-pack"
PACK_VERSION = 1  # what the default ``bits`` encoding writes
ENTROPY_VERSION = 2  # files with entropy-coded planes: a version 1 reader would misread them
READ_VERSIONS = (PACK_VERSION, ENTROPY_VERSION)
ENCODINGS = ("bits", "entropy")
STATS_COLUMNS = ["task", "layer", "weights", "zero_pct", "minus_one_pct", "bits_per_weight"]
ENTROPY_STATS_COLUMNS = ["entropy_bits_per_weight", "stored_bits_per_weight"]


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


def pack_tasks(
    checkpoint_paths: list[Path],
    out: Path,
    stats_out: Path | None = None,
    encoding: str = "bits",
) -> dict:
    """Pack the tasks' checkpoints, in the order given, into ``out``; returns the manifest."""
    return pack(checkpoint_paths, out, stats_out, encoding).manifest


@dataclass
class PackResult:
    manifest: dict[str, Any]
    layers: list[dict[str, Any]]  # one statistics row per task and masked layer

    def task_bits(self) -> dict[str, dict[str, float]]:
        """Per task with masks: ``weights``, ``stored_bits_per_weight`` (what the file
        spends on the mask planes, per masked weight) and ``entropy_bits_per_weight``."""
        totals: dict[str, dict[str, float]] = {}
        for row in self.layers:
            total = totals.setdefault(row["task"], {"weights": 0, "stored": 0.0, "entropy": 0.0})
            total["weights"] += row["weights"]
            total["stored"] += row["stored_bits_per_weight"] * row["weights"]
            total["entropy"] += row["entropy_bits_per_weight"] * row["weights"]
        return {
            task: {
                "weights": t["weights"],
                "stored_bits_per_weight": t["stored"] / t["weights"],
                "entropy_bits_per_weight": t["entropy"] / t["weights"],
            }
            for task, t in totals.items()
        }


def pack(
    checkpoint_paths: list[Path],
    out: Path,
    stats_out: Path | None = None,
    encoding: str = "bits",
) -> PackResult:
    """:func:`pack_tasks`, also returning the per-layer statistics."""
    if encoding not in ENCODINGS:
        raise PackError(f"unknown mask encoding {encoding!r}: expected one of {ENCODINGS}")
    checkpoints = [load_checkpoint(p) for p in checkpoint_paths]
    first = checkpoints[0]
    tensors: dict[str, torch.Tensor] = {}
    encodings: dict[str, str] = {}
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
            ternary = ckpt["mask"]["kind"] == "ternary"
            for name, discrete in discrete_masks(ckpt).items():
                planes = _mask_planes(discrete, ternary, encoding)
                for plane, packed in planes.items():
                    tensors[f"{task}/{plane}/{name}"] = packed
                    if encoding != "bits":
                        encodings[f"{task}/{plane}/{name}"] = encoding
                layers[name] = list(discrete.shape)
                stored = 8 * sum(packed.numel() for packed in planes.values())
                stats_rows.append(_layer_stats(task, name, discrete, ckpt["mask"]["kind"], stored))
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
        "version": ENTROPY_VERSION if encodings else PACK_VERSION,
        "arch": first["arch"],
        "method": first["method"],
        "backbone_sha256": first["backbone_sha256"],
        "mask": first["mask"],
        "ordering": list(tasks),
        "bit_order": "msb-first",
        "tasks": tasks,
        "content_sha256": tensors_sha256(tensors),
    }
    if encodings:
        manifest["encodings"] = encodings
    text = json.dumps(manifest, sort_keys=True)
    # The manifest's own checksum: with content_sha256 inside it, this covers the file.
    metadata = {"piggyback": text, "piggyback_sha256": hashlib.sha256(text.encode()).hexdigest()}
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    if stats_out is not None:
        _write_stats(stats_rows, stats_out, with_entropy=encoding != "bits")
    return PackResult(manifest, stats_rows)


def _mask_planes(discrete: torch.Tensor, ternary: bool, encoding: str) -> dict[str, torch.Tensor]:
    """The stored tensors of one layer's discrete mask: ``mask`` (the keep plane) and, for
    ternary masks, ``sign``; under ``entropy`` the sign plane covers the kept entries only."""
    keep = discrete != 0
    if encoding == "bits":
        planes = {"mask": pack_bits(keep)}
        if ternary:
            planes["sign"] = pack_bits(discrete < 0)
        return planes
    keep_bits = keep.cpu().numpy().reshape(-1)
    planes = {"mask": _as_tensor(encode_plane(keep_bits))}
    if ternary:
        negative = (discrete < 0).cpu().numpy().reshape(-1)
        planes["sign"] = _as_tensor(encode_plane(negative[keep_bits]))
    return planes


def _as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


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
        text = metadata["piggyback"]
        manifest = json.loads(text)
    except (KeyError, json.JSONDecodeError) as error:
        raise PackError(f"{path} has no piggyback manifest: not written by pack.py") from error
    if hashlib.sha256(text.encode()).hexdigest() != metadata.get("piggyback_sha256"):
        raise PackError(f"{path} fails its manifest checksum: it was edited or damaged")
    if manifest.get("format") != PACK_FORMAT or manifest.get("version") not in READ_VERSIONS:
        raise PackError(
            f"{path} is format {manifest.get('format')!r} version {manifest.get('version')!r}; "
            f"this code reads {PACK_FORMAT!r} versions {', '.join(map(str, READ_VERSIONS))}"
        )
    unknown = set(manifest.get("encodings", {}).values()) - set(ENCODINGS)
    if unknown:
        raise PackError(f"{path} uses mask encodings {sorted(unknown)} this code cannot read")
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
        encodings = manifest.get("encodings", {})
        packed.masks = {}
        for name, shape in entry["layers"].items():
            plane = _PlaneReader(path, tensors, encodings, shape)
            keep = plane.read(f"{prefix}mask/{name}")
            mask = keep.float()
            sign_key = f"{prefix}sign/{name}"
            if sign_key in tensors:
                mask = mask * (1 - 2 * plane.read(sign_key, keep).float())
            packed.masks[name] = mask
    elif entry["storage"] == "weights":
        packed.weights = {
            k.removeprefix(f"{prefix}weights/"): v
            for k, v in tensors.items()
            if k.startswith(f"{prefix}weights/")
        }
    return manifest, packed


@dataclass
class _PlaneReader:
    """Decodes one layer's planes, whichever encoding the manifest gives them."""

    path: Path
    tensors: dict[str, torch.Tensor]
    encodings: dict[str, str]
    shape: list[int]

    def read(self, key: str, keep: torch.Tensor | None = None) -> torch.Tensor:
        """A plane as a boolean tensor of the layer's shape. An entropy-coded sign plane
        covers only the entries where ``keep`` is set; elsewhere the result is False."""
        encoding = self.encodings.get(key, "bits")
        if encoding == "bits":
            return unpack_bits(self.tensors[key], self.shape)
        if keep is None:
            return self._decode(key, int(np.prod(self.shape))).reshape(self.shape)
        plane = torch.zeros(self.shape, dtype=torch.bool)
        plane[keep] = self._decode(key, int(keep.sum()))
        return plane

    def _decode(self, key: str, count: int) -> torch.Tensor:
        try:
            return torch.from_numpy(decode_plane(self.tensors[key].numpy(), count))
        except PlaneError as error:
            raise PackError(f"{self.path}: tensor {key} does not decode: {error}") from error


def _layer_stats(
    task: str, name: str, discrete: torch.Tensor, kind: str, stored_bits: int
) -> dict[str, Any]:
    count = discrete.numel()
    zeros = int((discrete == 0).sum())
    negative = int((discrete < 0).sum())
    # 0th-order entropy of the values {-1, 0, 1}: keep plane, then sign among the kept
    entropy = entropy_bits(count - zeros, count) + entropy_bits(negative, count - zeros)
    return {
        "task": task,
        "layer": name,
        "weights": count,
        "zero_pct": 100.0 * zeros / count,
        "minus_one_pct": 100.0 * negative / count,
        "bits_per_weight": 2 if kind == "ternary" else 1,
        "entropy_bits_per_weight": entropy / count,
        "stored_bits_per_weight": stored_bits / count,
    }


def _write_stats(rows: list[dict[str, Any]], out: Path, with_entropy: bool) -> None:
    """Per-layer rows and a ``TOTAL`` row per task, weighted by layer size. The entropy
    columns are written for entropy-coded files; ``bits`` files keep the version 1 table
    (every plane costs its nominal ``bits_per_weight``, padding to a byte aside)."""
    import pandas as pd

    columns = STATS_COLUMNS + (ENTROPY_STATS_COLUMNS if with_entropy else [])
    weighted = [c for c in columns if c.endswith(("_pct", "bits_per_weight"))]
    table = pd.DataFrame(rows, columns=columns)
    totals = []
    for task, group in table.groupby("task", sort=False):
        weights = group["weights"].sum()
        total = {"task": task, "layer": "TOTAL", "weights": weights}
        for column in weighted:
            total[column] = (group[column] * group["weights"]).sum() / weights
        totals.append(total)
    table = pd.concat([table, pd.DataFrame(totals, columns=table.columns)], ignore_index=True)
    for column in ENTROPY_STATS_COLUMNS if with_entropy else []:
        table[column] = table[column].map("{:.6g}".format)  # near all-ones: far below 0.01
    atomic_write(out, lambda tmp: table.to_csv(tmp, sep="\t", index=False, float_format="%.4f"))
