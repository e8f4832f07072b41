"""Each method against Piggyback on the same test images, per arch and dataset, from the
evaluations' per-image files (piggyback.stages.per_image); Holm's correction over all of a
table's comparisons (docs/statistics.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from piggyback.report.statistics import SIGNIFICANCE, holm, paired_comparison
from piggyback.stages.per_image import read_per_image

BASELINE = "piggyback"
KEYS = ["method", "ordering", "arch", "dataset"]
PAIRED = [
    "paired_difference",
    "paired_low",
    "paired_high",
    "paired_worse",
    "paired_better",
    "paired_p",
    "paired_p_holm",
    "paired_significant",
]


class PairingError(ValueError):
    """Two evaluations cannot be compared image by image; the message names both files."""


class PerImage:
    """Per-image files, each read once, one task's rows at a time, ordered by path."""

    def __init__(self) -> None:
        self._files: dict[Path, pd.DataFrame] = {}

    def task(self, path: Path, task: str, result: Path, top1_error: float) -> pd.DataFrame:
        """``task``'s rows of ``path``, checked against the error its JSON ``result``
        gives: a file from another evaluation is refused, not paired."""
        path = Path(path)
        if path not in self._files:
            if not path.is_file():
                raise PairingError(
                    f"{result} names the per-image file {path}, which is missing: evaluate "
                    "it again (delete the JSON and rerun the workflow)"
                )
            self._files[path] = read_per_image(path)
        rows = self._files[path]
        rows = rows[rows["task"] == task].sort_values("path", kind="stable")
        error = 100.0 * (1 - (~rows["wrong"]).sum() / len(rows)) if len(rows) else float("nan")
        if not np.isclose(error, top1_error, rtol=0, atol=1e-9):
            raise PairingError(
                f"{path} gives task {task!r} a top-1 error of {error:.4f}%, its JSON {result} "
                f"{top1_error:.4f}%: they come from different evaluations; evaluate again"
            )
        return rows.reset_index(drop=True)


def paired_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per arch and dataset, each other (method, ordering) against Piggyback: the paired
    difference (points), its interval, the discordant images, the exact p value, and
    Holm's adjusted p over the table's comparisons with whether it is below 0.05. A cell
    whose evaluation is Piggyback's own (the shared backbone on the source task) is no
    comparison; cells that share their evaluations (PackNet's orderings on the source
    task share the start) are one. ``results``: one row per task evaluation."""
    files = PerImage()
    computed: dict[tuple, tuple[int, object]] = {}
    rows = []
    for (arch, dataset), group in results.groupby(["arch", "dataset"], sort=False):
        baseline = group[group["method"] == BASELINE]
        if baseline.empty:
            continue
        for (method, ordering), other in group.groupby(["method", "ordering"], sort=False):
            key = (dataset, tuple(sorted(other["per_image"])), tuple(sorted(baseline["per_image"])))
            if method == BASELINE or set(key[1]) == set(key[2]):
                continue
            if key not in computed:
                computed[key] = (len(computed), _compare(files, other, baseline, dataset))
            family, paired = computed[key]
            rows.append(
                {
                    "method": method,
                    "ordering": ordering,
                    "arch": arch,
                    "dataset": dataset,
                    "paired_difference": paired.difference,
                    "paired_low": paired.low,
                    "paired_high": paired.high,
                    "paired_worse": paired.worse,
                    "paired_better": paired.better,
                    "paired_p": paired.p,
                    "family": family,
                }
            )
    table = pd.DataFrame(rows, columns=[*KEYS, *PAIRED[:-2], "family"])
    adjusted = holm([paired.p for _, paired in computed.values()])
    table["paired_p_holm"] = [adjusted[index] for index in table["family"]]
    table["paired_significant"] = table["paired_p_holm"] < SIGNIFICANCE
    return table.drop(columns="family")


def _compare(files: PerImage, method: pd.DataFrame, baseline: pd.DataFrame, dataset: str):
    """The two sides' runs as (runs, images) arrays of wrong answers on the same images,
    in the same order; refused, naming both files, when the images or labels differ."""
    runs = [*method.itertuples(), *baseline.itertuples()]
    frames = [files.task(r.per_image, dataset, r.result, r.top1_error) for r in runs]
    first, first_file = frames[0], runs[0].per_image
    for frame, run in zip(frames[1:], runs[1:], strict=True):
        if len(frame) != len(first) or not (frame["path"].to_numpy() == first["path"]).all():
            only = sorted(set(frame["path"]) ^ set(first["path"]))
            raise PairingError(
                f"cannot pair {first_file} with {run.per_image}: their {dataset!r} test "
                f"images differ ({len(first)} and {len(frame)} images; e.g. "
                f"{only[0] if only else 'the same names in another order'} is in one only)"
            )
        if not (frame["label"].to_numpy() == first["label"]).all():
            path = first["path"][frame["label"].to_numpy() != first["label"].to_numpy()].iloc[0]
            raise PairingError(
                f"cannot pair {first_file} with {run.per_image}: image {path} of "
                f"{dataset!r} has another label in each"
            )
    wrong = np.array([frame["wrong"].to_numpy() for frame in frames])
    return paired_comparison(wrong[: len(method)], wrong[len(method) :])
