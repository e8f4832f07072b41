"""export.py: a trained task as a plain torchvision model whose outputs are the pack's
evaluation outputs exactly, for every method's pack, loaded with strict=True by a
process that never imports this project."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file
from tiny_packs import ARCH, METHODS, PREPROCESSING, SIZE, TASKS, make_pack

from piggyback.model.backbones import ArchSpec, build_backbone, torchvision_state
from piggyback.model.checkpoints import backbone_state
from piggyback.packs.packed_file import read_pack
from piggyback.stages.evaluation import open_pack, task_model
from piggyback.tasks.export import builder_arguments, export_task, plain_model
from piggyback.tasks.model import task_info

SRC = Path(__file__).resolve().parents[1] / "src"

# Run with `python -I` (no PYTHONPATH, no user site): torch, torchvision and safetensors
# only, as a colleague without this project would; it says whether piggyback got imported.
PLAIN_LOADER = """
import json, sys
from pathlib import Path
import torch, torchvision
from safetensors.torch import load_file, save_file

threads, x = int(sys.argv[1]), load_file(sys.argv[2])["x"]
torch.set_num_threads(threads)
outputs = {}
for folder in map(Path, sys.argv[3:]):
    config = json.loads((folder / "config.json").read_text())
    model = getattr(torchvision.models, config["builder"])(**config["kwargs"])
    model.load_state_dict(load_file(folder / config["weights"]["file"]), strict=True)
    program = torch.export.load(folder / config["program"]).module()
    with torch.no_grad():
        outputs[f"{folder.name}/model"] = model.eval()(x)
        outputs[f"{folder.name}/program"] = program(x)
save_file(outputs, "outputs.safetensors")
print("piggyback" in sys.modules)
"""


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("packs")
    return {method: make_pack(method, folder / f"{method}.safetensors") for method in METHODS}


def images(count: int = 3) -> torch.Tensor:
    return torch.randn(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


def evaluated_outputs(pack: Path, task: str, x: torch.Tensor, arch: str = ARCH) -> torch.Tensor:
    opened = open_pack(pack, arch, ArchSpec(arch), "random")
    with torch.no_grad():
        return task_model(opened, task).eval()(x)


@pytest.mark.parametrize("method", METHODS)
def test_an_exported_task_gives_the_packs_evaluation_outputs(packs, method, tmp_path):
    packed = read_pack(packs[method])
    opened = open_pack(packed, ARCH, ArchSpec(ARCH), "random")
    x = images()
    for task in TASKS:
        config = export_task(opened, task_info(packed, task, None, None), ARCH, tmp_path, "-")
        plain = plain_model(config["builder"], config["kwargs"], tmp_path / "model.safetensors")
        with torch.no_grad():
            assert torch.equal(plain(x), evaluated_outputs(packs[method], task, x)), task


def test_googlenet_exports_without_its_auxiliary_heads():
    """The backbone drops GoogLeNet's auxiliary ImageNet heads: the builder is told to
    build none, and loads the backbone and the task's head strictly."""
    backbone, features = build_backbone(ArchSpec("googlenet"), "random")
    kwargs = builder_arguments(backbone, 3)
    assert kwargs == {"num_classes": 3, "aux_logits": False, "init_weights": False}
    head = {"weight": torch.zeros(3, features), "bias": torch.zeros(3)}
    state = torchvision_state(backbone_state(backbone), head, backbone.head_name)
    torchvision.models.googlenet(**kwargs).load_state_dict(state, strict=True)


def test_export_py_writes_what_plain_torchvision_loads_without_this_project(packs, tmp_path):
    pack = packs["piggyback"]
    out = tmp_path / "export"
    command = [sys.executable, str(SRC / "export.py"), str(pack), "--weights", "random",
               "--task", "all", "--out", str(out), "--program", "--threads", "1"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    manifest = read_pack(pack).manifest
    x = images()
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    threads = str(torch.get_num_threads())
    loader = [sys.executable, "-I", "-c", PLAIN_LOADER, threads, str(tmp_path / "x.safetensors"),
              *(str(out / task) for task in TASKS)]  # fmt: skip
    run = subprocess.run(loader, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False", "the loader imported piggyback"
    outputs = load_file(str(tmp_path / "outputs.safetensors"))
    for task, classes in TASKS.items():
        config = json.loads((out / task / "config.json").read_text())
        assert config["classes"] == classes
        steps = PREPROCESSING.steps()
        assert config["preprocessing"] == {**PREPROCESSING.as_dict(), "steps": steps}
        assert config["source"] == {
            "pack": pack.name,
            "pack_sha256": hashlib.sha256(pack.read_bytes()).hexdigest(),
            "content_sha256": manifest["content_sha256"],
            "backbone_sha256": manifest["backbone_sha256"],
            "arch": ARCH,
            "method": "piggyback",
            "ordering": None,
        }
        evaluated = evaluated_outputs(pack, task, x)
        assert torch.equal(outputs[f"{task}/model"], evaluated), task
        assert torch.equal(outputs[f"{task}/program"], evaluated), task
