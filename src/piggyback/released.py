"""The authors' released mask files, read on modern PyTorch without running their code.

The files (``vgg16_binary.pt`` and the like) were written by torch 0.2's ``torch.save`` in
the legacy (pre-zip) format: a pickle that rebuilds tensors, parameters and whole
``nn.Module`` objects, followed by the raw bytes of every storage. Unpickling such a file
with ``pickle`` or ``torch.load(weights_only=False)`` runs whatever callables the file
names, so this module reads the format itself: the pickle is loaded by an unpickler that
admits only tensor rebuilders, ``OrderedDict`` and a fixed list of torch.nn/torchvision
module classes, and turns every module into an inert ``PickledModule`` record of its
pickled state. Any other global is refused before it is called.

Masks are keyed by the module's position in ``enumerate(shared.modules())`` of the
authors' network; ``module_index_map`` rebuilds their ``shared`` container from a
torchvision backbone to turn those positions into parameter names. ``import_released``
writes a file's tasks in this project's packed format, so that the evaluation of trained
tasks evaluates the authors' masks too.
"""

from __future__ import annotations

import functools
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from piggyback.backbones import ArchSpec, BackboneError, build_backbone, weights_file_name
from piggyback.checkpoints import atomic_save, backbone_sha256
from piggyback.downloads import file_digests, hash_prefix_in_name
from piggyback.masks import MASKED_LAYER_TYPES, maskable_layers
from piggyback.methods.registry import METHODS, Hyperparameters
from piggyback.packing import pack_checkpoints

ARCH_KINDS = ("vgg16", "vgg16_bn", "resnet50", "densenet121")
AUTHORS_REPO = "https://github.com/arunmallya/piggyback"
# Their README's link for the pretrained masks and backbones (the datasets have another).
RELEASED_BOX_URL = "https://uofi.box.com/s/c5kixsvtrghu9yj51yb1oe853ltdfz4q"

# The authors' networks have these many conv/linear layers once the ImageNet head is gone;
# a backbone with another count is another arch (or still has its head).
_MASKED_LAYER_COUNT = {"vgg16": 15, "vgg16_bn": 15, "resnet50": 53, "densenet121": 120}

# torch's legacy serialisation: three header pickles, the object, the storage keys, data.
_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "ByteStorage": torch.uint8,
    "CharStorage": torch.int8,
    "ShortStorage": torch.int16,
    "IntStorage": torch.int32,
    "LongStorage": torch.int64,
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BoolStorage": torch.bool,
}

# Module classes a pickled mask head or whole torchvision backbone (0.1.9 or today) holds.
_MODULE_CLASSES = frozenset(
    {
        "torch.nn.modules.linear.Linear",
        "torch.nn.modules.conv.Conv2d",
        "torch.nn.modules.batchnorm.BatchNorm2d",
        "torch.nn.modules.activation.ReLU",
        "torch.nn.modules.pooling.MaxPool2d",
        "torch.nn.modules.pooling.AvgPool2d",
        "torch.nn.modules.pooling.AdaptiveAvgPool2d",
        "torch.nn.modules.dropout.Dropout",
        "torch.nn.modules.container.Sequential",
        "torchvision.models.vgg.VGG",
        "torchvision.models.resnet.ResNet",
        "torchvision.models.resnet.Bottleneck",
        "torchvision.models.resnet.BasicBlock",
        "torchvision.models.densenet.DenseNet",
        "torchvision.models.densenet._DenseBlock",
        "torchvision.models.densenet._DenseLayer",
        "torchvision.models.densenet._Transition",
    }
)

# Python 2 pickles (and protocol-2 pickles written by Python 3) use the old module names.
_PY2_MODULE_NAMES = {"__builtin__": "builtins"}

_LINEAR_CLASS = "torch.nn.modules.linear.Linear"

# torchvision 0.1.9 named a dense layer's children 'norm.1', 'conv.1', ...; today 'norm1'.
_DOTTED_DENSE_LAYER_CHILD = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


