"""The method registry: every method's entry (:class:`piggyback.methods.entry.MethodEntry`:
its name, implementation, row label, whether it is sequential, what it stores, its colour
in the figures and its hyperparameters with the paper's defaults), each declared beside
its implementation in ``piggyback/methods/<method>/`` and collected here, in the order of
the table's columns.

This module imports no torch: the config checks, the workflow's wildcard constraints and
``train.py --help`` read it in processes that never train. Adding a method is a folder in
``piggyback/methods/`` (its entry in ``__init__.py``, its behaviour in ``method.py``, see
:mod:`piggyback.methods.base`) and one line below; a method defined elsewhere (a test's)
joins for a while with :func:`registered`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from piggyback.methods import classifier_only, finetune, packnet, piggyback
from piggyback.methods.entry import Knob, MethodEntry

METHODS: dict[str, MethodEntry] = {
    entry.name: entry
    for entry in (classifier_only.ENTRY, finetune.ENTRY, packnet.ENTRY, *piggyback.ENTRIES)
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


@contextmanager
def registered(entry: MethodEntry) -> Iterator[MethodEntry]:
    """``entry`` in the registry while the block runs, and out of it after: a method
    defined outside the project (a test's) trained, packed, evaluated and tabled as the
    registered ones are."""
    if entry.name in METHODS:
        raise MethodError(f"a method named {entry.name!r} is registered already")
    METHODS[entry.name] = entry
    try:
        yield entry
    finally:
        del METHODS[entry.name]


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
    module = importlib.import_module(entry.module)
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
