"""PackNet on a small real task chain: a random-initialised ResNet-18 pruned at the start,
then three digits tasks in order (plain, mirrored, rotated digits 5-9), on the CPU, each
with its position's prune fraction (the authors' scripts' kind of list: 0.75, 0.5, -1)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from piggyback.data.datasets import load_task_data, make_loader
from piggyback.data.digits import write_digits_task
from piggyback.data.transforms import TaskTransform
from piggyback.methods.checkpoints import load_task_checkpoint
from piggyback.methods.packnet.method import FREE, SOURCE
from piggyback.methods.registry import METHODS, Hyperparameters
from piggyback.methods.run import TaskRun, TrainingError
from piggyback.model.backbones import ArchSpec, build_task_model
from piggyback.packs.packed_file import PackError, read_pack
from piggyback.stages.evaluation import TaskData, evaluate_pack
from piggyback.stages.packing import pack
from piggyback.training.loop import train_task

TASKS = {"plain": "plain", "mirrored": "mirrored", "rotated": "rotated"}
HP = {"epochs": 2, "prune_epochs": 2, "batch_size": 16, "optimizer": "adam", "lr": 1e-3}
PRUNE = 0.75
FRACTIONS = (PRUNE, 0.5, -1.0)  # per position; -1: not pruned, as the last task never is


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("packnet_tasks")
    for name, view in TASKS.items():
        write_digits_task(root / name, [5, 6, 7, 8, 9], view=view, per_class=16)
    return root


def train(
    task_data, state_dir, dataset=None, previous=None, last=False, fail_at=None, fraction=PRUNE
):
    """One link of the chain (the start when ``dataset`` is None); returns its checkpoint."""
    hp = Hyperparameters.for_method("packnet", prune_fraction=fraction, **HP)
    if dataset is None:
        classes, loader_for, test = [], None, None
    else:
        train_split, test_split = load_task_data(task_data / dataset, TaskTransform("cropped", 32))
        classes, test = train_split.classes, make_loader(test_split, 64, False, 0)

        def loader_for(epoch):
            if epoch == fail_at:
                raise KeyboardInterrupt("killed")
            return make_loader(train_split, hp.batch_size, True, 100 + epoch)

    model = build_task_model(ArchSpec("resnet18"), max(len(classes), 1), weights="random")
    run = TaskRun(
        "resnet18",
        "packnet",
        dataset,
        classes,
        0,
        hp,
        role="task" if dataset else "start",
        previous=load_task_checkpoint(previous) if previous else None,
        last_in_ordering=last,
    )
    result = train_task(
        model, run, loader_for, test, state_dir, torch.device("cpu"), False, lambda _: None
    )
    out = state_dir.with_suffix(".pt")
    shutil.copyfile(result["best_path"], out)
    return out, result


def chain(task_data, root, fail=None, trained=None):
    """The start and the three tasks; ``fail`` = (task, epoch) interrupts that task once
    at that global epoch, then runs it again from its state folder. The links before it
    are taken from ``trained``, a chain already run, where given: trained again they
    would come out the same, as the links after them must."""
    order = list(TASKS)
    kept = order.index(fail[0]) if trained else 0
    if trained:
        start, paths, results = trained[0], trained[1][:kept], trained[2][:kept]
    else:
        (start, _), paths, results = train(task_data, root / "start"), [], []
    previous = paths[-1] if paths else start
    for position, dataset in enumerate(order[kept:], kept):
        last, fraction = position == len(TASKS) - 1, FRACTIONS[position]
        if fail is not None and fail[0] == dataset:
            with pytest.raises(KeyboardInterrupt):
                train(task_data, root / dataset, dataset, previous, last, fail[1], fraction)
        path, result = train(task_data, root / dataset, dataset, previous, last, None, fraction)
        paths.append(path)
        results.append(result)
        previous = path
    return start, paths, results


@pytest.fixture(scope="module")
def trained_chain(task_data, tmp_path_factory):
    return chain(task_data, tmp_path_factory.mktemp("chain"))


def test_owners_are_the_chain_and_free_weights_are_zero(trained_chain):
    start, paths, _ = trained_chain
    for position, path in enumerate([start, *paths]):
        checkpoint = load_task_checkpoint(path)
        assert checkpoint.own["task_id"] == SOURCE + position
        for name, owner in checkpoint.learned["owners"].items():
            assert set(owner.unique().tolist()) <= set(range(checkpoint.own["task_id"] + 1))
            assert torch.all(checkpoint.learned["weights"][name][owner == FREE] == 0), name


def test_the_start_frees_the_smaller_half_of_every_layer(trained_chain):
    """round(n / 2) weights per layer, more only where the pretrained weights tie at
    the cutoff magnitude (a random float32 init of millions of weights has some)."""
    start = load_task_checkpoint(trained_chain[0])
    pretrained = build_task_model(ArchSpec("resnet18"), 5, weights="random").backbone
    for name, weight in pretrained.state_dict().items():
        if name not in start.learned["owners"]:
            continue
        freed = start.learned["owners"][name] == FREE
        rank = round(0.5 * weight.numel())
        cutoff = weight.abs().flatten().kthvalue(rank).values
        ties = int((weight.abs() == cutoff).sum())
        assert rank <= int(freed.sum()) <= rank + ties - 1, name
        assert torch.equal(freed, weight.abs() <= cutoff), name


def test_pruning_frees_the_configured_share_of_each_layers_new_weights(trained_chain):
    """Per layer, exactly round(0.75 n) of the n weights a task was handed are freed,
    the smallest by magnitude, and set to zero; nothing else changes. (Weights drawn
    without ties: see the next test for ties.)"""
    model, method, handed = prepared_task(trained_chain[0])
    with torch.no_grad():
        for layer in method.layers.values():
            layer.parameter.normal_(generator=torch.Generator().manual_seed(1))
    before = {name: layer.parameter.detach().clone() for name, layer in method.layers.items()}
    method.begin_phase(model, method.phases(prepared_run(trained_chain[0]))[1])
    for name, layer in method.layers.items():
        freed = method.owners[name] == FREE
        assert not (freed & ~handed[name]).any(), name
        assert int(freed.sum()) == round(PRUNE * int(handed[name].sum())), name
        kept = handed[name] & ~freed
        assert before[name][freed].abs().max() <= before[name][kept].abs().min(), name
        assert torch.all(layer.parameter[freed] == 0), name
        assert torch.equal(layer.parameter[~freed], before[name][~freed]), name


def test_weights_tied_at_the_cutoff_are_freed_together(trained_chain):
    """As the authors' code does: every weight at or below the cutoff magnitude goes."""
    model, method, handed = prepared_task(trained_chain[0])
    name = "layer1.0.conv1.weight"
    with torch.no_grad():
        method.layers[name].parameter.fill_(0.5)
    method.begin_phase(model, method.phases(prepared_run(trained_chain[0]))[1])
    assert torch.equal(method.owners[name] == FREE, handed[name])


