"""torchvision's classification builders, masked whole: every one's coverage (built on the
meta device, so that no weight is allocated or initialised), and one small member per
family trained a step with Piggyback and with PackNet, packed, and evaluated from the
pack to the live masked model's output."""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import convnext, densenet, maxvit, resnet, vision_transformer
from torchvision.models import swin_transformer as swin
from torchvision.models.convnext import CNBlockConfig

from piggyback.methods.checkpoints import task_checkpoint
from piggyback.methods.registry import Hyperparameters, load_method
from piggyback.methods.run import SpeedOptions, TaskRun
from piggyback.model.backbones import TaskModel, new_head, strip_head
from piggyback.model.checkpoints import TaskCheckpoint
from piggyback.model.masks import mask_coverage
from piggyback.packs.packed_file import read_pack
from piggyback.stages.packing import pack_checkpoints
from piggyback.training.loop import TrainStep, prepare_training

CPU = torch.device("cpu")
CLASSES = 3


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter a module registers goes to the meta device at once (its buffers
    stay real): the builders' own init then costs nothing. RegNet's builder computes
    its widths with tensors, so a meta default device cannot build it."""
    register = nn.Module.register_parameter

    def on_meta(module, name, parameter):
        if parameter is not None and not parameter.is_meta:
            parameter = nn.Parameter(parameter.to("meta"), parameter.requires_grad)
        register(module, name, parameter)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def build(builder: Callable[[], nn.Module]) -> nn.Module:
    with warnings.catch_warnings(), parameters_on_meta():
        warnings.simplefilter("ignore")  # googlenet's and inception's init notices
        return builder()


def materialised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights for the meta parameters, uniform within 1/sqrt(fan-in) (norm
    scales 1, biases 0): seconds cheaper than the builders' truncated normals."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        for name, parameter in module._parameters.items():
            if parameter is None or not parameter.is_meta:
                continue
            values = torch.empty(parameter.shape)
            if parameter.ndim >= 2:
                bound = 1 / math.sqrt(parameter[0].numel())
                values.uniform_(-bound, bound, generator=generator)
            else:
                values.fill_(0.0 if "bias" in name else 1.0)
            module._parameters[name] = nn.Parameter(values)
    return model


@pytest.mark.parametrize("builder", torchvision.models.list_models(module=torchvision.models))
def test_every_classifier_is_masked_or_refused(builder):
    model = build(lambda: torchvision.models.get_model(builder, weights=None))
    strip_head(model)
    coverage = mask_coverage(model)
    assert coverage.matrix_share >= 0.99, coverage.summary()
    assert coverage.total == sum(p.numel() for p in model.parameters())  # each counted once


def _builder(name: str, **kwargs) -> Callable[[], nn.Module]:
    return lambda: torchvision.models.get_model(name, weights=None, **kwargs)


def _swin(v2: bool) -> Callable[[], nn.Module]:
    blocks = {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2}
    return lambda: swin.SwinTransformer(
        [4, 4], 16, [2, 2], [1, 2], [4, 4], stochastic_depth_prob=0.1, **(blocks if v2 else {})
    )


# One member per family, at about the smallest input it accepts: the builder itself where
# it is small, else the family's own classes at a small width and depth (a step's cost
# scales with the parameter count, and what is tested is the module types). VGG's and
# Inception-v3's layers are ResNet's and GoogLeNet's kinds, at many times the cost; their
# coverage is checked above, and full-size ViT-B/16 below.
FAMILIES = {
    "resnet": (lambda: resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1]), 32),
    "densenet": (lambda: densenet.DenseNet(8, (2, 2, 2, 2), 16, 2), 32),
    "mobilenet_v3_small": (_builder("mobilenet_v3_small"), 32),
    "efficientnet_b0": (_builder("efficientnet_b0"), 32),
    "regnet_x_400mf": (_builder("regnet_x_400mf"), 32),
    "shufflenet_v2_x0_5": (_builder("shufflenet_v2_x0_5"), 32),
    "mnasnet0_5": (_builder("mnasnet0_5"), 32),
    "googlenet": (_builder("googlenet"), 32),
    "squeezenet1_1": (_builder("squeezenet1_1"), 32),  # a 1x1 convolution for a head
    "convnext": (
        lambda: convnext.ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)]),
        32,
    ),
    "swin": (_swin(v2=False), 32),
    "swin_v2": (_swin(v2=True), 32),
    "vit": (lambda: vision_transformer.VisionTransformer(32, 16, 2, 2, 32, 64), 32),
    "maxvit": (
        lambda: maxvit.MaxVit((32, 32), 16, 2, [16, 32], [1, 1], 8, 0.1),
        32,
    ),
}


@pytest.fixture(autouse=True)
def one_thread():
    """The steps' tensors are small: with two threads on two shared cores, each op waits
    for a preempted peer (ten times slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_member_per_family_trains_packs_and_evaluates(family, tmp_path):
    builder, size = FAMILIES[family]
    _trains_packs_and_evaluates(family, builder, size, ("piggyback", "packnet"), tmp_path)


def test_vit_b_16_packs_and_evaluates_to_the_live_masked_model(tmp_path):
    """The issue's case at full width (built for 32 px): Piggyback's step, pack and
    evaluation; PackNet walks the same masked set, at the small ViT's width above."""
    builder = _builder("vit_b_16", image_size=32)
    _trains_packs_and_evaluates("vit_b_16", builder, 32, ("piggyback",), tmp_path)


def _trains_packs_and_evaluates(arch, builder, size, methods, tmp_path) -> None:
    """One step of each method on random weights, packed; evaluating from the pack gives
    the live model's output, bit for bit."""
    model = materialised(build(builder))
    head_name, _, _ = strip_head(model)
    pristine = TaskModel(model, new_head(model, CLASSES), arch, head_name)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=generator)
    labels = torch.tensor([0, 2])
    for method in methods:
        previous = _packnet_start(pristine) if method == "packnet" else None
        trained, step_method = _one_step(pristine, method, previous, images, labels)
        assert step_method.coverage.matrix_share >= 0.99, step_method.coverage.summary()
        checkpoint = _checkpoint(trained, step_method, arch)
        out = tmp_path / f"{method}.safetensors"
        pack_checkpoints([checkpoint], [method], out)
        packed = read_pack(out)
        assert packed.manifest["coverage"] == step_method.coverage.as_dict()
        evaluated = copy.deepcopy(pristine)
        load_method(method).apply(evaluated.backbone, packed, "task")
        evaluated.head.load_state_dict(packed.head("task"))
        with torch.no_grad():
            live, from_pack = trained.eval()(images), evaluated.eval()(images)
        assert torch.isfinite(live).all(), f"{arch} {method}"
        assert torch.equal(from_pack, live), f"{arch} {method}"


