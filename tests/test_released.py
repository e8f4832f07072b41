"""The authors' released mask files: read without running code, mapped onto torchvision.

The real files cannot be fetched here, so files are written the way the authors'
``pack.py`` wrote them: masks as byte tensors keyed by the module's position in their
``shared`` network, heads as pickled ``nn.Linear`` modules, in torch's legacy format,
over random backbones. One writer below reproduces what torch 0.2 itself pickled.
"""

from __future__ import annotations

import copy
import copyreg
import hashlib
import os
import pickle
import pickletools
import re
import struct
from collections import OrderedDict

import pytest
import torch
import torch.nn.backends.thnn
import torch.nn.functional as F
import torchvision
from torch import nn

from piggyback.model.backbones import ArchSpec, build_backbone
from piggyback.model.checkpoints import backbone_state
from piggyback.model.masks import bake_masks, masked_parameters
from piggyback.released import importing
from piggyback.released.files import (
    ReleasedError,
    load_backbone_file,
    module_index_map,
    read_released,
    released_task_masks,
)
from piggyback.released.importing import weights_match_authors

ARCHS = ["vgg16", "vgg16_bn", "resnet50", "densenet121"]
# The authors' VGG head views the features as 25088 values and DenseNet's pools a 7x7
# map with a 7x7 kernel: both need 224-pixel inputs. ResNet's pooling adapts to any size.
INPUT_SIZE = {"vgg16": 224, "vgg16_bn": 224, "resnet50": 64, "densenet121": 224}
FEATURES = {"vgg16": 4096, "vgg16_bn": 4096, "resnet50": 2048, "densenet121": 1024}
VGG16_MASKED_INDICES = [1, 3, 6, 8, 11, 13, 15, 18, 20, 22, 25, 27, 29, 33, 36]


@pytest.fixture(scope="module")
def backbone():
    """Random backbones as build_backbone makes them, built once; never modify them."""
    built = {}

    def get(arch: str) -> nn.Module:
        if arch not in built:
            built[arch] = build_backbone(ArchSpec(arch), "random")[0].eval()
        return built[arch]

    return get


class View(nn.Module):
    """The authors' View(-1, 25088) module."""

    def __init__(self, *shape):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.view(*self.shape)


def authors_shared(arch: str, model: nn.Module) -> nn.Module:
    """The ``shared`` network of the authors' networks.py, written out here independently
    of the code under test, over the given torchvision model's own modules."""
    if arch in ("vgg16", "vgg16_bn"):
        fc6, fc7 = model.classifier[0], model.classifier[3]
        tail = [View(-1, 25088), fc6, nn.ReLU(True), nn.Dropout(), fc7, nn.ReLU(True), nn.Dropout()]
        return nn.Sequential(*model.features.children(), *tail)
    if arch == "resnet50":
        shared = nn.Sequential()
        for name, module in model.named_children():
            if name != "fc":
                shared.add_module(name, module)
        return shared
    return model.features


def authors_logits(arch: str, shared: nn.Module, head: nn.Module, x: torch.Tensor):
    """The authors' forward pass: shared, (DenseNet: relu, 7x7 average pool), view, head."""
    features = shared(x)
    if arch == "densenet121":
        features = F.avg_pool2d(F.relu(features), kernel_size=7)
    return head(features.view(features.size(0), -1))


