"""Importing the authors' released masks and evaluating them: the import stage's library
and script, and the workflow route of config/released.yaml.

Files are written as the authors' pack.py wrote them (helpers from test_released.py) over
random backbones; the evaluation of the imported pack must equal the authors' recipe done
by hand on a torchvision model: weights zeroed where the mask is 0, negated where it is
255, the file's head in place of ImageNet's.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from test_released import Payload, authors_file, authors_masks, authors_shared, save_legacy
from test_workflow import ROOT, job_counts, lint_workflow, snakemake
from torch import nn

from piggyback.data.datasets import load_split
from piggyback.data.digits import write_digits_task
from piggyback.data.transforms import TaskTransform
from piggyback.interface.config import ConfigError, check_config
from piggyback.methods.registry import load_method
from piggyback.model.backbones import ArchSpec, build_backbone
from piggyback.packs.packed_file import read_pack
from piggyback.released.files import ReleasedError
from piggyback.released.importing import (
    RELEASED_BOX_URL,
    check_released_file,
    import_released,
    save_backbone_weights,
)
from piggyback.stages.evaluation import TaskData, evaluate_pack

IMPORT = str(ROOT / "src" / "import_released.py")
VERIFY = str(ROOT / "src" / "verify_released.py")
# torchvision's pooling adapts to the input, so small images keep the test fast; the
# authors' fixed 224-pixel forward pass is matched in test_released.py.
IMAGE_SIZE = 32
FEATURES = {"vgg16": 4096, "vgg16_bn": 4096, "resnet50": 2048, "densenet121": 1024}
CLASSES = 5


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Five classes, two test images each."""
    root = tmp_path_factory.mktemp("digits")
    write_digits_task(root, [5, 6, 7, 8, 9], per_class=4, test_fraction=0.5)
    return root


def torchvision_model(arch: str) -> nn.Module:
    """A plain torchvision model with the numbers build_backbone's 'random' weights hold."""
    torch.manual_seed(0)
    return torchvision.models.get_model(arch, weights=None).eval()


def put_head(model: nn.Module, arch: str, head: nn.Linear) -> None:
    if arch.startswith("vgg"):
        model.classifier[6] = head
    elif arch == "resnet50":
        model.fc = head
    else:
        model.classifier = head


def zeroed_by_hand(model: nn.Module, arch: str, masks, head: nn.Linear) -> nn.Module:
    """The authors' evaluation, done directly on the torchvision model's own layers."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for index, module in enumerate(authors_shared(arch, model).modules()):
            if index in masks:
                module.weight[masks[index] == 0] = 0
                module.weight[masks[index] == 255] *= -1
    put_head(model, arch, copy.deepcopy(head))
    return model


def digit_batch(digits) -> tuple[torch.Tensor, torch.Tensor]:
    split = load_split(digits, "test", TaskTransform("standard", IMAGE_SIZE), train=False)
    images, labels = zip(*(split[i] for i in range(len(split))), strict=True)
    return torch.stack(images), torch.tensor(labels)


def top1_error(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (1 - (logits.argmax(1) == labels).float().mean().item())


def packed_logits(pack, arch: str, weights, images: torch.Tensor) -> torch.Tensor:
    """The imported task's logits, built as evaluate_pack builds its model."""
    packed = read_pack(pack)
    backbone, features = build_backbone(ArchSpec(arch), weights)
    load_method(packed.manifest["method"]).apply(backbone, packed, "flowers")
    head = nn.Linear(features, CLASSES)
    head.load_state_dict(packed.head("flowers"))
    with torch.no_grad():
        return head(backbone.eval()(images))


def run(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True)


def import_args(path, arch: str, out, *extra) -> list:
    flags = ["--kind", arch, "--arch", arch, "--weights", "random", "--encoding", "bits"]
    return [path, *flags, "--out", out, *extra]


