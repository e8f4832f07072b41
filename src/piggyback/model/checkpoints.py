"""Saving and loading checkpoints (atomically, and without running pickled code), the task
checkpoint that training writes and packing reads, and the identity of tensors: what a
backbone is, whatever file it came from."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from piggyback.files.atomic import atomic_write

CHECKPOINT_FORMAT = "piggyback.task"
CHECKPOINT_VERSION = 2

Tensors = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A file cannot be read as the checkpoint it should be; the message names it."""


@dataclass(frozen=True, kw_only=True)
class TaskCheckpoint:
    """One trained task (or a sequential method's start), as training writes it and
    packing reads it; the authors' released masks are imported as such records too.

    Its fields are those every method shares; what a method adds is its own: ``own``, the
    fields its registry entry names ``checkpoint_fields`` (PackNet's owner id, chain and
    start; Piggyback's mask rule), and ``learned``, the tensors it names ``learned``
    besides the head (PackNet's network and owners; Piggyback's real-valued masks).

    On disk it is a plain dict of tensors, lists and scalars (``to_dict``), so that
    ``load_checkpoint`` reads it with ``weights_only=True``: the fields in the order of
    the file's keys, with the method's own in their place, flat. A field that is None and
    not in ``_NONE_IS_WRITTEN`` is not part of this checkpoint (a task without a
    predecessor, masks whose coverage was not measured) and is left out; those of
    ``_NONE_IS_WRITTEN`` say "none" or "not measured" with None.
    """

    format: str = CHECKPOINT_FORMAT
    version: int = CHECKPOINT_VERSION
    # what run this is (training's identity of the run)
    arch: str
    method: str
    role: str = "task"  # or "start", the state a sequential method's first task starts from
    dataset: str | None  # None: a start that retrains on no source
    classes: list[str] | int  # the class names; only their count for released masks
    seed: int | None = None  # None: the authors' released masks say nothing of their runs
    hyperparameters: dict[str, Any] | None = None
    backbone_sha256: str  # the pretrained backbone's (checkpoints.backbone_sha256)
    head_name: str | None = None
    speed: dict[str, Any] | None = None
    # the test transform (data.transforms.TaskTransform.as_dict); None: not recorded
    preprocessing: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None  # a sequential task's predecessor: dataset, sha256
    last_in_ordering: bool | None = None
    own: dict[str, Any] = dataclasses.field(default_factory=dict)  # the method's fields
    coverage: dict[str, Any] | None = None  # what masks cover (masks.Coverage.as_dict)
    # the kept epoch (global, from 1; 0 for the state before any) and its test errors
    epoch: int | None = None
    phase: str | None = None
    test_top1_error: float | None = None
    test_top5_error: float | None = None
    test_images: int | None = None
    # what the method learned: the head, and the tensors of its own
    head: Tensors
    learned: dict[str, Tensors] = dataclasses.field(default_factory=dict)

    _NONE_IS_WRITTEN = frozenset(
        {"dataset", "seed", "epoch", "test_top1_error", "test_top5_error", "test_images"}
    )
    _FLAT = frozenset({"own", "learned"})  # written as their keys, in the file's key order

    def to_dict(self) -> dict[str, Any]:
        """The plain dict that ``torch.save`` writes."""
        fields = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in self._FLAT:
                fields.update(value)
            elif value is not None or field.name in self._NONE_IS_WRITTEN:
                fields[field.name] = value
        return fields

    @classmethod
    def from_dict(
        cls,
        fields: dict[str, Any],
        own: tuple[str, ...],
        learned: tuple[str, ...],
        source: Path | str = "checkpoint",
    ) -> TaskCheckpoint:
        """The record of a dict ``to_dict`` wrote, whose method's fields are ``own`` and
        whose method's tensors are ``learned`` (its registry entry says; ``source`` names
        the dict in errors)."""
        shared = {f.name: f for f in dataclasses.fields(cls) if f.name not in cls._FLAT}
        unknown = sorted(set(fields) - set(shared) - set(own) - set(learned))
        required = [name for name, f in shared.items() if f.default is dataclasses.MISSING]
        missing = [name for name in [*required, *own, *learned] if name not in fields]
        if unknown or missing:
            found = f"unknown keys {unknown}" if unknown else f"no {', '.join(missing)}"
            raise CheckpointError(f"{source} is not a task checkpoint: it has {found}")
        return cls(
            **{name: value for name, value in fields.items() if name in shared},
            own={name: fields[name] for name in own},
            learned={name: fields[name] for name in learned},
        )

    def trained_state(self) -> dict[str, Tensors]:
        """What the method learned, as ``Method.trained_state`` gives it."""
        return {"head": self.head, **self.learned}


def atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only,
    so a file carrying pickled code is refused, never run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers "
            f"({refusal_reason(error)}): refused, since unpickling them could run code "
            "(checkpoints written by this project hold none)"
        ) from error
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"{path} is not a readable checkpoint, truncated or corrupt "
            f"({type(error).__name__}: {first_line}); delete it and rerun the step "
            "that writes it"
        ) from error
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a dict")
    return obj


def refusal_reason(error: pickle.UnpicklingError) -> str:
    """The one line of torch's ``weights_only`` refusal that says what was refused (its
    full message also suggests ``weights_only=False``, which this project never uses)."""
    text = str(error)
    match = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = match[1] if match else (text.strip().splitlines() or [""])[0]
    return reason.split(". Please use")[0].strip().rstrip(".")


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor, in name order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def backbone_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's own tensors under their plain names, masks left out."""
    state = {}
    for key, tensor in backbone.state_dict().items():
        if ".parametrizations." in key:
            if not key.endswith(".original"):
                continue  # a mask, not a backbone tensor
            module, _, rest = key.partition(".parametrizations.")
            key = f"{module}.{rest.removesuffix('.original')}"
        state[key] = tensor
    return state


def load_backbone_state(backbone: nn.Module, state: Tensors) -> None:
    """``backbone.load_state_dict(state)`` for a state of today's modules (``backbone_state``'s,
    a pack's): a plain dict has lost the modules' version metadata, without which some
    (MNASNet) refuse to load, so the backbone's own stands in."""
    if getattr(state, "_metadata", None) is None:
        state = OrderedDict(state)
        state._metadata = backbone.state_dict()._metadata
    backbone.load_state_dict(state)


def backbone_sha256(backbone: nn.Module) -> str:
    return tensors_sha256(backbone_state(backbone))
