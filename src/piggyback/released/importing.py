"""The authors' released masks imported as this project's packed file, so that the
evaluation of trained tasks evaluates the authors' masks too (docs/released-masks.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from piggyback.data.download import file_digests, hash_prefix_in_name
from piggyback.methods.checkpoints import task_checkpoint
from piggyback.methods.registry import METHODS, load_method, released_methods
from piggyback.model.backbones import ArchSpec, BackboneError, build_backbone, weights_file_name
from piggyback.model.checkpoints import TaskCheckpoint, atomic_save, backbone_sha256
from piggyback.packs.packed_file import PLAIN_BITS
from piggyback.released.files import (
    ReleasedError,
    ReleasedFile,
    ReleasedTask,
    load_backbone_file,
    module_index_map,
    read_released,
    released_task_masks,
)
from piggyback.stages.packing import pack_checkpoints

AUTHORS_REPO = "https://github.com/arunmallya/piggyback"
# Their README's link for the pretrained masks and backbones (the datasets have another).
RELEASED_BOX_URL = "https://uofi.box.com/s/c5kixsvtrghu9yj51yb1oe853ltdfz4q"


@dataclass(frozen=True)
class AuthorsWeights:
    """The torchvision weights an arch's released masks were trained on."""

    builder: str
    authors_file: str  # what torchvision 0.1.9 (the authors' version) downloaded
    same_numbers: tuple[str, ...]  # torchvision files known to hold exactly these numbers
    note: str


AUTHORS_WEIGHTS = {
    "vgg16": AuthorsWeights(
        "vgg16",
        "vgg16-397923af.pth",
        ("vgg16-397923af.pth",),
        "today's IMAGENET1K_V1 is the same file",
    ),
    "vgg16_bn": AuthorsWeights(
        "vgg16_bn",
        "vgg16_bn-6c64b313.pth",
        ("vgg16_bn-6c64b313.pth",),
        "today's IMAGENET1K_V1 is the same file",
    ),
    "resnet50": AuthorsWeights(
        "resnet50",
        "resnet50-19c8e357.pth",
        ("resnet50-19c8e357.pth", "resnet50-0676ba61.pth"),
        "today's IMAGENET1K_V1 re-saves the same numbers in the zip format "
        "(pytorch/vision PR 3620)",
    ),
    "densenet121": AuthorsWeights(
        "densenet121",
        "densenet121-241335ed.pth",
        ("densenet121-241335ed.pth",),
        "torchvision >= 0.2 ships densenet121-a639ec97.pth instead; whether it holds the "
        "same numbers is not known",
    ),
}


def weights_match_authors(arch_kind: str, weights: str | Path) -> bool:
    """Whether ``weights`` (a torchvision enum name or a weights file) is known to hold the
    numbers the authors' masks were trained on. False means different or unknown, so an
    importer should warn that the masks may not fit."""
    entry = AUTHORS_WEIGHTS.get(arch_kind)
    if entry is None:
        return False
    path = Path(weights)
    if path.is_file():
        prefixes = [hash_prefix_in_name(name) for name in entry.same_numbers]
        sha256 = file_digests(path)[1]
        return any(prefix and sha256.startswith(prefix) for prefix in prefixes)
    try:
        return weights_file_name(entry.builder, str(weights)) in entry.same_numbers
    except BackboneError:
        return False


@dataclass(frozen=True)
class ImportResult:
    """What an import wrote, and whether its caller should warn about the weights."""

    manifest: dict[str, Any]
    weights_known: bool  # the weights are known to be those the masks were trained on


def import_released(
    path: str | Path,
    arch_kind: str,
    spec: ArchSpec,
    out: Path,
    *,
    arch: str | None = None,
    weights: str | Path | None = None,
    weights_dir: Path | None = None,
    datasets: list[str] | None = None,
    method: str | None = None,
    sha256: str | None = None,
    encoding: str = PLAIN_BITS,
    stats_out: Path | None = None,
    authors_backbone: Path | None = None,
) -> ImportResult:
    """Write one of the authors' files as this project's packed file, so that the evaluate
    stage reads it like a trained pack: per dataset, its masks keyed by torchvision weight
    names (1 bit per weight; 2 for ternary), its head and class count, with the backbone's
    identity and the file's origin in the manifest.

    ``weights`` (default: the spec's) must be the numbers the masks were trained on; the
    result says whether they are known to be. ``authors_backbone`` names the authors' own
    backbone file, if ``weights`` were converted from it (``save_backbone_weights``)."""
    path = Path(path)
    file_sha256 = check_released_file(path, sha256)
    tasks = _selected_tasks(read_released(path), datasets)
    method = _released_method(path, tasks, method)
    weights = weights if weights is not None else spec.weights
    backbone, features = build_backbone(spec, weights, weights_dir)
    arch = arch or spec.builder
    checkpoints = _task_checkpoints(path, arch_kind, tasks, arch, method, backbone, features)
    known = authors_backbone is not None or weights_match_authors(arch_kind, weights)
    provenance = {
        "released_file": path.name,
        "sha256": file_sha256,
        "repo": AUTHORS_REPO,
        "box_folder": RELEASED_BOX_URL,
        "arch_kind": arch_kind,
        "weights": str(weights),
        "weights_known_to_match": known,
    }
    if authors_backbone is not None:
        provenance["authors_backbone"] = {
            "file": authors_backbone.name,
            "sha256": file_digests(authors_backbone)[1],
        }
    names = [f"{path}:{dataset}" for dataset in tasks]
    result = pack_checkpoints(checkpoints, names, out, stats_out, encoding, provenance=provenance)
    return ImportResult(result.manifest, known)