@pytest.mark.parametrize(
    ("arch", "ternary", "via"),
    [
        ("vgg16", False, "library"),
        ("vgg16_bn", False, "library"),
        ("resnet50", True, "script"),
        ("densenet121", False, "authors' backbone"),
    ],
)
def test_an_imported_file_evaluates_as_the_weights_zeroed_by_hand(
    tmp_path, digits, arch, ternary, via
):
    model = torchvision_model(arch)
    masks = authors_masks(authors_shared(arch, model), ternary=ternary)
    torch.manual_seed(1)
    head = nn.Linear(FEATURES[arch], CLASSES)
    released = tmp_path / f"{arch}.pt"
    other = {i: torch.ones_like(m) for i, m in masks.items()}
    authors_file(
        released,
        {"flowers": masks, "sketches": other},
        {"flowers": head, "sketches": nn.Linear(FEATURES[arch], CLASSES)},
    )
    images, labels = digit_batch(digits)
    with torch.no_grad():
        expected = zeroed_by_hand(model, arch, masks, head)(images)
        unmasked = zeroed_by_hand(model, arch, {}, head)(images)
    assert not torch.allclose(expected, unmasked, rtol=1e-2, atol=1e-3)
    del masks, other

    out, weights = tmp_path / "run0.safetensors", "random"
    if via == "script":
        done = run(IMPORT, *import_args(released, arch, out, "--datasets", "flowers"))
        assert done.returncode == 0, done.stderr
        assert len(done.stderr.splitlines()) == 1  # random weights are not the authors'
        assert done.stderr.startswith("warning: weights random are not known to be those the")
    elif via == "library":
        datasets = None if arch == "vgg16" else ["flowers"]  # None: every dataset of the file
        result = import_released(
            released, arch, ArchSpec(arch), out, weights=weights, datasets=datasets
        )
        assert not result.weights_known
    else:  # the authors' pytorch_backbone file: a whole model, pickled
        save_legacy(model, tmp_path / "backbone.pt")
        weights = tmp_path / "backbone.pth"
        save_backbone_weights(tmp_path / "backbone.pt", weights)
        result = import_released(
            released,
            arch,
            ArchSpec(arch),
            out,
            weights=weights,
            datasets=["flowers"],
            authors_backbone=tmp_path / "backbone.pt",
        )
        assert result.weights_known

    manifest = read_pack(out).manifest
    assert manifest["ordering"] == (["flowers", "sketches"] if arch == "vgg16" else ["flowers"])
    assert manifest["method"] == ("piggyback_ternary" if ternary else "piggyback")
    assert manifest["tasks"]["flowers"]["classes"] == CLASSES
    assert manifest["source"]["released_file"] == released.name
    assert manifest["source"]["repo"] == "https://github.com/arunmallya/piggyback"
    torch.testing.assert_close(
        packed_logits(out, arch, weights, images), expected, rtol=1e-4, atol=1e-5
    )
    test = TaskData(digits, TaskTransform("standard", IMAGE_SIZE))
    evaluation = evaluate_pack(
        out,
        {"flowers": test, "sketches": test},
        arch,
        ArchSpec(arch),
        64,
        weights=weights,
    )
    assert evaluation["tasks"][0]["dataset"] == "flowers"
    assert evaluation["tasks"][0]["top1_error"] == pytest.approx(top1_error(expected, labels))


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    """A resnet50 file of all-ones masks; returns its path and masks."""
    path = tmp_path_factory.mktemp("resnet") / "resnet50_binary.pt"
    model = torchvision.models.resnet50()
    masks = authors_masks(authors_shared("resnet50", model), ternary=False)
    masks = {i: torch.ones_like(m) for i, m in masks.items()}
    authors_file(path, {"flowers": masks}, {"flowers": nn.Linear(2048, CLASSES)})
    return path, masks


def refused(done: subprocess.CompletedProcess, out, expected: str) -> None:
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert expected in done.stderr
    assert not out.exists()


def test_a_planted_global_is_refused_by_the_script_and_never_run(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "planted.pt"
    authors_file(
        path,
        {"flowers": {1: torch.ones(3, 4, dtype=torch.uint8)}},
        {"flowers": Payload(f"touch {marker}")},
    )
    out = tmp_path / "out.safetensors"
    refused(run(IMPORT, *import_args(path, "resnet50", out)), out, "refused global posix.system")
    assert not marker.exists()


def test_a_file_for_another_arch_is_refused_by_the_script(tmp_path, resnet_file):
    out = tmp_path / "out.safetensors"
    done = run(IMPORT, *import_args(resnet_file[0], "densenet121", out))
    refused(done, out, "module index 7 does not fall on a conv or linear layer")


def test_a_mask_of_the_wrong_shape_is_refused_by_the_script(tmp_path, resnet_file):
    masks = dict(resnet_file[1])
    masks[1] = torch.ones(64, 3, 7, 6, dtype=torch.uint8)
    path = tmp_path / "resnet50_binary.pt"
    authors_file(path, {"flowers": masks}, {"flowers": nn.Linear(2048, CLASSES)})
    out = tmp_path / "out.safetensors"
    refused(
        run(IMPORT, *import_args(path, "resnet50", out)),
        out,
        "mask at module index 1 has shape (64, 3, 7, 6), but conv1.weight has shape (64, 3, 7, 7)",
    )


def test_what_the_import_refuses_before_packing(tmp_path, resnet_file):
    path, masks = resnet_file
    spec, out = ArchSpec("resnet50"), tmp_path / "out.safetensors"
    with pytest.raises(ReleasedError, match=r"holds no masks for wikiart; it holds flowers"):
        import_released(path, "resnet50", spec, out, weights="random", datasets=["wikiart"])
    ternary = tmp_path / "resnet50_ternary.pt"
    masks = {**masks, 1: torch.full_like(masks[1], 255)}
    authors_file(ternary, {"flowers": masks}, {"flowers": nn.Linear(2048, CLASSES)})
    with pytest.raises(ReleasedError, match=r"holds ternary masks .* not piggyback$"):
        import_released(ternary, "resnet50", spec, out, weights="random", method="piggyback")
    with pytest.raises(ReleasedError, match=r"has sha256 [0-9a-f]{64}, not the expected 00"):
        import_released(path, "resnet50", spec, out, weights="random", sha256="00" * 32)
    assert not out.exists()


def test_a_missing_file_is_named_with_the_box_folder(tmp_path):
    missing = tmp_path / "downloads" / "vgg16_binary.pt"
    with pytest.raises(ReleasedError) as error:
        check_released_file(missing)
    assert str(error.value).startswith(f"{missing} is missing: download 'vgg16_binary.pt'")
    assert RELEASED_BOX_URL in str(error.value)
    done = run(VERIFY, missing, "--done", tmp_path / "marker.json")
    refused(done, tmp_path / "marker.json", RELEASED_BOX_URL)


def released_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "released.yaml").read_text())


