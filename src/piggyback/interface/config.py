"""Checks of the pipeline config that a JSON schema cannot express (references
between its sections), with messages that name the offending key."""

from __future__ import annotations

from typing import Any

import jsonschema

from piggyback.methods.registry import METHODS, START_DATASET, config_schema, released_methods

PRETRAIN_WEIGHTS = "pretrain"


class ConfigError(ValueError):
    """The config is inconsistent; the message names the key and what to change."""


def check_config(config: dict[str, Any]) -> None:
    experiment = config["experiment"]
    _check_known(experiment["archs"], config["archs"], "experiment.archs", "archs")
    _check_methods(config)
    _check_known(experiment["orderings"], config["orderings"], "experiment.orderings", "orderings")
    for name, ordering in config["orderings"].items():
        _check_known(ordering, config["datasets"], f"orderings.{name}", "datasets")
        seen = set()
        for dataset in ordering:
            if dataset in seen:
                raise ConfigError(
                    f"orderings.{name} lists {dataset!r} twice: an ordering adds each task once"
                )
            seen.add(dataset)
    pretrain = config.get("pretrain")
    if pretrain is not None:
        _check_known([pretrain["dataset"]], config["datasets"], "pretrain.dataset", "datasets")
        arch_overrides = list(pretrain.get("arch_hyperparameters", {}))
        _check_known(arch_overrides, config["archs"], "pretrain.arch_hyperparameters", "archs")
    for arch, entry in config["archs"].items():
        if is_package_weights(entry["weights"]):
            _check_package_weights(arch, entry)
    for arch in experiment["archs"]:
        if config["archs"][arch]["weights"] == PRETRAIN_WEIGHTS and pretrain is None:
            raise ConfigError(
                f"archs.{arch}.weights is {PRETRAIN_WEIGHTS!r}, but the config has no "
                "`pretrain:` section saying which dataset to pretrain on"
            )
        _check_transforms(config, arch)
    if "released" in config:
        _check_released(config)
    _check_source_task(config)


def _check_methods(config: dict[str, Any]) -> None:
    """Method names and hyperparameters against the method registry (the one place
    that names the methods), with the key path in the message."""
    _check_known(config["experiment"]["methods"], METHODS, "experiment.methods", "methods")
    validator = jsonschema.Draft202012Validator(config_schema())
    errors = sorted(validator.iter_errors(config["methods"]), key=lambda e: list(e.path))
    if errors:
        error = errors[0]
        where = ".".join(["methods", *map(str, error.path)])
        raise ConfigError(f"{where}: {error.message}")
    for method, settings in config["methods"].items():
        source = settings.get(START_DATASET)
        if source is not None:
            _check_known(
                [source], config["datasets"], f"methods.{method}.{START_DATASET}", "datasets"
            )
        if method in config["experiment"]["methods"]:
            _check_positions(config, method, settings)


def _check_positions(config: dict[str, Any], method: str, settings: dict[str, Any]) -> None:
    """A per-position knob given as a list has one value per position of every ordering
    the method runs."""
    knobs = METHODS[method].all_knobs()
    for name, values in settings.items():
        if not (isinstance(values, list) and knobs[name].per_position):
            continue
        key = f"methods.{method}.{name}"
        for ordering in config["experiment"]["orderings"]:
            tasks = config["orderings"][ordering]
            if len(values) != len(tasks):
                raise ConfigError(
                    f"{key} has {len(values)} values, but ordering {ordering} has "
                    f"{len(tasks)} tasks ({', '.join(tasks)}): give one per position, "
                    "or one value for all"
                )


def is_package_weights(weights: Any) -> bool:
    """Weights named as a file in a package on an index (a mapping), not a string."""
    return isinstance(weights, dict)


def _check_package_weights(arch: str, entry: dict[str, Any]) -> None:
    """A pinned release, a path that stays inside the package, sha256s, and a known
    converter that fills this arch's builder."""
    from piggyback.data.packages import PackageError
    from piggyback.weights.package import PackageWeights, converter_for

    try:
        weights = PackageWeights.from_config(entry["weights"])
        converter_for(weights.convert, entry["builder"])
    except PackageError as error:
        raise ConfigError(f"archs.{arch}.weights: {error}") from None


