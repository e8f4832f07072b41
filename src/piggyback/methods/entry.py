"""What a method's registry entry declares: its identity, its hyperparameters (``Knob``)
and what it stores, in its checkpoints and its packed files (``StoredPart``).

Torch-free, like the entries themselves (each beside its implementation, in
``piggyback/methods/<method>/__init__.py``): the config checks, the workflow's wildcard
constraints, ``train.py --help`` and the report read them in processes that never train.
"""

from __future__ import annotations

import dataclasses
import math
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


@dataclass(frozen=True)
class StoredPart:
    """What the tensors under one key prefix of a packed file are (``<task>/<prefix>/...``
    for a task's own, ``<prefix>/...`` for one all tasks share), as the storage figure
    names and colours them. ``whole_network``: the part is a network of its own (a
    fine-tuned one, PackNet's one for all tasks), which the table's storage row counts."""

    label: str
    color: str
    whole_network: bool = False


# Every method's packed task has a head (``Method.pack`` stores it).
COMMON_PARTS = {"head": StoredPart("task head", "tab:gray")}


@dataclass(frozen=True)
class MethodEntry:
    """A registered method. ``defaults`` overrides the common knobs' defaults, ``knobs``
    adds the method's own; ``options`` are fixed settings of a variant of the same
    implementation (not hyperparameters a config may change).

    What it stores: ``checkpoint_fields`` and ``learned`` name the keys its task
    checkpoints hold besides the shared ones (what ``Method.checkpoint_meta`` and, besides
    the head, ``Method.trained_state`` give); ``stores`` is the word a packed task's
    manifest entry records (``storage``), and ``parts`` the key prefixes its packed files
    hold besides the head."""

    name: str
    module: str  # the module that implements it: its METHOD is a methods.base.Method
    label: str  # the row name in the paper's table
    sequential: bool  # True: task k starts from task k-1's result, so orderings matter
    freezes_backbone: bool  # True: training must leave every backbone tensor bit-identical
    released: bool  # the authors published masks trained with it (docs/released-masks.md)
    summary: str
    stores: str  # e.g. "mask": Piggyback's workflow reads its packs' mask statistics
    color: str | None  # its colour in every figure; None: one per ordering (sequential)
    checkpoint_fields: tuple[str, ...] = ()
    learned: tuple[str, ...] = ()
    parts: dict[str, StoredPart] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    knobs: dict[str, Knob] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def stores_masks(self) -> bool:
        return self.stores == "mask"

    def all_knobs(self) -> dict[str, Knob]:
        knobs = {**COMMON_KNOBS, **self.knobs}
        return {
            name: dataclasses.replace(knob, default=self.defaults.get(name, knob.default))
            for name, knob in knobs.items()
        }

    def all_parts(self) -> dict[str, StoredPart]:
        return {**COMMON_PARTS, **self.parts}
