"""A method defined here, outside the project, and registered for the module's tests only:
a learned scale per output channel of every weight matrix over the frozen backbone,
something no project method stores. It goes through what a project method goes through,
with the library's functions: trained, packed, evaluated and tabled. Adding it touches
no project file, which is what "a method owns its state" means."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from piggyback.data.datasets import load_task_data, make_loader
from piggyback.data.transforms import TaskTransform
from piggyback.methods.base import Method
from piggyback.methods.checkpoints import load_task_checkpoint
from piggyback.methods.entry import Knob, MethodEntry, StoredPart
from piggyback.methods.registry import (
    METHODS,
    Hyperparameters,
    MethodError,
    method_entry,
    registered,
)
from piggyback.methods.run import TaskRun
from piggyback.model.backbones import ArchSpec, build_task_model
from piggyback.model.checkpoints import load_checkpoint
from piggyback.model.masks import masked_parameters
from piggyback.packs.packed_file import PACK_VERSION, read_pack
from piggyback.report.markdown import to_markdown
from piggyback.report.plots.style import series_colors
from piggyback.report.storage import storage_data, storage_totals, stored_parts
from piggyback.report.tables import load_results, summarize
from piggyback.stages.evaluation import TaskData, evaluate_pack
from piggyback.stages.packing import pack
from piggyback.stages.per_image import per_image_path, write_evaluation
from piggyback.training.loop import train_task

SRC = Path(__file__).resolve().parents[1] / "src"
NAME = "channel_scales"
ENTRY = MethodEntry(
    name=NAME,
    module=__name__,  # this file: its METHOD below
    label="Channel scales (toy)",
    sequential=False,
    freezes_backbone=True,
    released=False,
    summary="a learned scale per output channel of every weight matrix, and a head",
    stores="scales",
    color="tab:cyan",
    checkpoint_fields=("scale_init",),
    learned=("scales",),
    parts={"scale": StoredPart("per-channel scales", "tab:cyan")},
    defaults={"lr": 1e-2, "lr_head": 1e-2},
    knobs={"scale_init": Knob(1.0, "every scale's first value", minimum=0)},
)


class ChannelScale(nn.Module):
    """The weight times one learned scale per output channel (its first dimension)."""

    def __init__(self, channels: int, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), init))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * per_channel(self.scale, weight)


def per_channel(scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return scale.view(-1, *[1] * (weight.dim() - 1))


class ChannelScales(Method):
    def prepare(self, model, run) -> None:
        super().prepare(model, run)
        self.scales = {}
        for name, layer in masked_parameters(model.backbone).items():
            scale = ChannelScale(layer.shape[0], self.hp.scale_init)
            parametrize.register_parametrization(layer.module, layer.attribute, scale)
            self.scales[name] = scale.scale

    def param_groups(self, model, phase) -> list[dict[str, Any]]:
        scales = {"params": list(self.scales.values()), "base_lr": phase.lr}
        return [scales, *super().param_groups(model, phase)]

    def trained_state(self, model) -> dict[str, Any]:
        return {**super().trained_state(model), "scales": self.scales}

    def load_trained_state(self, model, state: dict[str, Any]) -> None:
        super().load_trained_state(model, state)
        with torch.no_grad():
            for name, value in state["scales"].items():
                self.scales[name].copy_(value)

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**super().checkpoint_meta(), "scale_init": self.hp.scale_init}

    def pack(self, checkpoints, contents) -> None:
        contents.agree_on("scale_init", [c.own["scale_init"] for c in checkpoints])
        contents.manifest["scale_init"] = checkpoints[0].own["scale_init"]
        super().pack(checkpoints, contents)

    def pack_task(self, checkpoint, contents) -> dict[str, Any]:
        for name, scale in checkpoint.learned["scales"].items():
            contents.put(f"{checkpoint.dataset}/scale/{name}", scale)
        return {}

    def apply(self, backbone: nn.Module, packed, task: str) -> None:
        layers = masked_parameters(backbone)
        with torch.no_grad():
            for name, scale in packed.tensors_under(f"{task}/scale/").items():
                weight = layers[name].parameter
                weight.mul_(per_channel(scale, weight))


METHOD = ChannelScales


@pytest.fixture(scope="module")
def toy():
    """The toy method in the registry for this module's tests, and out of it after."""
    with registered(ENTRY) as entry:
        yield entry


