"""Learning really happens: a backbone trained on digits 0-4, then piggybacked onto
mirrored digits 5-9 (real images from scikit-learn), gets far below chance error; and
the masks add something: with the same data, steps and head training, Piggyback beats a
head alone."""

import pytest
import torch

from piggyback.core.backbones import ArchSpec, build_task_model, torchvision_state
from piggyback.core.checkpoints import load_checkpoint
from piggyback.core.registry import Hyperparameters
from piggyback.core.run import TaskRun
from piggyback.core.training import train_task
from piggyback.data.datasets import load_task_data, make_loader
from piggyback.data.digits import write_digits_task

CHANCE_ERROR = 80.0  # five classes


def _run(data, method, weights, tmp_path, arch="resnet18", **hp):
    train, test = load_task_data(data, "cropped", 32)
    model = build_task_model(ArchSpec(arch), len(train.classes), weights=weights)
    hp = Hyperparameters.for_method(method, **hp)
    run = TaskRun(arch, method, data.name, train.classes, 0, hp)
    return train_task(
        model,
        run,
        lambda e: make_loader(train, hp.batch_size, True, e),
        make_loader(test, 128, False, 0),
        tmp_path / f"{arch}-{method}",
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


@pytest.mark.slow
def test_the_masks_beat_a_head_alone_given_the_same_head_training(tmp_path):
    """The demo's setting, one task: DenseNet-121 pretrained on digits 0-4, then digits
    5-9 rotated a quarter turn (200 test images). Classifier-only and Piggyback train the
    head with the same optimiser, rate, batch and epochs; Piggyback's masks (which must
    have changed) take the error lower by more than one test image."""
    source, target = tmp_path / "source", tmp_path / "target"
    write_digits_task(source, [0, 1, 2, 3, 4], per_class=100, test_fraction=0.2)
    write_digits_task(target, [5, 6, 7, 8, 9], view="rotated", per_class=90, test_fraction=0.44)
    pretrained = load_checkpoint(
        _run(source, "finetune", "random", tmp_path, "densenet121", epochs=4, lr_decay_every=3,
             batch_size=20, optimizer="adam", lr=1e-3, lr_head=1e-3)["best_path"]
    )  # fmt: skip
    weights = tmp_path / "pretrained.pth"
    torch.save(
        torchvision_state(pretrained["weights"], pretrained["head"], pretrained["head_name"]),
        weights,
    )
    head = {"epochs": 6, "batch_size": 16, "lr_head": 3e-2, "lr_decay_every": 4}
    alone = _run(
        target, "classifier_only", weights, tmp_path, "densenet121", optimizer="adam", **head
    )
    masked = _run(target, "piggyback", weights, tmp_path, "densenet121", lr=3e-4, **head)
    one_image = 100.0 / alone["best"]["test_images"]
    assert masked["best"]["test_top1_error"] < alone["best"]["test_top1_error"] - one_image
    assert masked["metrics"][-1]["mask_density"] < 0.99
