"""predict.py: a trained task's top-5 classes for image files, the same top-1 as the
evaluate job on every test image, images of any mode read as training reads them, and a
bad file or bad input named in one line."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_packs import ARCH, SIZE, TASKS, make_pack, tiny_weights

from piggyback.data.datasets import load_task_data
from piggyback.data.images import read_image
from piggyback.data.transforms import TaskTransform
from piggyback.model.backbones import ArchSpec
from piggyback.stages.evaluation import TaskData, evaluate_pack
from piggyback.stages.per_image import read_per_image, write_evaluation
from piggyback.tasks.model import MultiTaskModel
from piggyback.tasks.prediction import top_classes

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def weights(digits_target, tmp_path_factory):
    """A backbone whose BatchNorm statistics are the digits' (see tiny_weights)."""
    train, _ = load_task_data(digits_target, TaskTransform("cropped", SIZE))
    images = torch.stack([image for image, _ in train])
    return tiny_weights(tmp_path_factory.mktemp("weights") / "backbone.safetensors", images)


@pytest.fixture(scope="module")
def pack(weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pack")
    return make_pack("piggyback", folder / "piggyback.safetensors", weights, mask_keep=0.97)


def predict(*args: str) -> subprocess.CompletedProcess:
    """predict.py on as many threads as this process computes what it should print with:
    a convolution split over other threads may round otherwise, and a near tie flip."""
    threads = str(torch.get_num_threads())
    command = [sys.executable, str(SRC / "predict.py"), *args, "--threads", threads]
    return subprocess.run([*command, "--no-progress"], capture_output=True, text=True, timeout=300)


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_predictions_on_a_test_folder_have_the_evaluate_jobs_top1(weights, digits_target, tmp_path):
    tasks = {"digits": TASKS["digits"]}
    pack = make_pack("piggyback", tmp_path / "digits.safetensors", weights, tasks, mask_keep=0.97)
    tasks = {"digits": TaskData(digits_target, TaskTransform("cropped", 32))}
    result = evaluate_pack(pack, tasks, ARCH, ArchSpec(ARCH), 64, weights, per_image=True)
    write_evaluation(result, tmp_path / "eval.json", tmp_path / "eval.images.tsv.gz")
    evaluated = read_per_image(tmp_path / "eval.images.tsv.gz")
    test = digits_target / "test"
    run = predict(str(pack), "--weights", str(weights), "--task", "digits", str(test),
                  "--out", str(tmp_path / "predicted.tsv"), "--batch-size", "64")  # fmt: skip
    assert run.returncode == 0, run.stderr
    predicted = {
        str(Path(row["path"]).relative_to(test)): row["class_1"]
        for row in read_tsv(tmp_path / "predicted.tsv")
    }
    classes = sorted(p.name for p in test.iterdir())
    expected = {
        path: classes[int(top5.split()[0])]
        for path, top5 in zip(evaluated["path"], evaluated["top5"], strict=True)
    }
    assert predicted == expected
    assert len(set(expected.values())) > 1, "a test that all images share a class cannot fail"


def write_images(folder: Path) -> list[Path]:
    """One image per mode a dataset may hold, from the same pixels; a file that claims
    to be an image and is not; a text file and a hidden image, which are no input."""
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    rgb = Image.fromarray(pixels)
    images = {
        "grey.png": rgb.convert("L"),
        "palette.png": rgb.convert("P"),
        "alpha.png": rgb.convert("RGBA"),
        "bilevel.png": rgb.convert("1"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "sixteen.png": Image.fromarray(pixels[..., 0].astype(np.uint16) * 257),
        "rgb.jpeg": rgb,
    }
    for name, image in images.items():
        image.save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (folder / "notes.txt").write_text("not an image")
    rgb.save(folder / ".hidden.png")
    return sorted(folder / name for name in [*images, "broken.png"])


def test_images_of_any_mode_are_read_as_training_reads_them_and_a_bad_one_skipped(
    pack, weights, tmp_path
):
    files = write_images(tmp_path / "images")
    run = predict(str(pack), "--weights", str(weights), "--task", "all", str(tmp_path / "images"),
                  "--out", str(tmp_path / "predicted.tsv"))  # fmt: skip
    assert run.returncode == 1
    errors = run.stderr.strip().splitlines()
    assert len(errors) == 2, run.stderr
    assert errors[0].startswith(f"error: cannot read {tmp_path / 'images' / 'broken.png'} (")
    assert errors[1] == (
        "error: 1 of 8 files could not be read as images (named above); the others were predicted"
    )
    rows = read_tsv(tmp_path / "predicted.tsv")
    readable = [path for path in files if path.name != "broken.png"]
    assert [(row["path"], row["task"]) for row in rows] == [
        (str(path), task) for path in readable for task in ("digits", "shapes")
    ]
    assert len(run.stdout.splitlines()) == len(rows)
    model = MultiTaskModel.load(pack, weights)
    for task in ("digits", "shapes"):  # one batch, as predict.py's: the same numbers
        model.set_task(task)
        batch = torch.stack([model.preprocess(task, read_image(p)) for p in readable])
        with torch.no_grad():
            expected = top_classes(model(batch), model.tasks[task].classes)
        got = [row for row in rows if row["task"] == task]
        for row, (classes, probabilities) in zip(got, expected, strict=True):
            ranks = range(1, len(classes) + 1)  # two classes: the other cells are empty
            assert [row[f"class_{rank}"] for rank in ranks] == classes
            assert [float(row[f"probability_{rank}"]) for rank in ranks] == pytest.approx(
                probabilities, rel=1e-5
            )


def test_other_backbone_weights_stop_with_one_line(pack, tmp_path):
    image = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(image)
    # torchvision's init, not the weights the tasks were trained on (an unknown task's
    # line, and the model's other refusals, are tests/test_tasks.py's)
    run = predict(str(pack), "--weights", "random", "--task", "digits", str(image))
    assert run.returncode == 1
    assert run.stderr.startswith("error: ")
    assert "trained on backbone weights with sha256" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
