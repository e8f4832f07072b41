"""Each method minus Piggyback on the same test images, with its 95% interval."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from piggyback.report.plots.style import marker, new_figure, no_data, series_colors, series_label

COLUMNS = ["method", "ordering", "arch", "dataset", "paired_difference", "paired_low"]
COLUMNS += ["paired_high", "paired_worse", "paired_better", "paired_p", "paired_p_holm"]
COLUMNS += ["paired_significant"]


def paired_differences(table: pd.DataFrame) -> tuple[Figure, pd.DataFrame]:
    """A panel per arch, a row per dataset and method: the paired difference of top-1
    error (method minus Piggyback, points) and its 95% interval; filled where Holm's
    correction over the table leaves it significant, open where not; the zero line."""
    title = "Each method minus Piggyback, image by image on the same test images"
    data = table[table["paired_p"].notna()][COLUMNS].copy()
    data["ordering"] = data["ordering"].fillna("")
    if data.empty:
        return no_data(title, "no method to compare with Piggyback in this config"), data
    data["paired_significant"] = data["paired_significant"].astype(str) == "True"
    rows = list(dict.fromkeys(zip(data["dataset"], data["method"], data["ordering"], strict=True)))
    archs = list(dict.fromkeys(data["arch"]))
    colors = series_colors(zip(data["method"], data["ordering"], strict=True))
    figure = new_figure(max(9.0, 3.0 + 4.2 * len(archs)), 1.8 + 0.3 * len(rows))
    axes_list = figure.subplots(1, len(archs), sharey=True, squeeze=False)[0]
    position = {row: index for index, row in enumerate(rows)}
    for axes, arch in zip(axes_list, archs, strict=True):
        for cell in data[data["arch"] == arch].itertuples():
            y = position[cell.dataset, cell.method, cell.ordering]
            color = colors[cell.method, cell.ordering]
            axes.plot([cell.paired_low, cell.paired_high], [y, y], color=color, linewidth=2)
            fill = "full" if cell.paired_significant else "none"
            axes.plot(cell.paired_difference, y, "o", color=color, fillstyle=fill, markersize=7)
        axes.axvline(0, color="black", linewidth=1)
        axes.set_title(arch)
        axes.set_xlabel("top-1 error, method − Piggyback (points)")
        axes.grid(axis="x", alpha=0.3)
    first = axes_list[0]
    first.set_yticks(range(len(rows)))
    first.set_yticklabels([f"{d} · {series_label(m, o)}" for d, m, o in rows])
    first.set_ylim(len(rows) - 0.5, -0.5)
    handles = [
        marker("significant (Holm over the table's comparisons, 0.05)", "o", "black"),
        marker("not significant", "o", "black", fillstyle="none"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    figure.suptitle(
        f"{title}\n(right of zero: more errors than Piggyback; bars: 95% intervals)",
        fontweight="bold",
    )
    return figure, data
