"""The paper's table from the evaluation results, with the evidence beside each number:
per cell (method x ordering x arch x dataset) the mean error over runs and its 95%
interval, the verdict against the published number, the paired comparison with
Piggyback on the same test images, and the storage of all of the series' tasks
(docs/statistics.md). ``piggyback.report.markdown`` lays it out.

A sequential method's cells are per ordering, each task with its position in it. The
source task's evaluations (the ImageNet row) are shared: the backbone's by every method
that keeps it, a sequential method's start by each of its orderings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from piggyback.methods.registry import METHODS
from piggyback.report.comparisons import KEYS, PAIRED, paired_table
from piggyback.report.statistics import agreement, cell_interval, standard_error

COLUMNS = [
    *KEYS,
    "position",
    "error",
    "std",
    "n",
    "images",
    "low",
    "high",
    "se",
    "chance_error",
    "source_task",
    "reference",
    "difference",
    "agrees",
    "verdict",
    "reference_source",
    "reference_setting",
    *PAIRED,
    "storage_networks",
    "storage_megabytes",
]
# per-task figures a method's pack reports (PackNet's prune_fraction: 0, not pruned)
SUMMARIES = ["mask_density", "owned_share", "prune_fraction"]


def load_results(
    paths: list[Path], methods: list[str], orderings: list[str] | None = None
) -> pd.DataFrame:
    """One row per task evaluation (arch x method x ordering x run x dataset), with its
    JSON (``result``) and per-image file (``per_image``). A source-task evaluation
    becomes a row for each of ``methods`` it stands for: the backbone's for those that
    keep it, a start's for each ordering of its method."""
    rows = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        files = {
            "result": str(path),
            "per_image": str(Path(path).parent / result["per_image"]),
            "start_source": (result.get("start") or {}).get("source"),
            "source_task": "source_task" in result,
        }
        for method, ordering in _stands_for(result, methods, orderings or [""]):
            for task in result["tasks"]:
                rows.append(
                    {"method": method, "ordering": ordering, "arch": result["arch"], **files} | task
                )
    return pd.DataFrame(rows)


def _stands_for(result: dict, methods: list[str], orderings: list[str]):
    if "source_task" not in result:
        yield result["method"], result["ordering"] or ""
    elif result["network"] == "backbone":
        yield from ((m, "") for m in methods if not METHODS[m].sequential)
    elif result["method"] in methods:
        yield from ((result["method"], ordering) for ordering in orderings)


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
    tolerance: float | None,
    classes: dict[str, int],
    storage: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per cell: the mean error over runs, its spread, its 95% interval and SE; the
    reference, the difference and the verdict (the reference within the interval
    widened by ``tolerance`` points; no tolerance without reference numbers); the paired
    comparison with Piggyback; and the series' storage (``storage_totals``)."""
    table = _cells(results)
    table["chance_error"] = table["dataset"].map(lambda d: 100.0 * (1 - 1 / classes[d]))
    table = _with_reference(table, reference)
    table["difference"] = table["error"] - table["reference"]
    verdicts = [
        agreement(row.error, row.low, row.high, row.reference, tolerance)
        if pd.notna(row.reference)
        else (None, "no reference")
        for row in table.itertuples()
    ]
    table["agrees"] = pd.Series([agrees for agrees, _ in verdicts], dtype=object)
    table["verdict"] = [text for _, text in verdicts]
    table = table.merge(paired_table(results), on=KEYS, how="left")
    table = _with_storage(table, storage)
    extra = [c for c in [*SUMMARIES, "start_source"] if c in table.columns]
    return table[COLUMNS + extra]


def _cells(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over runs, and the interval from each run's error count: the runs
    of a cell must share their test images (their count, at least, is checked here)."""
    rows = []
    for keys, runs in results.groupby(KEYS, sort=False):
        images = runs["images"].unique()
        if len(images) != 1:
            raise ValueError(
                f"the runs of {dict(zip(KEYS, keys, strict=True))} were evaluated on "
                f"{sorted(images)} test images: a cell's runs share one test set"
            )
        errors = (runs["top1_error"] * images[0] / 100).round().to_numpy()
        low, high = cell_interval(errors, int(images[0]))
        first = runs.iloc[0]
        rows.append(
            {
                **dict(zip(KEYS, keys, strict=True)),
                "position": first["position"],
                "error": runs["top1_error"].mean(),
                "std": runs["top1_error"].std(ddof=1) if len(runs) > 1 else float("nan"),
                "n": len(runs),
                "images": int(images[0]),
                "low": low,
                "high": high,
                "se": standard_error(low, high),
                "source_task": bool(first["source_task"]),
                "start_source": first["start_source"],
                **{c: runs[c].mean() for c in SUMMARIES if c in runs},
            }
        )
    return pd.DataFrame(rows)


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


def _with_storage(table: pd.DataFrame, storage: pd.DataFrame | None) -> pd.DataFrame:
    if storage is None or storage.empty:
        return table.assign(storage_networks=np.nan, storage_megabytes=np.nan)
    totals = storage.rename(columns={"networks": "storage_networks"})
    totals = totals.rename(columns={"megabytes": "storage_megabytes"})
    return table.merge(totals, on=["arch", "method", "ordering"], how="left")
