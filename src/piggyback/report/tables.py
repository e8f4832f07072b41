"""The paper's table from the evaluation results, set beside the reference numbers.

Independent methods give one block each: mean ± std over runs (``n`` = the number of
runs; one run has no ±). A sequential method gives one block per ordering, named after
it, each task with its position in it: its errors depend on the order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from piggyback.core.registry import METHODS

KEYS = ["method", "ordering", "arch", "dataset"]
COLUMNS = [
    *KEYS,
    "position",
    "error",
    "std",
    "n",
    "chance_error",
    "reference",
    "difference",
    "within_tolerance",
    "reference_source",
    "reference_setting",
]
# per-task figures a method's pack reports (PackNet's prune_fraction: 0, not pruned)
SUMMARIES = ["mask_density", "owned_share", "prune_fraction"]


def load_results(paths: list[Path]) -> pd.DataFrame:
    """One row per task evaluation (arch x method x ordering x run x dataset)."""
    rows = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        for task in result["tasks"]:
            rows.append(
                {
                    "method": result["method"],
                    "ordering": result["ordering"] or "",
                    "arch": result["arch"],
                    "start_source": (result.get("start") or {}).get("source"),
                    **task,
                }
            )
    return pd.DataFrame(rows)


def load_reference(path: Path) -> pd.DataFrame:
    """Published errors: ``method, arch, dataset, error, source``; optional ``ordering``
    (empty: any) and ``setting`` (how the source's run differs from this one)."""
    reference = pd.read_csv(path, sep="\t", comment="#", keep_default_na=False)
    missing = {"method", "arch", "dataset", "error", "source"} - set(reference.columns)
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(sorted(missing))}")
    for column in ("ordering", "setting"):
        if column not in reference.columns:
            reference[column] = ""
    reference["error"] = pd.to_numeric(reference["error"])
    return reference


def summarize(
    results: pd.DataFrame,
    reference: pd.DataFrame | None,
    tolerance: float,
    classes: dict[str, int],
) -> pd.DataFrame:
    """Mean and spread over runs per method x ordering x arch x dataset, with the
    reference, the difference and whether it is within ``tolerance`` points."""
    grouped = results.groupby(KEYS, sort=False)
    table = grouped["top1_error"].agg(
        error="mean", std=lambda e: e.std(ddof=1) if len(e) > 1 else float("nan"), n="count"
    )
    table["position"] = grouped["position"].first()
    for column in SUMMARIES:
        if column in results.columns:
            table[column] = grouped[column].mean()
    table["start_source"] = grouped["start_source"].first()
    table = table.reset_index()
    table["chance_error"] = table["dataset"].map(lambda d: 100.0 * (1 - 1 / classes[d]))
    table = _with_reference(table, reference)
    table["difference"] = table["error"] - table["reference"]
    table["within_tolerance"] = (
        table["difference"].abs().le(tolerance).where(table["reference"].notna())
    )
    extra = [c for c in [*SUMMARIES, "start_source"] if c in table.columns]
    return table[COLUMNS + extra]


def _with_reference(table: pd.DataFrame, reference: pd.DataFrame | None) -> pd.DataFrame:
    """A cell's reference: the row for its ordering, else the one for any ordering."""
    columns = ["reference", "reference_source", "reference_setting"]
    if reference is None:
        return table.assign(reference=float("nan"), reference_source=None, reference_setting="")
    ref = reference.rename(
        columns={"error": "reference", "source": "reference_source", "setting": "reference_setting"}
    )
    on = ["method", "arch", "dataset"]
    exact = table.merge(ref[ref["ordering"] != ""], on=[*on, "ordering"], how="left")
    anywhere = table.merge(ref[ref["ordering"] == ""].drop(columns="ordering"), on=on, how="left")
    for column in columns:
        exact[column] = exact[column].where(exact["reference"].notna(), anywhere[column])
    exact["reference_setting"] = exact["reference_setting"].fillna("")
    return exact


def block_title(method: str, ordering: str, datasets: list[str], start_source) -> str:
    entry = METHODS.get(method)
    title = f"{entry.label if entry else method} ({method})"
    if ordering:
        title += f", ordering {ordering}: {' → '.join(datasets)}"
        if entry is not None and entry.sequential and pd.isna(start_source):
            title += " (the start was pruned but not retrained on the source task)"
    return title


