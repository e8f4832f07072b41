"""Input functions and constants shared by the rules: the only place that turns the
config into file names and command-line flags."""

import json
import re
import sys
from pathlib import Path

from piggyback.config import (
    PRETRAIN_WEIGHTS,
    ConfigError,
    check_config,
    experiment_datasets,
)
from piggyback.core.registry import (
    METHODS as METHOD_REGISTRY,
    START_DATASET,
    released_methods,
)

try:
    check_config(config)
except ConfigError as error:
    raise WorkflowError(f"config: {error}") from None

PYTHON = sys.executable
RESULTS = f"results/{config['name']}"
DATA = config["paths"]["data"]
DOWNLOADS = config["paths"]["downloads"]
RESOURCES = config["paths"]["resources"]
IMAGE_SIZE = config["image_size"]
EXPERIMENT = config["experiment"]
ARCHS = EXPERIMENT["archs"]
METHODS = EXPERIMENT["methods"]
ORDERINGS = EXPERIMENT["orderings"]
RUNS = list(range(EXPERIMENT["runs"]))
DATASETS = experiment_datasets(config)
WORKERS = config["compute"]["workers"]
RESUME_EVERY = config["compute"]["resume_every"]
# `cached`: train and evaluate read a decoded, pre-resized cache of each dataset and
# augment on the device (docs/data-pipeline.md); `dataloader`: DataLoader workers.
DATA_PIPELINE = config["compute"]["data_pipeline"]
PACK_ENCODING = config["pack_encoding"]

# The stage scripts by absolute path, so jobs find them whatever the working directory.
# (workflow.source_path would hand back a per-run cache copy whose path changes on every
# invocation, which Snakemake's params trigger would take for a change and rerun all.)
SCRIPTS = {
    name: str(Path(workflow.basedir) / "src" / f"{name}.py")
    for name in (
        "download",
        "prepare",
        "cache",
        "fetch_weights",
        "train",
        "pack",
        "evaluate",
        "aggregate",
        "plots",
    )
}


def is_sequential(method):
    return METHOD_REGISTRY[method].sequential


def series_of(method, ordering=None):
    """A series is what one packed file holds: an independent method's tasks, or a
    sequential method's chain of tasks in one ordering ("packnet/forward")."""
    return f"{method}/{ordering}" if is_sequential(method) else method


def series_method(series):
    return series.split("/")[0]


def series_ordering(series):
    """The ordering of a sequential method's series; None for an independent method."""
    return series.partition("/")[2] or None


def series_tasks(series):
    """The tasks of a series, in file order: the ordering's for a sequential method,
    every dataset of the experiment for an independent one."""
    ordering = series_ordering(series)
    return config["orderings"][ordering] if ordering else DATASETS


SERIES = list(
    dict.fromkeys(
        series_of(method, ordering) for method in METHODS for ordering in ORDERINGS
    )
)


def alternatives(names):
    return "|".join(re.escape(name) for name in names)


wildcard_constraints:
    arch=alternatives(config["archs"]),
    dataset=alternatives(config["datasets"]),
    method=alternatives(METHOD_REGISTRY),
    series=alternatives(
        series_of(method, ordering)
        for method in METHOD_REGISTRY
        for ordering in config["orderings"]
    ),
    run=r"\d+",
    size=r"\d+",


def compute(stage, key):
    """Threads, memory, runtime or GPUs of a stage, from `compute:` (the schema's
    defaults filled in where the config gives none)."""
    return config["compute"][stage][key]


def dataset_entry(dataset):
    return config["datasets"][dataset]


def source_json(wildcards):
    return json.dumps(dataset_entry(wildcards.dataset)["source"], sort_keys=True)


def prepared(dataset):
    """The marker prepare.py writes last, once the dataset folder is complete."""
    return f"{DATA}/{dataset}/prepared.json"


