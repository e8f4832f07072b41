"""The storage one more task costs, in megabytes and bits per weight, read from the packed
files' headers and the masks' statistics."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from piggyback.core.entropy import entropy_bits
from piggyback.report.plots.style import (
    PARTS,
    Record,
    new_figure,
    no_data,
    read_tsv,
    series_colors,
    series_label,
)


def safetensors_layout(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and each tensor's shape and size in bytes, from the file's header
    alone (its first bytes: a length, then JSON), so gigabytes of weights are not read."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    metadata = header.pop("__metadata__", {})
    tensors = {
        key: {"shape": entry["shape"], "bytes": entry["data_offsets"][1] - entry["data_offsets"][0]}
        for key, entry in header.items()
    }
    return json.loads(metadata["piggyback"]), tensors


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


def storage_data(records: list[Record]) -> pd.DataFrame:
    """Per packed file and task, the megabytes each part costs (a shared part divided
    among the file's tasks), and the bits per backbone weight (heads aside)."""
    rows = []
    for record in records:
        manifest, tensors = safetensors_layout(record["file"])
        tasks = list(manifest["tasks"])
        entropy = mask_entropy_bits(read_tsv(record["stats"])) if record.get("stats") else {}
        for task in tasks:
            used = list(_task_tensors(tensors, tasks, task))
            parts: dict[str, float] = {}
            for part, tensor, share in used:
                parts[part] = parts.get(part, 0.0) + tensor["bytes"] * share
            weights = _backbone_weights(manifest, task, used)
            backbone_bytes = sum(b for p, b in parts.items() if p != "head")
            for part, size in parts.items():
                rows.append(
                    {
                        "arch": record["arch"],
                        "method": record["method"],
                        "ordering": record["ordering"] or "",
                        "run": record["run"],
                        "dataset": task,
                        "part": PARTS.get(part, (part,))[0],
                        "megabytes": size / 1e6,
                        "bits_per_weight": 8 * backbone_bytes / weights if weights else 0.0,
                        "entropy_bits_per_weight": entropy.get(task, float("nan")),
                    }
                )
    return pd.DataFrame(rows)


def storage(records: list[Record]) -> tuple[Figure, pd.DataFrame]:
    """Per arch and method, what one more task costs: megabytes by part (left) and bits
    per backbone weight (right), averaged over the file's tasks and runs."""
    title = "Storage per task, from the packed files"
    data = storage_data(records)
    if data.empty:
        return no_data(title, "no packed files in this config"), data
    keys = ["arch", "method", "ordering"]
    per_task = data.groupby([*keys, "run", "dataset", "part"], sort=False)["megabytes"].sum()
    bits = data.groupby(keys, sort=False)[["bits_per_weight", "entropy_bits_per_weight"]].mean()
    megabytes = per_task.groupby([*keys, "part"]).mean().unstack("part", fill_value=0)
    order = [label for label, _ in dict.fromkeys(PARTS.values())]
    columns = sorted(megabytes.columns, key=lambda p: order.index(p) if p in order else len(order))
    megabytes = megabytes.reindex(index=bits.index, columns=columns)  # the records' order
    rows = list(megabytes.index)
    labels = [f"{arch} · {series_label(method, ordering)}" for arch, method, ordering in rows]
    figure = new_figure(13, 2.4 + 0.42 * len(rows))
    left, right = figure.subplots(1, 2, sharey=True)
    y = np.arange(len(rows))
    edge = np.zeros(len(rows))
    part_colors = dict(PARTS.values())
    for part in megabytes.columns:
        values = megabytes[part].to_numpy()
        left.barh(y, values, left=edge, color=part_colors.get(part, "black"), label=part)
        edge += values
    for index, total in enumerate(edge):
        left.annotate(f" {total:.3g} MB", (total, index), va="center", fontsize=8)
    left.set_xlim(0, 1.2 * edge.max())
    left.set_xlabel("megabytes per task (10⁶ bytes)")
    left.set_yticks(y, labels)
    left.set_ylim(len(rows) - 0.5, -0.5)
    left.set_title("what one more task adds to the packed file")
    stored = bits["bits_per_weight"].to_numpy()
    colors = series_colors((method, ordering) for _, method, ordering in rows)
    right.barh(y, stored, color=[colors[method, ordering] for _, method, ordering in rows])
    for index, value in enumerate(stored):
        right.annotate(f" {value:.3g}", (value, index), va="center", fontsize=8)
    entropy = bits["entropy_bits_per_weight"].to_numpy()
    coded = ~np.isnan(entropy)
    right.plot(
        entropy[coded],
        y[coded],
        "kD",
        markersize=6,
        label="entropy of the masks: what pack_encoding: entropy would store",
    )
    right.set_xlim(0, 1.15 * max(stored.max(), 1.0))
    right.set_xlabel("bits per conv/linear weight of the backbone, per task")
    right.set_title("the same, heads aside, per weight")
    handles, labels = left.get_legend_handles_labels()
    if coded.any():
        handles += right.get_legend_handles_labels()[0]
    figure.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    figure.suptitle(
        f"{title}\n(not counted: the pretrained backbone, which Piggyback and Classifier Only "
        "keep once for all tasks)",
        fontweight="bold",
    )
    return figure, data