def _task_checkpoints(
    path: Path,
    arch_kind: str,
    tasks: dict[str, ReleasedTask],
    arch: str,
    method: str,
    backbone: nn.Module,
    features: int,
) -> list[TaskCheckpoint]:
    """Each released task as the checkpoint packing reads: its masks under torchvision
    weight names, its head and class count, and the mask rule of ``method`` with its
    default threshold; no seed, epoch or error (the authors' files say nothing of their
    training runs)."""
    index_map = module_index_map(arch_kind, backbone)
    identity = backbone_sha256(backbone)
    own = load_method(method).checkpoint_meta()  # the mask rule, with the default threshold
    checkpoints = []
    for dataset, task in tasks.items():
        masks = released_task_masks(task.masks, index_map, backbone)
        inputs = task.head["weight"].shape[1]
        if inputs != features:
            raise ReleasedError(
                f"{path}: the classifier of {dataset} takes {inputs} features, but the "
                f"{arch_kind} backbone gives {features}: is the file for another arch?"
            )
        fields = {
            "arch": arch,
            "method": method,
            "dataset": dataset,
            "classes": task.head["weight"].shape[0],  # their files name no classes
            "backbone_sha256": identity,
            **own,
            # copies: heads the file pickled as one object must not share memory
            "head": {key: value.clone() for key, value in task.head.items()},
            # {-1, 0, 1} in one byte a weight: five VGG-16 tasks as floats take 2.7 GB
            "masks": {name: mask.to(torch.int8) for name, mask in masks.items()},
        }
        checkpoints.append(task_checkpoint(fields, f"{path}:{dataset}"))
    return checkpoints


def check_released_file(path: Path, sha256: str | None = None) -> str:
    """The file's sha256, once it is known to be there (and to be ``sha256``, if given)."""
    if not path.is_file():
        raise ReleasedError(
            f"{path} is missing: download {path.name!r} from the authors' Box folder "
            f"{RELEASED_BOX_URL} (in a browser: Box links are not plain file URLs) and put "
            f"it in {path.parent}/"
        )
    actual = file_digests(path)[1]
    if sha256 and actual != sha256.lower():
        raise ReleasedError(
            f"{path} has sha256 {actual}, not the expected {sha256}: another file or a "
            "damaged download; download it again or correct the expected sha256"
        )
    return actual


def save_backbone_weights(authors_backbone: Path, out: Path) -> None:
    """The authors' pickled backbone as a state-dict file, which the evaluate stage (and
    an arch's ``weights:``) accepts where it would refuse the pickled model."""
    atomic_save(load_backbone_file(authors_backbone), out)


def _selected_tasks(file: ReleasedFile, datasets: list[str] | None) -> dict[str, ReleasedTask]:
    if datasets is None:
        return file.tasks
    missing = [dataset for dataset in datasets if dataset not in file.tasks]
    if missing:
        raise ReleasedError(
            f"{file.path} holds no masks for {', '.join(missing)}; it holds {', '.join(file.tasks)}"
        )
    return {dataset: file.tasks[dataset] for dataset in datasets}


def _released_method(path: Path, tasks: dict[str, ReleasedTask], method: str | None) -> str:
    """The released method of the masks' kind (ternary where a mask holds the byte 255,
    i.e. -1), unless ``method`` asks for another released one: binary masks also fit a
    ternary pack."""
    ternary = any(bool((mask == 255).any()) for t in tasks.values() for mask in t.masks.values())
    by_kind = {METHODS[name].options["mask_kind"]: name for name in released_methods()}
    if method is None:
        return by_kind["ternary" if ternary else "binary"]
    if method not in by_kind.values():
        raise ReleasedError(
            f"method {method!r} does not store the authors' masks: import as "
            f"{' or '.join(by_kind.values())}"
        )
    if ternary and METHODS[method].options["mask_kind"] == "binary":
        raise ReleasedError(
            f"{path} holds ternary masks (the byte 255, i.e. -1): import it as "
            f"{by_kind['ternary']}, not {method}"
        )
    return method