def prepared_run(start):
    hp = Hyperparameters.for_method("packnet", prune_fraction=PRUNE, **HP)
    return TaskRun("resnet18", "packnet", "plain", [], 0, hp, previous=load_task_checkpoint(start))


def prepared_task(start):
    """A first task prepared from the start, as training would begin it."""
    from piggyback.methods.registry import load_method

    run = prepared_run(start)
    model = build_task_model(ArchSpec("resnet18"), 5, weights="random")
    method = load_method("packnet", run.hp)
    method.prepare(model, run)
    handed = {name: owner == 2 for name, owner in method.owners.items()}
    return model, method, handed


def test_each_pruned_task_frees_at_least_its_share(trained_chain):
    start, paths, _ = trained_chain
    before = load_task_checkpoint(start)
    for path, fraction in zip(paths[:-1], FRACTIONS, strict=False):
        after = load_task_checkpoint(path)
        for name, owner in after.learned["owners"].items():
            handed = before.learned["owners"][name] == FREE
            freed = handed & (owner == FREE)
            assert torch.equal(handed, freed | (owner == after.own["task_id"])), name
            assert int(freed.sum()) >= round(fraction * int(handed.sum())), name
        before = after


def test_the_pack_and_the_table_name_each_tasks_fraction(trained_chain, tmp_path):
    """The fraction each task freed, as its position's fraction gave it (-1 and the last
    task: not pruned), in the packed file and in the PackNet block of the table."""
    from piggyback.report.markdown import to_markdown
    from piggyback.report.tables import summarize

    _, paths, _ = trained_chain
    manifest = pack(paths, tmp_path / "p.safetensors", ordering="forward").manifest
    freed = [manifest["tasks"][task]["summary"]["prune_fraction"] for task in TASKS]
    assert freed == [0.75, 0.5, 0.0]
    rows = pd.DataFrame(
        {
            "method": "packnet",
            "ordering": "forward",
            "arch": "resnet18",
            "dataset": task,
            "position": position,
            "top1_error": 10.0,
            "images": 100,
            "source_task": False,
            "start_source": None,
            "prune_fraction": fraction,
        }
        for position, (task, fraction) in enumerate(zip(TASKS, freed, strict=True), start=1)
    )
    table = summarize(rows, None, 1.0, dict.fromkeys(TASKS, 5))
    markdown = to_markdown(
        table, ["resnet18"], list(TASKS), ["packnet"], {"forward": list(TASKS)}, 1
    )
    details = markdown.split("freed for later tasks (prune_fraction):")[1].split("##")[0]
    cells = [line.split("|")[2].strip() for line in details.strip().splitlines()[2:]]
    assert cells == ["0.75", "0.5", "not pruned"]


