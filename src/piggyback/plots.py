"""The report's figures, drawn from the files the pipeline writes.

Each figure function returns the figure and a tidy table of exactly the numbers it drew;
``src/plots.py`` writes that table beside the picture, so a test can hold a picture's
numbers against ``table.tsv`` and the files they came from. A record names one input
file and what it belongs to (arch, method, ordering, run, ...): the workflow knows the
file layout, this module does not. Torch is never imported: a figure job starts in a
second, not five.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from piggyback.entropy import entropy_bits
from piggyback.methods.registry import METHODS

Record = dict[str, Any]

METHOD_COLORS = {
    "piggyback": "tab:blue",
    "piggyback_ternary": "tab:purple",
    "classifier_only": "tab:gray",
    "finetune": "tab:green",
}
ORDERING_COLORS = ["tab:orange", "tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
ARCH_STYLES = ["-", "--", ":", "-."]
TASK_COLORS = matplotlib.colormaps["tab10"].colors
RULE_COLORS = {
    "pretrain": "tab:gray",
    "start": "tab:brown",
    "train": "tab:blue",
    "evaluate": "tab:orange",
}
WITHIN, OUTSIDE, NO_REFERENCE = "tab:green", "tab:red", "0.45"
# What each part of a packed file is, by the first component of a key under a task (or
# of a key shared by all tasks), and its colour in the storage figure.
PARTS = {
    "head": ("task head", "tab:gray"),
    "mask": ("mask", "tab:blue"),
    "sign": ("mask", "tab:blue"),
    "weights": ("whole network", "tab:green"),
    "network": ("PackNet's one network, ÷ tasks", "tab:orange"),
    "owners": ("PackNet's owner map, ÷ tasks", "tab:red"),
}
DPI = 110


def series_label(method: str, ordering: str | None = None) -> str:
    """The paper's name of a method, and the ordering of a sequential one."""
    entry = METHODS.get(method)
    label = entry.label if entry else method
    return f"{label} ({ordering})" if ordering else label


def series_colors(series: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """A colour per (method, ordering), the same in every figure of a run: fixed per
    independent method, one per ordering of a sequential method in the order given."""
    colors, spare = {}, iter(ORDERING_COLORS)
    for key in dict.fromkeys(series):
        colors[key] = METHOD_COLORS.get(key[0]) or next(spare, "black")
    return colors


def no_data(title: str, reason: str) -> Figure:
    """A small figure that says what is missing, for an input without any rows."""
    figure = Figure(figsize=(8, 2), dpi=DPI)
    axes = figure.subplots()
    axes.axis("off")
    axes.set_title(title, fontweight="bold")
    axes.text(0.5, 0.4, f"No data: {reason}", ha="center", va="center", fontsize=12)
    return figure


def _figure(width: float, height: float) -> Figure:
    """A figure outside pyplot (no GUI backend, nothing kept alive); PNGs go through Agg."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    figure.get_layout_engine().set(w_pad=0.1, h_pad=0.1)
    return figure


def _grid(count: int, width: float, height: float, columns: int = 3, **options):
    """``count`` panels of ``width`` x ``height`` inches in rows of up to ``columns``; the
    panels left over in the last row are returned apart, to be removed."""
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure = _figure(width * columns, height * rows)
    axes = figure.subplots(rows, columns, squeeze=False, **options)
    flat = list(axes.flat)
    return figure, flat[:count], flat[count:]


def _marker(label: str, marker: str, color: Any, **style: Any) -> Line2D:
    """A legend entry for a marker drawn without a line."""
    return Line2D([], [], marker=marker, linestyle="", color=color, label=label, **style)


def _read_tsv(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")


# --- test error per epoch -----------------------------------------------------------


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
        metrics = _read_tsv(record["file"])
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
    figure, panels, spare = _grid(len(datasets), 4.6, 3.4, sharey=True)
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
        _marker("best epoch (kept)", "o", "black"),
        _marker("pruned, not yet retrained", "x", "black"),
        Line2D([], [], color="black", linestyle=(0, (1, 3)), label="chance"),
    ]
    key = "colour: method\nline: arch"
    figure.legend(handles=handles, loc="outside right upper", frameon=False, title=key)
    figure.suptitle(title, fontweight="bold")
    return figure, data


# --- results against the reference --------------------------------------------------


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
    figure = _figure(max(11.0, 3.0 + 4.2 * len(archs)), height)
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
        _marker("this run, within tolerance", "o", WITHIN),
        _marker("this run, outside tolerance", "o", OUTSIDE),
        _marker("this run, no published number", "o", NO_REFERENCE),
        _marker("published", "D", "black", fillstyle="none"),
        Patch(color=WITHIN, alpha=0.25, label=f"tolerance band: {band}"),
        _marker("chance", "|", "black", alpha=0.5),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    note = "right margin: this run − published, in points"
    if (data["verdict"] == "no reference").all():
        note = "no cell of this config has a published number"
    figure.suptitle(f"{title}\n({note})", fontweight="bold")
    return figure, data


# --- Piggyback's masks and PackNet's owners, per layer -------------------------------


def _layer_rows(records: list[Record], extra: tuple[str, ...]) -> pd.DataFrame:
    """The per-layer rows of pack statistics files (no TOTAL rows), with what each
    record says of its file."""
    frames = []
    for record in records:
        stats = _read_tsv(record["file"])
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
    figure, axes_list, _ = _grid(len(panels), 11, 3.6, columns=1)
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
    figure, axes_list, _ = _grid(len(panels), 11, 3.6, columns=1)
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


# --- storage ------------------------------------------------------------------------


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
        entropy = mask_entropy_bits(_read_tsv(record["stats"])) if record.get("stats") else {}
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
    figure = _figure(13, 2.4 + 0.42 * len(rows))
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


# --- where the time went --------------------------------------------------------------


def runtime_data(records: list[Record]) -> pd.DataFrame:
    """One row per job: its rule, arch, method (train, start, evaluate) and seconds."""
    rows = []
    for record in records:
        benchmark = _read_tsv(record["file"])
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
    figure = _figure(13, 1.8 + 0.42 * max(len(by_rule), len(by_series)))
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


FIGURES = {
    "error_curves": error_curves,
    "reference": reference_comparison,
    "mask_density": mask_density,
    "ownership": ownership,
    "storage": storage,
    "runtimes": runtimes,
}
