"""Backbones from torchvision by name, with their ImageNet head swapped for a task head.

A head is the model's last ``nn.Linear`` or, in a model without one (SqueezeNet), its
last 1x1 convolution. The task's head runs where torchvision put the old one, through a
:class:`HeadSlot`, so whatever the model does after its head (SqueezeNet's ReLU and
pooling) still applies and a task's model is torchvision's own with ``num_classes`` set.

Weights come from a torchvision enum name (``IMAGENET1K_V1``), a local file, or
``random`` (tests). The backbone's identity is the sha256 of its tensors, so a
re-serialised file with the same numbers keeps the same identity while a different
release of the weights does not.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

RANDOM_WEIGHTS = "random"
AUXILIARY_HEADS = ("aux1", "aux2", "AuxLogits")  # googlenet's, inception_v3's


class BackboneError(ValueError):
    """A backbone cannot be built as asked; the message says what to change."""


@dataclass(frozen=True)
class ArchSpec:
    """One arch registry entry: the torchvision builder, its weights and its head."""

    builder: str
    weights: str = "IMAGENET1K_V1"
    head: str | None = None


class HeadSlot(nn.Module):
    """Where the model's own head was: it hands its input to the task's head (identity
    while none is bound). The head is held outside the module tree, so the backbone's
    state dict, masks and digest never see it: the :class:`TaskModel` registers it."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.conv = isinstance(head, nn.Conv2d)
        self.features = head.in_channels if self.conv else head.in_features
        self.__dict__["bound"] = None

    def new_head(self, classes: int) -> nn.Module:
        """A freshly initialised head of the old one's kind, for ``classes`` classes."""
        if self.conv:
            return reset_head(nn.Conv2d(self.features, classes, kernel_size=1))
        return nn.Linear(self.features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.bound is None else self.bound(x)


class TaskModel(nn.Module):
    """A backbone and one task's head, which runs in the backbone's head slot. Several
    task models may share one backbone (evaluation, serving): each binds its own head to
    the slot when it runs."""

    def __init__(self, backbone: nn.Module, head: nn.Module, arch: str, head_name: str):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.arch = arch
        self.head_name = head_name  # where torchvision keeps the head, for export
        self.__dict__["slot"] = backbone.get_submodule(head_name)
        self.slot.__dict__["bound"] = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.slot.bound is not self.head:
            self.slot.__dict__["bound"] = self.head
        return self.backbone(x)


def new_head(backbone: nn.Module, classes: int) -> nn.Module:
    """A new head for ``classes`` classes in the slot ``strip_head`` left in ``backbone``."""
    return backbone.get_submodule(backbone.head_name).new_head(classes)


def reset_head(head: nn.Module) -> nn.Module:
    """A task head's fresh initialisation: PyTorch's default for a linear head (the
    authors' ``nn.Linear``), torchvision's for a 1x1 convolution (SqueezeNet's final
    conv: normal, std 0.01, no bias). The default's larger logits, through the ReLU
    after SqueezeNet's head, left whole runs with every logit dead at chance."""
    if isinstance(head, nn.Conv2d):
        nn.init.normal_(head.weight, mean=0.0, std=0.01)
        nn.init.zeros_(head.bias)
    else:
        head.reset_parameters()
    return head


def head_classes(head: nn.Module) -> int:
    return head.out_channels if isinstance(head, nn.Conv2d) else head.out_features


def _is_head(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (
        isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
    )


def find_head(model: nn.Module, head: str | None = None) -> tuple[str, nn.Module]:
    """The classification head: the named module, or the model's last ``nn.Linear``, or
    in a model without one its last 1x1 convolution (SqueezeNet's ``classifier.1``)."""
    if head is not None:
        try:
            module = model.get_submodule(head)
        except AttributeError as error:
            raise BackboneError(f"head {head!r} is not a module of this model") from error
        if not _is_head(module):
            raise BackboneError(
                f"head {head!r} is a {type(module).__name__}, not nn.Linear or a 1x1 nn.Conv2d"
            )
        return head, module
    modules = list(model.named_modules())
    linears = [(n, m) for n, m in modules if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    pointwise = [(n, m) for n, m in modules if _is_head(m)]
    if not pointwise:
        raise BackboneError(
            f"{type(model).__name__} has no classification head (an nn.Linear or a 1x1 "
            "nn.Conv2d); name the head module with `head:` in its arch entry, or choose "
            "another arch"
        )
    return pointwise[-1]


def build_backbone(
    spec: ArchSpec,
    weights: str | Path | None = None,
    weights_dir: Path | None = None,
) -> tuple[nn.Module, int]:
    """The torchvision model with its head replaced by a :class:`HeadSlot`, and the
    width of the features the head takes (``backbone.head_name`` says where it was).

    ``weights`` overrides ``spec.weights``: an enum name, a file path, or ``random``.
    """
    backbone, features, _ = _split_model(spec, weights, weights_dir)
    return backbone, features


def build_task_model(
    spec: ArchSpec,
    num_classes: int,
    weights: str | Path | None = None,
    weights_dir: Path | None = None,
    arch: str | None = None,
) -> TaskModel:
    """The backbone and a new head for ``num_classes``."""
    backbone, _ = build_backbone(spec, weights, weights_dir)
    head = new_head(backbone, num_classes)
    return TaskModel(backbone, head, arch or spec.builder, backbone.head_name)


def build_source_model(
    spec: ArchSpec,
    weights: str | Path | None = None,
    weights_dir: Path | None = None,
    arch: str | None = None,
) -> TaskModel:
    """The backbone with the head it was trained with (ImageNet's, or the pretrain
    stage's): the source task, for methods that go on training it (PackNet's start)."""
    backbone, _, head = _split_model(spec, weights, weights_dir)
    if head is None:
        raise BackboneError(
            f"weights {weights or spec.weights!r} hold no head ({backbone.head_name}.weight "
            "and .bias) to go on training the source task with"
        )
    return TaskModel(backbone, head, arch or spec.builder, backbone.head_name)


def _split_model(spec: ArchSpec, weights, weights_dir) -> tuple[nn.Module, int, nn.Module | None]:
    """The model with its head replaced by a :class:`HeadSlot`, the width of the
    features the head takes, and the head, loaded from the weights (None if they hold
    none)."""
    choice = str(weights if weights is not None else spec.weights)
    if choice == "DEFAULT":
        raise BackboneError(
            "weights 'DEFAULT' change meaning between torchvision releases; "
            "name the weights explicitly, e.g. IMAGENET1K_V1"
        )
    state = (
        None if choice == RANDOM_WEIGHTS else _load_state_dict(spec.builder, choice, weights_dir)
    )
    # With weights to load, build on the meta device: initialising VGG-16's 138M
    # parameters only to overwrite them costs seconds per job.
    model = _construct(spec.builder, meta=state is not None)
    head_name, head, dropped = strip_head(model, spec.head)
    if state is not None:
        prefix = head_name + "."
        head_state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        metadata = getattr(state, "_metadata", None)  # module versions (MNASNet reads its)
        dropped_prefixes = (prefix, *dropped)
        state = OrderedDict((k, v) for k, v in state.items() if not k.startswith(dropped_prefixes))
        state._metadata = metadata
        try:
            model.load_state_dict(state, assign=True)
        except RuntimeError as error:
            first_lines = "; ".join(str(error).splitlines()[:3])
            raise BackboneError(
                f"weights {choice!r} do not fit {spec.builder}: {first_lines}"
            ) from error
        left_on_meta = [
            n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta
        ]
        if left_on_meta:
            raise BackboneError(
                f"{spec.builder} has tensors that are not in its state dict "
                f"({left_on_meta[:3]}); this builder cannot be loaded from weights"
            )
        slot = model.get_submodule(head_name)
        return model, slot.features, _loaded_head(head_state, slot)
    return model, model.get_submodule(head_name).features, head


def strip_head(model: nn.Module, head: str | None = None) -> tuple[str, nn.Module, tuple[str, ...]]:
    """Replace the classification head by a :class:`HeadSlot` (``model.head_name`` says
    where it was) and drop the auxiliary ImageNet heads that GoogLeNet and Inception-v3 return
    in training mode; returns the head's name, the head, and the dropped modules'
    state-dict prefixes."""
    head_name, module = find_head(model, head)
    _replace_module(model, head_name, HeadSlot(module))
    model.head_name = head_name
    dropped = ()
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        dropped = tuple(name for name in AUXILIARY_HEADS if getattr(model, name, None) is not None)
        for name in dropped:
            setattr(model, name, None)
    return head_name, module, tuple(f"{name}." for name in dropped)


def _loaded_head(state: dict[str, torch.Tensor], slot: HeadSlot) -> nn.Module | None:
    """The weights file's own head, whatever its class count, if it holds one."""
    if set(state) != {"weight", "bias"}:
        return None
    head = slot.new_head(state["weight"].shape[0])
    if state["weight"].shape != head.weight.shape:
        return None
    head.load_state_dict(state)
    return head


def torchvision_state(
    backbone: dict[str, torch.Tensor], head: dict[str, torch.Tensor], head_name: str
):
    """A backbone and head as one torchvision-style state dict (the head under its
    original name), loadable by ``build_backbone`` as a weights file."""
    return {**backbone, **{f"{head_name}.{k}": v for k, v in head.items()}}


def _construct(builder: str, meta: bool) -> nn.Module:
    try:
        if meta:
            with torch.device("meta"):
                return torchvision.models.get_model(builder, weights=None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # so that 'random' names one reproducible backbone
            return torchvision.models.get_model(builder, weights=None)
    except ValueError as error:
        raise BackboneError(
            f"unknown torchvision model {builder!r}; "
            "see torchvision.models.list_models() for the names"
        ) from error


def weights_file_name(builder: str, enum_name: str) -> str:
    """The file torchvision publishes for ``builder``'s ``enum_name`` weights."""
    return Path(_weights_enum(builder, enum_name).url).name


def weights_url(builder: str, enum_name: str) -> str:
    return _weights_enum(builder, enum_name).url


def _weights_enum(builder: str, enum_name: str):
    try:
        enum = torchvision.models.get_model_weights(builder)
    except (ValueError, KeyError) as error:
        raise BackboneError(f"torchvision has no weights for {builder!r}") from error
    try:
        return enum[enum_name]
    except KeyError as error:
        names = ", ".join(w.name for w in enum)
        raise BackboneError(
            f"{builder} has no weights named {enum_name!r}; choose one of: {names}, "
            f"a file path, or {RANDOM_WEIGHTS!r}"
        ) from error


def _load_state_dict(builder: str, choice: str, weights_dir: Path | None) -> dict:
    path = Path(choice)
    if path.suffix in {".pth", ".pt", ".bin", ".safetensors"} or path.exists():
        if not path.is_file():
            raise BackboneError(f"weights file {path} does not exist")
        return load_weights_file(path)
    enum = _weights_enum(builder, choice)
    local = (weights_dir / Path(enum.url).name) if weights_dir else None
    if local is not None and local.is_file():
        return load_weights_file(local)
    return torch.hub.load_state_dict_from_url(
        enum.url,
        model_dir=str(weights_dir) if weights_dir else None,
        check_hash=True,
        weights_only=True,
        map_location="cpu",
    )


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.safetensors`` file, never unpickling objects."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as error:
            raise BackboneError(
                f"weights file {path} is not a readable safetensors file: {error}"
            ) from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BackboneError(f"cannot read weights file {path}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneError(f"weights file {path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
