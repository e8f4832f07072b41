from copy import deepcopy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torchvision.models import vision_transformer

from piggyback.methods.piggyback.method import mask_spec
from piggyback.model.backbones import ArchSpec, build_backbone
from piggyback.model.masks import (
    MASKED_PARAMETERS,
    MaskError,
    MaskRule,
    WeightMask,
    add_masks,
    bake_masks,
    mask_coverage,
    masked_parameters,
    masked_weights,
    threshold_mask,
)

PAPER_ARCHS = ["vgg16", "vgg16_bn", "resnet50", "densenet121"]


@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_initial_masks_give_the_plain_models_output(arch):
    plain, _ = build_backbone(ArchSpec(arch), weights="random")
    masked, _ = build_backbone(ArchSpec(arch), weights="random")
    add_masks(masked, mask_spec())
    plain.eval(), masked.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(plain(x), masked(x))


def test_every_conv_and_linear_is_masked_and_the_imagenet_head_is_gone():
    backbone, features = build_backbone(ArchSpec("vgg16"), weights="random")
    masks = add_masks(backbone, mask_spec())
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
    add_masks(masked, mask_spec())
    x = torch.randn(4, *(_input_shape(layer)))
    plain(x).square().sum().backward()
    masked(x).square().sum().backward()
    mask = masked_weights(masked)["weight"]
    assert torch.equal(mask.mask_real.grad, plain.weight.grad * plain.weight.detach())


def test_binary_threshold_boundary():
    values = torch.tensor([5e-3, 5.0001e-3, 0.0, -1.0, 1.0])
    assert threshold_mask(values, MaskRule("binary", 5e-3)).tolist() == [0, 1, 0, 0, 1]


def test_ternary_threshold_boundaries():
    values = torch.tensor([5e-3, 5.0001e-3, 0.0, -1e-9, 2e-3, -1.0])
    assert threshold_mask(values, MaskRule("ternary", 5e-3)).tolist() == [0, 1, 0, -1, 0, -1]


def test_uniform_init_is_within_scale_and_1s_init_is_constant():
    paper = mask_spec()
    uniform = WeightMask(torch.Size([1000]), paper.rule, "uniform", 0.02)
    assert uniform.mask_real.abs().max() <= 0.02 and uniform.mask_real.std() > 0
    ones = WeightMask(torch.Size([10]), paper.rule, paper.init, paper.scale)
    assert torch.all(ones.mask_real == 1e-2)


def test_baking_equals_the_masked_forward():
    torch.manual_seed(0)
    masked, _ = build_backbone(ArchSpec("resnet18"), weights="random")
    masks = add_masks(masked, mask_spec("piggyback_ternary"))
    for mask in masks.values():
        nn.init.uniform_(mask.mask_real, -0.01, 0.02)
    discrete = {name: m.discrete() for name, m in masks.items()}
    baked, _ = build_backbone(ArchSpec("resnet18"), weights="random")
    bake_masks(baked, discrete)
    masked.eval(), baked.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(masked(x), baked(x))


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


def _tiny_vit() -> nn.Module:
    """torchvision's ViT, two blocks wide enough for two heads: its layer types, fast."""
    return vision_transformer.VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    )