class ReleasedError(ValueError):
    """A released file cannot be used as asked; the one-line message names the file or
    the layer and says what is wrong."""


class PickledModule:
    """An ``nn.Module`` as a file pickled it: its class path and pickled attributes.

    Nothing of the module is constructed or run; the record only holds data.
    """

    class_path = ""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"{self.class_path} was pickled with a {type(state).__name__} state")
        self.state = state

    def section(self, name: str) -> dict:
        """One of the module's pickled dicts (``_parameters``, ``_buffers``, ``_modules``)."""
        value = self.__dict__.get("state", {}).get(name)
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class ReleasedTask:
    """One dataset of a released file: masks by module index, as stored, and the head."""

    masks: dict[int, torch.Tensor]
    head: dict[str, torch.Tensor]


@dataclass(frozen=True)
class ReleasedFile:
    path: Path
    tasks: dict[str, ReleasedTask]


def read_released(path: str | Path) -> ReleasedFile:
    """The masks and heads of one of the authors' files, every structure checked."""
    path = Path(path)
    content = read_legacy_file(path)
    expected = ("dataset2masks", "dataset2classifiers")
    if not isinstance(content, dict) or not all(key in content for key in expected):
        found = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
        raise ReleasedError(
            f"{path} is not one of the authors' mask files: expected a dict with "
            f"'dataset2masks' and 'dataset2classifiers', found {found}"
        )
    masks, heads = content["dataset2masks"], content["dataset2classifiers"]
    for key, value in zip(expected, (masks, heads), strict=True):
        if not isinstance(value, dict):
            raise ReleasedError(f"{path}: {key} is a {type(value).__name__}, not a dict")
    if set(masks) != set(heads):
        raise ReleasedError(
            f"{path}: datasets with masks {sorted(masks)} differ from datasets with "
            f"classifiers {sorted(heads)}"
        )
    tasks = {
        dataset: ReleasedTask(
            _checked_masks(path, dataset, masks[dataset]),
            _linear_head(path, dataset, heads[dataset]),
        )
        for dataset in masks
    }
    return ReleasedFile(path, tasks)


def module_index_map(arch_kind: str, backbone: nn.Module) -> dict[int, str]:
    """Module index in the authors' ``shared`` network -> weight name in ``backbone``,
    for every conv and linear layer (``backbone`` as ``build_backbone`` returns it)."""
    if arch_kind not in ARCH_KINDS:
        raise ReleasedError(f"unknown arch kind {arch_kind!r}: expected one of {ARCH_KINDS}")
    weight_names = {f"{name}.weight" for name, _ in maskable_layers(backbone)}
    if len(weight_names) != _MASKED_LAYER_COUNT[arch_kind]:
        raise ReleasedError(
            f"a {arch_kind} backbone without its head has {_MASKED_LAYER_COUNT[arch_kind]} "
            f"conv/linear layers; this one has {len(weight_names)}"
        )
    names = {id(module): name for name, module in backbone.named_modules()}
    index_map = {
        index: f"{names[id(module)]}.weight"
        for index, module in enumerate(_authors_shared(arch_kind, backbone).modules())
        if isinstance(module, MASKED_LAYER_TYPES)
    }
    if sorted(index_map.values()) != sorted(weight_names):
        left_out = sorted(weight_names - set(index_map.values()))
        raise ReleasedError(f"the authors' {arch_kind} network leaves out {left_out[:3]}")
    return index_map