@pytest.fixture(scope="module")
def trained(toy, digits_target, tmp_path_factory):
    """One short training of the toy method on the digits task: its checkpoint."""
    root = tmp_path_factory.mktemp("toy")
    train, test = load_task_data(digits_target, TaskTransform("cropped", 32))
    model = build_task_model(ArchSpec("resnet18"), 5, weights="random")
    hp = Hyperparameters.for_method(NAME, epochs=1)
    run = TaskRun("resnet18", NAME, "digits", train.classes, 0, hp)
    result = train_task(
        model,
        run,
        lambda e: make_loader(train, 32, True, e),
        make_loader(test, 64, False, 0),
        root / "state",
        torch.device("cpu"),
        progress=False,
        log=lambda _: None,
    )
    shutil.copyfile(result["best_path"], root / "digits.pt")
    return root / "digits.pt"


def test_the_checkpoint_holds_the_methods_own_fields_where_its_entry_says(trained):
    on_disk = load_checkpoint(trained)
    keys = list(on_disk)
    assert keys[keys.index("speed") + 1] == "scale_init" and keys[-2:] == ["head", "scales"]
    checkpoint = load_task_checkpoint(trained)
    assert checkpoint.own == {"scale_init": 1.0}
    scales = checkpoint.learned["scales"]
    layers = masked_parameters(build_task_model(ArchSpec("resnet18"), 5, "random").backbone)
    assert scales.keys() == layers.keys()
    assert all(scales[name].shape == (layer.shape[0],) for name, layer in layers.items())
    assert any(not torch.all(scale == 1.0) for scale in scales.values()), "scales never moved"
    assert list(checkpoint.to_dict()) == keys


def test_train_pack_evaluate_and_table(trained, digits_target, tmp_path):
    """The pack holds the scales under the entry's part and the manifest's storage word;
    its evaluation is the end of training's, and the table has a column for the method,
    with the storage row counting what the pack holds."""
    checkpoint = load_task_checkpoint(trained)
    out = tmp_path / "run0.safetensors"
    manifest = pack([trained], out).manifest
    assert manifest["version"] == PACK_VERSION and manifest["scale_init"] == 1.0
    assert manifest["tasks"]["digits"]["storage"] == "scales"
    assert {key.split("/")[1] for key in read_pack(out).tensors} == {"head", "scale"}

    tasks = {"digits": TaskData(digits_target, TaskTransform("cropped", 32))}
    arch = ArchSpec("resnet18")
    result = evaluate_pack(out, tasks, "resnet18", arch, 64, "random", per_image=True)
    assert result["tasks"][0]["top1_error"] == checkpoint.test_top1_error
    evaluation = tmp_path / "run0.json"
    write_evaluation(result, evaluation, per_image_path(evaluation))

    record = {"file": str(out), "arch": "resnet18", "method": NAME, "ordering": None, "run": 0}
    parts = storage_data([record]).set_index("part")["megabytes"]
    scales = sum(scale.numel() for scale in checkpoint.learned["scales"].values())
    assert parts["per-channel scales"] == 4 * scales / 1e6  # float32
    assert set(parts.index) == {"task head", "per-channel scales"}
    table = summarize(
        load_results([evaluation], [NAME]),
        None,
        None,
        {"digits": 5},
        storage_totals(storage_data([record])),
    )
    assert table["storage_megabytes"].iloc[0] == pytest.approx(parts.sum())
    markdown = to_markdown(table, ["resnet18"], ["digits"], [NAME], {}, None)
    assert "Channel scales (toy)" in markdown
    assert f"{checkpoint.test_top1_error:.2f} [" in markdown


def test_the_entry_gives_its_colour_and_parts_to_the_report(toy):
    assert series_colors([(NAME, "")]) == {(NAME, ""): "tab:cyan"}
    parts = stored_parts()
    assert (parts["scale"].label, parts["scale"].color) == ("per-channel scales", "tab:cyan")
    assert (parts["head"].label, parts["head"].color) == ("task head", "tab:gray")
    assert not parts["scale"].whole_network and parts["network"].whole_network


def test_registration_lasts_the_block_and_refuses_a_taken_name():
    another = dataclasses.replace(ENTRY, name="another")
    with registered(another):
        assert METHODS["another"] is another
    assert "another" not in METHODS
    taken = dataclasses.replace(ENTRY, name="piggyback")
    with pytest.raises(MethodError, match="'piggyback' is registered already"), registered(taken):
        pass
    assert method_entry("piggyback").label == "Piggyback"


def test_the_registry_with_every_entry_imports_no_torch():
    """The config checks, the wildcards and train.py --help read it without torch."""
    code = (
        "import sys; from piggyback.methods import registry; "
        "from piggyback.interface import config; "
        "print(list(registry.METHODS), 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(SRC), "PATH": ""},
    ).stdout.split("\n")[0]
    assert out.endswith(" False") and "'packnet'" in out