def _hand_masked(plain: nn.Module, masks: dict[str, WeightMask]) -> nn.Module:
    """A copy of ``plain`` with each masked parameter multiplied by its discrete mask."""
    copy = deepcopy(plain)
    parameters = dict(copy.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            parameters[name].mul_(mask.discrete())
    return copy


def test_attention_projections_are_masked_on_the_fast_path_and_off_it(monkeypatch):
    torch.manual_seed(0)
    plain = _tiny_vit()
    masked = deepcopy(plain)
    masks = add_masks(masked, mask_spec(mask_init="uniform"))
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in masks
    assert "encoder.layers.encoder_layer_1.self_attention.out_proj.weight" in masks
    reference = _hand_masked(plain, masks)
    x = torch.randn(2, 3, 32, 32)
    fast = []
    native = torch._native_multi_head_attention
    monkeypatch.setattr(
        torch, "_native_multi_head_attention", lambda *a, **k: fast.append(1) or native(*a, **k)
    )
    masked.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(masked(x), reference(x))
    assert len(fast) == 2 * 2, "eval mode without gradients takes MHA's fast path"
    with torch.no_grad(), parametrize.cached():
        assert torch.equal(masked(x), reference(x))
    masked.train(), reference.train()  # no dropout in this ViT: the slow path, same numbers
    assert torch.equal(masked(x), reference(x))


def test_separate_query_key_value_projections_are_masked():
    torch.manual_seed(0)
    plain = nn.MultiheadAttention(8, 2, kdim=6, vdim=5, batch_first=True)
    masked = deepcopy(plain)
    masks = add_masks(masked, mask_spec(mask_init="uniform"))
    assert set(masks) == {"q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"}
    query, key, value = torch.randn(2, 3, 8), torch.randn(2, 4, 6), torch.randn(2, 4, 5)
    reference = _hand_masked(plain, masks)
    masked(query, key, value)[0].square().sum().backward()
    reference(query, key, value)[0].square().sum().backward()
    for name, mask in masks.items():
        weight = dict(plain.named_parameters())[name].detach()
        gradient = dict(reference.named_parameters())[name].grad
        assert torch.equal(mask.mask_real.grad, gradient * weight), name


def test_a_weight_matrix_outside_the_tables_is_refused_by_name():
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Bilinear(4, 4, 2))
    for call in (mask_coverage, lambda b: add_masks(b, mask_spec())):
        with pytest.raises(MaskError, match=r"'2' \(torch\.nn\.modules\.linear\.Bilinear\).*"):
            call(backbone)
    with pytest.raises(MaskError, match="MASKED_PARAMETERS in src/piggyback/model/masks.py"):
        mask_coverage(backbone)


def test_a_new_layer_type_is_one_table_entry(monkeypatch):
    monkeypatch.setitem(MASKED_PARAMETERS, nn.Bilinear, lambda module: ("weight",))
    torch.manual_seed(0)
    plain = nn.Bilinear(4, 3, 2)
    masked = deepcopy(plain)
    masks = add_masks(masked, mask_spec(mask_init="uniform"))
    assert set(masks) == {"weight"} and mask_coverage(masked).left_alone == {"biases": 2}
    x1, x2 = torch.randn(5, 4), torch.randn(5, 3)
    with torch.no_grad():
        assert torch.equal(masked(x1, x2), _hand_masked(plain, masks)(x1, x2))


def test_scales_are_not_weight_matrices_and_are_left_alone_by_kind():
    class ChannelScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(4, 1, 1))

        def forward(self, x):
            return self.gamma * x

    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), ChannelScale())
    coverage = mask_coverage(backbone)
    assert coverage.masked == 4 * 3 * 3 * 3
    assert coverage.left_alone == {"biases": 4, "norms": 8, "other vectors and scales": 4}
    assert coverage.matrix_share == 1.0
    assert list(masked_parameters(backbone)) == ["0.weight"]


def test_vit_b_16_is_masked_whole():
    """The issue's case: the packed query/key/value projections (21M weights) are masked
    and what is left alone is named by kind."""
    backbone, _ = build_backbone(ArchSpec("vit_b_16"), weights="random")
    coverage = mask_coverage(backbone)
    assert coverage.left_alone.keys() == {
        "biases",
        "norms",
        "positional embeddings",
        "class tokens",
    }
    assert coverage.masked_share > 0.99 and coverage.matrix_share > 0.99
    projections = [n for n in masked_parameters(backbone) if n.endswith("in_proj_weight")]
    assert len(projections) == 12
    assert coverage.total == sum(p.numel() for p in backbone.parameters())
