"""The files the rules read and write, and the input functions that choose them."""

from itertools import product

from piggyback.interface.config import PRETRAIN_WEIGHTS, is_package_weights
from piggyback.methods.registry import START_DATASET
from piggyback.report.plots import FIGURES


def prepared(dataset):
    """The marker prepare.py writes last, once the dataset folder is complete."""
    return f"{DATA}/{dataset}/prepared.json"


def data_folder(dataset):
    """Where the jobs read a dataset's images: a `folder` route's own folder, used where
    it is (never copied), or the folder `prepare` wrote under paths.data."""
    source = dataset_entry(dataset)["source"]
    return source["path"] if source["route"] == "folder" else f"{DATA}/{dataset}"


def folder_record(dataset):
    """The record a `folder` dataset's jobs check its folder against; none otherwise."""
    route = dataset_entry(dataset)["source"]["route"]
    return prepared(dataset) if route == "folder" else None


def cache_file(dataset, arch=None):
    """The decoded, pre-resized cache of a prepared dataset (rule `cache`), for the
    paper's transforms or, for an arch whose transforms follow its weights, theirs
    (rule `cache_for_weights`)."""
    transforms = weights_transforms(arch) if arch else None
    suffix = f"-{transforms}" if transforms else ""
    return f"{DATA}/{dataset}/cache-{IMAGE_SIZE}{suffix}.safetensors"


def cached(dataset, arch=None):
    """Input: the dataset's cache when `compute: {data_pipeline: cached}`, else none."""
    return cache_file(dataset, arch) if DATA_PIPELINE == "cached" else []


def source_task_cache(wildcards):
    """Input: the source task's cache for the arch's transforms, if jobs read caches."""
    return cached(SOURCE_TASK, wildcards.arch) if SOURCE_TASK else []


def weights_transforms(arch):
    """`<builder>.<ENUM>` for an arch whose transforms follow its torchvision weights
    (`transforms: weights`), else None (the paper's)."""
    entry = config["archs"][arch]
    if entry["transforms"] != "weights":
        return None
    return f"{entry['builder']}.{entry['weights']}"


def train_cache(wildcards):
    return cached(wildcards.dataset, wildcards.arch)


def weights_file(arch):
    """The backbone weights file an arch's jobs read: fetched, converted from a
    package's file, pretrained, or given."""
    weights = config["archs"][arch]["weights"]
    if is_package_weights(weights):
        return package_weights_file(arch)
    if weights == PRETRAIN_WEIGHTS:
        return f"{RESULTS}/pretrain/{arch}.pth"
    if weights.isidentifier() and weights.upper() == weights:
        return f"{RESOURCES}/weights/{config['archs'][arch]['builder']}.{weights}.pth"
    return weights


def package_weights_file(arch):
    """An arch's weights converted from a file in a package (rule fetch_package_weights)."""
    return f"{RESOURCES}/weights/packages/{arch}.safetensors"


def package_weights_archs():
    """The archs whose weights are a file in a package."""
    return [a for a, e in config["archs"].items() if is_package_weights(e["weights"])]


def start_dataset(method):
    """The source dataset a sequential method's start retrains on, if the config names one."""
    return config["methods"].get(method, {}).get(START_DATASET)


def start_data(wildcards):
    dataset = start_dataset(wildcards.method)
    return prepared(dataset) if dataset else []


def start_cache(wildcards):
    dataset = start_dataset(wildcards.method)
    return cached(dataset, wildcards.arch) if dataset else []


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


def series_checkpoints(wildcards):
    return [
        train_checkpoint(wildcards.arch, wildcards.series, wildcards.run, dataset)
        for dataset in series_tasks(wildcards.series)
    ]


def packed_file(arch, series, run):
    return f"{RESULTS}/packed/{arch}/{series}/run{run}.safetensors"


def stats_file(arch, series, run):
    return f"{RESULTS}/packed/{arch}/{series}/run{run}.stats.tsv"


def series_data(wildcards):
    """Input: every task's prepared data (and cache) of a series."""
    tasks = series_tasks(wildcards.series)
    caches = [cached(d, wildcards.arch) for d in tasks]
    return [prepared(d) for d in tasks] + [c for c in caches if c]


def evaluation(arch, series, run, suffix="json"):
    """An evaluation's JSON, or (suffix `images.tsv.gz`) its per-image file."""
    return f"{RESULTS}/eval/{arch}/{series}/run{run}.{suffix}"


def source_evaluation(arch, network, suffix="json"):
    """The source task's evaluation: network `backbone`, or `<method>/run<r>` (a start)."""
    return f"{RESULTS}/eval/{arch}/source/{network}.{suffix}"


def source_networks():
    """What the source task is evaluated on, per arch: the backbone if a method keeps it,
    and each sequential method's start per run; none without a source task."""
    if SOURCE_TASK is None:
        return []
    kept = ["backbone"] if any(not is_sequential(m) for m in METHODS) else []
    starts = [f"{m}/run{r}" for m in METHODS if is_sequential(m) for r in RUNS]
    return kept + starts


def evaluation_outputs(suffix="json"):
    """Every evaluation the table reads: each packed file's, and the source task's."""
    packed = [evaluation(a, s, r, suffix) for a in ARCHS for s in SERIES for r in RUNS]
    source = [source_evaluation(a, n, suffix) for a in ARCHS for n in source_networks()]
    return packed + source


def table_tsv():
    return f"{RESULTS}/table.tsv"


def table_outputs():
    return [f"{RESULTS}/table.md", table_tsv()]


def reference_inputs():
    reference = config.get("reference")
    return [reference["file"]] if reference else []


def plot_file(name, suffix="png"):
    return f"{RESULTS}/plots/{name}.{suffix}"


def plot_outputs():
    """The report's figures (FIGURES), one `plot_<name>` rule each (report.smk)."""
    return [plot_file(name) for name in FIGURES]


def exported(arch, series, run, dataset, name):
    """A task exported as a plain torchvision model: `model.safetensors`, `config.json`."""
    return f"{RESULTS}/export/{arch}/{series}/run{run}/{dataset}/{name}"


def export_outputs():
    """Every task of every packed file, exported (the `export` target)."""
    return [
        exported(arch, series, run, dataset, name)
        for arch, series, run in product(ARCHS, SERIES, RUNS)
        for dataset in series_tasks(series)
        for name in ("model.safetensors", "config.json")
    ]


def export_class_data(wildcards):
    """Input: an imported pack's dataset, whose test folder names the classes its file
    leaves unnamed (the authors' released masks); none for a trained pack."""
    return prepared(wildcards.dataset) if "released" in config else []
