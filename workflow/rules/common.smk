"""Input functions and constants shared by the rules: the only place that turns the
config into file names and command-line flags."""

import json
import sys
from pathlib import Path

from piggyback.config import (
    PRETRAIN_WEIGHTS,
    ConfigError,
    check_config,
    experiment_datasets,
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


wildcard_constraints:
    arch="|".join(config["archs"]),
    dataset="|".join(config["datasets"]),
    method="|".join(["piggyback", "piggyback_ternary", "classifier_only", "finetune"]),
    ordering="|".join(config["orderings"]),
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
    hyperparameters = hyperparameter_flags(config["methods"].get(method, {}))
    return f"--method {method} {hyperparameters}"


def train_checkpoint(arch, method, run, dataset):
    """Tasks are trained independently, so one checkpoint serves every ordering."""
    return f"{RESULTS}/train/{arch}/{method}/run{run}/{dataset}.pt"


def ordering_checkpoints(wildcards):
    return [
        train_checkpoint(wildcards.arch, wildcards.method, wildcards.run, dataset)
        for dataset in config["orderings"][wildcards.ordering]
    ]


def packed_file(arch, method, ordering, run):
    return f"{RESULTS}/packed/{arch}/{method}/{ordering}/run{run}.safetensors"


def evaluation_outputs():
    return [
        f"{RESULTS}/eval/{arch}/{method}/{ordering}/run{run}/{dataset}.json"
        for arch in ARCHS
        for method in METHODS
        for ordering in ORDERINGS
        for run in RUNS
        for dataset in config["orderings"][ordering]
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
