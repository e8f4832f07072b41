"""table.md: first, per arch, the comparison as the paper prints it (datasets as rows, the
config's methods side by side in the registry's order, each PackNet ordering its own
column; the ImageNet row, when the config has a source task; the storage of all tasks)
with each cell's interval and its paired test against Piggyback, and the paired
differences below; then each method's details (positions, densities, owned shares,
references and their settings) and the verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd

from piggyback.methods.registry import METHODS
from piggyback.report.comparisons import BASELINE
from piggyback.report.statistics import LEVEL, SIGNIFICANCE

HIGHER, LOWER = "▲", "▼"


# What a method's packed files say of each task, shown under its block: (column, title).
def _percent(share: float) -> str:
    return f"{100.0 * share:.2f}"


def _fraction(fraction: float) -> str:
    return "not pruned" if fraction == 0 else f"{fraction:g}"


# What the packed files say of each task, as the per-method details show it.
DETAILS = [
    ("mask_density", "Share of mask entries kept (%)", _percent),
    ("owned_share", "Share of the backbone's weights the task owns (%)", _percent),
    (
        "prune_fraction",
        "Share of the task's weights per layer freed for later tasks (prune_fraction)",
        _fraction,
    ),
]


def columns(table: pd.DataFrame, methods: list[str], orderings: dict[str, list[str]]):
    """(method, ordering) per column: the config's methods in the registry's order, a
    sequential method once per ordering of the config that it ran."""
    ran = set(zip(table["method"], table["ordering"], strict=True))
    chosen = []
    for method in (m for m in METHODS if m in methods):
        if METHODS[method].sequential:
            chosen += [(method, o) for o in orderings if (method, o) in ran]
        else:
            chosen.append((method, ""))
    return chosen


def column_label(method: str, ordering: str) -> str:
    label = METHODS[method].label
    return f"{label} ({ordering})" if ordering else label


def to_markdown(
    table: pd.DataFrame,
    archs: list[str],
    datasets: list[str],
    methods: list[str],
    orderings: dict[str, list[str]],
    tolerance: float | None,
) -> str:
    """The whole of table.md; ``tolerance`` is None without reference numbers."""
    chosen = columns(table, methods, orderings)
    comparisons = bool(table["paired_p"].notna().any())
    lines = ["# Top-1 test error (%)", "", *_reading(comparisons), ""]
    if not table["source_task"].any():
        lines += [NO_SOURCE_ROW, ""]
    rows = _row_datasets(table, datasets)
    for arch in archs:
        cells = table[table["arch"] == arch]
        lines += [f"## {arch}", "", _markdown(_paper_rows(cells, rows, chosen)), ""]
        if comparisons:
            lines += [
                f"{arch}, each method minus Piggyback on the same test images (points of "
                "error): the difference, its 95% interval, the exact p value and Holm's:",
                "",
                _markdown(_paired_rows(cells, rows, [c for c in chosen if c[0] != BASELINE])),
                "",
            ]
    lines += ["# Per method", ""]
    lines += _details(table, archs, rows, chosen, orderings)
    lines += ["## Verdict", "", *verdict(table, tolerance), ""]
    return "\n".join(lines)


NO_SOURCE_ROW = (
    "No source-task row (the paper's ImageNet row): no dataset of the config is the "
    "backbone's source task (`source_task: true`, with its test images), so what each "
    "method costs the task the backbone was trained on is not measured here."
)


def _reading(comparisons: bool) -> list[str]:
    """How to read the table, in its header."""
    level = f"{LEVEL:.0%}"
    lines = [
        f"Each cell: the error (the mean over runs, with n= their number when above one) "
        f"and its {level} interval in brackets: exact (Clopper-Pearson) for the test "
        "images' sampling, with the spread over runs added when there are several "
        "(docs/statistics.md). The storage row gives the networks kept and the megabytes "
        "for all of the config's tasks (the report's storage figure)."
    ]
    if comparisons:
        lines += [
            "",
            f"{HIGHER} / {LOWER}: the method's error is significantly higher / lower than "
            "Piggyback's, image by image on the same test images (McNemar's exact test; "
            f"Holm's correction over all of the table's comparisons, at {SIGNIFICANCE:g}); "
            "no mark: no significant difference.",
        ]
    return lines


def _row_datasets(table: pd.DataFrame, datasets: list[str]) -> list[tuple[str, bool]]:
    """(dataset, is the source task): the source task first, as the paper's ImageNet row."""
    source = list(dict.fromkeys(table.loc[table["source_task"], "dataset"]))
    return [(d, True) for d in source] + [(d, False) for d in datasets if d not in source]


