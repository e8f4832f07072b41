"""Saving and loading checkpoints: atomically, and without running pickled code."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from piggyback.atomic import atomic_write


class CheckpointError(ValueError):
    """A file cannot be read as the checkpoint it should be; the message names it."""


def atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, or it holds objects "
            f"other than tensors and plain containers): {error}"
        ) from error
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a dict")
    return obj


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor, in name order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
