"""The config, checked, as the constants the rules read: the experiment's archs, methods,
orderings, runs and datasets, where files go, and the stage scripts."""

import sys
from pathlib import Path

from piggyback.config import ConfigError, check_config, experiment_datasets, source_task

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
# The backbone's source task (`source_task: true`): the table's ImageNet row, if any.
SOURCE_TASK = source_task(config)
WORKERS = config["compute"]["workers"]
RESUME_EVERY = config["compute"].get("resume_every", 0)
# `cached`: train and evaluate read a decoded, pre-resized cache of each dataset and
# augment on the device (docs/data-pipeline.md); `dataloader`: DataLoader workers.
DATA_PIPELINE = config["compute"].get("data_pipeline", "dataloader")
EVAL_BATCH_SIZE = config.get("eval_batch_size", 64)

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
        "evaluate_source",
        "aggregate",
        "plots",
    )
}


def compute(stage, key, default):
    """Threads, memory or runtime of a stage from `compute:`, else the default."""
    return config["compute"].get(stage, {}).get(key, default)


def dataset_entry(dataset):
    return config["datasets"][dataset]
