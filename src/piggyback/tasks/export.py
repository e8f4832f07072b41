"""A trained task as a plain torchvision model, for anyone without this project.

``model.safetensors`` is the state dict of the network evaluation evaluates
(``stages.evaluation.task_model``): the method's change applied to the weights (a mask
multiplied in, PackNet's owners, a fine-tuned network) and the task's head in the
builder's own head slot, so that ``torchvision.models.<builder>(**kwargs)`` loads it with
``strict=True``. ``config.json`` beside it holds the builder and its keyword arguments,
the class names, the preprocessing, and where it came from (the pack and its digests).
Optionally ``model.pt2``, a ``torch.export`` program of the same model (batch size free).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import load_file, save_file

from piggyback.data.download import file_digests
from piggyback.files.atomic import atomic_write, atomic_write_json
from piggyback.model.backbones import torchvision_state
from piggyback.model.checkpoints import backbone_state, tensors_sha256
from piggyback.stages.evaluation import OpenedPack, task_model
from piggyback.tasks.model import TaskInfo

EXPORT_FORMAT = "piggyback-export"
EXPORT_VERSION = 1
WEIGHTS_FILE, CONFIG_FILE, PROGRAM_FILE = "model.safetensors", "config.json", "model.pt2"


def export_task(
    opened: OpenedPack,
    info: TaskInfo,
    builder: str,
    out: Path,
    pack_sha256: str,
    program: bool = False,
) -> dict[str, Any]:
    """Write task ``info.name`` of the opened pack into folder ``out`` (each file
    atomically, ``config.json`` last); returns the config."""
    preprocessing = info.required_preprocessing()
    model = task_model(opened, info.name)
    state = torchvision_state(
        backbone_state(model.backbone), model.head.state_dict(), model.head_name
    )
    state = {name: tensor.detach().cpu().clone() for name, tensor in state.items()}
    kwargs = builder_arguments(model.backbone, len(info.classes))
    out = Path(out)
    atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)))
    if program:
        plain = plain_model(builder, kwargs, out / WEIGHTS_FILE)
        atomic_write(out / PROGRAM_FILE, lambda tmp: _save_program(plain, info, tmp))
    manifest = opened.packed.manifest
    config = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "task": info.name,
        "builder": builder,
        "kwargs": kwargs,
        "head": model.head_name,
        "classes": info.classes,
        "preprocessing": {**preprocessing.as_dict(), "steps": preprocessing.steps()},
        "weights": {"file": WEIGHTS_FILE, "tensors_sha256": tensors_sha256(state)},
        "program": PROGRAM_FILE if program else None,
        "source": {
            "pack": opened.packed.path.name,
            "pack_sha256": pack_sha256,
            "content_sha256": manifest["content_sha256"],
            "backbone_sha256": manifest["backbone_sha256"],
            "arch": manifest["arch"],
            "method": manifest["method"],
            "ordering": manifest.get("ordering_name"),
        },
    }
    atomic_write_json(config, out / CONFIG_FILE)
    return config


def pack_digest(path: Path) -> str:
    """The packed file's sha256, as ``sha256sum`` prints it."""
    return file_digests(Path(path))[1]


def builder_arguments(backbone: torch.nn.Module, classes: int) -> dict[str, Any]:
    """What the builder needs besides its defaults to hold exactly the exported tensors:
    the head's class count, and for GoogLeNet and Inception-v3, whose auxiliary ImageNet
    heads the backbone dropped, no auxiliary heads (nor their initialisation, which the
    loaded weights replace)."""
    kwargs: dict[str, Any] = {"num_classes": classes}
    if hasattr(backbone, "aux_logits"):
        kwargs.update(aux_logits=False, init_weights=False)
    return kwargs


def plain_model(builder: str, kwargs: dict[str, Any], weights: Path) -> torch.nn.Module:
    """The exported model as its user loads it: the builder, the file, ``strict=True``."""
    model = torchvision.models.get_model(builder, weights=None, **kwargs)
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval()


def _save_program(model: torch.nn.Module, info: TaskInfo, path: Path) -> None:
    size = info.required_preprocessing().image_size
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