def released_task_masks(
    file_masks: dict[int, torch.Tensor], index_map: dict[int, str], backbone: nn.Module
) -> dict[str, torch.Tensor]:
    """A file's byte masks as {weight name: float mask in {-1, 0, 1}} for ``bake_masks``.

    The authors' ternary packing stored -1 as the byte 255 (a cast to ByteTensor), so 255
    decodes to -1; any byte other than 0, 1 or 255 is refused.
    """
    strays = sorted(set(file_masks) - set(index_map))
    if strays:
        raise ReleasedError(
            f"mask for module index {strays[0]} does not fall on a conv or linear layer of "
            f"this backbone (its layers are at indices {min(index_map)}..{max(index_map)}): "
            "is the file for another arch?"
        )
    missing = sorted(set(index_map) - set(file_masks))
    if missing:
        listed = ", ".join(f"{index} ({index_map[index]})" for index in missing[:3])
        raise ReleasedError(f"the file has no mask for {len(missing)} layers: {listed}")
    modules = dict(backbone.named_modules())
    decoded = {}
    for index, mask in sorted(file_masks.items()):
        name = index_map[index]
        weight_shape = tuple(modules[name.removesuffix(".weight")].weight.shape)
        if tuple(mask.shape) != weight_shape:
            raise ReleasedError(
                f"mask at module index {index} has shape {tuple(mask.shape)}, "
                f"but {name} has shape {weight_shape}"
            )
        # Read as signed bytes, 255 is -1: the byte the authors' cast made of -1.
        signed = mask.view(torch.int8)
        low, high = torch.aminmax(signed)
        if low < -1 or high > 1:
            stray = int(mask[(signed < -1) | (signed > 1)][0])
            raise ReleasedError(
                f"mask at module index {index} ({name}) holds the byte {stray}; "
                "the authors' masks hold 0, 1 or 255 (= -1)"
            )
        decoded[name] = signed.to(torch.float32)
    return decoded


def load_backbone_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict, with today's torchvision names, of a pickled whole model (the
    authors' ``pytorch_backbone`` files), read without running code from it."""
    path = Path(path)
    model = read_legacy_file(path)
    if not isinstance(model, PickledModule):
        raise ReleasedError(f"{path} holds a {type(model).__name__}, not a pickled model")
    state: dict[str, torch.Tensor] = {}
    _flatten(path, model, "", state)
    return {_DOTTED_DENSE_LAYER_CHILD.sub(r"\1\2.", key): value for key, value in state.items()}


