"""Per-image results: evaluate.py writes every test image's label and top-5 classes beside
its JSON, from the same pass, atomically; the same rows through the DataLoader and the
cache; an old cache without image paths is refused."""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from test_reliability import (
    assert_one_line_error,
    evaluate_args,
    file_size_limit,
    run_script,
)
from torch import nn

from piggyback.data.cache.format import CacheError, load_cache, write_cache
from piggyback.data.datasets import load_split, load_task_data, make_loader
from piggyback.data.digits import write_digits_task
from piggyback.data.transforms import TaskTransform
from piggyback.methods.registry import Hyperparameters, load_method
from piggyback.methods.run import TaskRun
from piggyback.model.backbones import ArchSpec, build_backbone, build_task_model
from piggyback.packs.packed_file import read_pack
from piggyback.stages import packing
from piggyback.stages.per_image import COLUMNS, per_image_path, read_per_image
from piggyback.training.loop import train_task


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """Digits 5-7: three classes, 12 images each (8 train, 4 test)."""
    root = tmp_path_factory.mktemp("task")
    write_digits_task(root, [5, 6, 7], per_class=12)
    return root


@pytest.fixture(scope="module")
def pack(task, tmp_path_factory):
    """One epoch of Piggyback on the task, packed."""
    root = tmp_path_factory.mktemp("pack")
    train, test = load_task_data(task, TaskTransform("cropped", 32))
    model = build_task_model(ArchSpec("resnet18"), 3, weights="random")
    hp = Hyperparameters.for_method("piggyback", epochs=1, batch_size=32, mask_init="uniform")
    run = TaskRun("resnet18", "piggyback", "digits", train.classes, 0, hp)
    result = train_task(
        model,
        run,
        lambda epoch: make_loader(train, 32, True, epoch),
        make_loader(test, 64, False, 0),
        root / "state",
        torch.device("cpu"),
        progress=False,
        log=lambda _: None,
    )
    packing.pack([result["best_path"]], root / "pack.safetensors")
    return root / "pack.safetensors"


def evaluated(pack, data: Path, out: Path, monkeypatch, capsys, *extra) -> dict:
    code, _, err = run_script(
        "evaluate.py", evaluate_args(pack, data, out, *extra), monkeypatch, capsys
    )
    assert code == 0, err
    return json.loads(out.read_text())


def ranked_by_hand(pack: Path, data: Path) -> dict[str, str]:
    """Each test image's classes, best first, from the packed task's model run directly
    on the images (not through evaluate): the masks baked in, the head attached."""
    packed = read_pack(pack)
    backbone, features = build_backbone(ArchSpec("resnet18"), "random")
    load_method(packed.manifest["method"]).apply(backbone, packed, "digits")
    head = nn.Linear(features, 3)
    head.load_state_dict(packed.head("digits"))
    split = load_split(data, "test", TaskTransform("cropped", 32), train=False)
    images = torch.stack([split[index][0] for index in range(len(split))])
    with torch.no_grad():
        ranked = head(backbone.eval()(images)).topk(3, dim=1).indices
    paths = [Path(path).relative_to(split.root).as_posix() for path, _ in split.samples]
    return {path: " ".join(map(str, r.tolist())) for path, r in zip(paths, ranked, strict=True)}


