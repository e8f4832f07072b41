"""The config, checked, as the constants the rules read: the experiment's archs, methods,
orderings, runs and datasets, where files go, and the stage scripts."""

import sys
from pathlib import Path

from piggyback.interface.config import (
    ConfigError,
    check_config,
    experiment_datasets,
    source_task,
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
# The backbone's source task (`source_task: true`): the table's ImageNet row, if any.
SOURCE_TASK = source_task(config)
WORKERS = config["compute"]["workers"]
RESUME_EVERY = config["compute"]["resume_every"]
# `cached`: train and evaluate read a decoded, pre-resized cache of each dataset and
# augment on the device (docs/data-pipeline.md); `dataloader`: DataLoader workers.
DATA_PIPELINE = config["compute"]["data_pipeline"]
EVAL_BATCH_SIZE = config["eval_batch_size"]
PACK_ENCODING = config["pack_encoding"]
# TF32 matmuls and convolutions (a speed option that changes the rounding); off: fp32.
TF32 = config["compute"]["tf32"]

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
        "fetch_package_weights",
        "train",
        "pack",
        "evaluate",
        "evaluate_source",
        "export",
        "aggregate",
        "plots",
    )
}


def compute(stage, key):
    """Threads, memory, runtime or GPUs of a stage, from `compute:` (the schema's
    defaults filled in where the config gives none)."""
    return config["compute"][stage][key]


def dataset_entry(dataset):
    return config["datasets"][dataset]