def authors_masks(shared: nn.Module, ternary: bool, seed: int = 0) -> dict[int, torch.Tensor]:
    """Random masks as pack.py stored them: uint8 by module index, -1 cast to the byte 255."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for index, module in enumerate(shared.modules()):
        if isinstance(module, nn.Conv2d | nn.Linear):
            shape = module.weight.shape
            mask = torch.randint(3 if ternary else 2, shape, generator=generator, dtype=torch.uint8)
            mask[mask == 2] = 255
            masks[index] = mask
    return masks


def save_legacy(obj, path) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def authors_file(path, masks_by_dataset, heads_by_dataset) -> None:
    save_legacy({"dataset2masks": masks_by_dataset, "dataset2classifiers": heads_by_dataset}, path)


def small_authors_file(path) -> tuple[dict, dict]:
    generator = torch.Generator().manual_seed(1)
    masks = {
        dataset: {
            i: torch.randint(0, 2, (6, 4), generator=generator).to(torch.uint8) for i in (1, 3)
        }
        for dataset in ("flowers", "sketches")
    }
    heads = {"flowers": nn.Linear(4, 3), "sketches": nn.Linear(4, 5)}
    authors_file(path, masks, heads)
    return masks, heads


def test_vgg16_masked_indices_are_the_authors(backbone):
    vgg = backbone("vgg16")
    index_map = module_index_map("vgg16", vgg)
    assert list(index_map) == VGG16_MASKED_INDICES
    assert list(index_map.values()) == list(masked_parameters(vgg))
    assert index_map[33] == "classifier.0.weight" and index_map[36] == "classifier.3.weight"


@pytest.mark.parametrize("arch", ARCHS)
def test_every_conv_and_linear_gets_exactly_one_index(backbone, arch):
    model = backbone(arch)
    index_map = module_index_map(arch, model)
    weight_names = list(masked_parameters(model))
    assert sorted(index_map.values()) == sorted(weight_names)  # each layer once, none left
    walked = {
        index: module
        for index, module in enumerate(authors_shared(arch, model).modules())
        if isinstance(module, nn.Conv2d | nn.Linear)
    }
    assert walked.keys() == index_map.keys()
    for index, module in walked.items():
        assert model.get_parameter(index_map[index]) is module.weight  # same tensor, same shape


@pytest.mark.parametrize(
    ("arch", "kind"), [(arch, "binary") for arch in ARCHS] + [("resnet50", "ternary")]
)
def test_released_masks_give_the_logits_of_the_authors_evaluation(backbone, tmp_path, arch, kind):
    pristine = backbone(arch)
    x = torch.randn(
        2, 3, INPUT_SIZE[arch], INPUT_SIZE[arch], generator=torch.Generator().manual_seed(0)
    )
    torch.manual_seed(0)
    head = nn.Linear(FEATURES[arch], 7)
    with torch.no_grad():
        unmasked_logits = head(pristine(x))

    # The authors' evaluation, by hand: zero where the mask is 0, negate where it is -1.
    shared = authors_shared(arch, copy.deepcopy(pristine)).eval()
    masks = authors_masks(shared, ternary=kind == "ternary")
    with torch.no_grad():
        for index, module in enumerate(shared.modules()):
            if index in masks:
                module.weight[masks[index] == 0] = 0
                module.weight[masks[index] == 255] *= -1
        their_logits = authors_logits(arch, shared, head, x)
    del shared

    path = tmp_path / f"{arch}_{kind}.pt"
    authors_file(path, {"flowers": masks}, {"flowers": head})
    del masks
    task = read_released(path).tasks["flowers"]
    ours = copy.deepcopy(pristine)
    bake_masks(ours, released_task_masks(task.masks, module_index_map(arch, ours), ours))
    with torch.no_grad():
        our_logits = F.linear(ours(x), task.head["weight"], task.head["bias"])
    assert torch.allclose(our_logits, their_logits, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(our_logits, unmasked_logits, rtol=1e-2, atol=1e-3)


def test_byte_255_decodes_to_minus_one_and_negates_the_weight(backbone):
    model = copy.deepcopy(backbone("resnet50"))
    index_map = module_index_map("resnet50", model)
    masks = {
        i: torch.ones(model.get_parameter(n).shape, dtype=torch.uint8) for i, n in index_map.items()
    }
    masks[1][0, 0, 0, :3] = torch.tensor([255, 0, 1], dtype=torch.uint8)
    decoded = released_task_masks(masks, index_map, model)
    assert decoded["conv1.weight"][0, 0, 0, :3].tolist() == [-1.0, 0.0, 1.0]
    before = model.conv1.weight[0, 0, 0, :3].clone()
    bake_masks(model, decoded)
    assert model.conv1.weight[0, 0, 0, :3].tolist() == [-before[0].item(), 0.0, before[2].item()]


class Payload:
    """Unpickling this runs a shell command, as a malicious file would."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("where", ["as a head", "inside a head's state"])