def test_one_row_per_test_image_whose_top1_is_the_jsons_error(
    pack, task, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run0.json"
    result = evaluated(pack, task, out, monkeypatch, capsys)
    images = per_image_path(out)
    assert result["per_image"] == images.name, "the JSON names its per-image file"
    with gzip.open(images, "rt") as handle:  # readable without this project's code
        assert handle.readline().rstrip("\n").split("\t") == list(COLUMNS)
    rows = read_per_image(images)
    files = sorted(p.relative_to(task / "test").as_posix() for p in (task / "test").rglob("*.png"))
    (entry,) = result["tasks"]
    assert len(rows) == entry["images"] == len(files)
    assert sorted(rows["path"]) == files and rows["path"].is_unique
    classes = sorted(p.name for p in (task / "test").iterdir())
    assert (rows["label"] == rows["path"].str.split("/").str[0].map(classes.index)).all()
    assert (rows["task"] == "digits").all()
    assert 100.0 * (1 - (~rows["wrong"]).sum() / len(rows)) == entry["top1_error"]
    top5 = rows["top5"].str.split(" ")
    assert (top5.str.len() == 3).all(), "three classes: the top 3"
    in_top = [str(label) in ranked for label, ranked in zip(rows["label"], top5, strict=True)]
    assert 100.0 * (1 - sum(in_top) / len(rows)) == entry["top5_error"]
    assert dict(zip(rows["path"], rows["top5"], strict=True)) == ranked_by_hand(pack, task)


def test_the_cache_gives_the_same_rows_as_the_dataloader(pack, task, tmp_path, monkeypatch, capsys):
    loader = tmp_path / "loader.json"
    evaluated(pack, task, loader, monkeypatch, capsys)
    cache = tmp_path / "cache-32.safetensors"
    write_cache(task, TaskTransform("cropped", 32), cache, log=lambda _: None)
    cached = tmp_path / "cached.json"
    tasks = {"digits": {"data": str(task), "transform": "cropped", "cache": str(cache)}}
    args = evaluate_args(pack, task, cached, "--tasks-json", json.dumps(tasks))
    code, _, err = run_script("evaluate.py", args, monkeypatch, capsys)
    assert code == 0, err
    assert per_image_path(cached).read_bytes() == per_image_path(loader).read_bytes()


def test_an_interrupted_evaluation_leaves_no_partial_file(
    pack, task, tmp_path, monkeypatch, capsys
):
    """A failure in the evaluation writes nothing; one while writing (a file-size limit
    on the JSON, a full disk halfway through the per-image file) leaves each file whole
    or absent, and no temporary file."""
    out = tmp_path / "out" / "run0.json"
    out.parent.mkdir()
    broken = Path(shutil.copytree(task, tmp_path / "broken"))
    next((broken / "test").rglob("*.png")).write_bytes(b"not a png")
    args = evaluate_args(pack, broken, out)
    code, _, err = run_script("evaluate.py", args, monkeypatch, capsys)
    assert_one_line_error(code, err, "cannot read image")
    assert list(out.parent.iterdir()) == []
    args = evaluate_args(pack, task, out)
    with file_size_limit(100):
        code, _, err = run_script("evaluate.py", args, monkeypatch, capsys)
    assert_one_line_error(code, err, f"cannot write {out} (File too large)")
    assert list(out.parent.iterdir()) == []
    real_write = gzip.GzipFile.write

    def full_disk(self, data):
        real_write(self, data)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(gzip.GzipFile, "write", full_disk)
    code, _, err = run_script("evaluate.py", args, monkeypatch, capsys)
    assert_one_line_error(code, err, f"cannot write {per_image_path(out)} (No space left")
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    assert json.loads(out.read_text())["per_image"] == per_image_path(out).name


def test_a_cache_without_image_paths_is_refused_with_what_to_do(task, tmp_path):
    """A version 1 cache (before the paths were recorded): rebuild it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    cache = tmp_path / "cache-32.safetensors"
    write_cache(task, TaskTransform("cropped", 32), cache, log=lambda _: None)
    with safe_open(str(cache), framework="pt") as handle:
        metadata = json.loads(handle.metadata()["piggyback.cache"])
        names = handle.keys()  # a safetensors handle, not a dict
        tensors = {key: handle.get_tensor(key) for key in names}
    assert load_cache(cache).splits["test"].paths[0].startswith("digit_5/")
    old = tmp_path / "old.safetensors"
    save_file(
        tensors, str(old), metadata={"piggyback.cache": json.dumps({**metadata, "version": 1})}
    )
    with pytest.raises(CacheError, match="version 1 dataset cache.*rebuild the cache"):
        load_cache(old)
    assert torch.equal(load_cache(cache).splits["test"].labels, tensors["test.labels"])