def test_a_fraction_of_zero_or_less_prunes_nothing():
    from piggyback.methods.registry import load_method

    for fraction, phases in (
        (0.75, ["finetune", "prune"]),
        (0.0, ["finetune"]),
        (-1.0, ["finetune"]),
    ):
        hp = Hyperparameters.for_method("packnet", prune_fraction=fraction)
        method = load_method("packnet", hp)
        method.role, method.last = "task", False
        assert [phase.name for phase in method.phases(None)] == phases


def test_the_last_task_is_not_pruned(trained_chain):
    _, paths, results = trained_chain
    last = load_task_checkpoint(paths[-1])
    assert all(not (owner == FREE).any() for owner in last.learned["owners"].values())
    assert {row["phase"] for row in results[-1]["metrics"]} == {"finetune"}
    assert {row["phase"] for row in results[0]["metrics"]} == {"finetune", "prune"}


def test_later_tasks_leave_earlier_weights_biases_and_batchnorm_bit_identical(trained_chain):
    start, paths, _ = trained_chain
    checkpoints = [load_task_checkpoint(p) for p in [start, *paths]]
    for earlier, later in zip(checkpoints, checkpoints[1:], strict=False):
        for name, value in earlier.learned["weights"].items():
            if name in earlier.learned["owners"]:
                owned = earlier.learned["owners"][name] != FREE
                assert torch.equal(later.learned["weights"][name][owned], value[owned]), name
                assert torch.equal(
                    later.learned["owners"][name][owned], earlier.learned["owners"][name][owned]
                )
            else:  # biases, BatchNorm parameters and running statistics
                assert torch.equal(later.learned["weights"][name], value), name


def evaluate(path_list, task_data, tmp_path, name):
    out = tmp_path / f"{name}.safetensors"
    pack(path_list, out, ordering="forward")
    tasks = {
        dataset: TaskData(task_data / dataset, TaskTransform("cropped", 32)) for dataset in TASKS
    }
    return evaluate_pack(out, tasks, "resnet18", ArchSpec("resnet18"), 64, weights="random")