def read_legacy_file(path: str | Path) -> Any:
    """The object in a legacy-format ``torch.save`` file; modules come back as
    ``PickledModule`` records and nothing named by the file is run."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        raise ReleasedError(
            f"{path} is a zip archive (torch >= 1.6 serialisation), not the legacy format "
            "torch 0.2 wrote"
        )
    storages: dict[str, _Storage] = {}
    try:
        with open(path, "rb") as stream:
            header = [_NoCodeUnpickler(stream, storages).load()]
            if header[0] == _MAGIC_NUMBER:
                header += [_NoCodeUnpickler(stream, storages).load() for _ in range(2)]
            if header[:2] != [_MAGIC_NUMBER, _PROTOCOL_VERSION]:
                raise ReleasedError(f"{path} is not a legacy torch file (no magic number)")
            if not isinstance(header[2], dict) or not header[2].get("little_endian", False):
                raise ReleasedError(f"{path} was not written on a little-endian machine")
            content = _NoCodeUnpickler(stream, storages).load()
            keys = _NoCodeUnpickler(stream, storages).load()
            _read_storages(path, stream, keys, storages)
        return _materialise(content, set())
    except _RefusedGlobal as refused:
        raise ReleasedError(
            f"refused global {refused.name} in {path}: only tensors, storages, OrderedDict and "
            "torch.nn/torchvision module classes are admitted; nothing from the file was run"
        ) from None
    except ReleasedError:
        raise
    except EOFError:
        raise ReleasedError(f"{path} ends early: truncated?") from None
    except Exception as error:  # any other failure of a malformed pickle or tensor
        detail = str(error).splitlines()[0] if str(error) else ""
        raise ReleasedError(
            f"{path} is not a readable legacy torch file: {type(error).__name__}: {detail}"
        ) from None


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
    encoding: str = "bits",
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
    index_map = module_index_map(arch_kind, backbone)
    common = {
        "arch": arch or spec.builder,
        "method": method,
        "seed": None,  # the authors' files say nothing of their training runs
        "epoch": None,
        "test_top1_error": None,
        "backbone_sha256": backbone_sha256(backbone),
        "mask": {
            "kind": METHODS[method].options["mask_kind"],
            "threshold": Hyperparameters.for_method(method).threshold,
        },
    }
    checkpoints = []
    for dataset, task in tasks.items():
        masks = released_task_masks(task.masks, index_map, backbone)
        inputs = task.head["weight"].shape[1]
        if inputs != features:
            raise ReleasedError(
                f"{path}: the classifier of {dataset} takes {inputs} features, but the "
                f"{arch_kind} backbone gives {features}: is the file for another arch?"
            )
        checkpoints.append(
            {
                **common,
                "dataset": dataset,
                "classes": task.head["weight"].shape[0],  # their files name no classes
                # copies: heads the file pickled as one object must not share memory
                "head": {key: value.clone() for key, value in task.head.items()},
                # {-1, 0, 1} in one byte a weight: five VGG-16 tasks as floats take 2.7 GB
                "masks": {name: mask.to(torch.int8) for name, mask in masks.items()},
            }
        )
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
    """piggyback for binary masks, piggyback_ternary where a mask holds the byte 255 (-1),
    unless ``method`` asks for one of them: binary masks also fit a ternary pack."""
    ternary = any(bool((mask == 255).any()) for t in tasks.values() for mask in t.masks.values())
    if method is None:
        return "piggyback_ternary" if ternary else "piggyback"
    kind = METHODS[method].options.get("mask_kind") if method in METHODS else None
    if kind is None:
        raise ReleasedError(
            f"method {method!r} does not store masks: import as piggyback or piggyback_ternary"
        )
    if ternary and kind == "binary":
        raise ReleasedError(
            f"{path} holds ternary masks (the byte 255, i.e. -1): import it as "
            f"piggyback_ternary, not {method}"
        )
    return method


def _authors_shared(arch_kind: str, backbone: nn.Module) -> nn.Module:
    """The container the authors' ``networks.py`` called ``shared``, built from the
    backbone's own modules, so that ``modules()`` walks it in their order."""
    try:
        if arch_kind in ("vgg16", "vgg16_bn"):
            has_bn = any(isinstance(m, nn.BatchNorm2d) for m in backbone.features)
            if has_bn != (arch_kind == "vgg16_bn"):
                raise ReleasedError(
                    f"the backbone {'has' if has_bn else 'lacks'} BatchNorm: not a {arch_kind}"
                )
            fc6, fc7 = [m for m in backbone.classifier.children() if isinstance(m, nn.Linear)]
            # Their View(-1, 25088) sits between the features and fc6; Flatten takes its place.
            return nn.Sequential(
                *backbone.features.children(),
                nn.Flatten(),
                fc6,
                nn.ReLU(inplace=True),
                nn.Dropout(),
                fc7,
                nn.ReLU(inplace=True),
                nn.Dropout(),
            )
        if arch_kind == "resnet50":
            return nn.Sequential(
                OrderedDict((n, m) for n, m in backbone.named_children() if n != "fc")
            )
        return backbone.features
    except (AttributeError, TypeError, ValueError) as error:
        raise ReleasedError(f"the backbone is not a torchvision {arch_kind}: {error}") from None


def _checked_masks(path: Path, dataset: str, masks: Any) -> dict[int, torch.Tensor]:
    if not isinstance(masks, dict):
        raise ReleasedError(f"{path}: masks of {dataset} are a {type(masks).__name__}, not a dict")
    for index, mask in masks.items():
        if not isinstance(index, int) or isinstance(index, bool):
            raise ReleasedError(f"{path}: {dataset} has a mask keyed {index!r}, not a module index")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.uint8:
            kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ReleasedError(
                f"{path}: {dataset}'s mask at module index {index} is {kind}, not a ByteTensor"
            )
    return dict(masks)