def test_a_planted_global_is_refused_and_never_run(tmp_path, where):
    marker = tmp_path / "MARKER"
    payload = Payload(f"touch {marker}")
    head = nn.Linear(4, 3)
    if where == "as a head":
        head = payload
    else:
        head.note = payload
    path = tmp_path / "planted.pt"
    authors_file(path, {"flowers": {1: torch.ones(3, 4, dtype=torch.uint8)}}, {"flowers": head})

    with pytest.raises(ReleasedError) as refused:
        read_released(path)
    message = str(refused.value)
    assert f"refused global {os.system.__module__}.system in {path}" in message
    assert "\n" not in message
    assert not marker.exists()


def test_a_file_for_another_arch_is_refused_naming_the_index(backbone):
    resnet = backbone("resnet50")
    resnet_masks = authors_masks(authors_shared("resnet50", resnet), ternary=False)
    vgg = backbone("vgg16")
    # Index 7 is ResNet-50's layer1.0.conv1; in VGG-16 it is a ReLU.
    with pytest.raises(ReleasedError, match=r"module index 7 does not fall on a conv or linear"):
        released_task_masks(resnet_masks, module_index_map("vgg16", vgg), vgg)
    with pytest.raises(ReleasedError, match=r"15 conv/linear layers; this one has 53"):
        module_index_map("vgg16", resnet)
    with pytest.raises(ReleasedError, match=r"lacks BatchNorm: not a vgg16_bn"):
        module_index_map("vgg16_bn", vgg)


def vgg16_ones(vgg) -> tuple[dict[int, torch.Tensor], dict[int, str]]:
    index_map = module_index_map("vgg16", vgg)
    masks = {
        i: torch.ones(vgg.get_parameter(n).shape, dtype=torch.uint8) for i, n in index_map.items()
    }
    return masks, index_map


def test_a_mask_of_the_wrong_shape_is_refused_naming_both_shapes(backbone):
    vgg = backbone("vgg16")
    masks, index_map = vgg16_ones(vgg)
    masks[3] = torch.ones(64, 64, 3, 2, dtype=torch.uint8)
    with pytest.raises(ReleasedError) as refused:
        released_task_masks(masks, index_map, vgg)
    assert str(refused.value) == (
        "mask at module index 3 has shape (64, 64, 3, 2), "
        "but features.2.weight has shape (64, 64, 3, 3)"
    )


def test_a_missing_layer_and_a_stray_byte_are_refused(backbone):
    vgg = backbone("vgg16")
    masks, index_map = vgg16_ones(vgg)
    del masks[36]
    with pytest.raises(ReleasedError, match=r"no mask for 1 layers: 36 \(classifier\.3\.weight\)"):
        released_task_masks(masks, index_map, vgg)
    masks, _ = vgg16_ones(vgg)
    masks[1][0, 0, 0, 0] = 7
    with pytest.raises(ReleasedError, match=r"index 1 \(features\.0\.weight\) holds the byte 7"):
        released_task_masks(masks, index_map, vgg)


def test_every_dataset_reads_back_as_written(tmp_path):
    masks, heads = small_authors_file(tmp_path / "small.pt")
    file = read_released(tmp_path / "small.pt")
    assert file.tasks.keys() == {"flowers", "sketches"}
    for dataset, task in file.tasks.items():
        assert task.masks.keys() == masks[dataset].keys()
        assert all(torch.equal(task.masks[i], masks[dataset][i]) for i in task.masks)
        assert torch.equal(task.head["weight"], heads[dataset].weight.detach())
        assert torch.equal(task.head["bias"], heads[dataset].bias.detach())


@pytest.mark.parametrize("cut", ["in the header", "in the pickle", "in the storages"])
def test_a_truncated_file_is_refused(tmp_path, cut):
    small_authors_file(tmp_path / "small.pt")
    data = (tmp_path / "small.pt").read_bytes()
    keep = {"in the header": 12, "in the pickle": len(data) // 3, "in the storages": len(data) - 1}
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: keep[cut]])
    with pytest.raises(ReleasedError) as refused:
        read_released(path)
    message = str(refused.value)
    assert str(path) in message and "truncated" in message and "\n" not in message


