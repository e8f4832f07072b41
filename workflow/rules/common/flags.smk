"""The command-line flags and JSON arguments the rules pass to the stage scripts."""

import json

from piggyback.methods.registry import START_DATASET, position_settings


def source_json(wildcards):
    return json.dumps(dataset_entry(wildcards.dataset)["source"], sort_keys=True)


def package_weights_json(wildcards):
    """An arch's `weights:` mapping (a file in a package), as JSON for the script."""
    return json.dumps(config["archs"][wildcards.arch]["weights"], sort_keys=True)


def cache_flag(dataset, arch=None):
    """`--cache FILE` when jobs read the dataset from its cache (`cached`)."""
    cache = cached(dataset, arch)
    return f"--cache {cache}" if cache else ""


def transforms_flag(arch):
    """`--weights-transforms <builder>.<ENUM>` for an arch with `transforms: weights`."""
    transforms = weights_transforms(arch)
    return f"--weights-transforms {transforms}" if transforms else ""


def weights_url_flag(wildcards):
    """Param: `--url URL` where an arch of the builder gives its weights' `weights_url`."""
    return next(
        (
            f"--url {entry['weights_url']}"
            for entry in config["archs"].values()
            if entry["builder"] == wildcards.builder and "weights_url" in entry
        ),
        "",
    )


def arch_flags(arch):
    entry = config["archs"][arch]
    flags = f"--arch {arch} --builder {entry['builder']} --weights {weights_file(arch)}"
    if "head" in entry:
        flags += f" --head {entry['head']}"
    return flags


def data_flags(dataset):
    entry = dataset_entry(dataset)
    flags = (
        f"--dataset {dataset} --data {data_folder(dataset)} --transform {entry['transform']} "
        f"--image-size {IMAGE_SIZE} --crop {entry['crop']} --workers {WORKERS} "
        f"--eval-batch-size {EVAL_BATCH_SIZE}"
    )
    return flags + folder_record_flag(dataset)


def folder_record_flag(dataset):
    """`--prepared RECORD` for a dataset read where it is, which the job checks first."""
    record = folder_record(dataset)
    return f" --prepared {record}" if record else ""


def numerics_flag():
    """`--tf32` when `compute: {tf32: true}`; without it the scripts compute in fp32."""
    return "--tf32" if TF32 else ""


def hyperparameter_flags(hyperparameters):
    return " ".join(
        f"--{key.replace('_', '-')} {value}"
        for key, value in sorted(hyperparameters.items())
    )


def pretrain_hyperparameter_flags(arch):
    pretrain = config["pretrain"]
    overrides = pretrain.get("arch_hyperparameters", {}).get(arch, {})
    return hyperparameter_flags({**pretrain.get("hyperparameters", {}), **overrides})


def method_flags(method, position=None):
    """The method and its hyperparameters (the config's; the rest are the paper's), those
    given per position of the ordering at the task's ``position``."""
    settings = config["methods"].get(method, {})
    knobs = {key: value for key, value in settings.items() if key != START_DATASET}
    knobs = position_settings(method, knobs, position)
    return f"--method {method} {hyperparameter_flags(knobs)}"


def task_position(wildcards):
    """A sequential task's 0-based position in its ordering; None for an independent one."""
    if not is_sequential(series_method(wildcards.series)):
        return None
    return series_tasks(wildcards.series).index(wildcards.dataset)


def chain_flags(wildcards):
    """A sequential task's predecessor, and whether it ends its ordering."""
    previous = previous_checkpoint(wildcards)
    if not previous:
        return ""
    last = series_tasks(wildcards.series)[-1] == wildcards.dataset
    return f"--previous {previous}" + (" --last-in-ordering" if last else "")


# The rules train, start and pretrain share one command (train.smk); each passes what
# its job trains as `job`. A job's flags derive from its wildcards alone, so that
# Snakemake's params trigger reruns the job when any of them changes.
def train_job_flags(wildcards):
    """Param: one task of a series, after its predecessor for a sequential method."""
    return " ".join(
        [
            arch_flags(wildcards.arch),
            method_flags(series_method(wildcards.series), task_position(wildcards)),
            data_flags(wildcards.dataset),
            transforms_flag(wildcards.arch),
            cache_flag(wildcards.dataset, wildcards.arch),
            chain_flags(wildcards),
            f"--classes {dataset_entry(wildcards.dataset)['classes']}",
            f"--seed {wildcards.run}",
            numerics_flag(),
        ]
    )


