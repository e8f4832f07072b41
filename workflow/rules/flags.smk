"""The command-line flags and JSON arguments the rules pass to the stage scripts."""

import json

from piggyback.core.registry import START_DATASET


def source_json(wildcards):
    return json.dumps(dataset_entry(wildcards.dataset)["source"], sort_keys=True)


def cache_flag(wildcards, input):
    """Param: `--cache FILE` for the rule's `cache` input, if it has one."""
    return f"--cache {input.cache}" if input.cache else ""


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


def start_data_flags(wildcards):
    dataset = start_dataset(wildcards.method)
    return data_flags(dataset) if dataset else ""


def chain_flags(wildcards, input):
    """Param: a sequential task's predecessor, and whether it ends its ordering."""
    if not input.previous:
        return ""
    last = series_tasks(wildcards.series)[-1] == wildcards.dataset
    return f"--previous {input.previous}" + (" --last-in-ordering" if last else "")


def ordering_flag(wildcards):
    ordering = series_ordering(wildcards.series)
    return f"--ordering {ordering}" if ordering else ""


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


def reference_flags():
    reference = config.get("reference")
    if reference is None:
        return ""
    return f"--reference {reference['file']} --tolerance {reference['tolerance']}"


def tolerance_flag():
    reference = config.get("reference")
    return f"--tolerance {reference['tolerance']}" if reference else ""


def classes_json():
    return json.dumps({d: dataset_entry(d)["classes"] for d in DATASETS})


def orderings_json():
    return json.dumps({o: config["orderings"][o] for o in ORDERINGS})