def test_the_released_route_imports_and_evaluates_and_trains_nothing(tmp_path):
    result = snakemake(
        "-n", "--cores", "2", "--configfile", "config/released.yaml", workdir=tmp_path
    )
    counts = job_counts(result.stdout)
    expected = {
        "download": 5,
        "prepare": 5,
        "fetch_weights": 3,
        "verify_released": 3,
        "import_released": 3,
        "evaluate": 3,
        "aggregate": 1,
        "all": 1,
    }
    assert {rule: counts.get(rule) for rule in expected} == expected
    others = set(counts) - set(expected) - {"total"}
    assert all(rule.startswith("plot_") for rule in others), others  # figures of the table


def released_digits_config(tmp_path) -> Path:
    """config/released.yaml cut to DenseNet-121 on one digits task, over a random
    backbone saved as a weights file, with the authors' file for it in downloads/."""
    config = released_config()
    config["experiment"]["archs"] = ["densenet121"]
    config["released"] = {"densenet121": config["released"]["densenet121"]}
    config["archs"] = {"densenet121": {"builder": "densenet121", "weights": "densenet121.pth"}}
    source = {"route": "digits", "digits": [5, 6, 7, 8, 9], "per_class": 6}
    config["datasets"] = {"digits": {"classes": CLASSES, "transform": "cropped", "source": source}}
    config["orderings"] = {"forward": ["digits"]}
    config.pop("reference")
    config.update(name="released-digits", image_size=IMAGE_SIZE)
    config["compute"] = {"workers": 0, "evaluate": {"gpus": 0, "threads": 1}}
    model = torchvision_model("densenet121")
    torch.save(model.state_dict(), tmp_path / "densenet121.pth")
    masks = authors_masks(authors_shared("densenet121", model), ternary=False)
    (tmp_path / "downloads").mkdir()
    authors_file(
        tmp_path / "downloads" / "densenet121_binary.pt",
        {"digits": masks},
        {"digits": nn.Linear(FEATURES["densenet121"], CLASSES)},
    )
    path = tmp_path / "released-digits.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_the_released_route_runs_from_the_file_to_the_table(tmp_path):
    config = released_digits_config(tmp_path)
    table = "results/released-digits/table.md"
    result = snakemake(table, "--cores", "2", "--configfile", str(config), workdir=tmp_path)
    counts = job_counts(result.stderr)  # a real run logs its plan on stderr
    assert counts["import_released"] == counts["evaluate"] == 1 and "train" not in counts
    evaluation = json.loads(
        (tmp_path / "results/released-digits/eval/densenet121/piggyback/run0.json").read_text()
    )
    assert [task["dataset"] for task in evaluation["tasks"]] == ["digits"]
    assert "digits" in (tmp_path / table).read_text()
    log = tmp_path / "results/released-digits/logs/import_released/densenet121/piggyback/run0.log"
    assert "warning: weights densenet121.pth are not known" in log.read_text()


def test_the_released_route_lints_clean(tmp_path):
    lint = lint_workflow("--configfile", "config/released.yaml", workdir=tmp_path)
    assert "Congratulations" in lint.stdout + lint.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["experiment"]["methods"].append("finetune"),
            "experiment.methods[1] is 'finetune': the authors' released files hold",
        ),
        (
            lambda c: c["released"].pop("resnet50"),
            "experiment.archs[1] is 'resnet50', which has no `released:` entry",
        ),
    ],
)
def test_a_released_config_that_would_train_is_refused(change, message):
    config = released_config()
    change(config)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_config(config)


def test_the_released_config_compares_with_the_seed_table():
    config = released_config()
    assert config["reference"] == {"file": "config/reference.tsv", "tolerance": 0.1}
    rows = (ROOT / "config" / "reference.tsv").read_text().splitlines()
    seed = [r.split("\t") for r in rows if r.startswith("piggyback\t")]
    assert {(arch, dataset) for _, arch, dataset, *_ in seed} == {
        (arch, dataset) for arch in config["experiment"]["archs"] for dataset in config["datasets"]
    }
    assert json.dumps(config["released"], sort_keys=True).count('"sha256": null') == 3