NOT_THE_AUTHORS = {
    "noise": (
        lambda path: path.write_bytes(b"\x00\x01 not a pickle"),
        "is not a readable legacy torch file",
    ),
    "plain pickle": (
        lambda path: path.write_bytes(pickle.dumps({"dataset2masks": {}})),
        "is not a legacy torch file",
    ),
    "zip format": (lambda path: torch.save({}, path), "is a zip archive"),
    "other dict": (lambda path: save_legacy({"masks": {}}, path), "not one of the authors'"),
    "named masks": (
        lambda path: authors_file(
            path, {"flowers": {"conv1": torch.ones(2, dtype=torch.uint8)}}, {"flowers": None}
        ),
        "flowers has a mask keyed 'conv1', not a module index",
    ),
    "float masks": (
        lambda path: authors_file(path, {"flowers": {1: torch.ones(2)}}, {"flowers": None}),
        "mask at module index 1 is torch.float32, not a ByteTensor",
    ),
    "conv head": (
        lambda path: authors_file(path, {"flowers": {}}, {"flowers": nn.Conv2d(2, 2, 1)}),
        "the classifier of flowers is a torch.nn.modules.conv.Conv2d, not nn.Linear",
    ),
}


@pytest.mark.parametrize("case", NOT_THE_AUTHORS)
def test_files_that_are_not_the_authors_are_refused(tmp_path, case):
    write, expected = NOT_THE_AUTHORS[case]
    path = tmp_path / "file.pt"
    write(path)
    with pytest.raises(ReleasedError) as refused:
        read_released(path)
    message = str(refused.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_a_whole_pickled_model_reads_back_as_its_state_dict(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    save_legacy(model, tmp_path / "resnet50_backbone.pt")
    state = load_backbone_file(tmp_path / "resnet50_backbone.pt")
    expected = model.state_dict()
    assert list(state) == list(expected)
    assert all(
        state[k].dtype == expected[k].dtype and torch.equal(state[k], expected[k]) for k in state
    )


class Thnn:
    """torch 0.2's THNN backend object, which every module held as ``_backend``."""


THNN = Thnn()
LEGACY_STORAGE_CLASSES = {torch.uint8: torch.ByteStorage, torch.float32: torch.FloatStorage}


class Storage02:
    def __init__(self, key: str, data: torch.Tensor):
        self.key, self.data = key, data


class Torch02Pickler(pickle.Pickler):
    """Pickles what torch 0.2's torch.save pickled (its serialization.py, tensor.py,
    autograd/variable.py and nn/backends/thnn.py): module classes as ('module', class,
    source file, source) ids; tensors as torch._utils._rebuild_tensor over ('storage',
    ...) ids of GPU storages; a Parameter as Parameter(data) with (requires_grad,
    volatile, hooks) state; a module as its __dict__, _backend included. Dense layers'
    children get torchvision 0.1.9's names ('norm.1')."""

    def __init__(self, stream):
        super().__init__(stream, protocol=2)
        self.storages: dict[str, Storage02] = {}
        self.classes_seen: set[type] = set()

    def persistent_id(self, obj):
        if isinstance(obj, type) and issubclass(obj, nn.Module) and obj not in self.classes_seen:
            self.classes_seen.add(obj)
            return ("module", obj, f"/usr/lib/{obj.__module__}.py", f"class {obj.__name__}: ...")
        if isinstance(obj, Storage02):
            storage_class = LEGACY_STORAGE_CLASSES[obj.data.dtype]
            return ("storage", storage_class, obj.key, "cuda:0", obj.data.numel(), None)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, nn.Parameter):
            return nn.Parameter, (obj.detach(),), (obj.requires_grad, False, None)
        if isinstance(obj, torch.Tensor):
            data = obj.detach().contiguous()
            storage = Storage02(str(len(self.storages)), data.reshape(-1))
            self.storages[storage.key] = storage
            return torch._utils._rebuild_tensor, (storage, 0, tuple(data.shape), data.stride())
        if isinstance(obj, nn.Module):
            return copyreg.__newobj__, (type(obj),), torch02_module_state(obj)
        if obj is THNN:
            return torch.nn.backends.thnn._get_thnn_function_backend, ()
        return NotImplemented


def torch02_module_state(module: nn.Module) -> dict:
    children = OrderedDict(module._modules)
    if isinstance(module, torchvision.models.densenet._DenseLayer):
        children = OrderedDict((re.sub(r"([12])$", r".\1", k), v) for k, v in children.items())
    buffers = {k: v for k, v in module._buffers.items() if k != "num_batches_tracked"}
    state = {
        "_backend": THNN,
        "_parameters": OrderedDict(module._parameters),
        "_buffers": OrderedDict(buffers),
        "_backward_hooks": OrderedDict(),
        "_forward_hooks": OrderedDict(),
        "_forward_pre_hooks": OrderedDict(),
        "_modules": children,
        "training": module.training,
    }
    state.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
    return state


def save_like_torch02(obj, path) -> set[str]:
    """Write ``obj`` as torch 0.2 did; returns the globals the pickle names."""
    with open(path, "wb") as stream:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, stream, protocol=2)
        pickler = Torch02Pickler(stream)
        start = stream.tell()
        pickler.dump(obj)
        keys = sorted(pickler.storages)
        pickle.dump(keys, stream, protocol=2)
        for key in keys:
            data = pickler.storages[key].data
            stream.write(struct.pack("<q", data.numel()) + data.numpy().tobytes())
    with open(path, "rb") as stream:
        stream.seek(start)
        return {str(arg) for op, arg, _ in pickletools.genops(stream) if op.name == "GLOBAL"}