def to_markdown(
    table: pd.DataFrame,
    archs: list[str],
    datasets: list[str],
    methods: list[str],
    orderings: dict[str, list[str]],
    tolerance: float,
) -> str:
    """One block per method (per ordering, for a sequential method): datasets as rows,
    archs as columns (the paper's layout), chance error beside each dataset."""
    lines = [
        "# Top-1 test error (%)",
        "",
        "Mean ± std over runs (one run: no ±); in brackets the reference and the difference "
        f"(a cell within ±{tolerance:g} points of its reference is marked ✓; † marks a "
        "reference from another setting, named below the table).",
        "",
    ]
    referenced = table["reference"].notna().any()
    if not referenced:
        lines += ["No cell has a published number to compare with (no reference).", ""]
    notes: dict[str, int] = {}
    for (method, ordering), block in _blocks(table, methods):
        rows = []
        order = orderings.get(ordering, datasets) if ordering else datasets
        for dataset in order:
            row = {"dataset": dataset}
            cells = block[block["dataset"] == dataset]
            if ordering and len(cells):
                row = {"position": int(cells["position"].iloc[0]), **row}
            row["chance"] = f"{cells['chance_error'].iloc[0]:.1f}" if len(cells) else ""
            for arch in archs:
                cell = cells[cells["arch"] == arch]
                row[arch] = _cell(cell.iloc[0], notes, referenced) if len(cell) else "not run"
            rows.append(row)
        start = block["start_source"].iloc[0] if "start_source" in block else None
        lines += [f"## {block_title(method, ordering, order, start)}", ""]
        lines += [_markdown(rows), ""]
        lines += _summary_lines(block, order, archs)
    lines += ["## Verdict", "", *verdict(table, tolerance), ""]
    if notes:
        lines += ["Settings that differ (†):", ""]
        lines += [f"{index}. {setting}" for setting, index in notes.items()]
        lines.append("")
    sources = table["reference_source"].dropna().unique()
    if len(sources):
        lines += ["References:", "", *[f"- {s}" for s in sources], ""]
    return "\n".join(lines)


def _markdown(rows: list[dict]) -> str:
    """A markdown table of the rows, their text as written (no "31.00" shown as "31")."""
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def _blocks(table: pd.DataFrame, methods: list[str]):
    for method in methods:
        block = table[table["method"] == method]
        for ordering, part in block.groupby("ordering", sort=False):
            yield (method, ordering), part


def _summary_lines(block: pd.DataFrame, datasets: list[str], archs: list[str]) -> list[str]:
    """What the method's packed files say of each task (Piggyback: the share of mask
    entries kept; PackNet: the share of the backbone the task owns, and the fraction of
    its weights pruning freed)."""
    lines = []
    for column, what, shown in (
        ("mask_density", "Share of mask entries kept (%)", _percent),
        ("owned_share", "Share of the backbone's weights the task owns (%)", _percent),
        (
            "prune_fraction",
            "Share of the task's weights per layer freed for later tasks (prune_fraction)",
            _fraction,
        ),
    ):
        if column not in block or block[column].isna().all():
            continue
        rows = []
        for dataset in datasets:
            row = {"dataset": dataset}
            for arch in archs:
                cell = block[(block["dataset"] == dataset) & (block["arch"] == arch)]
                row[arch] = shown(cell[column].iloc[0]) if len(cell) else "not run"
            rows.append(row)
        lines += [f"{what}:", "", _markdown(rows), ""]
    return lines


def _percent(share: float) -> str:
    return f"{100.0 * share:.2f}"


def _fraction(fraction: float) -> str:
    return "not pruned" if fraction == 0 else f"{fraction:g}"


def verdict(table: pd.DataFrame, tolerance: float) -> list[str]:
    lines = []
    for (method, ordering), block in table.groupby(["method", "ordering"], sort=False):
        with_ref = block[block["reference"].notna()]
        within = int(with_ref["within_tolerance"].sum())
        name = f"{method} ({ordering})" if ordering else method
        text = (
            f"{name}: mean error {block['error'].mean():.2f}% "
            f"(chance {block['chance_error'].mean():.2f}%) over {len(block)} cells; "
        )
        if "mask_density" in block and block["mask_density"].notna().any():
            text += f"masks keep {100 * block['mask_density'].mean():.1f}% of their entries; "
        if len(with_ref):
            text += f"{within} of {len(with_ref)} within ±{tolerance:g} of the reference"
        else:
            text += "no reference numbers for these cells"
        if 0 < len(with_ref) < len(block):
            text += f", {len(block) - len(with_ref)} without reference"
        lines.append(f"- {text}")
    return lines


def _cell(row: pd.Series, notes: dict[str, int], referenced: bool) -> str:
    """The error (± std over runs), and its reference where the table has any."""
    text = f"{row['error']:.2f}"
    if row["n"] > 1:
        text += f" ± {row['std']:.2f} (n={row['n']})"
    if pd.isna(row["reference"]):
        return text + " (no reference)" if referenced else text
    mark = " ✓" if row["within_tolerance"] else ""
    setting = row["reference_setting"]
    if setting:
        mark += " †" + str(notes.setdefault(setting, len(notes) + 1))
    return f"{text} ({row['reference']:.2f}, {row['difference']:+.2f}{mark})"