def _linear_head(path: Path, dataset: str, head: Any) -> dict[str, torch.Tensor]:
    if not isinstance(head, PickledModule) or head.class_path != _LINEAR_CLASS:
        kind = head.class_path if isinstance(head, PickledModule) else type(head).__name__
        raise ReleasedError(f"{path}: the classifier of {dataset} is a {kind}, not nn.Linear")
    weight, bias = (head.section("_parameters").get(name) for name in ("weight", "bias"))
    if not (
        isinstance(weight, torch.Tensor)
        and isinstance(bias, torch.Tensor)
        and weight.dim() == 2
        and tuple(bias.shape) == weight.shape[:1]
    ):
        raise ReleasedError(
            f"{path}: the classifier of {dataset} lacks a 2-D weight and a matching bias"
        )
    return {"weight": weight, "bias": bias}


def _flatten(path: Path, module: PickledModule, prefix: str, state: dict) -> None:
    for section in ("_parameters", "_buffers"):
        for name, value in module.section(section).items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise ReleasedError(f"{path}: {prefix}{name} is a {type(value).__name__}")
            state[prefix + name] = value
    for name, child in module.section("_modules").items():
        if child is None:
            continue
        if not isinstance(child, PickledModule):
            raise ReleasedError(f"{path}: submodule {prefix}{name} is a {type(child).__name__}")
        _flatten(path, child, f"{prefix}{name}.", state)


class _RefusedGlobal(Exception):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


@dataclass
class _Storage:
    """One storage of the file: its element type and count, then its bytes."""

    dtype: torch.dtype
    numel: int
    data: torch.Tensor | None = None


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


@dataclass(frozen=True)
class _StorageView:
    storage: _Storage
    offset: int


@dataclass(frozen=True)
class _TensorRecord:
    """A tensor the pickle asked for, made once the storage bytes have been read."""

    view: _StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def __setstate__(self, state: Any) -> None:
        raise TypeError("a tensor was given pickled state")

    def tensor(self) -> torch.Tensor:
        return self.view.storage.data.as_strided(
            self.size, self.stride, self.view.offset + self.offset
        )


class _LegacyParameter:
    """torch 0.2 pickled a Parameter as ``Parameter(data)`` plus (requires_grad,
    volatile, hooks) state; only the data is kept."""

    def __init__(self, data: Any):
        if not isinstance(data, _TensorRecord):
            raise TypeError(f"a Parameter of a {type(data).__name__}")
        self.data = data

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple):
            raise TypeError(f"a Parameter was pickled with a {type(state).__name__} state")


def _tensor_record(storage, storage_offset, size, stride, *_ignored) -> _TensorRecord:
    """Stands in for torch._utils._rebuild_tensor and _rebuild_tensor_v2."""
    if not isinstance(storage, _StorageView):
        raise TypeError(f"a tensor over a {type(storage).__name__}, not a storage")
    numbers = (storage_offset, *size, *stride)
    if not all(isinstance(n, int) for n in numbers) or len(size) != len(stride):
        raise TypeError(f"a tensor with size {size!r} and stride {stride!r}")
    return _TensorRecord(storage, storage_offset, tuple(size), tuple(stride))


def _parameter_record(data, *_ignored) -> _TensorRecord:
    """Stands in for torch._utils._rebuild_parameter: a parameter is its data."""
    if not isinstance(data, _TensorRecord):
        raise TypeError(f"a parameter of a {type(data).__name__}")
    return data


def _no_backend() -> None:
    """Stands in for torch 0.2's THNN backend, which every pickled module referred to."""


_ADMITTED_CALLABLES = {
    "torch._utils._rebuild_tensor": _tensor_record,
    "torch._utils._rebuild_tensor_v2": _tensor_record,
    "torch._utils._rebuild_parameter": _parameter_record,
    "torch.nn.parameter.Parameter": _LegacyParameter,
    "torch.nn.backends.thnn._get_thnn_function_backend": _no_backend,
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
}


