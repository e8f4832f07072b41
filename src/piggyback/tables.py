"""The paper's table from the evaluation results, set beside the reference numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

COLUMNS = [
    "method",
    "arch",
    "dataset",
    "error",
    "std",
    "n",
    "reference",
    "difference",
    "within_tolerance",
    "reference_source",
    "chance_error",
]


def load_results(paths: list[Path]) -> pd.DataFrame:
    """One row per evaluation (arch x method x ordering x run x dataset)."""
    rows = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        result["ordering"] = "-".join(result["ordering"])
        rows.append(result)
    return pd.DataFrame(rows)


def load_reference(path: Path) -> pd.DataFrame:
    reference = pd.read_csv(path, sep="\t", comment="#")
    missing = {"method", "arch", "dataset", "error", "source"} - set(reference.columns)
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(sorted(missing))}")
    return reference


def summarize(
    results: pd.DataFrame,
    reference: pd.DataFrame | None,
    tolerance: float,
    classes: dict[str, int],
) -> pd.DataFrame:
    """Mean and spread over runs and orderings per method x arch x dataset, with the
    reference, the difference and whether it is within ``tolerance`` points."""
    grouped = results.groupby(["method", "arch", "dataset"], sort=False)["top1_error"]
    table = grouped.agg(error="mean", std=lambda e: e.std(ddof=1) if len(e) > 1 else 0.0, n="count")
    table = table.reset_index()
    if reference is not None:
        ref = reference.rename(columns={"error": "reference", "source": "reference_source"})
        table = table.merge(
            ref[["method", "arch", "dataset", "reference", "reference_source"]],
            on=["method", "arch", "dataset"],
            how="left",
        )
    else:
        table["reference"], table["reference_source"] = float("nan"), None
    table["difference"] = table["error"] - table["reference"]
    table["within_tolerance"] = (
        table["difference"].abs().le(tolerance).where(table["reference"].notna())
    )
    table["chance_error"] = table["dataset"].map(lambda d: 100.0 * (1 - 1 / classes[d]))
    return table[COLUMNS]


def to_markdown(
    table: pd.DataFrame, archs: list[str], datasets: list[str], methods: list[str], tolerance: float
) -> str:
    """One block per method: datasets as rows, archs as columns (the paper's layout)."""
    lines = [
        "# Top-1 test error (%)",
        "",
        "Mean ± std over runs and orderings; in brackets the reference and the difference "
        f"(a cell within ±{tolerance:g} points of its reference is marked ✓).",
        "",
    ]
    for method in methods:
        block = table[table["method"] == method]
        if block.empty:
            continue
        rows = []
        for dataset in datasets:
            row = {"dataset": dataset}
            for arch in archs:
                cell = block[(block["arch"] == arch) & (block["dataset"] == dataset)]
                row[arch] = _cell(cell.iloc[0]) if len(cell) else "not run"
            rows.append(row)
        lines += [f"## {method}", "", pd.DataFrame(rows).to_markdown(index=False), ""]
    lines += ["## Verdict", "", *verdict(table, tolerance), ""]
    sources = table["reference_source"].dropna().unique()
    if len(sources):
        lines += ["References:", "", *[f"- {s}" for s in sources], ""]
    return "\n".join(lines)


def verdict(table: pd.DataFrame, tolerance: float) -> list[str]:
    lines = []
    for method, block in table.groupby("method", sort=False):
        with_ref = block[block["reference"].notna()]
        within = int(with_ref["within_tolerance"].sum())
        text = (
            f"{method}: mean error {block['error'].mean():.2f}% "
            f"(chance {block['chance_error'].mean():.2f}%) over {len(block)} cells; "
        )
        if len(with_ref):
            text += f"{within} of {len(with_ref)} within ±{tolerance:g} of the reference"
        else:
            text += "no reference numbers for these cells"
        if 0 < len(with_ref) < len(block):
            text += f", {len(block) - len(with_ref)} without reference"
        lines.append(f"- {text}")
    return lines


def _cell(row: pd.Series) -> str:
    text = f"{row['error']:.2f} ± {row['std']:.2f}"
    if pd.isna(row["reference"]):
        return text + " (no reference)"
    mark = " ✓" if row["within_tolerance"] else ""
    return f"{text} ({row['reference']:.2f}, {row['difference']:+.2f}{mark})"
