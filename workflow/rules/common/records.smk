"""The records the report's figures read (rules in report.smk): each names one file and
what it belongs to. A figure's rule has exactly those files as input, so the figure is
redrawn whenever one of them changes."""

import json
import shlex

from piggyback.interface.config import PRETRAIN_WEIGHTS
from piggyback.methods.registry import METHODS as METHOD_REGISTRY
from piggyback.report.plots import TABLE


def record_files(records):
    keys = ("file", "stats", "backbone")
    return list(dict.fromkeys(r[k] for r in records for k in keys if r.get(k)))


def records_json(records):
    return json.dumps(records)


def stores_masks(method):
    return METHOD_REGISTRY[method].stores_masks


def packed_series():
    """(arch, series, run) of every packed file."""
    return [(arch, series, run) for arch in ARCHS for series in SERIES for run in RUNS]


def trained_series():
    """The packed files that training makes: none with `released:` (imported instead)."""
    return [] if "released" in config else packed_series()


def series_record(arch, series, run, **files):
    method = series_method(series)
    ordering = series_ordering(series)
    return {"arch": arch, "method": method, "ordering": ordering, "run": run, **files}


def training_records():
    """Every trained task's per-epoch metrics."""
    return [
        series_record(arch, series, run, dataset=dataset, file=f"{path}.metrics.tsv")
        for arch, series, run in trained_series()
        for dataset in series_tasks(series)
        for path in [f"{RESULTS}/train/{arch}/{series}/run{run}/{dataset}"]
    ]


def mask_stats_records():
    """Per-layer statistics of the methods that store masks (Piggyback)."""
    return [
        series_record(arch, series, run, file=stats_file(arch, series, run))
        for arch, series, run in packed_series()
        if stores_masks(series_method(series))
    ]


def owner_stats_records():
    """Per-layer statistics of the sequential methods, which store owners (PackNet)."""
    return [
        series_record(arch, series, run, file=stats_file(arch, series, run))
        for arch, series, run in packed_series()
        if is_sequential(series_method(series))
    ]


def mask_stats(arch, series, run):
    """A series' statistics file if its method stores masks, else None."""
    if stores_masks(series_method(series)):
        return stats_file(arch, series, run)
    return None


def storage_records():
    """Every packed file (its header is read), with the statistics of a mask's layers and
    the backbone's weights (their size: a method that keeps the backbone stores it)."""
    return [
        series_record(
            a,
            s,
            r,
            file=packed_file(a, s, r),
            stats=mask_stats(a, s, r),
            backbone=weights_file(a),
        )
        for a, s, r in packed_series()
    ]


def benchmark_records():
    """Every benchmarked job: pretrain, start, train, evaluate and evaluate_source."""
    bench = f"{RESULTS}/benchmarks"
    trained = trained_series()
    pretrained = [a for a in ARCHS if config["archs"][a]["weights"] == PRETRAIN_WEIGHTS]
    sequential = [m for m in METHODS if is_sequential(m)]
    records = [
        {"file": f"{bench}/pretrain/{arch}.tsv", "rule": "pretrain", "arch": arch}
        for arch in (pretrained if trained else [])
    ]
    records += [
        {"file": f"{bench}/start/{arch}/{m}/run{r}.tsv", "rule": "start", "arch": arch}
        for arch in ARCHS
        for m in (sequential if trained else [])
        for r in RUNS
    ]
    records += [
        series_record(arch, series, run, rule="train", file=path)
        for arch, series, run in trained
        for dataset in series_tasks(series)
        for path in [f"{bench}/train/{arch}/{series}/run{run}/{dataset}.tsv"]
    ]
    records += [
        series_record(arch, series, run, rule="evaluate", file=path)
        for arch, series, run in packed_series()
        for path in [f"{bench}/evaluate/{arch}/{series}/run{run}.tsv"]
    ]
    records += [
        {"file": path, "rule": "evaluate_source", "arch": arch}
        for arch in ARCHS
        for network in source_networks()
        for path in [f"{bench}/evaluate_source/{arch}/{network}.tsv"]
    ]
    return records


# The records a figure reads, by the name its entry in FIGURES gives them (`reads`).
RECORDS = {
    "training": training_records,
    "mask_stats": mask_stats_records,
    "owner_stats": owner_stats_records,
    "storage": storage_records,
    "benchmark": benchmark_records,
}


def plot_inputs(plot):
    """Input: what a figure reads, the table or its records' files."""
    return table_tsv() if plot.reads == TABLE else record_files(RECORDS[plot.reads]())


def plot_flags(plot):
    """Param: what a figure reads, then the config values it takes, as src/plots.py's flags."""
    if plot.reads == TABLE:
        reads = f"--table {table_tsv()}"
    else:
        reads = f"--records {shlex.quote(records_json(RECORDS[plot.reads]()))}"
    values = {
        "tolerance": tolerance_flag(),
        "classes": f"--classes {shlex.quote(classes_json())}",
    }
    return " ".join(
        flag for flag in [reads, *(values[name] for name in plot.takes)] if flag
    )
