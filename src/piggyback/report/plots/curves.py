"""Test error per epoch of every training job, the kept epoch marked."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from piggyback.report.plots.style import (
    ARCH_STYLES,
    Record,
    grid,
    marker,
    no_data,
    read_tsv,
    series_colors,
    series_label,
)


def best_epoch(metrics: pd.DataFrame) -> int:
    """The row of the checkpoint a training job kept: the lowest test top-1 error of its
    last phase, the first on a tie (PackNet keeps the best of its retraining after
    pruning, which may be worse than an epoch before it)."""
    last = metrics[metrics["phase"] == metrics["phase"].iloc[-1]]
    return int(last["test_top1_error"].idxmin())


def error_curves_data(records: list[Record]) -> pd.DataFrame:
    """One row per epoch of every training job: its test error, and which is the best."""
    frames = []
    for record in records:
        metrics = read_tsv(record["file"])
        best = best_epoch(metrics)
        frames.append(
            pd.DataFrame(
                {
                    "arch": record["arch"],
                    "method": record["method"],
                    "ordering": record["ordering"] or "",
                    "run": record["run"],
                    "dataset": record["dataset"],
                    "epoch": metrics["epoch"],
                    "phase": metrics["phase"],
                    # PackNet's first row after pruning: the pruned network, not retrained
                    "retrained": metrics["train_loss"].notna(),
                    "test_top1_error": metrics["test_top1_error"],
                    "best": metrics.index == best,
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def error_curves(records: list[Record], classes: dict[str, int]) -> tuple[Figure, pd.DataFrame]:
    """A panel per dataset; a line per method (and ordering) and arch; the kept epoch
    marked; the chance error as a dotted line."""
    title = "Test error per epoch of every training job"
    data = error_curves_data(records)
    if data.empty:
        return no_data(title, "no training jobs in this config"), data
    datasets = list(dict.fromkeys(data["dataset"]))
    archs = list(dict.fromkeys(data["arch"]))
    series = list(dict.fromkeys(zip(data["method"], data["ordering"], strict=True)))
    colors = series_colors(series)
    styles = {arch: ARCH_STYLES[i % len(ARCH_STYLES)] for i, arch in enumerate(archs)}
    figure, panels, spare = grid(len(datasets), 4.6, 3.4, sharey=True)
    keys = ["arch", "method", "ordering", "run"]
    for axes, dataset in zip(panels, datasets, strict=False):
        for (arch, method, ordering, _), job in data[data["dataset"] == dataset].groupby(
            keys, sort=False
        ):
            style = {"color": colors[method, ordering], "linestyle": styles[arch]}
            axes.plot(job["epoch"], job["test_top1_error"], linewidth=1.6, **style)
            best, pruned = job[job["best"]], job[~job["retrained"]]
            axes.plot(
                best["epoch"], best["test_top1_error"], "o", markersize=7, color=style["color"]
            )
            axes.plot(pruned["epoch"], pruned["test_top1_error"], "x", color=style["color"])
        axes.axhline(100 * (1 - 1 / classes[dataset]), color="black", linestyle=(0, (1, 3)))
        axes.set_title(dataset)
        axes.set_xlabel("epoch")
        axes.set_ylabel("test top-1 error (%)")
        axes.set_ylim(0, 100)
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
    for axes in spare:
        axes.remove()
    handles = [Patch(color=colors[key], label=series_label(*key)) for key in series]
    handles += [Line2D([], [], color="black", linestyle=styles[a], label=a) for a in archs]
    handles += [
        marker("best epoch (kept)", "o", "black"),
        marker("pruned, not yet retrained", "x", "black"),
        Line2D([], [], color="black", linestyle=(0, (1, 3)), label="chance"),
    ]
    key = "colour: method\nline: arch"
    figure.legend(handles=handles, loc="outside right upper", frameon=False, title=key)
    figure.suptitle(title, fontweight="bold")
    return figure, data
