import pytest
import torch
from torch import nn

from piggyback.core.backbones import ArchSpec, build_backbone
from piggyback.core.masks import (
    MaskSpec,
    WeightMask,
    add_masks,
    bake_masks,
    masked_weights,
    remove_masks,
    threshold_mask,
)

PAPER_ARCHS = ["vgg16", "vgg16_bn", "resnet50", "densenet121"]


@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_initial_masks_give_the_plain_models_output(arch):
    plain, _ = build_backbone(ArchSpec(arch), weights="random")
    masked, _ = build_backbone(ArchSpec(arch), weights="random")
    add_masks(masked, MaskSpec())
    plain.eval(), masked.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(plain(x), masked(x))


def test_every_conv_and_linear_is_masked_and_the_imagenet_head_is_gone():
    backbone, features = build_backbone(ArchSpec("vgg16"), weights="random")
    masks = add_masks(backbone, MaskSpec())
    assert features == 4096
    assert len(masks) == 13 + 2  # 13 convs, fc6, fc7; fc8 dropped
    assert "classifier.3.weight" in masks and "classifier.6.weight" not in masks
    for name, _ in backbone.named_parameters():
        assert not name.endswith("bias.mask_real")


@pytest.mark.parametrize("layer", [nn.Linear(5, 3), nn.Conv2d(2, 4, 3)])
def test_mask_gradient_is_weight_gradient_times_weight(layer):
    torch.manual_seed(0)
    plain = layer
    masked = type(layer)(*_shape_args(layer))
    masked.load_state_dict(plain.state_dict())
    add_masks(masked, MaskSpec())
    x = torch.randn(4, *(_input_shape(layer)))
    plain(x).square().sum().backward()
    masked(x).square().sum().backward()
    mask = masked_weights(masked)["weight"]
    assert torch.equal(mask.mask_real.grad, plain.weight.grad * plain.weight.detach())


def test_binary_threshold_boundary():
    values = torch.tensor([5e-3, 5.0001e-3, 0.0, -1.0, 1.0])
    assert threshold_mask(values, "binary", 5e-3).tolist() == [0, 1, 0, 0, 1]


def test_ternary_threshold_boundaries():
    values = torch.tensor([5e-3, 5.0001e-3, 0.0, -1e-9, 2e-3, -1.0])
    assert threshold_mask(values, "ternary", 5e-3).tolist() == [0, 1, 0, -1, 0, -1]


def test_uniform_init_is_within_scale_and_1s_init_is_constant():
    uniform = WeightMask(torch.Size([1000]), init="uniform", scale=0.02)
    assert uniform.mask_real.abs().max() <= 0.02 and uniform.mask_real.std() > 0
    ones = WeightMask(torch.Size([10]))
    assert torch.all(ones.mask_real == 1e-2)


def test_baking_equals_the_masked_forward():
    torch.manual_seed(0)
    masked, _ = build_backbone(ArchSpec("resnet18"), weights="random")
    masks = add_masks(masked, MaskSpec(kind="ternary"))
    for mask in masks.values():
        nn.init.uniform_(mask.mask_real, -0.01, 0.02)
    discrete = {name: m.discrete() for name, m in masks.items()}
    baked, _ = build_backbone(ArchSpec("resnet18"), weights="random")
    bake_masks(baked, discrete)
    masked.eval(), baked.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(masked(x), baked(x))
    remove_masks(masked)
    assert not masked_weights(masked)


def test_baking_refuses_masks_of_another_backbone():
    backbone, _ = build_backbone(ArchSpec("resnet18"), weights="random")
    with pytest.raises(ValueError, match="missing"):
        bake_masks(backbone, {"conv1.weight": torch.ones(64, 3, 7, 7)})


def _shape_args(layer):
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.in_channels, layer.out_channels, layer.kernel_size


def _input_shape(layer):
    return (layer.in_features,) if isinstance(layer, nn.Linear) else (layer.in_channels, 6, 6)
