"""Every cell of the table beside its published number."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from piggyback.report.plots.style import (
    NO_REFERENCE,
    OUTSIDE,
    WITHIN,
    marker,
    new_figure,
    no_data,
    series_label,
)


def reference_comparison(
    table: pd.DataFrame, tolerance: float | None
) -> tuple[Figure, pd.DataFrame]:
    """Every cell of the table beside its published number: a panel per arch, a row per
    method (ordering) and dataset; the tolerance band around the reference; cells
    outside it in red, cells without a reference in grey and said so."""
    title = "Top-1 test error against the published numbers"
    data = table[
        ["method", "ordering", "arch", "dataset", "error", "std", "n", "chance_error"]
        + ["reference", "within_tolerance"]
    ].copy()
    data["ordering"] = data["ordering"].fillna("")
    if data.empty:
        return no_data(title, "the table is empty"), data
    data["verdict"] = np.where(
        data["reference"].isna(),
        "no reference",
        np.where(data["within_tolerance"].astype(bool), "within", "outside"),
    )
    rows = list(dict.fromkeys(zip(data["method"], data["ordering"], data["dataset"], strict=True)))
    archs = list(dict.fromkeys(data["arch"]))
    height = 1.6 + 0.3 * len(rows)
    figure = new_figure(max(11.0, 3.0 + 4.2 * len(archs)), height)
    axes_list = figure.subplots(1, len(archs), sharey=True, squeeze=False)
    colors = {"within": WITHIN, "outside": OUTSIDE, "no reference": NO_REFERENCE}
    position = {row: index for index, row in enumerate(rows)}
    for axes, arch in zip(axes_list[0], archs, strict=True):
        for cell in data[data["arch"] == arch].itertuples():
            y = position[cell.method, cell.ordering, cell.dataset]
            axes.plot(cell.chance_error, y, "|", color="black", markersize=9, alpha=0.5)
            if cell.verdict != "no reference":
                if tolerance is not None:
                    axes.barh(
                        y,
                        2 * tolerance,
                        left=cell.reference - tolerance,
                        height=0.6,
                        color=WITHIN,
                        alpha=0.25,
                        linewidth=0,
                    )
                axes.plot([cell.reference, cell.error], [y, y], color="0.6", linewidth=1)
                axes.plot(cell.reference, y, "D", color="black", markersize=5, fillstyle="none")
                axes.annotate(
                    f"{cell.error - cell.reference:+.1f}",
                    (101, y),
                    va="center",
                    fontsize=8,
                    color=colors[cell.verdict],
                    annotation_clip=False,
                )
            else:
                axes.annotate(
                    "no ref.",
                    (101, y),
                    va="center",
                    fontsize=8,
                    color=NO_REFERENCE,
                    annotation_clip=False,
                )
            error_bar = cell.std if cell.n > 1 else None
            axes.errorbar(
                cell.error, y, xerr=error_bar, fmt="o", color=colors[cell.verdict], markersize=6
            )
        axes.set_title(arch)
        axes.set_xlim(0, 100)
        axes.set_xlabel("top-1 test error (%)")
        axes.grid(axis="x", alpha=0.3)
    first = axes_list[0][0]
    first.set_yticks(range(len(rows)))
    first.set_yticklabels([f"{series_label(m, o)} · {d}" for m, o, d in rows])
    first.set_ylim(len(rows) - 0.5, -0.5)
    band = "none set"
    if tolerance is not None:
        band = f"published ± {tolerance:g} point{'' if tolerance == 1 else 's'}"
    handles = [
        marker("this run, within tolerance", "o", WITHIN),
        marker("this run, outside tolerance", "o", OUTSIDE),
        marker("this run, no published number", "o", NO_REFERENCE),
        marker("published", "D", "black", fillstyle="none"),
        Patch(color=WITHIN, alpha=0.25, label=f"tolerance band: {band}"),
        marker("chance", "|", "black", alpha=0.5),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    note = "right margin: this run − published, in points"
    if (data["verdict"] == "no reference").all():
        note = "no cell of this config has a published number"
    figure.suptitle(f"{title}\n({note})", fontweight="bold")
    return figure, data
