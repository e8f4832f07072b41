"""Every cell of the table beside its published number, with the cell's 95% interval."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from piggyback.report.plots.style import (
    NO_REFERENCE,
    OUTSIDE,
    WITHIN,
    marker,
    new_figure,
    no_data,
    series_label,
)

COLUMNS = ["method", "ordering", "arch", "dataset", "error", "std", "n", "low", "high"]
COLUMNS += ["chance_error", "reference", "agrees", "verdict"]


def reference_comparison(
    table: pd.DataFrame, tolerance: float | None
) -> tuple[Figure, pd.DataFrame]:
    """A panel per arch, a row per method (ordering) and dataset: the cell's error and
    its 95% interval (thick), the interval widened by the tolerance (thin), the
    published number; a cell whose published number lies in the widened interval in
    green, else red, without one in grey."""
    title = "Top-1 test error and its 95% interval, against the published numbers"
    data = table[COLUMNS].copy()
    data["ordering"] = data["ordering"].fillna("")
    if data.empty:
        return no_data(title, "the table is empty"), data
    data["shown"] = np.where(
        data["reference"].isna(),
        "no reference",
        np.where(data["agrees"].astype(str) == "True", "agrees", "outside"),
    )
    rows = list(dict.fromkeys(zip(data["method"], data["ordering"], data["dataset"], strict=True)))
    archs = list(dict.fromkeys(data["arch"]))
    figure = new_figure(max(11.0, 3.0 + 4.2 * len(archs)), 1.6 + 0.3 * len(rows))
    axes_list = figure.subplots(1, len(archs), sharey=True, squeeze=False)[0]
    position = {row: index for index, row in enumerate(rows)}
    for axes, arch in zip(axes_list, archs, strict=True):
        for cell in data[data["arch"] == arch].itertuples():
            _draw_cell(axes, cell, position[cell.method, cell.ordering, cell.dataset], tolerance)
        axes.set_title(arch)
        axes.set_xlim(0, 100)
        axes.set_xlabel("top-1 test error (%)")
        axes.grid(axis="x", alpha=0.3)
    first = axes_list[0]
    first.set_yticks(range(len(rows)))
    first.set_yticklabels([f"{series_label(m, o)} · {d}" for m, o, d in rows])
    first.set_ylim(len(rows) - 0.5, -0.5)
    widened = "none set" if tolerance is None else f"± {tolerance:g} points"
    handles = [
        marker("published number in the widened interval", "o", WITHIN),
        marker("published number outside it", "o", OUTSIDE),
        marker("no published number", "o", NO_REFERENCE),
        marker("published", "D", "black", fillstyle="none"),
        Line2D([], [], color="black", linewidth=3, label="95% interval of the cell"),
        Line2D([], [], color="black", linewidth=1, label=f"widened by the tolerance ({widened})"),
        marker("chance", "|", "black", alpha=0.5),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False)
    note = "right margin: this run − published, in points"
    if (data["shown"] == "no reference").all():
        note = "no cell of this config has a published number"
    figure.suptitle(f"{title}\n({note})", fontweight="bold")
    return figure, data


def _draw_cell(axes, cell, y: int, tolerance: float | None) -> None:
    color = {"agrees": WITHIN, "outside": OUTSIDE, "no reference": NO_REFERENCE}[cell.shown]
    axes.plot(cell.chance_error, y, "|", color="black", markersize=9, alpha=0.5)
    slack = tolerance or 0.0
    axes.plot([cell.low - slack, cell.high + slack], [y, y], color=color, linewidth=1)
    axes.plot([cell.low, cell.high], [y, y], color=color, linewidth=3, alpha=0.6)
    axes.plot(cell.error, y, "o", color=color, markersize=6)
    if cell.shown == "no reference":
        text, shade = "no ref.", NO_REFERENCE
    else:
        axes.plot(cell.reference, y, "D", color="black", markersize=5, fillstyle="none")
        text, shade = f"{cell.error - cell.reference:+.1f}", color
    axes.annotate(text, (101, y), va="center", fontsize=8, color=shade, annotation_clip=False)
