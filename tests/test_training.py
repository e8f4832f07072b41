import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from script_args import digits_task_args

from piggyback.data.datasets import load_task_data, make_loader
from piggyback.data.digits import write_digits_task
from piggyback.data.transforms import TaskTransform
from piggyback.methods.checkpoints import load_task_checkpoint
from piggyback.methods.registry import METHODS, Hyperparameters
from piggyback.methods.run import TaskRun, TrainingError
from piggyback.model.backbones import ArchSpec, build_task_model
from piggyback.model.checkpoints import backbone_state, load_checkpoint
from piggyback.training.loop import train_task

SRC = Path(__file__).resolve().parents[1] / "src"


def _train(
    data_root,
    state_dir,
    method="piggyback",
    epochs=2,
    arch="resnet18",
    fail_at=None,
    resume_every=0.0,
    log=lambda _: None,
    **hp,
):
    train, test = load_task_data(data_root, TaskTransform("cropped", 32))
    model = build_task_model(ArchSpec(arch), len(train.classes), weights="random")
    hp = Hyperparameters.for_method(method, epochs=epochs, batch_size=32, **hp)
    run = TaskRun(arch, method, "digits", train.classes, seed=1, hp=hp)

    def loader_for(epoch):
        if fail_at is not None and epoch == fail_at:
            raise KeyboardInterrupt("killed")
        return make_loader(train, hp.batch_size, True, 100 + epoch)

    result = train_task(
        model,
        run,
        loader_for,
        make_loader(test, 64, False, 0),
        state_dir,
        torch.device("cpu"),
        progress=False,
        log=log,
        resume_every=resume_every,
    )
    return model, result


@pytest.fixture(scope="module")
def small_target(tmp_path_factory):
    """Digits 5-9 mirrored, 20 a class (70 training images, three batches an epoch): the
    resume tests compare runs bit for bit, which needs a few steps, not learning."""
    root = tmp_path_factory.mktemp("small_target")
    write_digits_task(root, [5, 6, 7, 8, 9], view="mirrored", per_class=20)
    return root


FROZEN = [name for name, entry in METHODS.items() if entry.freezes_backbone]


@pytest.mark.parametrize("method", FROZEN)
def test_frozen_backbone_tensors_stay_bit_identical(digits_target, tmp_path, method):
    train, _ = load_task_data(digits_target, TaskTransform("cropped", 32))
    reference = build_task_model(ArchSpec("resnet18"), 5, weights="random")
    before = {k: v.clone() for k, v in backbone_state(reference.backbone).items()}
    logged = []
    model, result = _train(
        digits_target, tmp_path, method, epochs=1, lr=1e-2, lr_head=1e-2, log=logged.append
    )
    after = backbone_state(model.backbone)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    if METHODS[method].stores_masks:
        checkpoint = load_task_checkpoint(result["best_path"])
        masks = checkpoint.learned["masks"]
        assert any(not torch.all(m == 1e-2) for m in masks.values()), "masks never moved"
        # what the masks cover is printed before training and kept for the pack
        coverage = checkpoint.coverage
        assert coverage["masked"] == sum(m.numel() for m in masks.values())
        assert coverage["left_alone"] == {"norms": 9600}  # resnet18's BatchNorm; no biases
        assert "resnet18: masks cover 11.2M of the backbone's 11.2M" in logged[0]


def test_finetune_changes_the_backbone(digits_target, tmp_path):
    reference = build_task_model(ArchSpec("resnet18"), 5, weights="random")
    model, _ = _train(digits_target, tmp_path, "finetune", epochs=1)
    before, after = backbone_state(reference.backbone), backbone_state(model.backbone)
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])


def test_interrupted_training_resumes_to_the_same_result(small_target, tmp_path):
    _, uninterrupted = _train(small_target, tmp_path / "a", epochs=3, lr=1e-3)
    with pytest.raises(KeyboardInterrupt):
        _train(small_target, tmp_path / "b", epochs=3, lr=1e-3, fail_at=2)
    assert load_checkpoint(tmp_path / "b" / "resume.pt")["epochs_done"] == 2
    _, resumed = _train(small_target, tmp_path / "b", epochs=3, lr=1e-3)
    a, b = (load_task_checkpoint(r["best_path"]) for r in (uninterrupted, resumed))
    assert a.epoch == b.epoch
    for name in a.learned["masks"]:
        assert torch.equal(a.learned["masks"][name], b.learned["masks"][name]), name
    assert torch.equal(a.head["weight"], b.head["weight"])
    assert [m["test_top1_error"] for m in uninterrupted["metrics"]] == [
        m["test_top1_error"] for m in resumed["metrics"]
    ]