def _check_transforms(config: dict[str, Any], arch: str) -> None:
    """Transforms that follow an arch's weights need torchvision weights to follow, and
    the cached pipeline, which reproduces bilinear resizing only, refuses other ones
    before any job starts rather than train on other images."""
    entry = config["archs"][arch]
    if entry.get("transforms") != "weights":  # absent before the schema's defaults
        return
    weights = entry["weights"]
    if is_package_weights(weights) or not (weights.isidentifier() and weights.upper() == weights):
        raise ConfigError(
            f"archs.{arch}.transforms is 'weights', but its weights {weights!r} are not a "
            "torchvision enum name (such as IMAGENET1K_V1) that says its preprocessing: "
            "set `transforms: paper`"
        )
    if config.get("compute", {}).get("data_pipeline") == "cached":
        from piggyback.data.transforms import PreprocessingError, weights_preprocessing

        try:
            interpolation = weights_preprocessing(f"{entry['builder']}.{weights}").interpolation
        except PreprocessingError as error:
            raise ConfigError(f"archs.{arch}: {error}") from None
        if interpolation != "bilinear":
            raise ConfigError(
                f"archs.{arch} resizes with {interpolation}, as its weights were trained "
                "(`transforms: weights`), but compute.data_pipeline 'cached' reproduces "
                "bilinear resizing only: use `data_pipeline: dataloader`, or "
                "`transforms: paper` for this arch"
            )


def _check_released(config: dict[str, Any]) -> None:
    """With `released:`, every packed file comes from an import of the authors' files: an
    arch or method left to the pack rule would train."""
    experiment, released = config["experiment"], config["released"]
    _check_known(list(released), config["archs"], "released", "archs")
    for index, arch in enumerate(experiment["archs"]):
        if arch not in released:
            raise ConfigError(
                f"experiment.archs[{index}] is {arch!r}, which has no `released:` entry: with "
                "`released:`, every arch is imported from the authors' file, not trained"
            )
    released_as = released_methods()
    for index, method in enumerate(experiment["methods"]):
        if method not in released_as:
            raise ConfigError(
                f"experiment.methods[{index}] is {method!r}: the authors' released files "
                f"hold {' or '.join(released_as)} masks, and nothing is trained"
            )


def source_task(config: dict[str, Any]) -> str | None:
    """The dataset marked as the backbone's source task (`source_task: true`), if any."""
    marked = _source_tasks(config)
    return marked[0] if marked else None


def _source_tasks(config: dict[str, Any]) -> list[str]:
    return [name for name, entry in config["datasets"].items() if entry.get("source_task")]


def _check_source_task(config: dict[str, Any]) -> None:
    """One source task at most, which no ordering trains as a new task, and the one a
    sequential method's start retrains on, if it names one."""
    marked = _source_tasks(config)
    if len(marked) > 1:
        raise ConfigError(
            f"datasets.{marked[1]}.source_task: {marked[0]!r} is already the backbone's "
            "source task; mark one dataset only"
        )
    if not marked:
        return
    for name in config["experiment"]["orderings"]:
        if marked[0] in config["orderings"][name]:
            raise ConfigError(
                f"orderings.{name} lists {marked[0]!r}, the backbone's source task "
                "(`source_task: true`): a task the backbone was trained on is not a new one"
            )
    for method, settings in config["methods"].items():
        start = settings.get(START_DATASET)
        if start is not None and start != marked[0]:
            raise ConfigError(
                f"methods.{method}.{START_DATASET} is {start!r}, but the source task is "
                f"{marked[0]!r}: the start retrains on the source task, so name the same one"
            )


def experiment_datasets(config: dict[str, Any]) -> list[str]:
    """Every dataset of the experiment's orderings, in order of first appearance."""
    datasets: list[str] = []
    for ordering in config["experiment"]["orderings"]:
        datasets += [d for d in config["orderings"][ordering] if d not in datasets]
    return datasets


def _check_known(names: list[str], registry: dict, key: str, registry_key: str) -> None:
    where = (
        "the method registry (src/piggyback/methods/registry.py)"
        if registry is METHODS
        else f"`{registry_key}:`"
    )
    for index, name in enumerate(names):
        if name not in registry:
            raise ConfigError(
                f"{key}[{index}] is {name!r}, which is not in {where} "
                f"(known: {', '.join(registry)}); add it there or fix the name"
            )
