"""The multi-task model: every method's tasks served from one backbone are the networks
evaluation builds from the pack, switched in place, mixed in one batch, at 1 bit per
masked weight per Piggyback task; bad input refused in one line."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from tiny_packs import ARCH, METHODS, PREPROCESSING, SIZE, TASKS, make_pack, make_released_pack

from piggyback.data.transforms import PreprocessingError, TaskTransform
from piggyback.model.backbones import ArchSpec, build_backbone
from piggyback.packs.packed_file import PackError
from piggyback.stages.evaluation import open_pack, task_model
from piggyback.tasks.model import MultiTaskModel
from piggyback.tasks.shared_weights import pack_planes, unpack_planes, unpack_with_shifts


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    """Each method's pack of the two tiny tasks."""
    folder = tmp_path_factory.mktemp("packs")
    return {method: make_pack(method, folder / f"{method}.safetensors") for method in METHODS}


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return make_released_pack(tmp_path_factory.mktemp("released"))


def images(count: int = 6, size: int = SIZE) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(1))


def assert_serves_the_evaluated_networks(pack, arch, tasks, **load) -> MultiTaskModel:
    """Each switch, back and forth, gives the backbone's every tensor and the outputs of
    the network evaluation builds for the task, exactly."""
    model = MultiTaskModel.load(pack, "random", **load)
    opened = open_pack(pack, arch, ArchSpec(arch), "random")
    x = images()
    for task in [*tasks, *reversed(tasks)]:
        model.set_task(task)
        evaluated = task_model(opened, task).eval()
        served = model.backbone.state_dict()
        for name, tensor in evaluated.backbone.state_dict().items():
            assert torch.equal(served[name], tensor), f"{task}: {name}"
        with torch.no_grad():
            assert torch.equal(model(x), evaluated(x)), task
    return model


@pytest.mark.parametrize("method", METHODS)
def test_every_methods_tasks_are_the_networks_evaluation_builds(packs, method):
    assert_serves_the_evaluated_networks(packs[method], ARCH, list(TASKS))


def test_released_masks_are_served_as_imported(released):
    names = {"sketches": ["a", "b", "c"]}  # their files name no classes: the caller may
    tasks = ["flowers", "sketches"]
    model = assert_serves_the_evaluated_networks(released, "densenet121", tasks, class_names=names)
    assert model.tasks["flowers"].classes == ["0", "1", "2", "3"]
    assert model.tasks["sketches"].classes == ["a", "b", "c"]


def test_a_mixed_batch_gives_each_sample_what_its_tasks_batch_gives(packs):
    model = MultiTaskModel.load(packs["piggyback"], "random")
    x = images(7)
    tasks = ["shapes", "digits", "digits", "shapes", "digits", "shapes", "shapes"]
    model.set_task("digits")
    mixed = model.forward_mixed(x, tasks)
    assert model.active_task == "digits"
    for task in TASKS:
        indices = [i for i, t in enumerate(tasks) if t == task]
        model.set_task(task)
        with torch.no_grad():
            expected = model(x[indices])
        for row, index in enumerate(indices):
            assert torch.equal(mixed[index], expected[row]), (task, index)
    as_list = model.forward_mixed(list(x), tasks)
    assert all(torch.equal(a, b) for a, b in zip(as_list, mixed, strict=True))


def test_a_task_costs_its_planes_and_its_head(packs):
    """Piggyback: 1 bit per masked weight and task (the flat layout's padding aside);
    ternary: 2 where a task negates the base; PackNet: 1; Classifier Only: nothing."""
    bits = {}
    for method in ("piggyback", "piggyback_ternary", "packnet", "classifier_only"):
        memory = MultiTaskModel.load(packs[method], "random").memory()
        bits[method] = {
            task: 8 * held / memory["masked_weights"] for task, held in memory["tasks"].items()
        }
        assert memory["heads"]["digits"] == 4 * (1024 * 5 + 5)
    assert all(1 <= b <= 1.05 for b in bits["piggyback"].values())
    assert 2 <= bits["piggyback_ternary"]["shapes"] <= 2.1
    assert all(1 <= b <= 1.05 for b in bits["packnet"].values())
    assert bits["classifier_only"] == {"digits": 0, "shapes": 0}


def test_planes_expand_alike_on_the_cpu_and_on_other_devices():
    bits = torch.rand(64, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_planes(bits)
    on_cpu = torch.empty(64)
    unpack_planes(packed, on_cpu)
    assert torch.equal(on_cpu, bits.float())
    assert torch.equal(unpack_with_shifts(packed).view(-1), bits)


def test_preprocessing_comes_from_the_pack_else_from_the_caller(packs, tmp_path):
    model = MultiTaskModel.load(packs["finetune"], "random", tasks=["shapes"])
    assert model.tasks["shapes"].preprocessing == PREPROCESSING
    unrecorded = make_pack("classifier_only", tmp_path / "old.safetensors", preprocessing=None)
    model = MultiTaskModel.load(unrecorded, "random")
    with pytest.raises(PreprocessingError, match="does not record how task 'digits'"):
        model.preprocess("digits", None)
    given = TaskTransform("standard", 40)
    model = MultiTaskModel.load(unrecorded, "random", preprocessing=given)
    assert model.tasks["digits"].preprocessing == given
    with pytest.raises(PreprocessingError, match="was trained with .* not the"):
        MultiTaskModel.load(packs["finetune"], "random", preprocessing=given)


def test_bad_input_is_refused_in_one_line(packs, tmp_path):
    backbone = build_backbone(ArchSpec(ARCH), "random")[0]
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    state["conv1.0.weight"][0, 0, 0, 0] += 1
    other = tmp_path / "other.safetensors"
    save_file(state, str(other))
    pack = packs["piggyback"]
    refusals = [
        (lambda: MultiTaskModel.load(pack, other), "trained on backbone weights with sha256"),
        (lambda: MultiTaskModel.load(pack, "random", tasks=["cars"]), "holds digits, shapes"),
        (lambda: MultiTaskModel.load(pack, "random", arch="resnet18"), "for arch 'shufflenet"),
        (lambda: MultiTaskModel.load(pack, "random", tasks=["digits"]).set_task("shapes"),
         "no task 'shapes' loaded; known: digits"),
    ]  # fmt: skip
    for load, message in refusals:
        with pytest.raises(PackError, match=message) as refused:
            load()
        assert "\n" not in str(refused.value)