def test_a_torch_02_mask_file_reads_the_same(tmp_path):
    masks, heads = {1: torch.tensor([[0, 1], [1, 255]], dtype=torch.uint8)}, nn.Linear(2, 3)
    path = tmp_path / "torch02.pt"
    named = save_like_torch02(
        {"dataset2masks": {"flowers": masks}, "dataset2classifiers": {"flowers": heads}}, path
    )
    assert {
        "torch._utils _rebuild_tensor",
        "torch.nn.parameter Parameter",
        "torch.nn.backends.thnn _get_thnn_function_backend",
        "torch.nn.modules.linear Linear",
    } <= named
    task = read_released(path).tasks["flowers"]
    assert torch.equal(task.masks[1], masks[1])
    assert torch.equal(task.head["weight"], heads.weight.detach())
    assert torch.equal(task.head["bias"], heads.bias.detach())


def test_a_torch_02_densenet_backbone_loads_as_weights(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.densenet121().eval()
    save_like_torch02(model, tmp_path / "densenet121_backbone.pt")
    assert b"norm.1" in (tmp_path / "densenet121_backbone.pt").read_bytes()

    state = load_backbone_file(tmp_path / "densenet121_backbone.pt")
    expected = {
        k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)
    torch.save(state, tmp_path / "densenet121_weights.pth")
    loaded, _ = build_backbone(ArchSpec("densenet121"), tmp_path / "densenet121_weights.pth")
    loaded_state = backbone_state(loaded)  # num_batches_tracked filled in by torch
    kept = {k: v for k, v in expected.items() if not k.startswith("classifier.")}
    assert all(torch.equal(loaded_state[k], v) for k, v in kept.items())


def test_which_weights_are_known_to_match_the_authors(tmp_path, monkeypatch):
    assert weights_match_authors("vgg16", "IMAGENET1K_V1")
    assert weights_match_authors("vgg16_bn", "IMAGENET1K_V1")
    assert weights_match_authors("resnet50", "IMAGENET1K_V1")
    assert not weights_match_authors("resnet50", "IMAGENET1K_V2")
    assert not weights_match_authors("densenet121", "IMAGENET1K_V1")
    assert not weights_match_authors("resnet50", "random")
    weights = tmp_path / "resnet50.IMAGENET1K_V1.pth"
    weights.write_bytes(b"pretend weights")
    assert not weights_match_authors("resnet50", weights)
    prefix = hashlib.sha256(b"pretend weights").hexdigest()[:8]
    entry = importing.AUTHORS_WEIGHTS["resnet50"]
    changed = importing.AuthorsWeights(entry.builder, entry.authors_file, (f"r-{prefix}.pth",), "")
    monkeypatch.setitem(importing.AUTHORS_WEIGHTS, "resnet50", changed)
    assert weights_match_authors("resnet50", weights)