def start_job_flags(wildcards):
    """Param: a sequential method's start, retrained on its `start_dataset` if any."""
    dataset = start_dataset(wildcards.method)
    return " ".join(
        [
            "--start",
            arch_flags(wildcards.arch),
            method_flags(wildcards.method),
            data_flags(dataset) if dataset else "",
            transforms_flag(wildcards.arch) if dataset else "",
            cache_flag(dataset, wildcards.arch) if dataset else "",
            f"--seed {wildcards.run}",
            numerics_flag(),
        ]
    )


def pretrain_job_flags(wildcards):
    """Param: an arch from random initialisation, fine-tuned on the `pretrain:` dataset."""
    arch, dataset = wildcards.arch, config["pretrain"]["dataset"]
    return " ".join(
        [
            f"--arch {arch} --builder {config['archs'][arch]['builder']} --weights random",
            f"--method finetune {pretrain_hyperparameter_flags(arch)}",
            data_flags(dataset),
            cache_flag(dataset),
            "--seed 0",
            numerics_flag(),
        ]
    )


def output_flags(wildcards, output):
    """Param: where a training job writes its checkpoint and per-epoch metrics."""
    return f"--out {output.checkpoint} --metrics {output.metrics}"


def pretrain_output_flags(wildcards, output):
    """Param: as for training, and the backbone that pretraining exports."""
    return f"{output_flags(wildcards, output)} --export-backbone {output.weights}"


def ordering_flag(wildcards):
    ordering = series_ordering(wildcards.series)
    return f"--ordering {ordering}" if ordering else ""


def tasks_json(wildcards):
    """Param: each task's test data and transforms, for evaluate.py --tasks-json."""
    transforms = weights_transforms(wildcards.arch)
    return json.dumps(
        {
            dataset: {
                "data": data_folder(dataset),
                "transform": dataset_entry(dataset)["transform"],
                "cache": cached(dataset, wildcards.arch) or None,
                "prepared": folder_record(dataset),
                **({"weights_transforms": transforms} if transforms else {}),
            }
            for dataset in series_tasks(wildcards.series)
        },
        sort_keys=True,
    )


def source_task_flags(wildcards):
    """Param: the source task's test data and the arch's transforms, for
    evaluate_source.py (none without a `source_task: true` dataset)."""
    if not SOURCE_TASK:
        return ""
    entry = dataset_entry(SOURCE_TASK)
    return (
        f"--dataset {SOURCE_TASK} --data {DATA}/{SOURCE_TASK} --transform {entry['transform']} "
        f"--image-size {IMAGE_SIZE} {cache_flag(SOURCE_TASK, wildcards.arch)} "
        f"{transforms_flag(wildcards.arch)}"
    )


def start_flag(wildcards, input):
    """Param: the start a sequential method's source-task evaluation runs on."""
    return f"--start {input.start}"


def reference_flags():
    reference = config.get("reference")
    if reference is None:
        return ""
    return f"--reference {reference['file']} --tolerance {reference['tolerance']}"


def tolerance_flag():
    reference = config.get("reference")
    return f"--tolerance {reference['tolerance']}" if reference else ""


def classes_json():
    """Param: each dataset's class count (its chance error), the source task's too."""
    datasets = DATASETS + ([SOURCE_TASK] if SOURCE_TASK else [])
    return json.dumps({d: dataset_entry(d)["classes"] for d in datasets})


def orderings_json():
    return json.dumps({o: config["orderings"][o] for o in ORDERINGS})


def export_flags(wildcards, input):
    """Param: how the task's images are preprocessed (for packs that do not record it;
    checked against those that do), and where an imported task's class names are."""
    flags = [
        f"--image-size {IMAGE_SIZE}",
        f"--transform {dataset_entry(wildcards.dataset)['transform']}",
        transforms_flag(wildcards.arch),
        (
            f"--classes-from {data_folder(wildcards.dataset)}/test"
            if input.class_data
            else ""
        ),
    ]
    return " ".join(flag for flag in flags if flag)
