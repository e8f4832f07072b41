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
from piggyback.methods.registry import METHODS as METHOD_REGISTRY, START_DATASET

try:
    check_config(config)
except ConfigError as error:
    raise WorkflowError(f"config: {error}") from None

PYTHON = sys.executable
RESULTS = f"results/{config['name']}"
DATA = config["paths"]["data"]
DOWNLOADS = config["paths"]["downloads"]
RESOURCES = config["paths"]["resources"]
IMAGE_SIZE = config.get("image_size", 224)
EXPERIMENT = config["experiment"]
ARCHS = EXPERIMENT["archs"]
METHODS = EXPERIMENT["methods"]
ORDERINGS = EXPERIMENT["orderings"]
RUNS = list(range(EXPERIMENT["runs"]))
DATASETS = experiment_datasets(config)
WORKERS = config["compute"]["workers"]
RESUME_EVERY = config["compute"].get("resume_every", 0)
# `cached`: train and evaluate read a decoded, pre-resized cache of each dataset and
# augment on the device (docs/data-pipeline.md); `dataloader`: DataLoader workers.
DATA_PIPELINE = config["compute"].get("data_pipeline", "dataloader")

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


def compute(stage, key, default):
    """Threads, memory or runtime of a stage from `compute:`, else the default."""
    return config["compute"].get(stage, {}).get(key, default)


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


def data_flags(dataset):
    entry = dataset_entry(dataset)
    return (
        f"--dataset {dataset} --data {DATA}/{dataset} --transform {entry['transform']} "
        f"--image-size {IMAGE_SIZE} --workers {WORKERS}"
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


def reference_inputs():
    reference = config.get("reference")
    return [reference["file"]] if reference else []


def classes_json():
    return json.dumps({d: dataset_entry(d)["classes"] for d in DATASETS})


def orderings_json():
    return json.dumps({o: config["orderings"][o] for o in ORDERINGS})