def _cell_of(cells: pd.DataFrame, method: str, ordering: str, dataset: str):
    series = (cells["method"] == method) & (cells["ordering"] == ordering)
    found = cells[series & (cells["dataset"] == dataset)]
    return found.iloc[0] if len(found) else None


def _dataset_label(dataset: str, source: bool) -> str:
    return f"{dataset} (source task)" if source else dataset


def _paper_rows(cells: pd.DataFrame, rows, chosen) -> list[dict[str, str]]:
    out = []
    for dataset, source in rows:
        found = cells[cells["dataset"] == dataset]
        row = {
            "dataset": _dataset_label(dataset, source),
            "test images": str(int(found["images"].iloc[0])) if len(found) else "",
            "chance": f"{found['chance_error'].iloc[0]:.1f}" if len(found) else "",
        }
        for method, ordering in chosen:
            cell = _cell_of(cells, method, ordering, dataset)
            row[column_label(method, ordering)] = "not run" if cell is None else _cell(cell)
        out.append(row)
    storage = {"dataset": "storage: networks, MB (all tasks)", "test images": "", "chance": ""}
    for method, ordering in chosen:
        series = cells[(cells["method"] == method) & (cells["ordering"] == ordering)]
        known = series.dropna(subset=["storage_megabytes"])
        text = ""
        if len(known):
            first = known.iloc[0]
            text = f"{first['storage_networks']:g}, {first['storage_megabytes']:.1f} MB"
        storage[column_label(method, ordering)] = text
    return [*out, storage]


def _cell(cell: pd.Series) -> str:
    text = f"{cell['error']:.2f} [{cell['low']:.1f}, {cell['high']:.1f}]"
    if cell["n"] > 1:
        text += f" n={cell['n']}"
    return text + _mark(cell)


def _paired_rows(cells: pd.DataFrame, rows, chosen) -> list[dict[str, str]]:
    out = []
    for dataset, source in rows:
        row = {"dataset": _dataset_label(dataset, source)}
        for method, ordering in chosen:
            cell = _cell_of(cells, method, ordering, dataset)
            row[column_label(method, ordering)] = _paired(cell)
        out.append(row)
    return out


def _paired(cell: pd.Series | None) -> str:
    if cell is None:
        return "not run"
    if pd.isna(cell["paired_p"]):
        return "the same network" if cell["source_task"] else "no Piggyback cell"
    return (
        f"{cell['paired_difference']:+.1f} [{cell['paired_low']:+.1f}, "
        f"{cell['paired_high']:+.1f}], p {_p(cell['paired_p'])}, Holm "
        f"{_p(cell['paired_p_holm'])}{_mark(cell)}"
    )


def _mark(cell: pd.Series) -> str:
    """The paired test's mark: the method's error significantly higher or lower."""
    if not is_true(cell.get("paired_significant")):
        return ""
    return f" {HIGHER if cell['paired_difference'] > 0 else LOWER}"


def is_true(value) -> bool:
    """True for a true boolean cell (Python's or numpy's), False for false or missing."""
    return isinstance(value, bool | np.bool_) and bool(value)


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.0e}"


def _markdown(rows: list[dict]) -> str:
    """A markdown table of the rows, their text as written (no "31.00" shown as "31")."""
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def _details(table, archs, rows, chosen, orderings) -> list[str]:
    """Per method (and ordering) a block: datasets as rows, archs as columns, each cell
    with its reference and verdict, and what the packed files say of each task."""
    lines: list[str] = []
    notes: dict[str, int] = {}
    referenced = table["reference"].notna().any()
    if not referenced:
        lines += ["No cell has a published number to compare with (no reference).", ""]
    for method, ordering in chosen:
        block = table[(table["method"] == method) & (table["ordering"] == ordering)]
        order = orderings.get(ordering, []) if ordering else [d for d, s in rows if not s]
        listed = [(d, True) for d, s in rows if s] + [(d, False) for d in order]
        start = block["start_source"].iloc[0] if len(block) else None
        lines += [f"## {_block_title(method, ordering, order, start)}", ""]
        lines += [_markdown(_block_rows(block, listed, archs, ordering, notes, referenced)), ""]
        lines += _summary_lines(block, [d for d, _ in listed], archs)
    if notes:
        lines += ["Settings that differ (†):", ""]
        lines += [f"{index}. {setting}" for setting, index in notes.items()]
        lines.append("")
    sources = table["reference_source"].dropna().unique()
    if len(sources):
        lines += ["References:", "", *[f"- {s}" for s in sources], ""]
    return lines


