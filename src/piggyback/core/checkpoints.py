"""Saving and loading checkpoints (atomically, and without running pickled code), and the
identity of tensors: what a backbone is, whatever file it came from."""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from piggyback.atomic import atomic_write


class CheckpointError(ValueError):
    """A file cannot be read as the checkpoint it should be; the message names it."""


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


def backbone_sha256(backbone: nn.Module) -> str:
    return tensors_sha256(backbone_state(backbone))
