"""Learning really happens: a backbone trained on digits 0-4, then piggybacked onto
mirrored digits 5-9 (real images from scikit-learn), gets far below chance error."""

import torch

from piggyback.backbones import ArchSpec, build_task_model, torchvision_state
from piggyback.checkpoints import load_checkpoint
from piggyback.data import load_task_data, make_loader
from piggyback.training import Hyperparameters, TaskRun, train_task

CHANCE_ERROR = 80.0  # five classes


def _run(data, method, weights, tmp_path, **hp):
    train, test = load_task_data(data, "cropped", 32)
    model = build_task_model(ArchSpec("resnet18"), len(train.classes), weights=weights)
    hp = Hyperparameters.for_method(method, **hp)
    run = TaskRun("resnet18", method, data.name, train.classes, 0, hp)
    return train_task(
        model,
        run,
        lambda e: make_loader(train, hp.batch_size, True, e),
        make_loader(test, 128, False, 0),
        tmp_path / method,
        torch.device("cpu"),
        progress=False,
        log=lambda _: None,
    )


def test_piggyback_on_a_pretrained_backbone_learns_a_new_task(
    digits_source, digits_target, tmp_path
):
    pretrain = _run(
        digits_source,
        "finetune",
        "random",
        tmp_path,
        epochs=5,
        optimizer="adam",
        lr=1e-3,
        lr_head=1e-3,
    )["best_path"]
    pretrain = load_checkpoint(pretrain)
    assert pretrain["test_top1_error"] < 25.0
    weights = tmp_path / "pretrained.pth"
    torch.save(
        torchvision_state(pretrain["weights"], pretrain["head"], pretrain["head_name"]), weights
    )
    result = _run(digits_target, "piggyback", weights, tmp_path, epochs=6, lr=3e-4, lr_head=1e-2)
    errors = [m["test_top1_error"] for m in result["metrics"]]
    assert min(errors) < CHANCE_ERROR / 3, errors
    assert result["metrics"][-1]["mask_density"] < 1.0
