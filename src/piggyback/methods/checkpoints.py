"""Task checkpoints as their method declares them: which of a checkpoint's flat keys are
the method's own fields and which its learned tensors is said by its registry entry
(``checkpoint_fields``, ``learned``), so that the record below (``TaskCheckpoint``)
knows no method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from piggyback.methods.registry import MethodError, method_entry
from piggyback.model.checkpoints import CheckpointError, TaskCheckpoint, load_checkpoint


def task_checkpoint(fields: dict[str, Any], source: Path | str = "checkpoint") -> TaskCheckpoint:
    """The record of a checkpoint's flat dict (as a file holds it, or as training
    gathers it: identity, ``Method.checkpoint_meta``, the kept epoch and
    ``Method.trained_state``); ``source`` names it in errors."""
    try:
        entry = method_entry(fields.get("method"))
    except MethodError as error:
        raise CheckpointError(f"{source} is not a task checkpoint: {error}") from None
    return TaskCheckpoint.from_dict(fields, entry.checkpoint_fields, entry.learned, source)


def load_task_checkpoint(path: Path) -> TaskCheckpoint:
    """A task checkpoint from ``path`` (``load_checkpoint``, then its record)."""
    return task_checkpoint(load_checkpoint(path), path)