def _block_title(method: str, ordering: str, datasets: list[str], start_source) -> str:
    entry = METHODS[method]
    title = f"{entry.label} ({method})"
    if ordering:
        title += f", ordering {ordering}: {' → '.join(datasets)}"
        if entry.sequential and pd.isna(start_source):
            title += " (the start was pruned but not retrained on the source task)"
    return title


def _block_rows(block, listed, archs, ordering, notes, referenced) -> list[dict[str, str]]:
    rows = []
    for dataset, source in listed:
        cells = block[block["dataset"] == dataset]
        row = {"dataset": _dataset_label(dataset, source)}
        if ordering and len(cells):
            position = int(cells["position"].iloc[0])
            row = {"position": str(position) if position else "start", **row}
        for arch in archs:
            cell = cells[cells["arch"] == arch]
            row[arch] = _detail_cell(cell.iloc[0], notes, referenced) if len(cell) else "not run"
        rows.append(row)
    return rows


def _detail_cell(row: pd.Series, notes: dict[str, int], referenced: bool) -> str:
    """The error (± std over runs) and interval, and its reference and verdict."""
    text = f"{row['error']:.2f}"
    if row["n"] > 1:
        text += f" ± {row['std']:.2f} (n={row['n']})"
    text += f" [{row['low']:.1f}, {row['high']:.1f}]"
    if pd.isna(row["reference"]):
        return text + " (no reference)" if referenced else text
    mark = "✓" if is_true(row["agrees"]) else row["verdict"]
    setting = row["reference_setting"]
    if setting:
        mark += " †" + str(notes.setdefault(setting, len(notes) + 1))
    return f"{text} ({row['reference']:.2f}, {row['difference']:+.2f}: {mark})"


def _summary_lines(block: pd.DataFrame, datasets: list[str], archs: list[str]) -> list[str]:
    """What the method's packed files say of each task (``DETAILS``)."""
    lines = []
    for column, what, shown in DETAILS:
        if column not in block or block[column].isna().all():
            continue
        rows = []
        for dataset in datasets:
            cells = block[(block["dataset"] == dataset) & block[column].notna()]
            if cells.empty:
                continue
            row = {"dataset": dataset}
            for arch in archs:
                cell = cells[cells["arch"] == arch]
                row[arch] = shown(cell[column].iloc[0]) if len(cell) else "not run"
            rows.append(row)
        lines += [f"{what}:", "", _markdown(rows), ""]
    return lines


def verdict(table: pd.DataFrame, tolerance: float | None) -> list[str]:
    """A line per method (and ordering): its mean error over the new tasks, its source-task
    error apart (an ImageNet row averaged in would say more of the backbone than of the
    method), and how many of its cells agree with their published numbers, naming each
    that does not."""
    lines = []
    for (method, ordering), block in table.groupby(["method", "ordering"], sort=False):
        with_ref = block[block["reference"].notna()]
        agrees = with_ref["agrees"].map(is_true)
        name = f"{method} ({ordering})" if ordering else method
        new, source = block[~block["source_task"]], block[block["source_task"]]
        text = (
            f"{name}: mean error {new['error'].mean():.2f}% "
            f"(chance {new['chance_error'].mean():.2f}%) over {len(new)} new-task cells; "
        )
        if len(source):
            cells = "cell" if len(source) == 1 else "cells"
            text += f"source task {source['error'].mean():.2f}% over {len(source)} {cells}; "
        if "mask_density" in block and block["mask_density"].notna().any():
            text += f"masks keep {100 * block['mask_density'].mean():.1f}% of their entries; "
        if len(with_ref):
            text += (
                f"{int(agrees.sum())} of {len(with_ref)} cells agree with their reference "
                f"(within the {LEVEL:.0%} interval widened by {tolerance:g} points)"
            )
            off = with_ref[~agrees]
            text += "".join(f"; {r.dataset} ({r.arch}) {r.verdict}" for r in off.itertuples())
        else:
            text += "no reference numbers for these cells"
        if 0 < len(with_ref) < len(block):
            text += f"; {len(block) - len(with_ref)} without reference"
        lines.append(f"- {text}")
    return lines