def cache_file(dataset):
    """The decoded, pre-resized cache of a prepared dataset (rule `cache`)."""
    return f"{DATA}/{dataset}/cache-{IMAGE_SIZE}.safetensors"


def cached(dataset):
    """Input: the dataset's cache when `compute: {data_pipeline: cached}`, else none."""
    return cache_file(dataset) if DATA_PIPELINE == "cached" else []


def cache_flag(wildcards, input):
    """Param: `--cache FILE` for the rule's `cache` input, if it has one."""
    return f"--cache {input.cache}" if input.cache else ""


def weights_file(arch):
    """The backbone weights file an arch's jobs read: fetched, pretrained, or given."""
    weights = config["archs"][arch]["weights"]
    if weights == PRETRAIN_WEIGHTS:
        return f"{RESULTS}/pretrain/{arch}.pth"
    if weights.isidentifier() and weights.upper() == weights:
        return f"{RESOURCES}/weights/{config['archs'][arch]['builder']}.{weights}.pth"
    return weights


def arch_flags(arch):
    entry = config["archs"][arch]
    flags = f"--arch {arch} --builder {entry['builder']} --weights {weights_file(arch)}"
    if "head" in entry:
        flags += f" --head {entry['head']}"
    return flags


EVAL_BATCH_SIZE = config["eval_batch_size"]


def data_flags(dataset):
    entry = dataset_entry(dataset)
    return (
        f"--dataset {dataset} --data {DATA}/{dataset} --transform {entry['transform']} "
        f"--image-size {IMAGE_SIZE} --workers {WORKERS} --eval-batch-size {EVAL_BATCH_SIZE}"
    )


def hyperparameter_flags(hyperparameters):
    return " ".join(
        f"--{key.replace('_', '-')} {value}"
        for key, value in sorted(hyperparameters.items())
    )


def pretrain_flags(arch):
    pretrain = config["pretrain"]
    overrides = pretrain.get("arch_hyperparameters", {}).get(arch, {})
    return hyperparameter_flags({**pretrain.get("hyperparameters", {}), **overrides})


def method_flags(method):
    """The method and its hyperparameters (the config's; the rest are the paper's)."""
    settings = config["methods"].get(method, {})
    knobs = {key: value for key, value in settings.items() if key != START_DATASET}
    return f"--method {method} {hyperparameter_flags(knobs)}"


def start_dataset(method):
    """The source dataset a sequential method's start retrains on, if the config names one."""
    return config["methods"].get(method, {}).get(START_DATASET)


def start_data(wildcards):
    dataset = start_dataset(wildcards.method)
    return prepared(dataset) if dataset else []


def start_cache(wildcards):
    dataset = start_dataset(wildcards.method)
    return cached(dataset) if dataset else []


def start_data_flags(wildcards):
    dataset = start_dataset(wildcards.method)
    return data_flags(dataset) if dataset else ""


def start_checkpoint(arch, method, run):
    return f"{RESULTS}/start/{arch}/{method}/run{run}.pt"


def train_checkpoint(arch, series, run, dataset):
    return f"{RESULTS}/train/{arch}/{series}/run{run}/{dataset}.pt"


def previous_checkpoint(wildcards):
    """Input: a sequential task's predecessor in its ordering (the start, for the first
    task); none for an independent method."""
    method = series_method(wildcards.series)
    if not is_sequential(method):
        return []
    tasks = series_tasks(wildcards.series)
    position = tasks.index(wildcards.dataset)
    if position == 0:
        return start_checkpoint(wildcards.arch, method, wildcards.run)
    return train_checkpoint(
        wildcards.arch, wildcards.series, wildcards.run, tasks[position - 1]
    )


def chain_flags(wildcards, input):
    """Param: a sequential task's predecessor, and whether it ends its ordering."""
    if not input.previous:
        return ""
    last = series_tasks(wildcards.series)[-1] == wildcards.dataset
    return f"--previous {input.previous}" + (" --last-in-ordering" if last else "")


