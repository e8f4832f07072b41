"""Piggyback's masks and PackNet's owners, per layer and task."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from piggyback.report.plots.style import (
    TASK_COLORS,
    Record,
    grid,
    no_data,
    read_tsv,
    series_label,
)


def _layer_rows(records: list[Record], extra: tuple[str, ...]) -> pd.DataFrame:
    """The per-layer rows of pack statistics files (no TOTAL rows), with what each
    record says of its file."""
    frames = []
    for record in records:
        stats = read_tsv(record["file"])
        stats = stats[stats["layer"] != "TOTAL"].copy()
        stats["layer_index"] = stats.groupby("task", sort=False).cumcount()
        for key in ("arch", "method", "run", *extra):
            stats[key] = "" if record[key] is None else record[key]
        frames.append(stats)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _layer_axis(axes, layers: list[str]) -> None:
    """Layer names as ticks where they fit, else their index."""
    axes.set_xlim(-0.5, len(layers) - 0.5)
    if len(layers) <= 24:
        axes.set_xticks(range(len(layers)))
        axes.set_xticklabels([name.removesuffix(".weight") for name in layers], rotation=90)
        axes.set_xlabel("layer (input → output)")
    else:
        axes.set_xlabel(f"layer, input → output ({len(layers)} conv and linear layers)")


def _task_colors(tasks: Iterable[str]) -> dict[str, Any]:
    return {task: TASK_COLORS[i % len(TASK_COLORS)] for i, task in enumerate(dict.fromkeys(tasks))}


def mask_density(records: list[Record]) -> tuple[Figure, pd.DataFrame]:
    """Piggyback: the share of mask entries kept (1) per layer, a line per task; a panel
    per arch and mask kind. The legend gives each task's share over all layers."""
    title = "Piggyback: share of each layer's weights the task's mask keeps"
    stats = _layer_rows(records, ())
    if stats.empty:
        return no_data(title, "no Piggyback in this config"), stats
    stats["kept_pct"] = 100.0 - stats["zero_pct"]
    data = stats[["arch", "method", "run", "task", "layer_index", "layer", "weights", "kept_pct"]]
    data = data.rename(columns={"task": "dataset"})
    panels = list(dict.fromkeys(zip(data["method"], data["arch"], strict=True)))
    colors = _task_colors(data["dataset"])
    figure, axes_list, _ = grid(len(panels), 11, 3.6, columns=1)
    for axes, (method, arch) in zip(axes_list, panels, strict=True):
        panel = data[(data["method"] == method) & (data["arch"] == arch)]
        runs = panel["run"].nunique()
        for (dataset, run), task in panel.groupby(["dataset", "run"], sort=False):
            overall = np.average(task["kept_pct"], weights=task["weights"])
            name = f"{dataset}, run {run}" if runs > 1 else dataset
            axes.plot(
                task["layer_index"],
                task["kept_pct"],
                marker=".",
                color=colors[dataset],
                label=f"{name}: {overall:.1f}% of all weights",
            )
        if (panel["kept_pct"] == 100).all():
            axes.text(
                0.5,
                0.5,
                "every layer at 100%: no mask entry fell below the threshold (to 4 decimals)",
                transform=axes.transAxes,
                ha="center",
            )
        _layer_axis(axes, list(dict.fromkeys(panel["layer"])))
        axes.set_ylim(0, 102)
        axes.set_ylabel("mask entries kept (%)")
        axes.set_title(f"{series_label(method)}, {arch}")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower left", fontsize=8)
    figure.suptitle(title, fontweight="bold")
    return figure, data


def ownership(records: list[Record]) -> tuple[Figure, pd.DataFrame]:
    """PackNet: who owns each layer's weights after the last task (the source task,
    each task, or nobody), a stacked bar per layer; a panel per arch and ordering."""
    title = "PackNet: share of each layer's weights owned by each task"
    stats = _layer_rows(records, ("ordering",))
    if stats.empty:
        return no_data(title, "no PackNet in this config"), stats
    data = stats[["arch", "method", "ordering", "run", "task", "layer_index", "layer"]].copy()
    data["weights"], data["owned_pct"] = stats["weights"], stats["owned_pct"]
    data = data.rename(columns={"task": "owner"})
    panels = list(dict.fromkeys(zip(data["arch"], data["ordering"], data["run"], strict=True)))
    tasks = [t for t in dict.fromkeys(data["owner"]) if t not in ("source", "free")]
    colors = {"source": "0.35", **_task_colors(tasks), "free": "0.92"}
    figure, axes_list, _ = grid(len(panels), 11, 3.6, columns=1)
    for axes, (arch, ordering, run) in zip(axes_list, panels, strict=True):
        panel = data[(data["arch"] == arch) & (data["ordering"] == ordering) & (data["run"] == run)]
        layers = list(dict.fromkeys(panel["layer"]))
        bottom = np.zeros(len(layers))
        owners = ["source", *[t for t in dict.fromkeys(panel["owner"]) if t in tasks], "free"]
        for owner in owners:
            part = panel[panel["owner"] == owner]
            overall = np.average(part["owned_pct"], weights=part["weights"])
            axes.bar(
                part["layer_index"],
                part["owned_pct"],
                bottom=bottom,
                width=1.0,
                color=colors[owner],
                edgecolor="white" if len(layers) <= 24 else colors[owner],
                linewidth=0.3,
                label=f"{owner}: {overall:.1f}%",
            )
            bottom += part["owned_pct"].to_numpy()
        _layer_axis(axes, layers)
        axes.set_ylim(0, 100)
        axes.set_ylabel("weights owned (%)")
        which = f", run {run}" if data["run"].nunique() > 1 else ""
        axes.set_title(f"{arch}, ordering {ordering}: {' → '.join(owners[1:-1])}{which}")
        axes.legend(
            loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, title="owner: share of all"
        )
    figure.suptitle(title, fontweight="bold")
    return figure, data
