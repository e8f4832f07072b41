"""What every figure of the report shares: a record (one input file and what it belongs
to), colours per method (its registry entry's), ordering, task and rule, labels, what each
part of a packed file is, and figure grids outside pyplot."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from piggyback.methods.registry import METHODS

Record = dict[str, Any]

ORDERING_COLORS = ["tab:orange", "tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
ARCH_STYLES = ["-", "--", ":", "-."]
TASK_COLORS = matplotlib.colormaps["tab10"].colors
RULE_COLORS = {
    "pretrain": "tab:gray",
    "start": "tab:brown",
    "train": "tab:blue",
    "evaluate": "tab:orange",
    "evaluate_source": "tab:olive",
}
WITHIN, OUTSIDE, NO_REFERENCE = "tab:green", "tab:red", "0.45"
DPI = 110


def series_label(method: str, ordering: str | None = None) -> str:
    """The paper's name of a method, and the ordering of a sequential one."""
    entry = METHODS.get(method)
    label = entry.label if entry else method
    return f"{label} ({ordering})" if ordering else label


def series_colors(series: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """A colour per (method, ordering), the same in every figure of a run: the entry's
    for an independent method, one per ordering of a sequential method in the order
    given."""
    colors, spare = {}, iter(ORDERING_COLORS)
    for key in dict.fromkeys(series):
        entry = METHODS.get(key[0])
        colors[key] = (entry.color if entry else None) or next(spare, "black")
    return colors


def no_data(title: str, reason: str) -> Figure:
    """A small figure that says what is missing, for an input without any rows."""
    figure = Figure(figsize=(8, 2), dpi=DPI)
    axes = figure.subplots()
    axes.axis("off")
    axes.set_title(title, fontweight="bold")
    axes.text(0.5, 0.4, f"No data: {reason}", ha="center", va="center", fontsize=12)
    return figure


def new_figure(width: float, height: float) -> Figure:
    """A figure outside pyplot (no GUI backend, nothing kept alive); PNGs go through Agg."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    figure.get_layout_engine().set(w_pad=0.1, h_pad=0.1)
    return figure


def grid(count: int, width: float, height: float, columns: int = 3, **options):
    """``count`` panels of ``width`` x ``height`` inches in rows of up to ``columns``; the
    panels left over in the last row are returned apart, to be removed."""
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure = new_figure(width * columns, height * rows)
    axes = figure.subplots(rows, columns, squeeze=False, **options)
    flat = list(axes.flat)
    return figure, flat[:count], flat[count:]


def marker(label: str, marker: str, color: Any, **style: Any) -> Line2D:
    """A legend entry for a marker drawn without a line."""
    return Line2D([], [], marker=marker, linestyle="", color=color, label=label, **style)


def read_tsv(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")