def series_checkpoints(wildcards):
    return [
        train_checkpoint(wildcards.arch, wildcards.series, wildcards.run, dataset)
        for dataset in series_tasks(wildcards.series)
    ]


def ordering_flag(wildcards):
    ordering = series_ordering(wildcards.series)
    return f"--ordering {ordering}" if ordering else ""


def packed_file(arch, series, run):
    return f"{RESULTS}/packed/{arch}/{series}/run{run}.safetensors"


def series_data(wildcards):
    """Input: every task's prepared data (and cache) of a series."""
    tasks = series_tasks(wildcards.series)
    return [prepared(d) for d in tasks] + [c for d in tasks for c in [cached(d)] if c]


def tasks_json(wildcards):
    """Param: each task's test data, for evaluate.py --tasks-json."""
    return json.dumps(
        {
            dataset: {
                "data": f"{DATA}/{dataset}",
                "transform": dataset_entry(dataset)["transform"],
                "cache": cached(dataset) or None,
            }
            for dataset in series_tasks(wildcards.series)
        },
        sort_keys=True,
    )


def evaluation_outputs():
    return [
        f"{RESULTS}/eval/{arch}/{series}/run{run}.json"
        for arch in ARCHS
        for series in SERIES
        for run in RUNS
    ]


def table_outputs():
    return [f"{RESULTS}/table.md", f"{RESULTS}/table.tsv"]


def reference_flags():
    reference = config.get("reference")
    if reference is None:
        return ""
    return f"--reference {reference['file']} --tolerance {reference['tolerance']}"


def tolerance_flag():
    reference = config.get("reference")
    return f"--tolerance {reference['tolerance']}" if reference else ""


def reference_inputs():
    reference = config.get("reference")
    return [reference["file"]] if reference else []


def classes_json():
    return json.dumps({d: dataset_entry(d)["classes"] for d in DATASETS})


def orderings_json():
    return json.dumps({o: config["orderings"][o] for o in ORDERINGS})


# The report's figures (rules in report.smk). A figure reads records, each naming one
# file and what it belongs to; its rule's input is exactly those files, so a figure is
# redrawn whenever one of them changes.
PLOTS = "reference error_curves mask_density ownership storage runtimes".split()


def plot_file(name, suffix="png"):
    return f"{RESULTS}/plots/{name}.{suffix}"


def plot_outputs():
    return [plot_file(name) for name in PLOTS]


def record_files(records):
    return [path for r in records for path in (r["file"], r.get("stats")) if path]


def records_json(records):
    return json.dumps(records)


def stats_file(arch, series, run):
    return f"{RESULTS}/packed/{arch}/{series}/run{run}.stats.tsv"


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
    """Every packed file (its header is read), with the statistics of a mask's layers."""
    return [
        series_record(a, s, r, file=packed_file(a, s, r), stats=mask_stats(a, s, r))
        for a, s, r in packed_series()
    ]


def benchmark_records():
    """Every benchmarked job: pretrain, start, train and evaluate."""
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
    return records


def released_file(arch):
    """The authors' mask file of an arch (config `released:`), in the downloads folder."""
    return f"{DOWNLOADS}/{config['released'][arch]['file']}"


def released_marker(wildcards):
    """Input: the marker `verify_released` writes once the arch's file is in place."""
    return f"{released_file(wildcards.arch)}.verified"


def released_if_present(wildcards):
    """Input: the file itself once it is there, so that replacing it imports it again
    (while it is missing, its marker's job stops the run with where to get it)."""
    path = released_file(wildcards.arch)
    return path if Path(path).is_file() else []


def released_sha256_flag(wildcards):
    """Param: `--sha256 HEX` where the config knows the released file's sha256."""
    entries = config["released"].values()
    sha256 = next(e["sha256"] for e in entries if e["file"] == wildcards.name)
    return f"--sha256 {sha256}" if sha256 else ""
