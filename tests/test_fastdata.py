"""The cached input pipeline (piggyback.data.cache): the cache holds what torchvision's
deterministic steps make, and batches from it equal torchvision's transforms, exactly
for the same random draws (so in distribution for any)."""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision import transforms

from piggyback.data.cache import batches as cache_batches
from piggyback.data.cache import format as cache_file
from piggyback.data.cache import resize
from piggyback.data.datasets import load_task_data
from piggyback.data.transforms import TaskTransform, sized_crop_2017
from piggyback.methods.checkpoints import load_task_checkpoint
from piggyback.model.backbones import ArchSpec
from piggyback.stages.evaluation import TaskData, evaluate_pack
from piggyback.stages.packing import pack

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SIZE = 24  # standard: Resize(27), then 24 x 24 crops of up to about 36 x 36 pixels


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three classes of noise images of many sizes and aspect ratios (noise: every
    rounding difference shows), including strips that force the central-crop fallback."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 7), ("test", 3)):
        for label in range(3):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                height, width = (int(v) for v in rng.integers(10, 60, 2))
                if index == 0:
                    height, width = (12, 70) if label % 2 else (70, 12)
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def cache_files(images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("caches")
    paths = {}
    for style in ("cropped", "standard"):
        paths[style] = folder / f"{style}.safetensors"
        cache_file.write_cache(
            images, TaskTransform(style, SIZE), paths[style], workers=2, log=lambda _: None
        )
    return paths


def _torchvision_epoch(images, style, train, seed, crop="2017"):
    """What DataLoader-style per-image transforms give for the batches' random stream:
    the epoch's order, then each image's draws in turn, from one generator."""
    train_data, test_data = load_task_data(
        images, TaskTransform(style, SIZE, crop=crop), log=lambda _: None
    )
    dataset = train_data if train else test_data
    generator = torch.Generator().manual_seed(seed)
    count = len(dataset)
    order = torch.randperm(count, generator=generator) if train else torch.arange(count)
    with torch.random.fork_rng():
        torch.set_rng_state(generator.get_state())
        samples = [dataset[index] for index in order.tolist()]
    return torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples])


def _epoch(batches):
    batches = list(batches)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


@pytest.mark.parametrize(
    ("style", "crop", "train"),
    [
        ("cropped", "2017", False),
        ("cropped", "2017", True),
        ("standard", "2017", False),
        ("standard", "2017", True),
        ("standard", "modern", True),
    ],
)
def test_batches_equal_torchvision_exactly_for_the_same_random_draws(
    images, cache_files, style, crop, train
):
    cache = cache_file.load_cache(cache_files[style])
    batches = cache_batches.cached_batches(cache, 5, train, 7, "cpu", crop=crop)
    got_images, got_labels = _epoch(batches)
    expected_images, expected_labels = _torchvision_epoch(images, style, train, 7, crop)
    assert got_images.dtype == torch.float32 and got_images.shape == expected_images.shape
    assert torch.equal(got_images, expected_images)
    assert torch.equal(got_labels, expected_labels)


@pytest.fixture(scope="module")
def strips(tmp_path_factory):
    """Images so long and thin that, after Resize(27), no 2017 crop fits: every one takes
    the fallback, wide and tall, with an odd margin to centre (27 x 913 -> 24 x 811)."""
    root = tmp_path_factory.mktemp("strips")
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        for label, (height, width) in enumerate([(6, 203), (200, 6), (7, 190)]):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True)
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "0.png")
            Image.fromarray(pixels[::-1, ::-1].copy()).save(folder / "1.png")
    return root


def test_the_2017_fallback_equals_torchvisions_resize_and_centre_crop(strips, tmp_path):
    path = tmp_path / "strips.safetensors"
    cache_file.write_cache(strips, TaskTransform("standard", SIZE), path, log=lambda _: None)
    cache = cache_file.load_cache(path)
    split = cache.splits["train"]
    for index in range(len(split)):
        generator = torch.Generator().manual_seed(index)
        assert all(sized_crop_2017(*split.shape(index), generator) is None for _ in range(50))
    for seed in range(3):  # flipped and not
        got, _ = _epoch(cache_batches.cached_batches(cache, 4, True, seed, "cpu"))
        expected, _ = _torchvision_epoch(strips, "standard", True, seed)
        assert torch.equal(got, expected)