def test_deferred_writes_keep_the_best_epoch_and_resume_to_the_same_result(
    small_target, tmp_path, monkeypatch
):
    """With writes deferred, the best epoch (here the second of three) is kept as it
    was, not as the tensors are later; a run killed before any write starts afresh."""
    import piggyback.training.loop as training

    plain_evaluate = training.evaluate
    evaluations = []

    def scripted_evaluate(*args, **kwargs):  # test errors 50, 40, 60 for epochs 1-3
        evaluations.append(None)
        return {
            **plain_evaluate(*args, **kwargs),
            "top1_error": [50.0, 40.0, 60.0][len(evaluations) - 1],
        }

    monkeypatch.setattr(training, "evaluate", scripted_evaluate)
    _, every_epoch = _train(small_target, tmp_path / "a", epochs=3, lr=1e-2)
    evaluations.clear()
    with pytest.raises(KeyboardInterrupt):
        _train(small_target, tmp_path / "b", epochs=3, lr=1e-2, fail_at=2, resume_every=3600)
    assert not (tmp_path / "b" / "resume.pt").exists()
    assert not (tmp_path / "b" / "best.pt").exists()
    evaluations.clear()
    _, deferred = _train(small_target, tmp_path / "b", epochs=3, lr=1e-2, resume_every=3600)
    a, b = (load_task_checkpoint(r["best_path"]) for r in (every_epoch, deferred))
    assert a.epoch == b.epoch == 2
    for name in a.learned["masks"]:
        assert torch.equal(a.learned["masks"][name], b.learned["masks"][name]), name
    assert torch.equal(a.head["weight"], b.head["weight"])
    assert every_epoch["metrics"] == [
        {**m, "seconds": e["seconds"]}
        for m, e in zip(deferred["metrics"], every_epoch["metrics"], strict=True)
    ]


def test_state_of_another_run_is_not_resumed(digits_target, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _train(digits_target, tmp_path, epochs=2, fail_at=1)
    with pytest.raises(TrainingError, match="belongs to another run"):
        _train(digits_target, tmp_path, epochs=2, lr=5e-4)


def test_non_finite_loss_stops_with_epoch_and_batch(digits_target, tmp_path):
    with pytest.raises(TrainingError, match=r"non-finite loss .* epoch 1, batch \d+"):
        _train(digits_target, tmp_path, "finetune", epochs=1, lr=1e12, lr_head=1e12)
    assert not (tmp_path / "best.pt").exists()


def _train_command(data, out, epochs):
    return [
        sys.executable,
        str(SRC / "train.py"),
        *digits_task_args(data),
        "--epochs",
        str(epochs),
        "--lr",
        "1e-3",
        "--batch-size",
        "16",
        "--seed",
        "3",
        "--threads",
        "1",
        "--out",
        str(out / "task.pt"),
        "--metrics",
        str(out / "metrics.tsv"),
    ]


def test_sigkilled_training_job_resumes_to_the_same_masks(digits_target, tmp_path):
    """A real SIGKILL mid-run, then the same command again. The uninterrupted run to
    compare with runs beside the killed one (a thread each), not before it."""
    uninterrupted = subprocess.Popen(_train_command(digits_target, tmp_path / "a", 3))
    killed = tmp_path / "b"
    job = subprocess.Popen(_train_command(digits_target, killed, 3))
    resume = killed / "task.pt.state" / "resume.pt"
    deadline = time.time() + 120
    while not resume.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert not (killed / "task.pt").exists(), "the job finished before it could be killed"
    subprocess.run(_train_command(digits_target, killed, 3), check=True)
    assert uninterrupted.wait(timeout=600) == 0
    a, b = (
        load_task_checkpoint(tmp_path / "a" / "task.pt"),
        load_task_checkpoint(killed / "task.pt"),
    )
    assert all(
        torch.equal(a.learned["masks"][k], b.learned["masks"][k]) for k in a.learned["masks"]
    )
    assert not (killed / "task.pt.state").exists(), "resume state is removed after success"
    # how the task's test images were transformed, for using the task without the config
    assert a.preprocessing == TaskTransform("cropped", 32).as_dict()
