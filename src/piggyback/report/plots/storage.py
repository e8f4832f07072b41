"""The storage figure: what one more task costs, in megabytes by part and bits per
weight, and what all of a config's tasks cost (the table's storage row), as
``piggyback.report.storage`` accounts them."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from piggyback.report.plots.style import Record, new_figure, no_data, series_colors, series_label
from piggyback.report.storage import BACKBONE, storage_data, storage_totals, stored_parts


def storage(records: list[Record]) -> tuple[Figure, pd.DataFrame]:
    """Per arch and method, what one more task costs: megabytes by part (left) and bits
    per backbone weight (middle), averaged over the file's tasks and runs; and what all
    of the config's tasks cost, in networks and megabytes (right: the table's storage
    row)."""
    title = "Storage, from the packed files and the backbone's weights"
    data = storage_data(records)
    if data.empty:
        return no_data(title, "no packed files in this config"), data
    keys = ["arch", "method", "ordering"]
    tasks = data[data["part"] != BACKBONE]
    per_task = tasks.groupby([*keys, "run", "dataset", "part"], sort=False)["megabytes"].sum()
    bits = tasks.groupby(keys, sort=False)[["bits_per_weight", "entropy_bits_per_weight"]].mean()
    megabytes = per_task.groupby([*keys, "part"]).mean().unstack("part", fill_value=0)
    order = list(dict.fromkeys(part.label for part in stored_parts().values()))
    columns = sorted(megabytes.columns, key=lambda p: order.index(p) if p in order else len(order))
    megabytes = megabytes.reindex(index=bits.index, columns=columns)  # the records' order
    rows = list(megabytes.index)
    figure = new_figure(17, 2.4 + 0.42 * len(rows))
    left, middle, right = figure.subplots(1, 3, sharey=True)
    _parts_panel(left, megabytes)
    _bits_panel(middle, bits, rows)
    totals = storage_totals(data).set_index(keys).reindex(rows)
    _totals_panel(right, totals)
    left.set_yticks(range(len(rows)), [f"{a} · {series_label(m, o)}" for a, m, o in rows])
    left.set_ylim(len(rows) - 0.5, -0.5)
    handles = left.get_legend_handles_labels()[0] + middle.get_legend_handles_labels()[0]
    figure.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    figure.suptitle(title, fontweight="bold")
    return figure, data


def _parts_panel(axes, megabytes: pd.DataFrame) -> None:
    edge = np.zeros(len(megabytes))
    part_colors = {part.label: part.color for part in stored_parts().values()}
    y = np.arange(len(megabytes))
    for part in megabytes.columns:
        values = megabytes[part].to_numpy()
        axes.barh(y, values, left=edge, color=part_colors.get(part, "black"), label=part)
        edge += values
    for index, total in enumerate(edge):
        axes.annotate(f" {total:.3g} MB", (total, index), va="center", fontsize=8)
    axes.set_xlim(0, 1.2 * edge.max())
    axes.set_xlabel("megabytes per task (10⁶ bytes)")
    axes.set_title("what one more task adds to the packed file")


def _bits_panel(axes, bits: pd.DataFrame, rows: list) -> None:
    y = np.arange(len(rows))
    stored = bits["bits_per_weight"].to_numpy()
    colors = series_colors((method, ordering) for _, method, ordering in rows)
    axes.barh(y, stored, color=[colors[method, ordering] for _, method, ordering in rows])
    for index, value in enumerate(stored):
        axes.annotate(f" {value:.3g}", (value, index), va="center", fontsize=8)
    entropy = bits["entropy_bits_per_weight"].to_numpy()
    coded = ~np.isnan(entropy)
    if coded.any():
        label = "entropy of the masks: what pack_encoding: entropy would store"
        axes.plot(entropy[coded], y[coded], "kD", markersize=6, label=label)
    axes.set_xlim(0, 1.15 * max(stored.max(), 1.0))
    axes.set_xlabel("bits per conv/linear weight of the backbone, per task")
    axes.set_title("the same, heads aside, per weight")


def _totals_panel(axes, totals: pd.DataFrame) -> None:
    """All tasks: the packed file and, where the method keeps it, the backbone."""
    values = totals["megabytes"].to_numpy()
    axes.barh(np.arange(len(values)), values, color="0.55")
    for index, (networks, megabytes) in enumerate(zip(totals["networks"], values, strict=True)):
        text = f" {megabytes:.4g} MB, {networks:g} network{'' if networks == 1 else 's'}"
        axes.annotate(text, (megabytes, index), va="center", fontsize=8)
    axes.set_xlim(0, 1.6 * values.max())
    axes.set_xlabel("megabytes for all tasks (the table's storage row)")
    axes.set_title("all tasks: packed file + the backbone it keeps")