def test_pack_then_evaluate_equals_the_end_of_training_evaluation(
    trained_chain, task_data, tmp_path
):
    _, paths, _ = trained_chain
    result = evaluate(paths, task_data, tmp_path, "all")
    assert [t["dataset"] for t in result["tasks"]] == list(TASKS)
    assert result["ordering"] == "forward" and result["start"]["source"] is None
    for task, path in zip(result["tasks"], paths, strict=True):
        checkpoint = load_task_checkpoint(path)
        assert task["top1_error"] == checkpoint.test_top1_error, task["dataset"]
        assert task["top5_error"] == checkpoint.test_top5_error
        assert task["images"] == checkpoint.test_images


def test_the_pack_holds_owners_as_the_registry_entry_says_in_format_version_3(
    trained_chain, tmp_path
):
    _, paths, _ = trained_chain
    manifest = pack(paths, tmp_path / "chain.safetensors", ordering="forward").manifest
    assert METHODS["packnet"].stores == "owners"
    assert {task["storage"] for task in manifest["tasks"].values()} == {"owners"}
    assert manifest["version"] == 3  # a version 1 or 2 reader knows no owners


def test_an_earlier_task_evaluates_bit_identically_before_and_after_the_next(
    trained_chain, tmp_path
):
    """The logits of task 1 from a pack of [1] and from a pack of [1, 2, 3] are equal."""
    from piggyback.methods.registry import load_method

    _, paths, _ = trained_chain
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    logits = []
    for count in (1, 2, 3):
        out = tmp_path / f"first{count}.safetensors"
        pack(paths[:count], out, ordering="forward")
        packed = read_pack(out)
        model = build_task_model(ArchSpec("resnet18"), 5, weights="random")
        load_method("packnet").apply(model.backbone, packed, "plain")
        model.head.load_state_dict(packed.head("plain"))
        with torch.no_grad():
            logits.append(model.eval()(images))
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])


@pytest.mark.parametrize(
    "fail", [("mirrored", 2), ("mirrored", 3)], ids=["at-the-prune-phase", "inside-it"]
)
def test_a_chain_killed_in_the_middle_ends_with_the_same_pack(
    trained_chain, task_data, tmp_path, fail
):
    """Task 2 interrupted when its prune phase starts (global epoch 2) or inside it
    (epoch 3), then run again: every epoch's figures and the pack are the same, bit for
    bit. The start and task 1 are the uninterrupted chain's."""
    _, paths, results = trained_chain
    _, resumed_paths, resumed = chain(task_data, tmp_path / "resumed", fail, trained_chain)
    for uninterrupted, again in zip(results, resumed, strict=True):
        timeless = [{k: v for k, v in row.items() if k != "seconds"} for row in again["metrics"]]
        assert timeless == [
            {k: v for k, v in row.items() if k != "seconds"} for row in uninterrupted["metrics"]
        ]
    a = pack(paths, tmp_path / "a.safetensors", ordering="forward").manifest
    b = pack(resumed_paths, tmp_path / "b.safetensors", ordering="forward").manifest
    assert a["content_sha256"] == b["content_sha256"]


def test_packing_refuses_a_chain_out_of_order(trained_chain, tmp_path):
    _, paths, _ = trained_chain
    with pytest.raises(PackError, match="continues the chain"):
        pack([paths[1], paths[0]], tmp_path / "p.safetensors")


def test_a_task_that_would_change_earlier_weights_is_stopped(
    trained_chain, task_data, tmp_path, monkeypatch
):
    """Without the gradient masking, training moves weights earlier tasks own: the end
    of training check catches it."""
    from piggyback.methods.packnet.method import PackNet

    monkeypatch.setattr(PackNet, "after_backward", lambda self, model: None)
    _, paths, _ = trained_chain
    with pytest.raises(TrainingError, match="owned by an earlier task changed"):
        train(task_data, tmp_path / "rotated", "rotated", paths[1], last=True)


def test_packnet_refuses_weight_decay():
    from piggyback.methods.registry import MethodError, load_method

    with pytest.raises(MethodError, match="weight_decay must be 0"):
        load_method("packnet", Hyperparameters.for_method("packnet", weight_decay=1e-4))