def _one_step(pristine: TaskModel, method: str, previous, images, labels):
    """The pipeline's own step, once, on a copy of ``pristine``; Piggyback's masks
    start uniform, so that the pack holds zeros to apply."""
    model = copy.deepcopy(pristine)
    knobs = {"mask_init": "uniform"} if method == "piggyback" else {}
    hp = Hyperparameters.for_method(method, batch_size=2, **knobs)
    last = previous is not None  # PackNet's only task: not pruned
    run = TaskRun(model.arch, method, "task", ["a", "b", "c"], 0, hp, "task", previous, last)
    speed = SpeedOptions().resolve(CPU)
    trained, forward = prepare_training(model, run, CPU, speed)
    phase = trained.phases(run)[0]
    step = TrainStep.for_phase(model, forward, trained, phase, hp, speed, CPU)
    trained.train_mode(model)
    loss, _ = step(images, labels)
    assert torch.isfinite(loss)
    return model, trained


def _packnet_start(pristine: TaskModel) -> TaskCheckpoint:
    """PackNet's start in memory: the backbone pruned by magnitude, as a checkpoint."""
    model = copy.deepcopy(pristine)
    hp = Hyperparameters.for_method("packnet")
    run = TaskRun(model.arch, "packnet", None, [], 0, hp, role="start")
    start = load_method("packnet", hp)
    start.prepare(model, run)
    for phase in start.phases(run):
        start.begin_phase(model, phase)
    return _checkpoint(model, start, model.arch, role="start", dataset=None)


def _checkpoint(model: TaskModel, method, arch: str, **fields) -> TaskCheckpoint:
    task = {"role": "task", "dataset": "task", "epoch": 1, "test_top1_error": 0.0}
    return task_checkpoint(
        {
            "arch": arch,
            "method": method.name,
            "classes": ["a", "b", "c"],
            "seed": 0,
            # as training records them (PackNet's fraction)
            "hyperparameters": method.hp.as_dict(),
            "backbone_sha256": "zoo",
            **task,
            **fields,
            **method.checkpoint_meta(),
            **{k: _detached(v) for k, v in method.trained_state(model).items()},
        }
    )


def _detached(value):
    if isinstance(value, dict):
        return {k: v.detach().clone() for k, v in value.items()}
    return value