@functools.cache
def _stand_in(class_path: str) -> type[PickledModule]:
    """One inert ``PickledModule`` subclass per admitted module class."""
    name = class_path.rpartition(".")[2]
    return type(name, (PickledModule,), {"class_path": class_path, "__module__": __name__})


class _NoCodeUnpickler(pickle.Unpickler):
    """Admits the globals above, answers torch's persistent ids, refuses the rest."""

    def __init__(self, stream, storages: dict[str, _Storage]):
        super().__init__(stream, encoding="latin1")
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        class_path = f"{_PY2_MODULE_NAMES.get(module, module)}.{name}"
        if class_path in _ADMITTED_CALLABLES:
            return _ADMITTED_CALLABLES[class_path]
        if class_path in _MODULE_CLASSES:
            return _stand_in(class_path)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise _RefusedGlobal(class_path)

    def persistent_load(self, pid: Any) -> Any:
        kind = pid[0] if isinstance(pid, tuple) and pid else None
        if kind == "module" and len(pid) == 4 and _is_stand_in(pid[1]):
            # ('module', class, source file, source): torch compared the source; we need not.
            return pid[1]
        if kind == "storage" and len(pid) == 6:
            return self._storage_view(*pid[1:])
        raise TypeError(f"unexpected persistent id {str(pid)[:80]}")

    def _storage_view(self, storage_type, key, _location, numel, view) -> _StorageView:
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise TypeError(f"storage {key!r} of {storage_type!r} with {numel!r} elements")
        storage = self._storages.setdefault(key, _Storage(storage_type.dtype, numel))
        if (storage.dtype, storage.numel) != (storage_type.dtype, numel):
            raise TypeError(f"storage {key!r} is declared twice, differently")
        if view is None:
            return _StorageView(storage, 0)
        # torch 0.2 could save a view into a larger storage: (view key, offset, size).
        _view_key, offset, size = view
        if not (offset >= 0 and offset + size <= numel):
            raise TypeError(f"a view of storage {key!r} out of its bounds")
        return _StorageView(storage, offset)


def _is_stand_in(candidate: Any) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, PickledModule)


def _read_storages(path: Path, stream, keys: Any, storages: dict[str, _Storage]) -> None:
    """Each storage's bytes: an int64 element count, then the elements, little-endian."""
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise ReleasedError(f"{path}: the list of storages does not match the pickle")
    for key in keys:
        storage = storages[key]
        count = stream.read(8)
        if len(count) < 8:
            raise ReleasedError(f"{path} ends early: storage {key} is missing (truncated?)")
        (numel,) = struct.unpack("<q", count)
        if numel != storage.numel:
            raise ReleasedError(
                f"{path}: storage {key} holds {numel} elements, not {storage.numel}"
            )
        buffer = bytearray(numel * storage.dtype.itemsize)
        got = stream.readinto(buffer)
        if got < len(buffer):
            raise ReleasedError(
                f"{path} ends early: storage {key} needs {len(buffer)} bytes, "
                f"the file has {got} left (truncated?)"
            )
        storage.data = (
            torch.frombuffer(buffer, dtype=storage.dtype)
            if buffer
            else torch.empty(0, dtype=storage.dtype)
        )


def _materialise(obj: Any, seen: set[int]) -> Any:
    """The unpickled object with every tensor record turned into a tensor."""
    if isinstance(obj, _TensorRecord):
        return obj.tensor()
    if isinstance(obj, _LegacyParameter):
        return obj.data.tensor()
    if isinstance(obj, PickledModule):
        if id(obj) not in seen:
            seen.add(id(obj))
            obj.state = _materialise(obj.__dict__.get("state", {}), seen)
        return obj
    if isinstance(obj, dict):
        return type(obj)((key, _materialise(value, seen)) for key, value in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(value, seen) for value in obj)
    return obj
