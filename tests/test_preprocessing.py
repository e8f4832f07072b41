"""Transforms that follow a backbone's torchvision weights (`transforms: weights`): the
styles at the weights' resize ratio, interpolation and normalisation, through both input
pipelines, and refused by the cached one where it cannot reproduce them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from piggyback.data.cache import batches as cache_batches
from piggyback.data.cache import format as cache_file
from piggyback.data.datasets import load_task_data
from piggyback.data.transforms import (
    PAPER_PREPROCESSING,
    PreprocessingError,
    TaskTransform,
    weights_preprocessing,
)

CONVNEXT = "convnext_tiny.IMAGENET1K_V1"  # resize 236 for a 224 crop, bilinear
EFFICIENTNET = "efficientnet_b0.IMAGENET1K_V1"  # resize 256, bicubic


def test_the_styles_follow_the_weights_resize_interpolation_and_normalisation():
    convnext = TaskTransform("standard", 224, weights_preprocessing(CONVNEXT)).build(train=False)
    resize, crop, _, normalize = convnext.transforms
    assert (resize.size, resize.interpolation, crop.size) == (
        236,
        InterpolationMode.BILINEAR,
        (224, 224),
    )
    assert list(normalize.mean) == [0.485, 0.456, 0.406]
    assert list(normalize.std) == [0.229, 0.224, 0.225]
    efficientnet = TaskTransform("cropped", 32, weights_preprocessing(EFFICIENTNET)).build(
        train=True
    )
    assert efficientnet.transforms[0].interpolation == InterpolationMode.BICUBIC
    assert efficientnet.transforms[0].size == (32, 32)
    train = TaskTransform("standard", 224, weights_preprocessing(EFFICIENTNET)).build(train=True)
    assert train.transforms[1].interpolation == InterpolationMode.BICUBIC  # the random crop
    # ViT-B/16's weights were trained as the paper's backbones were
    assert weights_preprocessing("vit_b_16.IMAGENET1K_V1") == PAPER_PREPROCESSING


def test_the_paper_transforms_are_unchanged():
    steps = TaskTransform("standard", 224).build(train=False).transforms
    assert repr(steps[:2]) == repr([transforms.Resize(256), transforms.CenterCrop(224)])


def test_unknown_weights_are_a_clear_error():
    with pytest.raises(PreprocessingError, match="<builder>.<ENUM>"):
        weights_preprocessing("convnext_tiny.IMAGENET1K_V9")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in range(2):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True)
            for index in range(3):
                height, width = (int(v) for v in rng.integers(20, 60, 2))
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def test_a_cache_for_the_weights_gives_their_test_images(images, tmp_path):
    convnext = weights_preprocessing(CONVNEXT)
    path = tmp_path / "cache.safetensors"
    cache_file.write_cache(
        images, TaskTransform("standard", 28, convnext), path, log=lambda _: None
    )
    cache = cache_file.load_task_cache(
        path, TaskTransform("standard", 28, convnext), 2, torch.device("cpu"), log=lambda _: None
    )
    cached = torch.cat([b for b, _ in cache_batches.cached_batches(cache, 4, False, 0, "cpu")])
    _, test = load_task_data(images, TaskTransform("standard", 28, convnext), log=lambda _: None)
    assert torch.equal(cached, torch.stack([test[i][0] for i in range(len(test))]))
    with pytest.raises(cache_file.CacheError, match="built for the preprocessing"):
        cache_file.load_task_cache(path, TaskTransform("standard", 28), 2, torch.device("cpu"))


def test_the_cached_pipeline_refuses_other_interpolations(images, tmp_path):
    bicubic = weights_preprocessing(EFFICIENTNET)
    with pytest.raises(cache_file.CacheError, match="data_pipeline: dataloader"):
        cache_file.write_cache(images, TaskTransform("cropped", 28, bicubic), tmp_path / "c")
    paper = tmp_path / "paper.safetensors"
    cache_file.write_cache(images, TaskTransform("cropped", 28), paper, log=lambda _: None)
    with pytest.raises(cache_file.CacheError, match="bicubic"):
        cache_file.load_task_cache(paper, TaskTransform("cropped", 28, bicubic), 2, "cpu")
