"""The method registry: each method's name, its file, its row label, whether it is
sequential, what a packed task of it stores, whether it keeps the backbone bit-identical,
whether the authors released masks for it, and its hyperparameters with the paper's
defaults.

This module imports no torch: the config checks, the workflow's wildcard constraints and
``train.py --help`` read it in processes that never train. Adding a method is one file in
``piggyback/methods/`` (its behaviour, see :mod:`piggyback.methods.base`) and
one entry below.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Knob:
    """One hyperparameter: its default, what it does, and the values it may take. A
    sequential method's knob may be ``per_position``: the config then gives one value,
    or a list of one per position of the ordering, and each task gets its position's."""

    default: Any
    help: str
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    per_position: bool = False

    @property
    def kind(self) -> type:
        return type(self.default)

    def admits(self, value: Any) -> bool:
        """Whether ``value`` (of the knob's kind) is one it takes: within its bounds, or
        one of its choices; never NaN or infinite."""
        if self.choices is not None:
            return value in self.choices
        if not math.isfinite(value):
            return False
        if self.minimum is not None and (
            value <= self.minimum if self.exclusive_minimum else value < self.minimum
        ):
            return False
        return self.maximum is None or value <= self.maximum

    def bounds(self) -> str:
        """The values it takes, in words, for a refusal to quote."""
        if self.choices is not None:
            return f"one of {', '.join(self.choices)}"
        limits = []
        if self.minimum is not None:
            limits.append(f"{'>' if self.exclusive_minimum else '>='} {self.minimum:g}")
        if self.maximum is not None:
            limits.append(f"<= {self.maximum:g}")
        return " and ".join(limits) or "any finite value"

    def json_schema(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"enum": list(self.choices)}
        schema: dict[str, Any] = {"type": {int: "integer", float: "number"}[self.kind]}
        if self.minimum is not None:
            schema["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.per_position:
            return {"anyOf": [schema, {"type": "array", "items": schema, "minItems": 1}]}
        return schema


# The training loop's own knobs, shared by every method; entries override the defaults.
COMMON_KNOBS: dict[str, Knob] = {
    "epochs": Knob(30, "epochs of training", minimum=1),
    "batch_size": Knob(32, "images per training step", minimum=1),
    "optimizer": Knob("adam", "adam or sgd", choices=("adam", "sgd")),
    "lr": Knob(1e-4, "learning rate of what the method trains inside the backbone", minimum=0),
    "lr_head": Knob(1e-4, "learning rate of the task head", minimum=0, exclusive_minimum=True),
    "lr_decay_every": Knob(
        15, "multiply the learning rates by lr_decay_factor every N epochs", minimum=1
    ),
    "lr_decay_factor": Knob(
        0.1, "see lr_decay_every", minimum=0, exclusive_minimum=True, maximum=1
    ),
    "momentum": Knob(0.9, "SGD momentum", minimum=0, maximum=1),
    "weight_decay": Knob(0.0, "L2 penalty of the optimiser", minimum=0),
}

MASK_KNOBS: dict[str, Knob] = {
    "mask_init": Knob(
        "1s",
        "'1s': every entry = mask_scale; 'uniform' in [-scale, scale]",
        choices=("1s", "uniform"),
    ),
    "mask_scale": Knob(
        1e-2, "initial mask value (or range, for 'uniform')", minimum=0, exclusive_minimum=True
    ),
    "threshold": Knob(5e-3, "mask entries above it keep their weight", minimum=0),
}


# What a packed task holds besides its head (the manifest's ``storage``): nothing more, a
# mask per layer (bit planes), a whole network, or each weight's owner in one network
# for all tasks (format version 3).
STORAGES = ("head", "mask", "weights", "owners")


@dataclass(frozen=True)
class MethodEntry:
    """A registered method. ``defaults`` overrides the common knobs' defaults, ``knobs``
    adds the method's own; ``options`` are fixed settings of a variant of the same
    implementation (not hyperparameters a config may change)."""

    name: str
    module: str  # the file in piggyback/methods/ that implements it
    label: str  # the row name in the paper's table
    sequential: bool  # True: task k starts from task k-1's result, so orderings matter
    stores: str  # one of STORAGES
    freezes_backbone: bool  # True: training must leave every backbone tensor bit-identical
    released: bool  # the authors published masks trained with it (docs/released-masks.md)
    summary: str
    defaults: dict[str, Any] = field(default_factory=dict)
    knobs: dict[str, Knob] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stores not in STORAGES:
            raise ValueError(f"{self.name}.stores is {self.stores!r}; expected one of {STORAGES}")

    @property
    def stores_masks(self) -> bool:
        return self.stores == "mask"

    def all_knobs(self) -> dict[str, Knob]:
        knobs = {**COMMON_KNOBS, **self.knobs}
        return {
            name: dataclasses.replace(knob, default=self.defaults.get(name, knob.default))
            for name, knob in knobs.items()
        }


METHODS: dict[str, MethodEntry] = {
    entry.name: entry
    for entry in (
        MethodEntry(
            name="classifier_only",
            module="classifier_only",
            label="Classifier Only",
            sequential=False,
            stores="head",
            freezes_backbone=True,
            released=False,
            summary="a new head on the frozen backbone",
            defaults={"optimizer": "sgd", "lr": 0.0, "lr_head": 1e-3, "lr_decay_every": 30},
        ),
        MethodEntry(
            name="finetune",
            module="finetune",
            label="Individual Networks",
            sequential=False,
            stores="weights",
            freezes_backbone=False,
            released=False,
            summary="the whole network fine-tuned per task, BatchNorm included",
            defaults={"optimizer": "sgd", "lr": 1e-3, "lr_head": 1e-3},
        ),
        MethodEntry(
            name="packnet",
            module="packnet",
            label="PackNet",
            sequential=True,
            stores="owners",
            freezes_backbone=False,
            released=False,
            summary="free weights trained per task, then pruned by magnitude for the next",
            defaults={
                "epochs": 20,
                "optimizer": "sgd",
                "lr": 1e-3,
                "lr_head": 1e-3,
                "lr_decay_every": 10,
            },
            knobs={
                "prune_fraction": Knob(
                    0.75,
                    "share of a task's weights, per layer, freed for later tasks; 0 or "
                    "less (the authors' scripts: -1) prunes nothing, and the last task of "
                    "an ordering is never pruned. In the config, one value or one per "
                    "position of the ordering (the authors' three tasks: 0.75, 0.75, -1)",
                    minimum=-1,
                    maximum=1,
                    per_position=True,
                ),
                "prune_epochs": Knob(
                    10, "epochs retraining the survivors after pruning", minimum=0
                ),
                "prune_lr": Knob(
                    1e-4, "learning rate of that retraining", minimum=0, exclusive_minimum=True
                ),
                "prune_lr_decay_every": Knob(10, "its step decay, in epochs", minimum=1),
                "start_prune_fraction": Knob(
                    0.5,
                    "share of the pretrained backbone's weights, per layer, freed at the start",
                    minimum=0,
                    maximum=1,
                ),
                "start_epochs": Knob(
                    10,
                    "epochs retraining the pruned backbone on its source (with start_dataset)",
                    minimum=0,
                ),
                "start_lr": Knob(
                    1e-4, "learning rate of that retraining", minimum=0, exclusive_minimum=True
                ),
                "start_lr_decay_every": Knob(5, "its step decay, in epochs", minimum=1),
            },
        ),
        MethodEntry(
            name="piggyback",
            module="piggyback",
            label="Piggyback",
            sequential=False,
            stores="mask",
            freezes_backbone=True,
            released=True,
            summary="a binary mask over the frozen backbone's weights, and a head, per task",
            knobs=MASK_KNOBS,
            options={"mask_kind": "binary"},
        ),
        MethodEntry(
            name="piggyback_ternary",
            module="piggyback",
            label="Piggyback (ternary)",
            sequential=False,
            stores="mask",
            freezes_backbone=True,
            released=True,
            summary="as piggyback, with masks in {-1, 0, 1} (2 bits per weight)",
            knobs=MASK_KNOBS,
            options={"mask_kind": "ternary"},
        ),
    )
}

# Config keys a sequential method takes beside its knobs: not hyperparameters of a task's
# training, but which data its start (the state the first task starts from) retrains on.
START_DATASET = "start_dataset"


class MethodError(ValueError):
    """An unknown method or hyperparameter; the message names it and the known ones."""


def method_entry(name: str) -> MethodEntry:
    try:
        return METHODS[name]
    except KeyError:
        raise MethodError(
            f"unknown method {name!r}: expected one of {', '.join(METHODS)}"
        ) from None


def released_methods() -> list[str]:
    """The methods the authors' released mask files can be imported as."""
    return [name for name, entry in METHODS.items() if entry.released]


class Hyperparameters(Mapping):
    """A method's hyperparameters: its defaults with overrides, read as attributes."""

    def __init__(self, method: str, values: dict[str, Any]):
        self._method = method
        self._values = dict(values)

    @classmethod
    def for_method(cls, method: str, **overrides: Any) -> Hyperparameters:
        knobs = method_entry(method).all_knobs()
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(given.keys() - knobs.keys())
        if unknown:
            raise MethodError(
                f"{method} has no hyperparameter {', '.join(unknown)}; it takes {', '.join(knobs)}"
            )
        values = {name: knob.default for name, knob in knobs.items()}
        for name, value in given.items():
            values[name] = _coerced(method, name, value, knobs[name])
        return cls(method, values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(f"{self.__dict__.get('_method')} has no {name!r}") from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"{self._method}({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


def _coerced(method: str, name: str, value: Any, knob: Knob) -> Any:
    if knob.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not knob.kind:
        raise MethodError(
            f"{method}.{name} is {value!r}, but it takes a {knob.kind.__name__} "
            f"(default {knob.default!r})"
        )
    if not knob.admits(value):
        raise MethodError(f"{method}.{name} is {value!r}; it takes {knob.bounds()} ({knob.help})")
    return value


def position_settings(method: str, settings: dict[str, Any], position: int | None) -> dict:
    """A method's config settings for the task at ``position`` (0-based) of its ordering:
    each per-position knob given as a list takes its value there. The start of a chain
    (``position`` None) is no task of the ordering, so such lists do not apply to it."""
    knobs = method_entry(method).all_knobs()
    chosen = {}
    for name, value in settings.items():
        if isinstance(value, list) and name in knobs and knobs[name].per_position:
            if position is None:
                continue
            value = value[position]
        chosen[name] = value
    return chosen


def load_method(name: str, hp: Hyperparameters | None = None):
    """The method's implementation (a :class:`piggyback.methods.base.Method`), built
    with ``hp`` (default: the paper's); this imports torch."""
    entry = method_entry(name)
    module = importlib.import_module(f"piggyback.methods.{entry.module}")
    return module.METHOD(entry, hp if hp is not None else Hyperparameters.for_method(name))


def config_schema() -> dict[str, Any]:
    """JSON schema of the config's ``methods:`` section, read off the registry."""
    properties = {}
    for name, entry in METHODS.items():
        knobs = {k: knob.json_schema() for k, knob in entry.all_knobs().items()}
        if entry.sequential:
            knobs[START_DATASET] = {
                "type": "string",
                "description": "a dataset to retrain the start on (PackNet: ImageNet)",
            }
        properties[name] = {"type": "object", "additionalProperties": False, "properties": knobs}
    return {"type": "object", "additionalProperties": False, "properties": properties}