def test_cache_is_safetensors_with_a_json_description(images, cache_files):
    path = cache_files["standard"]
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    description = json.loads(header["__metadata__"]["piggyback.cache"])
    assert description["format"] == "piggyback.cache" and description["version"] == 2
    paths = json.loads(header["__metadata__"]["piggyback.cache.paths"])
    assert {split: len(names) for split, names in paths.items()} == description["images"]
    assert paths["test"][0].startswith("class_0/"), "relative to the split folder"
    assert description["style"] == "standard" and description["image_size"] == SIZE
    assert description["classes"] == ["class_0", "class_1", "class_2"]
    assert description["images"] == {"train": 21, "test": 9}
    tensors = load_file(path)
    assert tensors["train.pixels"].dtype == torch.uint8
    # train keeps Resize(27)'s variable sizes, test is centre-cropped to one size
    shapes = tensors["train.shapes"]
    assert shapes.min(dim=1).values.eq(27).all() and len(set(map(tuple, shapes.tolist()))) > 1
    assert tensors["test.shapes"].eq(SIZE).all()


def test_crop_parameters_are_torchvisions_for_the_same_random_stream():
    # (3, 200) fails all ten tries and takes the central-crop fallback
    for height, width in [(27, 27), (27, 40), (40, 27), (27, 135), (135, 27), (3, 200), (1, 1)]:
        image = torch.zeros(3, height, width)
        for seed in range(150):
            torch.manual_seed(seed)
            expected = transforms.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
            generator = torch.Generator().manual_seed(seed)
            got = cache_batches.crop_params(height, width, generator)
            assert got == expected, (height, width, seed)
            assert torch.equal(generator.get_state(), torch.get_rng_state())  # same draws


def test_resize_is_pillows_bilinear_resize_in_both_pass_orders():
    rng = np.random.default_rng(1)
    crops, sizes, flips, expected = [], [], [], []
    for _ in range(40):
        height, width = (int(v) for v in rng.integers(8, 60, 2))
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        flip = bool(rng.integers(2))
        out = Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        out = np.asarray(out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out)
        crops.append(torch.from_numpy(pixels).permute(2, 0, 1))
        sizes.append((height, width))
        flips.append(flip)
        expected.append(torch.from_numpy(out.copy()).permute(2, 0, 1))
    padded = torch.zeros(len(crops), 3, 60, 60, dtype=torch.uint8)
    for slot, crop in enumerate(crops):
        padded[slot, :, : crop.shape[1], : crop.shape[2]] = crop
    sizes = torch.tensor(sizes)
    got = resize.resize_crops(padded, sizes, SIZE, torch.tensor(flips))
    assert torch.equal(got, torch.stack(expected).to(torch.int32))
    order = resize.vertical_first(sizes, SIZE)
    if resize._pillow_may_resize_vertically_first():
        assert order.any() and not order.all(), "both pass orders should be exercised"


def test_flips_happen_half_of_the_time(cache_files):
    cache = cache_file.load_cache(cache_files["cropped"])
    plain = cache.splits["train"].stacked()
    flipped = total = 0
    for seed in range(40):
        batches = cache_batches.CachedBatches(cache, 64, True, seed, torch.device("cpu"))
        batches.table = torch.arange(256, dtype=torch.float32).repeat(3, 1)  # raw bytes
        order = torch.randperm(len(plain), generator=torch.Generator().manual_seed(seed))
        images, _ = next(iter(batches))
        images = images.to(torch.uint8)
        for image, index in zip(images, order.tolist(), strict=True):
            source = plain[index]
            mirrored = torch.equal(image, source.flip(-1))
            assert mirrored or torch.equal(image, source)
            flipped += mirrored
            total += 1
    assert abs(flipped / total - 0.5) < 4 * math.sqrt(0.25 / total)


def test_epochs_are_deterministic_per_seed_with_or_without_prefetch(cache_files):
    cache = cache_file.load_cache(cache_files["standard"])
    batches = cache_batches.cached_batches(cache, 4, True, 3, "cpu")
    first, again = _epoch(batches), _epoch(batches)
    prefetched = _epoch(cache_batches.cached_batches(cache, 4, True, 3, "cpu", prefetch=2))
    other = _epoch(cache_batches.cached_batches(cache, 4, True, 4, "cpu"))
    assert len(batches) == math.ceil(21 / 4)
    for tensors in (again, prefetched):
        assert torch.equal(first[0], tensors[0]) and torch.equal(first[1], tensors[1])
    assert not torch.equal(first[0], other[0])


def test_prefetch_hands_errors_to_the_consumer(cache_files):
    cache = cache_file.load_cache(cache_files["cropped"])
    batches = cache_batches.cached_batches(cache, 4, True, 0, "cpu", prefetch=2)
    batches.table = torch.zeros(7)  # a lookup that fails in the worker thread
    with pytest.raises((RuntimeError, IndexError)):
        _epoch(batches)


