import pytest
import torch
import torchvision

from piggyback.model.backbones import (
    ArchSpec,
    BackboneError,
    build_backbone,
    build_task_model,
    find_head,
    torchvision_state,
)
from piggyback.model.checkpoints import backbone_sha256


@pytest.mark.parametrize(
    ("arch", "features"),
    [("vgg16", 4096), ("vgg16_bn", 4096), ("resnet50", 2048), ("densenet121", 1024)],
)
def test_paper_archs_lose_their_imagenet_head(arch, features):
    backbone, width = build_backbone(ArchSpec(arch), weights="random")
    assert width == features
    backbone.eval()
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 32, 32)).shape == (1, features)


def test_other_torchvision_models_work_when_their_head_is_a_linear():
    model = build_task_model(ArchSpec("mobilenet_v3_small"), 7, weights="random")
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_a_model_without_linear_or_pointwise_head_gets_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    with pytest.raises(BackboneError, match="no classification head"):
        find_head(model)


@pytest.mark.parametrize("builder", ["squeezenet1_0", "squeezenet1_1"])
def test_squeezenet_task_model_is_torchvisions_with_num_classes(builder):
    """SqueezeNet's head is its last 1x1 convolution, followed by ReLU and pooling: the
    task's head runs in its place, so the task model computes what torchvision's own
    model built with ``num_classes`` computes from the same tensors, to the bit."""
    model = build_task_model(ArchSpec(builder), 7, weights="random").eval()
    assert model.head_name == "classifier.1"
    assert isinstance(model.head, torch.nn.Conv2d) and model.head.out_channels == 7
    assert 0.008 < model.head.weight.std() < 0.012 and not model.head.bias.any(), "torchvision's"
    plain = torchvision.models.get_model(builder, num_classes=7).eval()
    state = torchvision_state(model.backbone.state_dict(), model.head.state_dict(), model.head_name)
    plain.load_state_dict(state, strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(images), plain(images))
        assert model.backbone.classifier[1].bound is model.head


def test_head_can_be_named_explicitly():
    backbone, _ = build_backbone(ArchSpec("resnet18"), weights="random")
    with pytest.raises(BackboneError, match="is not a module"):
        find_head(backbone, "nope")


def test_default_weights_are_refused_and_unknown_enum_names_listed():
    with pytest.raises(BackboneError, match="DEFAULT"):
        build_backbone(ArchSpec("resnet50"), weights="DEFAULT")
    with pytest.raises(BackboneError, match="IMAGENET1K_V1"):
        build_backbone(ArchSpec("resnet50"), weights="IMAGENET1K_V9")


def test_unknown_builder_is_a_clear_error():
    with pytest.raises(BackboneError, match="unknown torchvision model"):
        build_backbone(ArchSpec("resnet51"), weights="random")


def test_weights_from_a_file_keep_their_identity_and_drop_the_old_head(tmp_path):
    source = build_task_model(ArchSpec("resnet18"), 5, weights="random")
    torch.nn.init.normal_(source.backbone.conv1.weight)
    state = {f"{k}": v for k, v in source.backbone.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = source.head.weight, source.head.bias
    torch.save(state, tmp_path / "pretrained.pth")
    loaded, _ = build_backbone(ArchSpec("resnet18"), weights=tmp_path / "pretrained.pth")
    assert backbone_sha256(loaded) == backbone_sha256(source.backbone)
    random_again, _ = build_backbone(ArchSpec("resnet18"), weights="random")
    assert backbone_sha256(random_again) != backbone_sha256(loaded)


def test_random_weights_are_reproducible():
    a, _ = build_backbone(ArchSpec("resnet18"), weights="random")
    b, _ = build_backbone(ArchSpec("resnet18"), weights="random")
    assert backbone_sha256(a) == backbone_sha256(b)


def test_weights_file_that_does_not_fit_is_refused(tmp_path):
    other, _ = build_backbone(ArchSpec("resnet18"), weights="random")
    torch.save(other.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(BackboneError, match="do not fit resnet50"):
        build_backbone(ArchSpec("resnet50"), weights=tmp_path / "r18.pth")
