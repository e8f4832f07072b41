"""What the tasks cost in storage, from the packed files' headers and the masks'
statistics: per task and part, megabytes and bits per weight (``storage_data``), and per
series, networks and megabytes for all tasks (``storage_totals``). The table's storage
row and the storage figure read the same numbers from here."""

from __future__ import annotations

import json
import math
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd

from piggyback.methods.entry import StoredPart
from piggyback.methods.registry import METHODS
from piggyback.packs.entropy import entropy_bits


def safetensors_layout(
    path: str | Path, manifest: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest (of a packed file) and each tensor's shape and size in bytes, from the
    file's header alone (its first bytes: a length, then JSON), so gigabytes of weights
    are not read."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    metadata = header.pop("__metadata__", {})
    tensors = {
        key: {"shape": entry["shape"], "bytes": entry["data_offsets"][1] - entry["data_offsets"][0]}
        for key, entry in header.items()
    }
    return (json.loads(metadata["piggyback"]) if manifest else {}), tensors


BACKBONE = "pretrained backbone, kept as it is"


def stored_parts() -> dict[str, StoredPart]:
    """Key prefix -> what each part of a packed file is (the first component of a key
    under a task, or of a key shared by all tasks): read from the registered methods'
    entries when asked, in the registry's order, so that a method registered later is
    known too."""
    parts: dict[str, StoredPart] = {}
    for entry in METHODS.values():
        for prefix, part in entry.all_parts().items():
            parts.setdefault(prefix, part)
    return parts


def _part(prefix: str) -> StoredPart:
    """A prefix no registered method declares is named by itself and no network."""
    return stored_parts().get(prefix) or StoredPart(prefix, "black")


def keeps_backbone(method: str) -> bool:
    """An independent method keeps the pretrained backbone as it is: all its tasks share it
    (Piggyback, Classifier Only), or it stays the source task's network (Individual
    Networks). A sequential one (PackNet) turns it into its one network."""
    return not METHODS[method].sequential


def weights_megabytes(path: str | Path) -> float:
    """The tensors' bytes in a weights file, without reading them: a safetensors header,
    or the sizes of the tensor records in torch.save's zip archive."""
    path = Path(path)
    if path.suffix == ".safetensors":
        _, tensors = safetensors_layout(path, manifest=False)
        return sum(tensor["bytes"] for tensor in tensors.values()) / 1e6
    with zipfile.ZipFile(path) as archive:
        records = [i for i in archive.infolist() if re.search(r"/data/\d+$", i.filename)]
        return sum(record.file_size for record in records) / 1e6


def _task_tensors(tensors: dict[str, Any], tasks: list[str], task: str):
    """(part, tensor, share) of what a task uses: its own tensors whole, those of no
    task (PackNet's network and owner map) divided among the file's tasks."""
    for key, tensor in tensors.items():
        owner, _, rest = key.partition("/")
        if owner == task:
            yield rest.split("/")[0], tensor, 1.0
        elif owner not in tasks:
            yield owner, tensor, 1 / len(tasks)


def _backbone_weights(manifest: dict[str, Any], task: str, used: list) -> int:
    """The conv and linear weights a task adapts: the layer shapes the manifest lists
    (masks, owner maps), else the kernels and matrices among its tensors (a network)."""
    layers = manifest.get("layers") or manifest["tasks"][task].get("layers")
    if layers:
        return sum(math.prod(shape) for shape in layers.values())
    return sum(
        math.prod(tensor["shape"])
        for part, tensor, _ in used
        if part != "head" and len(tensor["shape"]) >= 2
    )


def mask_entropy_bits(stats: pd.DataFrame) -> dict[str, float]:
    """Per task, the bits per weight an entropy coder could reach on its masks: each
    layer's keep plane (and sign plane among the kept), weighted by layer size."""
    layers = stats[stats["layer"] != "TOTAL"]
    bits: dict[str, float] = {}
    for task, group in layers.groupby("task", sort=False):
        total = 0.0
        for row in group.itertuples():
            kept = round(row.weights * (1 - row.zero_pct / 100))
            negative = round(row.weights * getattr(row, "minus_one_pct", 0.0) / 100)
            total += entropy_bits(kept, row.weights) + entropy_bits(negative, kept)
        bits[task] = total / group["weights"].sum()
    return bits


def storage_data(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Per packed file and task, the megabytes each part costs (a shared part divided
    among the file's tasks), the networks it counts as (a whole network 1, PackNet's
    1 / tasks) and the bits per backbone weight (heads aside); and, for a method that
    keeps the pretrained backbone, one row for it (no dataset) where the record names
    the weights file (``backbone``)."""
    rows = []
    for record in records:
        manifest, tensors = safetensors_layout(record["file"])
        tasks = list(manifest["tasks"])
        entropy = (
            mask_entropy_bits(pd.read_csv(record["stats"], sep="\t")) if record.get("stats") else {}
        )
        series = {
            "arch": record["arch"],
            "method": record["method"],
            "ordering": record["ordering"] or "",
            "run": record["run"],
        }
        for task in tasks:
            rows += _task_rows(series, manifest, tensors, tasks, task, entropy.get(task))
        if record.get("backbone") and keeps_backbone(record["method"]):
            megabytes = weights_megabytes(record["backbone"])
            rows.append({**series, "dataset": "", "part": BACKBONE, "megabytes": megabytes})
            rows[-1].update(networks=1.0, bits_per_weight=float("nan"))
    return pd.DataFrame(rows)


def _task_rows(series, manifest, tensors, tasks, task, entropy) -> list[dict[str, Any]]:
    used = list(_task_tensors(tensors, tasks, task))
    parts: dict[str, float] = {}
    networks: dict[str, float] = {}
    for part, tensor, share in used:
        parts[part] = parts.get(part, 0.0) + tensor["bytes"] * share
        networks[part] = share if _part(part).whole_network else 0.0
    weights = _backbone_weights(manifest, task, used)
    backbone_bytes = sum(b for p, b in parts.items() if p != "head")
    return [
        {
            **series,
            "dataset": task,
            "part": _part(part).label,
            "megabytes": size / 1e6,
            "networks": networks[part],
            "bits_per_weight": 8 * backbone_bytes / weights if weights else 0.0,
            "entropy_bits_per_weight": float("nan") if entropy is None else entropy,
        }
        for part, size in parts.items()
    ]


def storage_totals(data: pd.DataFrame) -> pd.DataFrame:
    """What all of a series' tasks cost, per arch, method and ordering: the networks kept
    and the megabytes (every part of the packed file, and the pretrained backbone where
    the method keeps it), averaged over runs."""
    keys = ["arch", "method", "ordering"]
    if data.empty:
        return pd.DataFrame(columns=[*keys, "networks", "megabytes"])
    per_run = data.groupby([*keys, "run"], sort=False)[["networks", "megabytes"]].sum()
    return per_run.groupby(keys, sort=False).mean().reset_index()
