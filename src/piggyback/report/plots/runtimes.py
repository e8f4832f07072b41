"""Where the time went, from the jobs' benchmark files."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from piggyback.report.plots.style import (
    RULE_COLORS,
    Record,
    new_figure,
    no_data,
    read_tsv,
    series_colors,
    series_label,
)


def runtime_data(records: list[Record]) -> pd.DataFrame:
    """One row per job: its rule, arch, method (train, start, evaluate) and seconds."""
    rows = []
    for record in records:
        benchmark = read_tsv(record["file"])
        rows.append(
            {
                "rule": record["rule"],
                "arch": record["arch"],
                "method": record.get("method") or "",
                "ordering": record.get("ordering") or "",
                "job": record["file"],
                "seconds": float(benchmark["s"].iloc[-1]),
            }
        )
    return pd.DataFrame(rows)


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds >= 3 * 3600:
        return 3600.0, "hours"
    if seconds >= 3 * 60:
        return 60.0, "minutes"
    return 1.0, "seconds"


def runtimes(records: list[Record]) -> tuple[Figure, pd.DataFrame]:
    """Job wall time summed per arch and rule (left), and the training jobs' per arch
    and method (right), from Snakemake's benchmark files."""
    title = "Where the time went: wall time of the jobs, from benchmarks/"
    data = runtime_data(records)
    if data.empty:
        return no_data(title, "no benchmarked jobs"), data
    by_rule = data.pivot_table(
        index="arch", columns="rule", values="seconds", aggfunc="sum", sort=False, fill_value=0
    )
    rules = [r for r in RULE_COLORS if r in by_rule.columns]
    scale, unit = _time_unit(by_rule.sum(axis=1).max())
    train = data[data["rule"] == "train"]
    by_series = train.groupby(["arch", "method", "ordering"], sort=False)["seconds"].agg(
        ["sum", "count"]
    )
    figure = new_figure(13, 1.8 + 0.42 * max(len(by_rule), len(by_series)))
    left, right = figure.subplots(1, 2)
    y = np.arange(len(by_rule))
    edge = np.zeros(len(by_rule))
    for rule in rules:
        values = by_rule[rule].to_numpy() / scale
        jobs = int((data["rule"] == rule).sum())
        label = f"{rule} ({jobs} job{'s' if jobs > 1 else ''})"
        left.barh(y, values, left=edge, height=0.6, color=RULE_COLORS[rule], label=label)
        edge += values
    for index, total in enumerate(edge):
        left.annotate(f" {total:.3g} {unit}", (total, index), va="center", fontsize=8)
    left.set_yticks(y, by_rule.index)
    left.set_ylim(len(y) - 0.5, -0.5)
    left.set_xlim(0, 1.3 * edge.max())
    left.set_xlabel(f"job wall time, summed ({unit})")
    left.set_title("per arch and rule")
    handles = left.get_legend_handles_labels()[0]
    figure.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False)
    right.set_title("training, per arch and method")
    if by_series.empty:
        right.axis("off")
        right.text(0.5, 0.5, "no training jobs in this config", ha="center")
    else:
        _training_times(right, by_series)
    figure.suptitle(title, fontweight="bold")
    return figure, data


def _training_times(axes, by_series: pd.DataFrame) -> None:
    """A bar per arch and method: its training jobs' time summed, and how many."""
    scale, unit = _time_unit(by_series["sum"].max())
    keys = list(by_series.index)
    colors = series_colors((method, ordering) for _, method, ordering in keys)
    y = np.arange(len(keys))
    values = by_series["sum"].to_numpy() / scale
    axes.barh(y, values, color=[colors[method, ordering] for _, method, ordering in keys])
    for index, (value, count) in enumerate(zip(values, by_series["count"], strict=True)):
        text = f" {value:.3g} {unit} ({count} job{'s' if count > 1 else ''})"
        axes.annotate(text, (value, index), va="center", fontsize=8)
    axes.set_yticks(y, [f"{a} · {series_label(m, o)}" for a, m, o in keys])
    axes.set_ylim(len(y) - 0.5, -0.5)
    axes.set_xlim(0, 1.5 * values.max())
    axes.set_xlabel(f"training wall time, summed over tasks and runs ({unit})")