def test_caches_for_other_settings_or_damaged_ones_are_refused(cache_files, tmp_path):
    path = cache_files["cropped"]
    cpu = torch.device("cpu")
    with pytest.raises(cache_file.CacheError, match="built for --transform cropped"):
        cache_file.load_task_cache(path, TaskTransform("standard", SIZE), None, cpu)
    with pytest.raises(cache_file.CacheError, match="--image-size 24"):
        cache_file.load_task_cache(path, TaskTransform("cropped", 32), None, cpu)
    with pytest.raises(cache_file.CacheError, match="holds 3 classes"):
        cache_file.load_task_cache(path, TaskTransform("cropped", SIZE), 5, cpu)
    with pytest.raises(cache_file.CacheError, match="does not exist"):
        cache_file.load_cache(tmp_path / "missing.safetensors")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(path.read_bytes()[:100])
    with pytest.raises(cache_file.CacheError, match="not a readable dataset cache"):
        cache_file.load_cache(damaged)
    stale = tmp_path / "stale.safetensors"
    metadata = cache_file.read_metadata(path)
    metadata["cached_steps"]["train"] = "Compose(Resize(size=99))"
    save_file(load_file(path), str(stale), metadata={"piggyback.cache": json.dumps(metadata)})
    with pytest.raises(cache_file.CacheError, match="other train transforms"):
        cache_file.load_cache(stale)


def test_cache_script_writes_the_cache_or_fails_in_one_line(digits_target, tmp_path):
    """Both runs at once: each spends most of its time importing torch."""
    out = tmp_path / "cache-32.safetensors"
    command = [sys.executable, str(SRC / "cache.py"), "--transform", "cropped"]
    command += ["--image-size", "32", "--workers", "1"]
    failing = subprocess.Popen(
        [*command, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    done = subprocess.run(
        [*command, "--data", str(digits_target), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    _, stderr = failing.communicate(timeout=600)
    assert json.loads(done.stdout.splitlines()[-1])["images"] == {"train": 210, "test": 90}
    assert cache_file.read_metadata(out)["classes"][0] == "digit_5"
    assert failing.returncode == 1
    assert stderr.startswith("error: ") and len(stderr.splitlines()) == 1


def test_training_from_the_cache_and_evaluating_it(digits_target, tmp_path):
    """train.py --cache runs and writes its outputs; the packed task evaluates to the
    same errors from the cache as from the image folder, and as in training."""
    cache = tmp_path / "cache-32.safetensors"
    cache_file.write_cache(digits_target, TaskTransform("cropped", 32), cache, log=lambda _: None)
    out = tmp_path / "run"
    subprocess.run(
        [
            sys.executable,
            str(SRC / "train.py"),
            *("--arch", "resnet18", "--weights", "random", "--dataset", "digits"),
            *("--data", str(digits_target), "--transform", "cropped", "--image-size", "32"),
            *("--crop", "2017", "--workers", "0", "--eval-batch-size", "64"),
            *("--resume-every", "0"),
            *("--cache", str(cache), "--classes", "5", "--epochs", "1", "--batch-size", "16"),
            *("--lr", "1e-3", "--lr-head", "1e-2", "--threads", "1", "--device", "cpu"),
            *("--out", str(out / "task.pt"), "--metrics", str(out / "metrics.tsv")),
        ],
        check=True,
        capture_output=True,
    )
    checkpoint = load_task_checkpoint(out / "task.pt")
    assert (out / "metrics.tsv").read_text().count("\n") == 2
    assert checkpoint.test_images == 90 and checkpoint.classes[0] == "digit_5"
    pack([out / "task.pt"], tmp_path / "pack.safetensors")

    def evaluated(cache):
        tasks = {"digits": TaskData(digits_target, TaskTransform("cropped", 32), cache)}
        arguments = (tmp_path / "pack.safetensors", tasks, "resnet18", ArchSpec("resnet18"))
        return evaluate_pack(*arguments, 16, "random")["tasks"][0]

    from_folder, from_cache = evaluated(None), evaluated(cache)
    assert from_cache == from_folder
    assert from_cache["top1_error"] == checkpoint.test_top1_error


def test_workflow_with_the_cached_pipeline_caches_each_dataset_once(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["compute"]["data_pipeline"] = "cached"
    (tmp_path / "cached.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
        + ["--workflow-profile", "none", "--directory", str(tmp_path), "-n", "-p", "--cores", "8"]
        + ["--configfile", str(tmp_path / "cached.yaml")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    stats = result.stdout.split("Job stats:")[1]
    assert any(line.split() == ["cache", "5"] for line in stats.splitlines())
    assert "--cache data/flowers/cache-224.safetensors" in result.stdout  # train and evaluate
    assert "cache.py --data data/flowers --transform standard --image-size 224" in result.stdout
